package proxy

import (
	"net/http"
	"strconv"
	"sync/atomic"

	"github.com/fuseproxy/fuseproxy/config"
)

// HeaderLimit marks a request the proxy refused because one of its own limits was
// reached, not because of the circuit: its value names the limit. The only one today is
// "concurrency", the upstream's bulkhead (max_concurrent_requests). Proxied responses
// never carry it.
const HeaderLimit = "X-Fuse-Limit"

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

// limitResponse is an upstream's answer to a request its bulkhead refused, precomputed
// when the routing table is built: the fallback's status and headers, Retry-After: 1,
// HeaderLimit, and the configured body or
//
//	{"error":"concurrency_limit","upstream":"payments","max_concurrent_requests":1024}
type limitResponse struct {
	status int
	header http.Header // shared read-only slices
	body   []byte
}

var (
	limitConcurrency = readOnly("concurrency")
	retryAfterOne    = readOnly("1")
)

func newLimitResponse(name string, cu *config.Upstream, fb *fallback) limitResponse {
	lr := limitResponse{status: fb.status, header: make(http.Header, len(fb.header)+2), body: fb.body}
	for k, v := range fb.header {
		lr.header[k] = v
	}
	lr.header[headerRetryAfter] = retryAfterOne
	lr.header[HeaderLimit] = limitConcurrency
	if lr.body == nil {
		b := append([]byte(`{"error":"concurrency_limit","upstream":`), appendJSONString(nil, name)...)
		b = append(b, `,"max_concurrent_requests":`...)
		b = strconv.AppendInt(b, int64(cu.MaxConcurrentRequests), 10)
		lr.body = append(b, '}')
	}
	return lr
}

func (lr *limitResponse) write(w http.ResponseWriter) {
	h := w.Header()
	for k, v := range lr.header {
		h[k] = v
	}
	w.WriteHeader(lr.status)
	_, _ = w.Write(lr.body)
}

// setLimits puts the table's caps into its upstreams' bulkheads, once it is in effect.
func (t *table) setLimits() {
	for _, up := range t.upstreams {
		up.bulkhead.max.Store(up.maxConcurrent)
	}
}
