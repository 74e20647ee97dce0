package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"go.uber.org/zap"

	"github.com/fuseproxy/fuseproxy/store"
)

// History is the answer to GET /circuits/{name}/history: the circuit's recorded fleet
// transitions, newest first (for an upstream with per-key circuits, its keys' too).
type History struct {
	Upstream    string             `json:"upstream"`
	Transitions []store.Transition `json:"transitions"`
}

// Limits of GET /circuits/{name}/history's limit parameter.
const (
	DefaultHistoryLimit = 100
	MaxHistoryLimit     = 10000
)

// history serves GET /circuits/{name}/history?limit=N.
func (h *Handler) history(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	limit := DefaultHistoryLimit
	if raw, ok := r.URL.Query()["limit"]; ok {
		n, err := strconv.Atoi(raw[0])
		if err != nil || n < 1 || n > MaxHistoryLimit {
			writeJSON(w, http.StatusBadRequest, Error{
				Error: fmt.Sprintf("limit must be a whole number from 1 to %d, got %q", MaxHistoryLimit, raw[0]),
				Field: "limit",
			})
			return
		}
		limit = n
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.o.StoreTimeout)
	defer cancel()
	ts, err := h.b.Store().History(ctx, name, limit)
	switch {
	case errors.Is(err, store.ErrUnknownCircuit):
		unknownUpstream(w, name)
		return
	case errors.Is(err, store.ErrHistoryDisabled):
		writeJSON(w, http.StatusNotFound, Error{Error: err.Error(), Upstream: name})
		return
	case err != nil:
		h.log.Error("reading a circuit's history failed", zap.String("upstream", name), zap.Error(err))
		writeJSON(w, http.StatusBadGateway, Error{Error: fmt.Sprintf("history of %s: %v", name, err), Upstream: name})
		return
	}
	if ts == nil {
		ts = []store.Transition{}
	}
	writeJSON(w, http.StatusOK, History{Upstream: name, Transitions: ts})
}
