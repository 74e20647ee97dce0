// Package admin is fuseproxy's admin API: a JSON HTTP API to see and steer the circuits,
// /healthz and /readyz for probes, and /metrics for Prometheus. It is served on its own
// listener (config admin.listen), never on the proxy's.
//
// # Routes
//
//	GET  /circuits              every upstream's circuit (CircuitList)
//	GET  /circuits/{name}       one circuit, its settings and the store's view (CircuitDetail)
//	POST /circuits/{name}/open  open now          ┐ through store.Control: fleet-wide with
//	POST /circuits/{name}/close close now         │ the redis store; 202 with a warning when
//	POST /circuits/{name}/reset closed, normal,   │ only this replica could be reached
//	                            counts cleared    │ (ControlResult)
//	POST /circuits/{name}/mode  set the mode from ┘ {"mode":"metrics_only"} or ?mode=
//	POST /flush                 drop the local view and re-read the store (FlushResult)
//	POST /reload                re-read and apply the config file (ReloadResult)
//	GET  /healthz               200 "ok" while the process runs
//	GET  /readyz                200 while serving, 503 before and once shutdown began (Readiness)
//	GET  /metrics               Prometheus text format
//	GET  /events/circuits       server-sent events: a DashboardFrame at once, every 500 ms
//	                            and as soon as a circuit changes state or mode
//	GET  /ui/                   the dashboard: a page (HTML, JS, CSS embedded in the binary)
//	                            that shows /events/circuits and sends the commands above
//
// Errors are JSON (Error): 404 for an unknown upstream or route, 400 naming the field at
// fault, 405 for a wrong method, 409 for a command on an upstream whose breaker is
// disabled.
//
// # Security
//
// With a token (admin.token, env FUSE_ADMIN_TOKEN) every route except /healthz and the
// dashboard's static files (/ui/, which hold no data) requires
// "Authorization: Bearer <token>"; a missing or wrong token gets 401 with body
// {"error":"unauthorized"} and "WWW-Authenticate: Bearer", and nothing else. /healthz
// answers only "ok", so liveness probes need no secret. Without a token the API must be
// on loopback: Listen refuses any other address, and the handler itself answers 403 to a
// connection that arrived on a non-loopback address.
//
// Whether or not there is a token, web pages the operator's browser opens can neither
// steer nor read the API (see guard): every route but /healthz answers 403 to a Host
// header that is not an IP address, localhost or a name in admin.allowed_hosts (DNS
// rebinding), and every command (any method but GET, HEAD and OPTIONS) answers 403 when
// Sec-Fetch-Site or Origin names another origin, or when it carries none of
// X-Fuse-Admin, Authorization or Content-Type: application/json, which a page cannot send
// to another origin without a CORS preflight, never granted here.
package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/proxy"
	"github.com/fuseproxy/fuseproxy/store"
)

// Backend is what the admin API needs from a replica; *app.App implements it.
type Backend interface {
	// Breakers returns the circuits in effect, by upstream name.
	Breakers() map[string]*breaker.Breaker
	// Store returns the store the circuits live in.
	Store() store.Store
	// Config returns the config in effect.
	Config() *config.Config
	// ReplicaID returns this replica's id.
	ReplicaID() string
	// Ready reports whether the replica takes traffic.
	Ready() bool
	// ReloadFile re-reads the config file and applies it, like SIGHUP. It returns a
	// failure without logging it; POST /reload answers and logs it.
	ReloadFile() error
}

// Options configure the handler.
type Options struct {
	// Token is the bearer token every route but /healthz requires; empty: none (loopback
	// only).
	Token string
	// AllowedHosts are the names, besides IP literals and localhost, accepted in the
	// Host header (admin.allowed_hosts).
	AllowedHosts []string
	// Gatherer serves /metrics; nil: /metrics answers 404.
	Gatherer prometheus.Gatherer
	Logger   *zap.Logger
	// Now is the wall clock for opened_at; nil means time.Now.
	Now func() time.Time
	// StoreTimeout bounds a store operation (control, flush, inspect); 5 s when zero.
	StoreTimeout time.Duration

	// The dashboard's event stream: a frame every StreamInterval (500 ms when zero), at
	// most MaxStreams streams open at once (16); Run keeps Samples samples (120) per
	// circuit, one every SampleInterval (5 s).
	StreamInterval time.Duration
	MaxStreams     int
	Samples        int
	SampleInterval time.Duration
}

// Handler is the admin API. Run keeps the dashboard's history; Close ends its event
// streams.
type Handler struct {
	b       Backend
	o       Options
	log     *zap.Logger
	token   [sha256.Size]byte // hash of Options.Token, compared in constant time
	mux     *http.ServeMux
	metrics http.Handler
	guard   *guard
	dash    dashboard
}

