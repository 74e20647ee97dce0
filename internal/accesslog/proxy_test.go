package accesslog

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/proxy"
)

// memLog is a proxy.AccessLog keeping every Access.
type memLog struct {
	mu   sync.Mutex
	all  []proxy.Access
	skip bool
}

func (m *memLog) Sample() bool { return !m.skip }
func (m *memLog) Log(a *proxy.Access) {
	m.mu.Lock()
	m.all = append(m.all, *a)
	m.mu.Unlock()
}

func (m *memLog) take() []proxy.Access {
	m.mu.Lock()
	defer m.mu.Unlock()
	all := m.all
	m.all = nil
	return all
}

// newProxy builds a proxy for yaml (validated) with real breakers.
func newProxy(t testing.TB, yaml string, al proxy.AccessLog) (*proxy.Proxy, map[string]*breaker.Breaker) {
	t.Helper()
	cfg, err := config.ParseWithEnv("test.yaml", []byte(yaml), nil)
	if err != nil {
		t.Fatal(err)
	}
	bs := map[string]*breaker.Breaker{}
	for name, u := range cfg.Upstreams {
		if u.Breaker.Enabled {
			bs[name] = breaker.New(name, u.Breaker.Settings(), breaker.Options{})
		}
	}
	p, err := proxy.New(cfg, bs, proxy.Options{AccessLog: al})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p, bs
}

func backend(t testing.TB) *httptest.Server {
	b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/cut":
			w.Header().Set("Content-Length", "100")
			io.WriteString(w, "0123456789")
			w.(http.Flusher).Flush()
			if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
				conn.(*net.TCPConn).SetLinger(0)
				conn.Close()
			}
		case "/fail":
			http.Error(w, "no", http.StatusServiceUnavailable)
		default:
			io.WriteString(w, strings.Repeat("x", 64))
		}
	}))
	t.Cleanup(b.Close)
	return b
}

// serve sends one request through a real server around p (ReverseProxy detects a
// broken body only there) and returns the body bytes the client received (-1 if the
// response broke off before its headers arrived).
func serve(t *testing.T, srv *httptest.Server, method, path string) int {
	t.Helper()
	req, _ := http.NewRequest(method, srv.URL+path, nil)
	res, err := srv.Client().Do(req)
	if err != nil {
		if path == "/cut" {
			return -1
		}
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	n, _ := io.Copy(io.Discard, res.Body)
	return int(n)
}

// The proxy hands the access log every field of each request: the route, the target
// that answered, the status and body bytes the client got, the circuit's state, the
// attempts and the outcome, for proxied requests, failures and rejections alike.
func TestProxyReportsAccess(t *testing.T) {
	be := backend(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	bu, _ := url.Parse(be.URL)
	ml := &memLog{}
	p, _ := newProxy(t, `
upstreams:
  api:
    targets: ["`+be.URL+`"]
    breaker: {consecutive_failures: 2, open_duration: 1m}
  down:
    targets: ["http://`+closed+`"]
    breaker: {enabled: false}
routes:
  - {path_prefix: /down, upstream: down, strip_prefix: true}
  - {path_prefix: /, upstream: api}
`, ml)
	srv := httptest.NewServer(p)
	defer srv.Close()
	serve(t, srv, "GET", "/items?secret=1")
	serve(t, srv, "POST", "/down/a")
	serve(t, srv, "POST", "/cut") // POST: Go's client would retry a GET
	serve(t, srv, "GET", "/fail") // the second failure in a row: opens
	rej := serve(t, srv, "GET", "/items")
	var got []proxy.Access
	deadline := time.Now().Add(5 * time.Second) // the server's handler may still be returning
	for len(got) < 5 && time.Now().Before(deadline) {
		got = append(got, ml.take()...)
		time.Sleep(time.Millisecond)
	}
	if len(got) != 5 {
		t.Fatalf("%d accesses, want 5: %+v", len(got), got)
	}
	want := []proxy.Access{
		{Route: 1, Upstream: "api", Target: bu.Host, Method: "GET", Path: "/items", Status: 200, Bytes: 64,
			Circuit: breaker.Closed, Breaker: true, Attempts: 1, Outcome: proxy.Success},
		{Route: 0, Upstream: "down", Target: closed, Method: "POST", Path: "/down/a", Status: 502,
			Bytes: int64(len(`{"error":"bad_gateway","upstream":"down"}`)), Attempts: 1, Outcome: proxy.FailureTransport},
		{Route: 1, Upstream: "api", Target: bu.Host, Method: "POST", Path: "/cut", Status: 200, Bytes: 10,
			Circuit: breaker.Closed, Breaker: true, Attempts: 1, Outcome: proxy.Success, BodyBroken: true},
		{Route: 1, Upstream: "api", Target: bu.Host, Method: "GET", Path: "/fail", Status: 503, Bytes: 3,
			Circuit: breaker.Open, Breaker: true, Attempts: 1, Outcome: proxy.FailureStatus},
		{Route: 1, Upstream: "api", Method: "GET", Path: "/items", Status: 503, Bytes: int64(rej),
			Circuit: breaker.Open, Breaker: true, Attempts: 0, Outcome: proxy.Rejected},
	}
	for i := range want {
		g := got[i]
		if g.Duration <= 0 {
			t.Errorf("access %d: duration %v", i, g.Duration)
		}
		g.Duration = 0
		if g != want[i] {
			t.Errorf("access %d:\ngot  %+v\nwant %+v", i, g, want[i])
		}
	}
	// Not sampled: nothing.
	ml.skip = true
	serve(t, srv, "GET", "/items")
	if got := ml.take(); len(got) != 0 {
		t.Errorf("an unsampled request was logged: %+v", got)
	}
}

// BenchmarkAccessLog is BenchmarkHandler's request (proxy/bench_test.go) through a
// proxy with the access log off, or on and writing every request to a file; dropped/op
// is the share of lines dropped (0 unless the disk falls behind).
func BenchmarkAccessLog(b *testing.B) {
	be := backend(b)
	yaml := `
upstreams:
  api:
    targets: ["` + be.URL + `"]
routes:
  - {host: www.example.com, upstream: api}
  - {host: api.example.com, path_prefix: /v1/, methods: [GET, POST], upstream: api}
`
	for _, mode := range []string{"off", "on"} {
		b.Run(mode, func(b *testing.B) {
			l := New(Options{})
			defer l.Close()
			if mode == "on" {
				c := on(filepath.Join(b.TempDir(), "access.log")) // buffer_size: the default
				if err := l.Configure(c); err != nil {
					b.Fatal(err)
				}
			}
			p, _ := newProxy(b, yaml, l)
			req := httptest.NewRequest(http.MethodGet, "http://api.example.com/v1/items/42?x=1", http.NoBody)
			req.Header.Set("User-Agent", "bench")
			w := &discardWriter{h: make(http.Header)}
			b.ReportAllocs()
			for b.Loop() {
				clear(w.h)
				w.code = 0
				p.ServeHTTP(w, req)
				if w.code != http.StatusOK {
					b.Fatalf("status %d", w.code)
				}
			}
			b.StopTimer()
			l.Close()
			b.ReportMetric(float64(l.Dropped())/float64(b.N), "dropped/op")
		})
	}
}

type discardWriter struct {
	h    http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
