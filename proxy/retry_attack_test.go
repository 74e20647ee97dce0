package proxy

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
)

// TestRetryBackoffPastTheDeadline: a retry whose backoff outlasts the upstream's timeout
// is not made: the client gets the failure it would have got (the 503, at once, not a
// 504 at the deadline), and no other target's circuit is charged with an attempt that
// never reached it.
func TestRetryBackoffPastTheDeadline(t *testing.T) {
	a, b := newScriptBackend(t, 503), newScriptBackend(t, 200)
	u := retrying(t, a.URL, b.URL)
	u.Timeout = 300 * time.Millisecond
	u.Retries.BackoffBase, u.Retries.BackoffMax = time.Hour, time.Hour // a backoff under 300 ms: p < 1e-7
	u.Outlier = config.DefaultUpstream().Outlier
	u.Outlier.Enabled, u.Outlier.ConsecutiveGatewayErrors, u.Outlier.Consecutive5xx = true, 1, 1000
	f := newFixture(t, single(u))
	start := time.Now()
	resp := f.get(t, "", "/x") // round robin: a first
	readBody(t, resp)
	took := time.Since(start)
	if resp.StatusCode != 503 || resp.Header.Get("X-Attempt-Of") != a.URL {
		t.Errorf("status %d from %q after %v; want a's 503: a retry that cannot happen before the deadline is not made",
			resp.StatusCode, resp.Header.Get("X-Attempt-Of"), took)
	}
	if s := f.breakers[config.TargetName("svc", u.TargetURLs[1])].State(); s != breaker.Closed {
		t.Errorf("b's circuit %v: charged with an attempt that never reached it (b got %d requests)", s, b.hits.Load())
	}
	if r, _ := f.rec.retryCount(); r != 0 {
		t.Errorf("%d retries counted, want 0", r)
	}
}

// TestRetryClientGoneDuringBackoff: a client that goes away during the backoff ends the
// request at once (499, ignored): the next target is not charged, and no attempt is
// sent.
func TestRetryClientGoneDuringBackoff(t *testing.T) {
	a, b := newScriptBackend(t, 503), newScriptBackend(t, 200)
	u := retrying(t, a.URL, b.URL)
	u.Retries.BackoffBase, u.Retries.BackoffMax = time.Hour, time.Hour
	u.Outlier = config.DefaultUpstream().Outlier
	u.Outlier.Enabled, u.Outlier.ConsecutiveGatewayErrors, u.Outlier.Consecutive5xx = true, 1, 1000
	f := newFixture(t, single(u))
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, f.srv.URL+"/x", nil)
	go func() {
		for a.hits.Load() == 0 {
			time.Sleep(time.Millisecond)
		}
		time.Sleep(50 * time.Millisecond)
		cancel()
	}()
	if _, err := f.client.Do(req); err == nil {
		t.Fatal("request succeeded, want it cancelled")
	}
	calls := f.rec.wait(t, 1)
	if calls[0].result != Ignored || calls[0].status != StatusClientClosedRequest {
		t.Errorf("recorded %+v, want ignored 499", calls)
	}
	bt := f.breakers[config.TargetName("svc", u.TargetURLs[1])]
	if c := bt.Snapshot().Counts; c.Requests != 0 || bt.State() != breaker.Closed {
		t.Errorf("b's circuit counted %+v (%v) for an attempt never sent", c, bt.State())
	}
	if b.hits.Load() != 0 {
		t.Errorf("b got %d requests", b.hits.Load())
	}
	// Metrics: one attempt sent (the request's own), no retry: attempts = requests +
	// retries still counts what reached the targets.
	if r, _ := f.rec.retryCount(); r != 0 {
		t.Errorf("%d retries recorded, none sent", r)
	}
}

// TestRetryNeverAfterASwitch: once the upstream switched protocols the request was
// answered (the circuits were told, once); a protocol switch the client's writer cannot
// take (no Hijack: a wrapping handler, HTTP/2) is answered with the error, never sent
// again.
func TestRetryNeverAfterASwitch(t *testing.T) {
	var hits atomic.Int64
	ws := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		_ = brw.Flush()
	}))
	t.Cleanup(ws.Close)
	f := newFixture(t, single(retrying(t, ws.URL)))
	req := httptest.NewRequest(http.MethodGet, "http://h.example/ws", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	rec := httptest.NewRecorder() // no Hijack
	f.p.ServeHTTP(rec, req)
	if n := hits.Load(); n != 1 {
		t.Errorf("the upgrade request reached the upstream %d times, want once", n)
	}
	if r, _ := f.rec.retryCount(); r != 0 {
		t.Errorf("%d retries after a protocol switch", r)
	}
}

// TestRetryDiscardedBodyThatStalls: an attempt answered with a retried status whose body
// then stalls (an overloaded upstream: 503 headers, a few bytes, nothing more) must not
// hold the request. (It did: the discarded body was drained before the next attempt, for
// as long as the upstream kept the connection open.) An answer a retry follows is now set
// aside before its body is read (checkResponse): the next target answers at once.
func TestRetryDiscardedBodyThatStalls(t *testing.T) {
	release := make(chan struct{})
	stall := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(503)
		_, _ = io.WriteString(w, "overloaded")
		w.(http.Flusher).Flush()
		<-release
	}))
	t.Cleanup(func() { close(release); stall.Close() })
	good := newScriptBackend(t, 200)
	f := newFixture(t, single(retrying(t, stall.URL, good.URL)))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, f.srv.URL+"/x", nil)
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatalf("no answer within 2 s: %v (the retry waits for the discarded body)", err)
	}
	wantStatus(t, resp, 200)
	readBody(t, resp)
}