// NewHandler returns the admin API for b.
func NewHandler(b Backend, o Options) *Handler {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.StoreTimeout <= 0 {
		o.StoreTimeout = 5 * time.Second
	}
	if o.StreamInterval <= 0 {
		o.StreamInterval = defaultStreamInterval
	}
	if o.MaxStreams <= 0 {
		o.MaxStreams = defaultMaxStreams
	}
	if o.Samples <= 0 {
		o.Samples = defaultSamples
	}
	if o.SampleInterval <= 0 {
		o.SampleInterval = defaultSampleInterval
	}
	h := &Handler{b: b, o: o, log: o.Logger, mux: http.NewServeMux(), token: sha256.Sum256([]byte(o.Token)),
		guard: newGuard(o.AllowedHosts),
		dash:  dashboard{hist: newHistory(o.Samples), agree: make(map[string]Agreement), done: make(chan struct{})}}
	if o.Gatherer != nil {
		h.metrics = promhttp.HandlerFor(o.Gatherer, promhttp.HandlerOpts{
			ErrorLog: zap.NewStdLog(o.Logger.Named("metrics")), ErrorHandling: promhttp.ContinueOnError,
		})
	}
	h.route("GET", "/circuits", h.list)
	h.route("GET", "/circuits/{name}", h.show)
	h.route("GET", "/circuits/{name}/history", h.history)
	for _, action := range []string{"open", "close", "reset", "mode"} {
		h.route("POST", "/circuits/{name}/"+action, h.control(action))
	}
	h.routeKeys()
	h.route("POST", "/flush", h.flush)
	h.route("POST", "/reload", h.reload)
	h.route("GET", "/healthz", h.healthz)
	h.route("GET", "/readyz", h.readyz)
	h.route("GET", "/metrics", h.serveMetrics)
	h.route("GET", "/events/circuits", h.events)
	h.mux.Handle("GET /ui/", uiHandler())
	h.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, Error{Error: "no admin endpoint " + r.URL.Path})
	})
	return h
}

// route registers fn for method and path, and a JSON 405 for the path's other methods.
func (h *Handler) route(method, path string, fn http.HandlerFunc) {
	h.mux.HandleFunc(method+" "+path, fn)
	allow := method
	if method == http.MethodGet {
		allow = "GET, HEAD"
	}
	h.mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", allow)
		writeJSON(w, http.StatusMethodNotAllowed, Error{Error: r.Method + " not allowed; use " + allow})
	})
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if r.URL.Path != "/healthz" {
		if why := h.guard.hostRefusal(r); why != "" {
			writeJSON(w, http.StatusForbidden, Error{Error: why})
			return
		}
		if h.o.Token == "" {
			if !loopbackConn(r) {
				writeJSON(w, http.StatusForbidden, Error{Error: "admin API without a token is served on loopback only"})
				return
			}
		} else if !isAsset(r) && !h.authorized(r) {
			w.Header().Set("WWW-Authenticate", "Bearer")
			writeJSON(w, http.StatusUnauthorized, Error{Error: "unauthorized"})
			return
		}
		if why := h.guard.commandRefusal(r); why != "" {
			writeJSON(w, http.StatusForbidden, Error{Error: why})
			return
		}
	}
	h.mux.ServeHTTP(w, r)
}

// authorized compares the bearer token with the configured one in constant time (over
// SHA-256 hashes, so the token's length does not show either).
func (h *Handler) authorized(r *http.Request) bool {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	return subtle.ConstantTimeCompare(got[:], h.token[:]) == 1
}

// loopbackConn reports whether the request arrived on a loopback address of this host.
func loopbackConn(r *http.Request) bool {
	addr, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if !ok {
		return true // not from a net/http server (a direct ServeHTTP call)
	}
	tcp, ok := addr.(*net.TCPAddr)
	if !ok {
		return addr.Network() == "unix"
	}
	return tcp.IP.IsLoopback()
}

// source says who decides a circuit's state.
func source(st store.Status, s breaker.Snapshot) string {
	switch {
	case st.Driver == "memory":
		return SourceLocal
	case st.Degraded:
		return SourceDegraded
	case s.Shared:
		return SourceShared
	}
	return SourceLocal
}

