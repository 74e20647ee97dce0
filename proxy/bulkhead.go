package proxy

import (
	"sync/atomic"
)

// bulkhead caps the requests in flight to one upstream: a request past the cap gets the
// fallback at once instead of a goroutine, a client connection and an upstream
// connection for as long as a slow upstream takes. It is one atomic counter (no lock on
// the request path) and is carried over from one routing table to the next for the same
// upstream name, so requests still in flight on the old table count against the new
// one's cap.
type bulkhead struct {
	max      atomic.Int64 // 0: no cap
	inFlight atomic.Int64
}

// acquire takes a slot; it reports false, taking nothing, when the cap is reached.
// Requests are counted even without a cap, so that a cap a reload sets sees the requests
// admitted before it.
func (b *bulkhead) acquire() bool {
	n := b.inFlight.Add(1)
	if limit := b.max.Load(); limit > 0 && n > limit {
		b.inFlight.Add(-1)
		return false
	}
	return true
}

// release gives back a slot acquire took.
func (b *bulkhead) release() { b.inFlight.Add(-1) }

// setLimits puts the table's caps into its upstreams' bulkheads, once it is in effect.
func (t *table) setLimits() {
	for _, up := range t.upstreams {
		up.bulkhead.max.Store(up.maxConcurrent)
	}
}
