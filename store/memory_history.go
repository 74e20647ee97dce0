package store

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// memHistory is the memory store's transition history: a bounded ring per upstream (a
// per-key circuit's transitions go to its upstream's ring, as with Redis), appended by
// the breakers' transition callback (Memory.OnTransition).
type memHistory struct {
	mu    sync.Mutex
	o     HistoryOptions
	now   func() time.Time
	rings map[string]*ring
	kups  map[string]bool // upstreams with per-key circuits (KeyUpstreams)
}

// ring holds the last len(buf) transitions; next is where the next one goes.
type ring struct {
	buf  []Transition
	next int
	n    int
}

func (r *ring) add(t Transition) {
	r.buf[r.next] = t
	r.next = (r.next + 1) % len(r.buf)
	r.n = min(r.n+1, len(r.buf))
}

// newest returns the ring's transitions newest first, at most limit (<= 0: all), none
// before since.
func (r *ring) newest(limit int, since time.Time) []Transition {
	out := []Transition{}
	for i := 1; i <= r.n && (limit <= 0 || len(out) < limit); i++ {
		t := r.buf[(r.next-i+len(r.buf))%len(r.buf)]
		if t.At.Before(since) {
			break
		}
		out = append(out, t)
	}
	return out
}

// WithHistory makes the store keep each circuit's transitions as o bounds them; now is
// the clock they are stamped with (nil: time.Now). Call it before the breakers run.
// Without it the memory store keeps no history (History: ErrHistoryDisabled).
func (m *Memory) WithHistory(o HistoryOptions, now func() time.Time) *Memory {
	if now == nil {
		now = time.Now
	}
	m.hist.mu.Lock()
	m.hist.o, m.hist.now, m.hist.rings = o, now, map[string]*ring{}
	m.hist.mu.Unlock()
	return m
}

// OnTransition implements breaker.Observer: the memory store is the fleet (one replica),
// so each of its breakers' transitions is a fleet transition, recorded here once. It
// never blocks for long: an append under a mutex.
func (m *Memory) OnTransition(tr breaker.Transition) {
	h := &m.hist
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.o.Enabled() {
		return
	}
	upstream, key, _ := strings.Cut(tr.Upstream, "#")
	r := h.rings[upstream]
	if r == nil {
		r = &ring{buf: make([]Transition, h.o.MaxEntries)}
		h.rings[upstream] = r
	}
	t := Transition{
		Upstream: upstream, Key: key, From: stateName(tr.From), To: stateName(tr.To), Reason: tr.Reason,
		Requests: int64(tr.Counts.Requests), Failures: int64(tr.Counts.Failures), Slow: int64(tr.Counts.Slow),
		Consecutive: int64(tr.Consecutive), Generation: tr.Generation, Replica: m.replica, At: h.now().UTC(),
	}
	if tr.Reason == breaker.ReasonOpenTimeout {
		t.Replica = "" // the clock ended the open period, as the shared stores record it
	}
	r.add(t)
}

// stateName is a state as the history names it (closed, open, half_open).
func stateName(s breaker.State) string {
	switch s {
	case breaker.Open:
		return "open"
	case breaker.HalfOpen:
		return "half_open"
	default:
		return "closed"
	}
}

// History implements Store.
func (m *Memory) History(_ context.Context, name string, limit int) ([]Transition, error) {
	_, isCircuit := m.circuit(name) // before h.mu: no lock is taken under it
	h := &m.hist
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.o.Enabled() {
		return nil, ErrHistoryDisabled
	}
	if !isCircuit && !h.kups[name] {
		return nil, unknown(name)
	}
	r := h.rings[name]
	if r == nil {
		return []Transition{}, nil
	}
	return r.newest(limit, h.now().Add(-h.o.Retention)), nil
}

// forget drops the rings of upstreams that are no longer circuits (Attach).
func (h *memHistory) forget(keep map[string]Circuit) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for name := range h.rings {
		if _, ok := keep[name]; !ok && !h.kups[name] {
			delete(h.rings, name)
		}
	}
}
