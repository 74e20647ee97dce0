package e2e

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/internal/testutil/faultproxy"
	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// startFaultUpstream starts a flaky backend, a faultproxy in front of it and one replica
// (memory store) whose upstream is the faultproxy, tuned by tune.
func startFaultUpstream(t *testing.T, tune func(u *faultUpstream)) (*Backend, *faultproxy.Proxy, *Proxy) {
	t.Helper()
	b := startBackend(t)
	fp := faultproxy.Start(t, b.addr)
	cfg := newFaultConfig(t, "http://"+fp.Addr())
	tune(&cfg.Upstreams[0])
	p := startProxy(t, cfg.YAML(t))
	if r := p.Get("/warm"); !r.OK() {
		t.Fatalf("healthy request: got %v, want 200", r)
	}
	return b, fp, p
}

// openedOnConsecutiveFailures waits for p's first transition to open, checks that
// consecutive_failures opened it, then sends n requests that must be rejected without
// anything going towards the upstream; it returns their latencies and what went up.
func openedOnConsecutiveFailures(t *testing.T, p *Proxy, fp *faultproxy.Proxy, n int) ([]time.Duration, int64) {
	t.Helper()
	p.WaitTransitions(t, 2*time.Second, upstream, "open", 1)
	if tr := transitions(p, upstream); tr[0].Reason != "consecutive_failures" {
		t.Errorf("transition %v, want reason consecutive_failures", tr[0])
	}
	lat, sent := faultOpenRejections(t, p, fp, n)
	if sent != 0 {
		t.Errorf("%d bytes/connections went towards the upstream while the circuit was open, want none", sent)
	}
	return lat, sent
}

// faultOpenRejections sends n requests through p while its circuit is open and checks each
// is rejected at once; it returns their latencies and how many bytes the proxy sent
// towards the upstream meanwhile (through fp).
func faultOpenRejections(t *testing.T, p *Proxy, fp *faultproxy.Proxy, n int) ([]time.Duration, int64) {
	t.Helper()
	before := fp.Stats()
	var lat []time.Duration
	for i := range n {
		r := p.Get("/while-open")
		assertRejection(t, fmt.Sprintf("request %d while open", i+1), r, "open")
		lat = append(lat, r.At.Sub(r.Sent))
	}
	after := fp.Stats()
	return lat, after.Received - before.Received + (after.Accepted - before.Accepted)
}

// TestFaultUpstreamHangs stalls the upstream (a faultproxy holds every connection open
// and forwards nothing): each request gets 504 from the proxy at the upstream's timeout,
// the timeouts open the circuit (consecutive_failures), and from then on requests are
// rejected at once without a byte sent towards the upstream. When the upstream answers
// again, the circuit closes after its open period.
func TestFaultUpstreamHangs(t *testing.T) {
	t.Parallel()
	const (
		timeout   = 400 * time.Millisecond
		threshold = 3
		open      = 1500 * time.Millisecond
	)
	backend, fp, p := startFaultUpstream(t, func(u *faultUpstream) {
		u.Timeout, u.ConsecutiveFailures, u.OpenDuration = timeout, threshold, open
	})
	fp.Set(faultproxy.Faults{Stall: true})
	var took []time.Duration
	for i := range threshold {
		r := p.Get("/hang")
		d := r.At.Sub(r.Sent)
		took = append(took, d)
		if r.Err != nil || r.Status != http.StatusGatewayTimeout || r.Circuit != "" || !strings.Contains(r.Body, "gateway_timeout") {
			t.Fatalf("request %d to the hung upstream: got %v, want the proxy's 504 gateway_timeout", i+1, r)
		}
		if d < timeout || d > timeout+500*time.Millisecond {
			t.Errorf("request %d to the hung upstream answered after %v, want at the %v timeout", i+1, d, timeout)
		}
	}
	lat, sent := openedOnConsecutiveFailures(t, p, fp, 20)
	if p99 := percentile(lat, 99); p99 > 200*time.Millisecond {
		t.Errorf("rejections while open took p99 %v, want immediate (< 200ms, against a 400ms timeout)", p99)
	}
	if got := backend.Stats(t).Requests; got != 1 {
		t.Errorf("backend received %d requests, want only the warm-up (the stalled ones never arrived)", got)
	}

	// The upstream answers again: held connections are dropped, the circuit closes after
	// its open period.
	fp.Reset()
	fp.Set(faultproxy.Faults{})
	healed := time.Now()
	r := pollUntil(p, open+5*time.Second, 20*time.Millisecond, response.OK)
	if !r.OK() {
		t.Fatalf("after the upstream recovered: last %v, want 200 within the open period", r)
	}
	faultFigures{Sent: 1 + threshold + 20, ProxyFailed: 0, ReachedOpen: int(sent), Recover: r.At.Sub(healed),
		Extra: map[string]any{"gateway_timeouts_504": threshold, "timeout_ms": timeout.Milliseconds(),
			"time_to_504_ms": durationsMs(took), "rejection_p99_ms": ms(percentile(lat, 99)),
			"open_duration_ms": open.Milliseconds()}}.record(t, "upstream_hangs")
}

