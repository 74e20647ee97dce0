package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"go.uber.org/zap"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/proxy"
	"github.com/fuseproxy/fuseproxy/store"
)

// KeyBackend is a Backend with per-key circuits (upstreams.<name>.keyed); the app
// implements it. Without it the /keys endpoints answer 404.
type KeyBackend interface {
	KeyStats() []proxy.KeyStats
	Keys(upstream string, limit int) ([]proxy.KeyInfo, bool)
	Key(upstream, key string) (*breaker.Breaker, bool)
	KeyCircuit(upstream string) (store.KeyCircuit, bool)
}

// KeyList is GET /keys and GET /keys/{upstream}: each keyed upstream's aggregates and
// its keys that are not passing, the longest open first (at most ?limit=, 20 by default).
type KeyList struct {
	Replica   string        `json:"replica"`
	Upstreams []KeyUpstream `json:"upstreams"`
	Store     store.Status  `json:"store"`
}

// KeyUpstream is one upstream's keys.
type KeyUpstream struct {
	proxy.KeyStats
	OpenKeys []KeyCircuitView `json:"open_keys"`
}

// KeyCircuitView is one key's circuit as this replica sees it.
type KeyCircuitView struct {
	Key string `json:"key"`
	Circuit
}

// KeyDetail is GET /keys/{upstream}/{key}: the key's circuit on this replica (when it
// tracks the key) and what the store holds for it.
type KeyDetail struct {
	Upstream         string            `json:"upstream"`
	Key              string            `json:"key"`
	Name             string            `json:"name"`
	Tracked          bool              `json:"tracked"`
	Circuit          *Circuit          `json:"circuit,omitempty"`
	SharedStore      map[string]string `json:"shared_store,omitempty"`
	SharedStoreError string            `json:"shared_store_error,omitempty"`
	Replica          string            `json:"replica"`
}

// KeyControlResult is the answer to a command on a key.
type KeyControlResult struct {
	Action  string   `json:"action"`
	Scope   string   `json:"scope"` // fleet | replica
	Key     string   `json:"key"`
	Name    string   `json:"name"`
	Circuit *Circuit `json:"circuit,omitempty"` // this replica's view, when it tracks the key
	Warning string   `json:"warning,omitempty"`
	Detail  string   `json:"detail,omitempty"`
}

func (h *Handler) routeKeys() {
	h.route("GET", "/keys", h.keyList)
	h.route("GET", "/keys/{upstream}", h.keyList)
	h.route("GET", "/keys/{upstream}/{key}", h.keyShow)
	for _, action := range []string{"open", "close", "reset", "mode"} {
		h.route("POST", "/keys/{upstream}/{key}/"+action, h.keyControl(action))
	}
}

func (h *Handler) keyBackend(w http.ResponseWriter) (KeyBackend, bool) {
	kb, ok := h.b.(KeyBackend)
	if !ok {
		writeJSON(w, http.StatusNotFound, Error{Error: "this replica has no per-key breakers"})
	}
	return kb, ok
}

func (h *Handler) keyList(w http.ResponseWriter, r *http.Request) {
	kb, ok := h.keyBackend(w)
	if !ok {
		return
	}
	limit := 20
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 10000 {
			writeJSON(w, http.StatusBadRequest, Error{Error: "limit must be 1-10000, got " + strconv.Quote(s), Field: "limit"})
			return
		}
		limit = n
	}
	only := r.PathValue("upstream")
	st := h.b.Store().Status()
	out := KeyList{Replica: h.b.ReplicaID(), Store: st, Upstreams: []KeyUpstream{}}
	for _, s := range kb.KeyStats() {
		if only != "" && s.Upstream != only {
			continue
		}
		ku := KeyUpstream{KeyStats: s, OpenKeys: []KeyCircuitView{}}
		keys, _ := kb.Keys(s.Upstream, limit)
		for _, k := range keys {
			ku.OpenKeys = append(ku.OpenKeys, KeyCircuitView{Key: k.Key, Circuit: NewCircuit(k.Snapshot, h.o.Now(), source(st, k.Snapshot))})
		}
		out.Upstreams = append(out.Upstreams, ku)
	}
	if only != "" && len(out.Upstreams) == 0 {
		h.noKeys(w, only)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *Handler) noKeys(w http.ResponseWriter, upstream string) {
	if _, ok := h.b.Config().Upstreams[upstream]; !ok {
		unknownUpstream(w, upstream)
		return
	}
	writeJSON(w, http.StatusNotFound, Error{Error: fmt.Sprintf("upstream %q has no per-key breakers (upstreams.%s.keyed.from)", upstream, upstream), Upstream: upstream})
}