// circuit returns an upstream's Circuit; ok is false when no upstream has that name.
// The admin API reads a breaker through its operators' view (breaker.Control); its
// commands go through the store, which applies them fleet-wide.
func (h *Handler) circuit(name string, st store.Status) (c Circuit, b breaker.Control, ok bool) {
	if br := h.b.Breakers()[name]; br != nil { // a nil *Breaker must not become a non-nil Control
		s := br.Snapshot()
		c := NewCircuit(s, h.o.Now(), source(st, s))
		h.capped(&c)
		c.RetryBudget = h.budget(name)
		return c, br, true
	}
	if _, ok := h.b.Config().Upstreams[name]; ok {
		return Circuit{Name: name, State: StateDisabled, RetryBudget: h.budget(name)}, nil, true
	}
	return Circuit{}, nil, false
}

// TargetBackend is a Backend whose Config holds no targets (the app's: config.Compact):
// Targets returns an upstream's, in config order. With another Backend, the config's.
type TargetBackend interface {
	Targets(upstream string) []*url.URL
}

// BudgetBackend is a Backend that also shows the upstreams' retry budgets (the app is
// one); with another Backend, circuits show none.
type BudgetBackend interface {
	Budgets() map[string]*proxy.RetryBudget
}

// budget returns the upstream's retry budget in use, nil when it does not retry.
func (h *Handler) budget(upstream string) *proxy.BudgetView {
	bb, ok := h.b.(BudgetBackend)
	if !ok {
		return nil
	}
	b := bb.Budgets()[upstream]
	if b == nil {
		return nil
	}
	v := b.View(h.o.Now())
	return &v
}

// capped applies max_ejection_percent to a target's Ejected, as the proxy picks
// (config.Honoured): operators' ejections first, then the detectors' in config order up
// to config.MaxEjected; a target past them serves (PastCap).
func (h *Handler) capped(c *Circuit) {
	if !c.Ejected {
		return
	}
	u := h.b.Config().Upstreams[c.Upstream]
	if u == nil {
		return
	}
	bs := h.b.Breakers()
	targets := u.TargetURLs
	if tb, ok := h.b.(TargetBackend); ok {
		targets = tb.Targets(c.Upstream)
	}
	limit := 0
	if u.Outlier.Enabled {
		limit = config.MaxEjected(len(targets), u.Outlier.MaxEjectionPercent)
	}
	self := -1
	names := make([]string, len(targets))
	for j, tu := range targets {
		names[j] = config.TargetName(c.Upstream, tu)
		if names[j] == c.Name {
			self = j
		}
	}
	if self < 0 {
		return
	}
	out := func(j int) (bool, bool) {
		b := bs[names[j]]
		if b == nil {
			return false, false
		}
		return !b.Passing(), b.Mode() == breaker.ForcedOpen
	}
	if limit == 0 && !u.Outlier.Enabled || !config.Honoured(self, len(names), limit, out) {
		c.Ejected, c.PastCap = false, true
	}
}