// TestFaultUpstreamResetsMidResponse has the upstream's connection reset after the first
// 20 bytes of each response (mid status line/headers): the client gets the proxy's 502,
// each counts as a failure and consecutive_failures opens the circuit. Then, separately,
// a reset after the headers and 5 body bytes: the client must see a broken response (a
// read error), never a short body passed off as complete, and each such response counts
// as a failure after all (its success at the headers is taken back), so
// consecutive_failures opens the circuit again: on one replica, and on a fleet of two
// sharing Redis.
func TestFaultUpstreamResetsMidResponse(t *testing.T) {
	t.Parallel()
	const threshold = 3
	t.Run("in_headers", func(t *testing.T) {
		backend, fp, p := startFaultUpstream(t, func(u *faultUpstream) {
			u.ConsecutiveFailures, u.OpenDuration = threshold, 10*time.Second
		})
		fp.Reset()
		fp.Set(faultproxy.Faults{ResponseLimit: 20, Cut: faultproxy.CutReset})
		before := backend.Stats(t).Requests
		for i := range threshold {
			r := p.Get("/cut")
			if r.Err != nil || r.Status != http.StatusBadGateway || r.Circuit != "" || !strings.Contains(r.Body, "bad_gateway") {
				t.Fatalf("request %d cut mid-response: got %v, want the proxy's 502 bad_gateway", i+1, r)
			}
		}
		if got := backend.Stats(t).Requests - before; got != threshold {
			t.Errorf("backend received %d of the cut requests, want %d (each answered, then cut on the way back)", got, threshold)
		}
		_, sent := openedOnConsecutiveFailures(t, p, fp, 10)
		faultFigures{Sent: 1 + threshold + 10, ReachedOpen: int(sent),
			Extra: map[string]any{"bad_gateway_502": threshold, "cut_after_bytes": 20}}.record(t, "upstream_resets_mid_response")
	})
	t.Run("in_body", func(t *testing.T) {
		backend, fp, p := startFaultUpstream(t, func(u *faultUpstream) {
			u.ConsecutiveFailures, u.OpenDuration = threshold, 10*time.Second
		})
		// One whole response's size tells where its headers end.
		down := fp.Stats().BytesDown
		r := p.Get("/size")
		headers := fp.Stats().BytesDown - down - int64(len(r.Body))
		fp.Reset() // new connections from here, each counted from its first byte
		fp.Set(faultproxy.Faults{ResponseLimit: headers + 5, Cut: faultproxy.CutReset})
		// The client may see the connection close before any byte of the response (the
		// proxy aborts it with the headers still buffered) and then retries the GET
		// itself, so count what reached the backend.
		before := backend.Stats(t).Requests
		broken, sent := 0, 0
		for sent < 2*threshold {
			r := p.Get("/size")
			sent++
			if r.Rejected() {
				break
			}
			if r.Err == nil {
				t.Fatalf("request %d cut 5 bytes into the body: got %v with no error, want the client to see the body broken", sent, r)
			}
			broken++
		}
		if got := backend.Stats(t).Requests - before; got != threshold {
			t.Errorf("backend answered %d requests before the circuit opened, want %d: each cut body is one failure", got, threshold)
		}
		_, reached := openedOnConsecutiveFailures(t, p, fp, 10)
		faultFigures{Sent: 2 + sent + 10, ProxyFailed: 0, ReachedOpen: int(reached), Extra: map[string]any{
			"cut_after_header_plus_bytes": 5, "client_saw_broken_body": broken,
			"opened_after_cut_bodies": threshold}}.record(t, "upstream_resets_in_body")
	})
	t.Run("in_body_fleet", func(t *testing.T) {
		// The upstream sends its headers and 5 of 100 body bytes, then resets.
		backend := startFaultBackend(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
			w.Header().Set("Content-Length", "100")
			_, _ = w.Write([]byte("hello"))
			rc := http.NewResponseController(w)
			_ = rc.Flush()
			if conn, _, err := rc.Hijack(); err == nil {
				_ = conn.(*net.TCPConn).SetLinger(0)
				conn.Close()
			}
		})
		srv := redistest.Start(t)
		base := newFaultConfig(t, backend.URL())
		base.Upstreams[0] = faultUpstream{Name: upstream, Target: backend.URL(), Timeout: 5 * time.Second,
			ConsecutiveFailures: threshold, OpenDuration: 10 * time.Second}
		var replicas []*Proxy
		for _, id := range []string{"r1", "r2"} {
			replicas = append(replicas, startProxy(t, base.fresh(t, id).withRedis(id, srv.URL()).YAML(t)))
		}
		rr := &roundRobin{proxies: replicas}
		broken, start, first := 0, time.Now(), backend.requests.Load()
		for time.Since(start) < 10*time.Second {
			r := rr.Next().Get("/cut")
			if r.Rejected() {
				break
			}
			if r.Err == nil {
				t.Fatalf("request cut 5 bytes into the body: got %v with no error, want the client to see the body broken", r)
			}
			broken++
			time.Sleep(10 * time.Millisecond) // let flushes interleave with the traffic
		}
		for _, p := range replicas {
			p.WaitTransitions(t, 2*time.Second, upstream, "open", 1)
			if tr := transitions(p, upstream); tr[0].Reason != "consecutive_failures" {
				t.Errorf("%s: transition %v, want reason consecutive_failures", p.ID, tr[0])
			}
		}
		before := backend.requests.Load()
		for _, p := range replicas {
			if r := p.Get("/while-open"); !r.Rejected() {
				t.Errorf("%s while open: got %v, want a rejection", p.ID, r)
			}
		}
		if reached := backend.requests.Load() - before; reached != 0 {
			t.Errorf("%d requests reached the upstream while open", reached)
		}
		cut := before - first
		t.Logf("the fleet opened after %d cut bodies (%d client requests, %v)", cut, broken, time.Since(start).Round(time.Millisecond))
		faultFigures{Sent: broken + 3, Extra: map[string]any{"replicas": 2, "client_saw_broken_body": broken,
			"cut_bodies_before_open": cut, "time_to_open_ms": ms(time.Since(start))}}.record(t, "upstream_resets_in_body_fleet")
	})
}

