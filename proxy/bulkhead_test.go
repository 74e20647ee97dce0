package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
)

// inFlight starts n GETs through f that the blocking backend holds, and waits until the
// backend has them all; it returns a channel that gets each one's status.
func inFlight(t *testing.T, f *fixture, b *blockingBackend, n int) <-chan int {
	t.Helper()
	t.Cleanup(b.Release) // before the fixture's server closes, which waits for them
	statuses := make(chan int, n)
	for range n {
		go func() {
			resp, err := f.client.Get(f.srv.URL + "/")
			if err != nil {
				statuses <- 0
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			statuses <- resp.StatusCode
		}()
	}
	for range n {
		recv(t, "a request at the backend", b.started)
	}
	return statuses
}

// TestBulkheadRejectsPastTheCap: with max_concurrent_requests 2 and two requests held by
// the upstream, the third gets the fallback at once, marked X-Fuse-Limit: concurrency
// (not X-Fuse-Circuit), with Retry-After 1 and a JSON body; it is recorded as
// RejectedConcurrency, never reaches the upstream, and the breaker does not count it
// (with consecutive_failures 1, ten of them leave the circuit closed with no calls).
// Once the held requests finish, requests go through again.
func TestBulkheadRejectsPastTheCap(t *testing.T) {
	b := newBlockingBackend(t)
	u := upstreamCfg(t, b.URL)
	u.MaxConcurrentRequests = 2
	u.Breaker.ConsecutiveFailures = 1
	f := newFixture(t, single(u))

	held := inFlight(t, f, b, 2)
	for i := range 10 {
		resp := f.get(t, "", "/")
		wantStatus(t, resp, http.StatusServiceUnavailable)
		for _, h := range []struct{ name, want string }{
			{HeaderLimit, "concurrency"},
			{HeaderCircuit, ""},
			{"Retry-After", "1"},
			{"Content-Type", "application/json"},
		} {
			if got := resp.Header.Get(h.name); got != h.want {
				t.Errorf("rejection %d: %s: got %q, want %q", i, h.name, got, h.want)
			}
		}
		want := `{"error":"concurrency_limit","upstream":"svc","max_concurrent_requests":2}`
		if got := readBody(t, resp); got != want {
			t.Errorf("rejection %d: body %s, want %s", i, got, want)
		}
	}
	select {
	case <-b.started:
		t.Fatal("a rejected request reached the upstream")
	default:
	}
	calls := f.rec.snapshot()
	if len(calls) != 10 {
		t.Fatalf("recorder calls: %v, want 10 RejectedConcurrency", calls)
	}
	for _, c := range calls {
		if c.result != RejectedConcurrency {
			t.Fatalf("recorder calls: %v, want only RejectedConcurrency", calls)
		}
	}
	snap := f.breakers["svc"].Snapshot()
	if snap.State != breaker.Closed || snap.Counts.Failures != 0 || snap.Counts.Requests != 0 {
		t.Fatalf("breaker after 10 bulkhead rejections: %+v, want closed with no calls counted", snap)
	}

	b.Release()
	for range 2 {
		if s := recv(t, "a held request's status", held); s != http.StatusOK {
			t.Fatalf("held request: status %d, want 200", s)
		}
	}
	eventually(t, "the bulkhead to empty", func() bool { return f.p.table.Load().upstreams["svc"].bulkhead.inFlight.Load() == 0 })
	wantStatus(t, f.get(t, "", "/"), http.StatusOK)
}

// TestBulkheadConfiguredFallback: a configured fallback status, headers and body are
// used for bulkhead rejections too.
func TestBulkheadConfiguredFallback(t *testing.T) {
	b := newBlockingBackend(t)
	u := upstreamCfg(t, b.URL)
	u.MaxConcurrentRequests = 1
	u.Fallback = config.Fallback{Status: 429, Headers: map[string]string{"X-Team": "payments"}, Body: "busy"}
	f := newFixture(t, single(u))
	inFlight(t, f, b, 1)
	resp := f.get(t, "", "/")
	wantStatus(t, resp, 429)
	if got := resp.Header.Get("X-Team"); got != "payments" {
		t.Errorf("X-Team: got %q", got)
	}
	if got := resp.Header.Get(HeaderLimit); got != "concurrency" {
		t.Errorf("%s: got %q, want concurrency", HeaderLimit, got)
	}
	if got := readBody(t, resp); got != "busy" {
		t.Errorf("body %q, want busy", got)
	}
}

// TestBulkheadSurvivesReload: requests in flight when the routing table is replaced
// still count against the upstream's cap in the new table, and a cap changed by the
// reload applies at once.
func TestBulkheadSurvivesReload(t *testing.T) {
	b := newBlockingBackend(t)
	u := upstreamCfg(t, b.URL)
	u.MaxConcurrentRequests = 3
	f := newFixture(t, single(u))
	inFlight(t, f, b, 2)

	u2 := upstreamCfg(t, b.URL)
	u2.MaxConcurrentRequests = 2
	cfg := single(u2)
	if err := f.p.Update(cfg, f.breakers); err != nil {
		t.Fatal(err)
	}
	resp := f.get(t, "", "/")
	wantStatus(t, resp, http.StatusServiceUnavailable)
	if got := resp.Header.Get(HeaderLimit); got != "concurrency" {
		t.Fatalf("after the reload with 2 in flight and a cap of 2: %s %q, want concurrency", HeaderLimit, got)
	}
}

// TestBulkheadOffAndProxiedHeader: max_concurrent_requests 0 sets no cap; a proxied
// response never carries HeaderLimit, even when the upstream (another fuseproxy) sent it.
func TestBulkheadOffAndProxiedHeader(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(HeaderLimit, "concurrency")
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	t.Cleanup(backend.Close)
	u := upstreamCfg(t, backend.URL)
	u.MaxConcurrentRequests = 0
	u.Breaker.Enabled = false
	f := newFixture(t, single(u))
	resp := f.get(t, "", "/")
	wantStatus(t, resp, http.StatusServiceUnavailable)
	if v, ok := resp.Header[HeaderLimit]; ok {
		t.Errorf("%s on a proxied response: %q, want none", HeaderLimit, v)
	}
	wantResults(t, f.rec.snapshot(), FailureStatus)

	// No cap: many requests held at once all reach the upstream.
	hb := newBlockingBackend(t)
	hu := upstreamCfg(t, hb.URL)
	hu.MaxConcurrentRequests = 0
	hf := newFixture(t, single(hu))
	held := inFlight(t, hf, hb, 8)
	hb.Release()
	for range 8 {
		if s := recv(t, "a held request's status", held); s != http.StatusOK {
			t.Fatalf("status %d with no cap, want 200", s)
		}
	}
}
