package proxy

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
)

// discardWriter is a reusable http.ResponseWriter that drops the body.
type discardWriter struct {
	h    http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }

func (w *discardWriter) reset() {
	clear(w.h)
	w.code = 0
}

type nopRecorder struct{}

func (nopRecorder) Request(string, Result, int, time.Duration) {}
func (nopRecorder) WouldReject(string)                         {}
func (nopRecorder) BodyBroken(string, time.Duration)           {}
func (nopRecorder) Retry(string, RetryReason)                  {}
func (nopRecorder) RetryDenied(string)                         {}
func (nopRecorder) FallbackServed(string, string)              {}

// BenchmarkHandler compares a request through the Proxy (routing, breaker, outcome
// classification, Recorder) with the same request through a bare httputil.ReverseProxy
// doing the same rewrite over an identical transport. Both are driven in-process; the
// backend is a real httptest server answering 64 bytes.
func BenchmarkHandler(b *testing.B) {
	body := strings.Repeat("x", 64)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write([]byte(body))
	}))
	defer backend.Close()
	target, _ := url.Parse(backend.URL)

	u := targetUpstream(target) // the defaults: the bulkhead is on (1024)
	u.Breaker.Enabled = true
	cfg := &config.Config{
		Upstreams: map[string]*config.Upstream{"api": u},
		Routes: []config.Route{
			{Host: "www.example.com", PathPrefix: "/", Upstream: "api"},
			{Host: "api.example.com", PathPrefix: "/v1/", Methods: []string{"GET", "POST"}, Upstream: "api"},
		},
	}
	br := breaker.New("api", breaker.Settings{ConsecutiveFailures: 5, FailureRate: 50, MinimumRequests: 20}, breaker.Options{})
	fuse, err := New(cfg, map[string]*breaker.Breaker{"api": br}, Options{Recorder: nopRecorder{}})
	if err != nil {
		b.Fatal(err)
	}
	defer fuse.Close()

	bareTransport, err := newTransport(newTransportKey(u, []*url.URL{target}), []*url.URL{target}, "api", nil)
	if err != nil {
		b.Fatal(err)
	}
	defer bareTransport.CloseIdleConnections()
	bareRewrite := func(pr *httputil.ProxyRequest) {
		pr.SetURL(target)
		if xff := pr.In.Header["X-Forwarded-For"]; len(xff) > 0 {
			pr.Out.Header["X-Forwarded-For"] = xff
		}
		pr.SetXForwarded()
	}
	bare := &httputil.ReverseProxy{Rewrite: bareRewrite, Transport: bareTransport}
	barePool := &httputil.ReverseProxy{Rewrite: bareRewrite, Transport: bareTransport, BufferPool: &bufferPool{}}

	for _, h := range []struct {
		name    string
		handler http.Handler
	}{
		{"fuseproxy", fuse},
		{"bare-httputil", bare},
		{"bare-httputil+bufferpool", barePool},
	} {
		b.Run(h.name, func(b *testing.B) {
			req := httptest.NewRequest(http.MethodGet, "http://api.example.com/v1/items/42?x=1", http.NoBody)
			req.Header.Set("User-Agent", "bench")
			w := &discardWriter{h: make(http.Header)}
			b.ReportAllocs()
			for b.Loop() {
				w.reset()
				h.handler.ServeHTTP(w, req)
				if w.code != http.StatusOK {
					b.Fatalf("status: got %d, want 200", w.code)
				}
			}
		})
	}
}

// BenchmarkRoute measures routing alone (path check, host normalisation, lookup) with
// one route per distinct host.
func BenchmarkRoute(b *testing.B) {
	for _, n := range []int{10, 10_000} {
		for _, wildcard := range []bool{false, true} {
			name := strconv.Itoa(n)
			if wildcard {
				name += "-wildcard"
			}
			b.Run(name, func(b *testing.B) {
				cfg := &config.Config{Upstreams: map[string]*config.Upstream{}}
				for i := range n {
					up := fmt.Sprintf("svc-%d", i)
					tu, _ := url.Parse("http://10.0.0.1:8080")
					cfg.Upstreams[up] = targetUpstream(tu)
					host := up + ".example.com"
					if wildcard {
						host = "*." + host
					}
					cfg.Routes = append(cfg.Routes,
						config.Route{Host: host, PathPrefix: "/admin/", Methods: []string{"POST"}, Upstream: up},
						config.Route{Host: host, PathPrefix: "/", Upstream: up})
				}
				cfg.Routes = append(cfg.Routes, config.Route{PathPrefix: "/", Upstream: "svc-0"})
				p, err := New(cfg, nil, Options{})
				if err != nil {
					b.Fatal(err)
				}
				tab := p.table.Load()
				host := fmt.Sprintf("svc-%d.example.com:443", n/2)
				if wildcard {
					host = "a.b." + host
				}
				u, _ := url.ParseRequestURI("/v1/items/42")
				want := fmt.Sprintf("svc-%d", n/2)
				b.ReportAllocs()
				for b.Loop() {
					path, _ := routingPath(u)
					rt := tab.routes.lookup(normalizeHost(host), path, http.MethodGet)
					if rt == nil || rt.up.name != want {
						b.Fatalf("routed to %v, want %s", rt, want)
					}
				}
			})
		}
	}
}

