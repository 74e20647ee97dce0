package proxy

import (
	"context"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
)

// mixedBackend answers by the request's k query value: 0 ok, 1 a 503 with a body, 2 a
// reset before the response, 3 a 200 whose body breaks off, 4 a 503 whose body breaks
// off, 5 a 429, 6 an event stream, 7 a 504 with trailers.
func mixedBackend(t *testing.T, hits *atomic.Int64) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		k, _ := strconv.Atoi(r.URL.Query().Get("k"))
		if rand.IntN(3) == 0 { // the retry of a failure may succeed
			k = 0
		}
		broken := func(code int) {
			w.Header().Set("Content-Length", "1000")
			w.WriteHeader(code)
			_, _ = io.WriteString(w, "part")
			w.(http.Flusher).Flush()
			if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
				c.Close()
			}
		}
		switch k {
		case 0:
			_, _ = io.WriteString(w, "ok")
		case 1:
			w.WriteHeader(503)
			_, _ = io.WriteString(w, strings.Repeat("x", 3000))
		case 2:
			if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
				c.Close()
			}
		case 3:
			broken(200)
		case 4:
			broken(503)
		case 5:
			w.WriteHeader(429)
		case 6:
			w.Header().Set("Content-Type", "text/event-stream")
			for range 3 {
				_, _ = io.WriteString(w, "data: x\n\n")
				w.(http.Flusher).Flush()
			}
		case 7:
			w.Header().Set("Trailer", "X-T")
			w.WriteHeader(504)
			_, _ = io.WriteString(w, "t")
			w.Header().Set("X-T", "1")
		}
	}))
	t.Cleanup(s.Close)
	return s
}