// keyView returns this replica's view of a key's circuit, nil when it does not track it.
func (h *Handler) keyView(kb KeyBackend, upstream, key string) *Circuit {
	b, ok := kb.Key(upstream, key)
	if !ok {
		return nil
	}
	s := b.Snapshot()
	c := NewCircuit(s, h.o.Now(), source(h.b.Store().Status(), s))
	return &c
}

func (h *Handler) keyShow(w http.ResponseWriter, r *http.Request) {
	kb, ok := h.keyBackend(w)
	if !ok {
		return
	}
	upstream, key := r.PathValue("upstream"), r.PathValue("key")
	kc, ok := kb.KeyCircuit(upstream)
	if !ok {
		h.noKeys(w, upstream)
		return
	}
	name := keyName(upstream, key)
	out := KeyDetail{Upstream: upstream, Key: key, Name: name, Replica: h.b.ReplicaID(), Circuit: h.keyView(kb, upstream, key)}
	out.Tracked = out.Circuit != nil
	if ks, ok := h.b.Store().(store.KeyStore); ok {
		ctx, cancel := context.WithTimeout(r.Context(), h.o.StoreTimeout)
		defer cancel()
		shared, err := ks.InspectKey(ctx, name, kc)
		switch {
		case errors.Is(err, store.ErrUnknownCircuit):
		case err != nil:
			out.SharedStoreError = err.Error()
		default:
			out.SharedStore = shared
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *Handler) keyControl(action string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		kb, ok := h.keyBackend(w)
		if !ok {
			return
		}
		upstream, key := r.PathValue("upstream"), r.PathValue("key")
		kc, ok := kb.KeyCircuit(upstream)
		if !ok {
			h.noKeys(w, upstream)
			return
		}
		ks, ok := h.b.Store().(store.KeyStore)
		if !ok {
			writeJSON(w, http.StatusNotFound, Error{Error: "the store keeps no per-key circuits"})
			return
		}
		cmd := store.Command{Op: map[string]store.Op{
			"open": store.OpOpen, "close": store.OpClose, "reset": store.OpReset, "mode": store.OpMode,
		}[action]}
		if action == "mode" {
			m, perr := parseMode(r)
			if perr != nil {
				writeJSON(w, http.StatusBadRequest, *perr)
				return
			}
			cmd.Mode = m
		}
		name := keyName(upstream, key)
		ctx, cancel := context.WithTimeout(r.Context(), h.o.StoreTimeout)
		defer cancel()
		err := ks.ControlKey(ctx, name, kc, cmd)
		st := h.b.Store().Status()
		status, res := http.StatusOK, KeyControlResult{Action: action, Scope: "fleet", Key: key, Name: name}
		if st.Driver == "memory" {
			res.Scope = "replica"
		}
		var local *store.LocalOnlyError
		switch {
		case errors.Is(err, store.ErrUnknownCircuit):
			writeJSON(w, http.StatusNotFound, Error{Error: fmt.Sprintf("key %q of upstream %q is not tracked by this replica", key, upstream), Upstream: upstream})
			return
		case errors.As(err, &local):
			status, res.Scope, res.Warning, res.Detail = http.StatusAccepted, "replica", WarningLocalOnly, err.Error()
		case err != nil:
			h.log.Error("admin key command failed", zap.String("upstream", upstream), zap.String("key", key),
				zap.String("action", action), zap.Error(err))
			writeJSON(w, http.StatusBadGateway, Error{Error: fmt.Sprintf("%s %s: %v", action, name, err), Upstream: upstream})
			return
		}
		res.Circuit = h.keyView(kb, upstream, key)
		h.log.Info("admin key command", zap.String("upstream", upstream), zap.String("key", key),
			zap.String("action", action), zap.String("scope", res.Scope))
		writeJSON(w, status, res)
	}
}

func keyName(upstream, key string) string { return config.KeyName(upstream, key) }