func (h *Handler) list(w http.ResponseWriter, _ *http.Request) {
	st := h.b.Store().Status()
	names := h.names()
	out := CircuitList{Replica: h.b.ReplicaID(), Store: st, Circuits: make([]Circuit, 0, len(names))}
	for _, name := range names {
		if c, _, ok := h.circuit(name, st); ok {
			out.Circuits = append(out.Circuits, c)
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *Handler) show(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	st := h.b.Store().Status()
	c, b, ok := h.circuit(name, st)
	if !ok {
		unknownUpstream(w, name)
		return
	}
	out := CircuitDetail{Circuit: c, Replica: h.b.ReplicaID(), Store: st}
	if b != nil {
		out.Settings = NewSettings(b.Settings(), minReplicas(h.b.Config(), name))
		ctx, cancel := context.WithTimeout(r.Context(), h.o.StoreTimeout)
		defer cancel()
		shared, err := h.b.Store().Inspect(ctx, name)
		if err != nil {
			out.SharedStoreError = err.Error()
		}
		out.SharedStore = shared
	}
	writeJSON(w, http.StatusOK, out)
}

// control returns the handler of one operator command.
func (h *Handler) control(action string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		cmd := store.Command{Op: map[string]store.Op{
			"open": store.OpOpen, "close": store.OpClose, "reset": store.OpReset, "mode": store.OpMode,
		}[action]}
		st := h.b.Store().Status()
		_, b, ok := h.circuit(name, st)
		if !ok {
			unknownUpstream(w, name)
			return
		}
		if b == nil {
			writeJSON(w, http.StatusConflict, Error{Error: fmt.Sprintf("upstream %q has its breaker disabled (upstreams.%s.breaker.enabled)", name, name), Upstream: name})
			return
		}
		if action == "mode" {
			m, perr := parseMode(r)
			if perr != nil {
				writeJSON(w, http.StatusBadRequest, *perr)
				return
			}
			cmd.Mode = m
		}
		ctx, cancel := context.WithTimeout(r.Context(), h.o.StoreTimeout)
		defer cancel()
		err := h.b.Store().Control(ctx, name, cmd)
		var local *store.LocalOnlyError
		status, res := http.StatusOK, ControlResult{Action: action, Scope: "fleet"}
		if st.Driver == "memory" {
			res.Scope = "replica"
		}
		switch {
		case errors.Is(err, store.ErrUnknownCircuit):
			unknownUpstream(w, name)
			return
		case errors.As(err, &local):
			status, res.Scope, res.Warning, res.Detail = http.StatusAccepted, "replica", WarningLocalOnly, err.Error()
		case err != nil:
			h.log.Error("admin command failed", zap.String("upstream", name), zap.String("action", action), zap.Error(err))
			writeJSON(w, http.StatusBadGateway, Error{Error: fmt.Sprintf("%s %s: %v", action, name, err), Upstream: name})
			return
		}
		res.Circuit, _, _ = h.circuit(name, h.b.Store().Status())
		h.log.Info("admin command", zap.String("upstream", name), zap.String("action", action),
			zap.String("scope", res.Scope), zap.String("state", res.Circuit.State),
			zap.String("mode", res.Circuit.Mode))
		writeJSON(w, status, res)
	}
}

// parseMode reads the mode from ?mode= or from a JSON body {"mode": "..."}.
func parseMode(r *http.Request) (breaker.Mode, *Error) {
	raw, inQuery := r.URL.Query()["mode"]
	var s string
	if inQuery {
		s = raw[0]
	} else {
		var body struct {
			Mode *string `json:"mode"`
		}
		dec := json.NewDecoder(io.LimitReader(r.Body, 4<<10))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&body); err != nil {
			if errors.Is(err, io.EOF) {
				return 0, &Error{Error: `mode missing: send {"mode":"metrics_only"} or ?mode=metrics_only`, Field: "mode"}
			}
			return 0, &Error{Error: "invalid JSON body: " + err.Error(), Field: "body"}
		}
		if body.Mode == nil {
			return 0, &Error{Error: `mode missing: send {"mode":"metrics_only"} or ?mode=metrics_only`, Field: "mode"}
		}
		s = *body.Mode
	}
	m, err := breaker.ParseMode(s)
	if err != nil {
		return 0, &Error{Error: err.Error(), Field: "mode"}
	}
	return m, nil
}

func (h *Handler) flush(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), h.o.StoreTimeout)
	defer cancel()
	err := h.b.Store().Resync(ctx)
	res := FlushResult{Flushed: err == nil, Store: h.b.Store().Status()}
	if err != nil {
		res.Error = err.Error()
		writeJSON(w, http.StatusServiceUnavailable, res)
		return
	}
	h.log.Info("admin flush: local view dropped and re-read from the store")
	writeJSON(w, http.StatusOK, res)
}

func (h *Handler) reload(w http.ResponseWriter, _ *http.Request) {
	err := h.b.ReloadFile()
	cfg := h.b.Config()
	res := ReloadResult{Reloaded: err == nil, Path: cfg.Path}
	if err != nil {
		// The backend returns the failure without logging it: here it is answered and
		// logged, once.
		h.log.Error("config reload failed; the old config keeps serving", zap.String("trigger", "admin"), zap.Error(err))
		res.Error = err.Error()
		writeJSON(w, http.StatusInternalServerError, res)
		return
	}
	res.Upstreams = len(cfg.Upstreams)
	writeJSON(w, http.StatusOK, res)
}

func (h *Handler) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "ok\n")
}

func (h *Handler) readyz(w http.ResponseWriter, _ *http.Request) {
	st := h.b.Store().Status()
	res := Readiness{
		Ready: h.b.Ready(), Status: "serving", Replica: h.b.ReplicaID(), Store: st.Driver,
		Degraded: st.Degraded, Protection: "shared", StoreError: st.LastError,
		Upstreams: len(h.b.Config().Upstreams),
	}
	if st.Driver == "memory" || st.Degraded {
		res.Protection = "local"
	}
	status := http.StatusOK
	if !res.Ready {
		res.Status, status = "not serving (starting or shutting down)", http.StatusServiceUnavailable
	}
	writeJSON(w, status, res)
}

func (h *Handler) serveMetrics(w http.ResponseWriter, r *http.Request) {
	if h.metrics == nil {
		writeJSON(w, http.StatusNotFound, Error{Error: "metrics are not enabled"})
		return
	}
	h.metrics.ServeHTTP(w, r)
}

func unknownUpstream(w http.ResponseWriter, name string) {
	writeJSON(w, http.StatusNotFound, Error{Error: fmt.Sprintf("unknown upstream %q", name), Upstream: name})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		status, body = http.StatusInternalServerError, []byte(`{"error":"encoding the answer failed"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}