// TestRetryStressAccounts: many concurrent requests of every kind (answers set aside and
// retried or served, resets, broken bodies, clients that go away at any point, reloads
// mid-flight) against three targets with least_requests and outlier detection, whose
// circuits a moving clock turns half-open: afterwards every target's in-flight count is
// back to 0, no trial slot is held, every request was recorded exactly once, and the
// access log's attempts add up to the requests plus the retries sent.
func TestRetryStressAccounts(t *testing.T) {
	var hits atomic.Int64
	b1, b2, b3 := mixedBackend(t, &hits), mixedBackend(t, &hits), mixedBackend(t, &hits)
	mk := func() *config.Upstream {
		u := retrying(t, b1.URL, b2.URL, b3.URL)
		u.Breaker.ConsecutiveFailures = 5
		u.Breaker.OpenDuration = time.Second
		u.Retries.Statuses = []int{429, 503, 504}
		u.Retries.Methods = append(u.Retries.Methods, "POST")
		u.Retries.BufferBody = 16
		u.Retries.Budget = config.RetryBudget{Percent: 50, MinPerSecond: 5, Window: 10 * time.Second}
		u.LoadBalancing = "least_requests"
		u.Outlier.Enabled = true
		u.Outlier.ConsecutiveGatewayErrors = 2
		u.Outlier.Consecutive5xx = 2
		u.Outlier.BaseEjectionTime = time.Second
		u.Outlier.MaxEjectionTime = time.Second
		u.Outlier.MaxEjectionPercent = 66
		return u
	}
	cfg := single(mk())
	f := &fixture{cfg: cfg, clock: &fakeClock{}, rec: &recorder{}}
	f.breakers = f.makeBreakers(t, cfg)
	al := &captureLog{}
	p, err := New(cfg, f.breakers, Options{Recorder: f.rec, AccessLog: al})
	if err != nil {
		t.Fatal(err)
	}
	var served, ended atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		defer ended.Add(1)
		p.ServeHTTP(w, r)
	}))
	tr := &http.Transport{MaxIdleConnsPerHost: 16}
	client := &http.Client{Transport: tr}
	t.Cleanup(func() { tr.CloseIdleConnections(); srv.Close(); p.Close() })

	var tmu sync.Mutex
	tables := []*table{p.table.Load()}
	const n, workers = 600, 8
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > n {
					return
				}
				switch {
				case i%50 == 0:
					tmu.Lock()
					if err := p.Update(single(mk()), f.breakers); err != nil {
						t.Error(err)
					}
					tables = append(tables, p.table.Load())
					tmu.Unlock()
				case i%20 == 0:
					f.clock.Add(1100 * time.Millisecond)
				}
				method, body := "GET", io.Reader(nil)
				switch rand.IntN(4) {
				case 0:
					method = "HEAD"
				case 1:
					method, body = "POST", strings.NewReader("small")
				case 2:
					method, body = "POST", strings.NewReader(strings.Repeat("big", 20))
				}
				ctx, cancel := context.WithCancel(context.Background())
				if rand.IntN(4) == 0 {
					time.AfterFunc(time.Duration(rand.IntN(2000))*time.Microsecond, cancel)
				}
				req, _ := http.NewRequestWithContext(ctx, method, srv.URL+"/x?k="+strconv.Itoa(rand.IntN(8)), body)
				if resp, err := client.Do(req); err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				cancel()
			}
		}()
	}
	wg.Wait()
	eventually(t, "every request ended", func() bool { return ended.Load() == served.Load() })
	k := 0
	for _, c := range f.rec.snapshot() {
		if c.result != FailureBody && c.result != WouldReject {
			k++
		}
	}
	if k != int(served.Load()) {
		t.Errorf("%d requests recorded, want %d", k, served.Load())
	}
	retries, _ := f.rec.retryCount()
	al.mu.Lock()
	attempts, rejected := 0, 0
	for _, a := range al.got {
		attempts += a.Attempts
		if a.Outcome == Rejected || a.Outcome == RejectedConcurrency {
			rejected++ // never sent: 0 attempts
		}
	}
	logged := len(al.got)
	al.mu.Unlock()
	if logged != int(served.Load()) {
		t.Errorf("%d requests logged, want %d", logged, served.Load())
	}
	if attempts != logged-rejected+retries {
		t.Errorf("access log: %d attempts for %d requests (%d rejected) and %d retries", attempts, logged, rejected, retries)
	}
	// (The backends may get more requests than attempts: net/http's transport sends an
	// idempotent request again, once, on a new connection when a reused one is closed
	// after the request was written and before any answer; see the report.)
	for _, tb := range tables {
		for _, tg := range tb.upstreams["svc"].targets {
			if v := tg.inflight.Load(); v != 0 {
				t.Errorf("target %s: %d in flight after every request ended", tg.name, v)
			}
		}
	}
	for name, b := range f.breakers {
		if sn := b.Snapshot(); sn.TrialsInFlight != 0 {
			t.Errorf("circuit %s: %d trials in flight after every request ended (%v)", name, sn.TrialsInFlight, sn.State)
		}
	}
	t.Logf("%d requests (%d rejected), %d retries, %d backend hits, %d attempts", logged, rejected, retries, hits.Load(), attempts)
	_ = breaker.Closed
}

// TestRetryClosedUnreadBodiesLeaveNoConnection: answers retried unread (big bodies,
// slow bodies, flushed streams) close their connections: once every request ended and
// the proxy closed its idle connections, the backends have none open.
func TestRetryClosedUnreadBodiesLeaveNoConnection(t *testing.T) {
	var open atomic.Int64
	var n atomic.Int64
	b := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1)%3 == 0 {
			_, _ = io.WriteString(w, "ok")
			return
		}
		w.WriteHeader(503)
		for range 64 {
			if _, err := io.WriteString(w, strings.Repeat("b", 4096)); err != nil {
				return
			}
			w.(http.Flusher).Flush()
		}
	}))
	b.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			open.Add(1)
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		}
	}
	b.Start()
	t.Cleanup(b.Close)
	f := newFixture(t, single(retrying(t, b.URL)))
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 25 {
				resp, err := f.client.Get(f.srv.URL + "/x")
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}()
	}
	wg.Wait()
	f.p.Close()
	eventually(t, "the backend's connections closed", func() bool { return open.Load() == 0 })
}