// TestFaultUpstreamSlowFraction has an upstream that is slow on every other request
// only (150ms against slow_call_duration 80ms, slow_call_rate 40): with two replicas on
// the redis store, the fleet's window trips the circuit with reason slow_call_rate, with
// no request failed meanwhile.
func TestFaultUpstreamSlowFraction(t *testing.T) {
	t.Parallel()
	var slow atomic.Int64
	backend := startFaultBackend(t, func(w http.ResponseWriter, r *http.Request, n int64) {
		if n%2 == 0 {
			slow.Add(1)
			time.Sleep(150 * time.Millisecond)
		}
		faultOK(w, r)
	})
	srv := redistest.Start(t)
	base := newFaultConfig(t, backend.URL())
	base.Upstreams[0] = faultUpstream{Name: upstream, Target: backend.URL(), Timeout: 5 * time.Second,
		SlowCallRate: 40, SlowCallDuration: 80 * time.Millisecond, MinimumRequests: 10,
		Window: 10 * time.Second, OpenDuration: 5 * time.Second}
	var replicas []*Proxy
	for _, id := range []string{"r1", "r2"} {
		replicas = append(replicas, startProxy(t, base.fresh(t, id).withRedis(id, srv.URL()).YAML(t)))
	}
	rr := &roundRobin{proxies: replicas}
	var st faultStats
	start := time.Now()
	for i := 0; i < 300 && time.Since(start) < 20*time.Second; i++ {
		r := rr.Next().Get("/maybe-slow")
		st.add(r)
		if r.Rejected() {
			break
		}
	}
	if st.Rejected == 0 {
		t.Fatalf("no rejection after %v: %v", time.Since(start), st)
	}
	opened := time.Since(start)
	for _, p := range replicas {
		p.WaitTransitions(t, 2*time.Second, upstream, "open", 1)
		if tr := transitions(p, upstream); tr[len(tr)-1].Reason != "slow_call_rate" {
			t.Errorf("%s: transition %v, want reason slow_call_rate", p.ID, tr[len(tr)-1])
		}
	}
	if st.OK != st.Sent-1 {
		t.Errorf("before the circuit opened: %v, want every request answered 200", st)
	}
	before := backend.requests.Load()
	for _, p := range replicas {
		for range 10 {
			if r := p.Get("/while-open"); !r.Rejected() {
				t.Errorf("%s while open: got %v, want a rejection", p.ID, r)
			}
		}
	}
	reached := backend.requests.Load() - before
	if reached != 0 {
		t.Errorf("%d requests reached the upstream while open", reached)
	}
	faultFigures{Sent: st.Sent + 20, ReachedOpen: int(reached), Extra: map[string]any{
		"slow_fraction": 0.5, "slow_call_rate": 40, "requests_before_open": st.Sent - 1,
		"slow_before_open": slow.Load(), "time_to_open_ms": ms(opened)}}.record(t, "upstream_slow_fraction")
}