// BenchmarkEjection compares one upstream of three targets with outlier detection off
// and on (each target's circuit admits the request and counts its outcome), round robin
// and least_requests: the cost of per-target accounting on the request path.
func BenchmarkEjection(b *testing.B) {
	body := strings.Repeat("x", 64)
	var targets []*url.URL
	for range 3 {
		backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			_, _ = w.Write([]byte(body))
		}))
		defer backend.Close()
		t, _ := url.Parse(backend.URL)
		targets = append(targets, t)
	}
	for _, c := range []struct {
		name     string
		ejection bool
		policy   string
	}{
		{"off", false, "round_robin"},
		{"on", true, "round_robin"},
		{"off-least-requests", false, "least_requests"},
		{"on-least-requests", true, "least_requests"},
	} {
		b.Run(c.name, func(b *testing.B) {
			u := targetUpstream(targets...)
			u.Breaker.Enabled = true
			u.Outlier.Enabled = c.ejection
			u.LoadBalancing = c.policy
			cfg := &config.Config{Upstreams: map[string]*config.Upstream{"api": u},
				Routes: []config.Route{{PathPrefix: "/", Upstream: "api"}}}
			bs := map[string]*breaker.Breaker{"api": breaker.New("api", u.Breaker.Settings(), breaker.Options{})}
			if c.ejection {
				for _, t := range targets {
					name := config.TargetName("api", t)
					bs[name] = breaker.New(name, u.Outlier.Settings(), breaker.Options{})
				}
			}
			p, err := New(cfg, bs, Options{Recorder: nopRecorder{}})
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			req := httptest.NewRequest(http.MethodGet, "http://api.example.com/v1/items/42?x=1", http.NoBody)
			w := &discardWriter{h: make(http.Header)}
			b.ReportAllocs()
			for b.Loop() {
				w.reset()
				p.ServeHTTP(w, req)
				if w.code != http.StatusOK {
					b.Fatalf("status: got %d, want 200", w.code)
				}
			}
		})
	}
}

// BenchmarkTargetAccounting isolates what outlier detection adds to a request: picking a
// target through its circuit (Allow), and reporting the outcome to it (Done), against
// the plain round-robin pick. The proxy's whole request costs about 80 µs of CPU on the
// build machine (docs/BENCHMARKS.md), so the difference, in ns, is the share.
func BenchmarkTargetAccounting(b *testing.B) {
	for _, c := range []struct {
		name     string
		ejection bool
		policy   string
	}{
		{"off", false, "round_robin"},
		{"on", true, "round_robin"},
		{"off-least-requests", false, "least_requests"},
		{"on-least-requests", true, "least_requests"},
	} {
		b.Run(c.name, func(b *testing.B) {
			var targets []*url.URL
			for i := range 3 {
				targets = append(targets, &url.URL{Scheme: "http", Host: "10.0.0." + strconv.Itoa(i+1) + ":8080"})
			}
			u := targetUpstream(targets...)
			u.Outlier.Enabled = c.ejection
			u.LoadBalancing = c.policy
			bs := map[string]*breaker.Breaker{}
			for _, t := range targets {
				name := config.TargetName("api", t)
				bs[name] = breaker.New(name, u.Outlier.Settings(), breaker.Options{})
			}
			up, err := newUpstream("api", u, bs, newFallbacks())
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				t, tk, tracked := up.pick()
				if up.leastRequests {
					t.inflight.Add(1)
				}
				if tracked {
					t.gate.Done(tk, targetOutcome(200), time.Millisecond)
				}
				if up.leastRequests {
					t.inflight.Add(-1)
				}
			}
		})
	}
}

// BenchmarkRetries is the cost of retries configured but not happening: the same
// request through the same Proxy setup with retries off and on (3 attempts, the default
// budget), every answer a 200, so no attempt is retried. The difference is the budget's
// deposit, the policy's method check and the attempt's deferred recover.
func BenchmarkRetries(b *testing.B) {
	body := strings.Repeat("x", 64)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write([]byte(body))
	}))
	defer backend.Close()
	target, _ := url.Parse(backend.URL)
	for _, on := range []bool{false, true} {
		name := "off"
		u := targetUpstream(target)
		u.Breaker.Enabled = true
		if on {
			name = "on"
			u.Retries.Attempts = 3
		}
		cfg := &config.Config{
			Upstreams: map[string]*config.Upstream{"api": u},
			Routes:    []config.Route{{PathPrefix: "/", Upstream: "api"}},
		}
		br := breaker.New("api", breaker.Settings{ConsecutiveFailures: 5, FailureRate: 50, MinimumRequests: 20}, breaker.Options{})
		fuse, err := New(cfg, map[string]*breaker.Breaker{"api": br}, Options{Recorder: nopRecorder{}})
		if err != nil {
			b.Fatal(err)
		}
		b.Run(name, func(b *testing.B) {
			req := httptest.NewRequest(http.MethodGet, "http://api.example.com/v1/items/42?x=1", http.NoBody)
			w := &discardWriter{h: make(http.Header)}
			b.ReportAllocs()
			for b.Loop() {
				w.reset()
				fuse.ServeHTTP(w, req)
				if w.code != http.StatusOK {
					b.Fatalf("status: got %d, want 200", w.code)
				}
			}
		})
		fuse.Close()
	}
}

// BenchmarkRetryBookkeeping isolates what retries configured but not happening add to a
// request: the budget's deposit and the policy's method check (the attempt's deferred
// recover is an open-coded defer).
func BenchmarkRetryBookkeeping(b *testing.B) {
	u := targetUpstream(&url.URL{Scheme: "http", Host: "127.0.0.1:1"})
	u.Retries.Attempts = 3
	up := &upstream{retry: newRetryPolicy(&u.Retries, NewRetryBudget(u.Retries.Budget, false))}
	req := httptest.NewRequest(http.MethodGet, "http://api.example.com/v1/items/42", http.NoBody)
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			up.retry.budget.deposit(now)
			if up.retryFor(req) == nil {
				b.Fatal("GET not retried")
			}
		}
	})
}
