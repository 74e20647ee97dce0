package proxy

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every poll; tests never sleep to synchronise.
const waitTimeout = 5 * time.Second

// eventually polls cond until it holds or waitTimeout passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// recv receives from ch or fails after waitTimeout.
func recv[T any](t *testing.T, what string, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitTimeout):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// fakeClock is a breaker.Clock the test moves by hand.
type fakeClock struct{ now atomic.Int64 }

func (c *fakeClock) Now() time.Duration  { return time.Duration(c.now.Load()) }
func (c *fakeClock) Add(d time.Duration) { c.now.Add(int64(d)) }

// recorder is a Recorder that remembers every call.
type recorder struct {
	mu    sync.Mutex
	calls []call
	// retries, denied and fallbacks: the Retry, RetryDenied and FallbackServed calls
	// (kept apart from calls, which partition the requests).
	retries   []RetryReason
	denied    int
	fallbacks []string
}

// call is one Recorder call: Request's result and status, or FailureBody for
// BodyBroken and WouldReject for WouldReject (status 0).
type call struct {
	upstream string
	result   Result
	status   int
}

func (r *recorder) Request(upstream string, res Result, status int, _ time.Duration) {
	r.add(call{upstream, res, status})
}

func (r *recorder) WouldReject(upstream string) { r.add(call{upstream, WouldReject, 0}) }

func (r *recorder) BodyBroken(upstream string, _ time.Duration) {
	r.add(call{upstream, FailureBody, 0})
}

func (r *recorder) Retry(_ string, reason RetryReason) {
	r.mu.Lock()
	r.retries = append(r.retries, reason)
	r.mu.Unlock()
}

func (r *recorder) RetryDenied(string) {
	r.mu.Lock()
	r.denied++
	r.mu.Unlock()
}

func (r *recorder) FallbackServed(upstream, fallback string) {
	r.mu.Lock()
	r.fallbacks = append(r.fallbacks, upstream+">"+fallback)
	r.mu.Unlock()
}

func (r *recorder) add(c call) {
	r.mu.Lock()
	r.calls = append(r.calls, c)
	r.mu.Unlock()
}

func (r *recorder) snapshot() []call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]call(nil), r.calls...)
}

// wait waits for n calls and returns them.
func (r *recorder) wait(t *testing.T, n int) []call {
	t.Helper()
	eventually(t, strconv.Itoa(n)+" recorder calls", func() bool { return len(r.snapshot()) >= n })
	return r.snapshot()
}

// defaultFailures is config's default failure table: 5xx except 501.
func defaultFailures() config.StatusSet {
	var tab config.StatusSet
	for c := 500; c < 600; c++ {
		tab.Set(c, true)
	}
	tab.Set(501, false)
	return tab
}

// upstreamCfg returns an upstream for targets with the derived fields filled, a breaker
// that trips after 3 consecutive failures and opens for 30 s, and generous timeouts.
func upstreamCfg(t *testing.T, targets ...string) *config.Upstream {
	t.Helper()
	u := &config.Upstream{
		Targets:               targets,
		DialTimeout:           2 * time.Second,
		ResponseHeaderTimeout: 10 * time.Second,
		MaxIdleConnsPerHost:   16,
		Breaker: config.Breaker{
			Enabled: true, Mode: "normal", ConsecutiveFailures: 3,
			OpenDuration: 30 * time.Second, BackoffMultiplier: 1,
			HalfOpenMaxRequests: 1, SuccessThreshold: 1,
		},
		Failure:          config.Failure{Statuses: []string{"5xx"}, TransportErrors: true, Timeouts: true},
		Fallback:         config.Fallback{Status: 503},
		UpgradeProtocols: []string{"websocket"},
	}
	u.Failure.FailureStatus = defaultFailures()
	for _, s := range targets {
		tu, err := url.Parse(s)
		if err != nil {
			t.Fatalf("parse target %q: %v", s, err)
		}
		u.TargetURLs = append(u.TargetURLs, tu)
	}
	return u
}

// targetUpstream returns config.DefaultUpstream with targets and the derived fields
// filled, and the breaker off: the defaults have one home, config.
func targetUpstream(targets ...*url.URL) *config.Upstream {
	u := config.DefaultUpstream()
	u.Breaker.Enabled = false
	for _, t := range targets {
		u.Targets = append(u.Targets, t.String())
		u.TargetURLs = append(u.TargetURLs, t)
	}
	u.Failure.FailureStatus = defaultFailures()
	return u
}

// fixture is a Proxy served by an httptest.Server, with breakers on a fake clock.
type fixture struct {
	cfg      *config.Config
	clock    *fakeClock
	breakers map[string]*breaker.Breaker
	rec      *recorder
	p        *Proxy
	srv      *httptest.Server
	client   *http.Client
}

func newFixture(t *testing.T, cfg *config.Config) *fixture {
	t.Helper()
	f := &fixture{cfg: cfg, clock: &fakeClock{}, rec: &recorder{}}
	f.breakers = f.makeBreakers(t, cfg)
	p, err := New(cfg, f.breakers, Options{Recorder: f.rec})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	f.p = p
	f.srv = httptest.NewServer(p)
	tr := &http.Transport{DisableCompression: true}
	f.client = &http.Client{
		Transport: tr,
		// Never follow redirects: tests look at the proxy's own answer.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		f.srv.Close()
		p.Close()
	})
	return f
}

func (f *fixture) makeBreakers(t *testing.T, cfg *config.Config) map[string]*breaker.Breaker {
	t.Helper()
	bs := map[string]*breaker.Breaker{}
	for name, u := range cfg.Upstreams {
		if u.Breaker.Enabled {
			bs[name] = breaker.New(name, u.Breaker.Settings(), breaker.Options{Clock: f.clock})
		}
		if u.Outlier.Enabled && len(u.TargetURLs) > 1 {
			for _, tu := range u.TargetURLs {
				tn := config.TargetName(name, tu)
				bs[tn] = breaker.New(tn, u.Outlier.Settings(), breaker.Options{Clock: f.clock, Rand: func() float64 { return 0.5 }})
			}
		}
	}
	return bs
}

// get sends a GET for path with the given Host header to the proxy.
func (f *fixture) get(t *testing.T, host, path string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, f.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	return f.do(t, req)
}

func (f *fixture) do(t *testing.T, req *http.Request) *http.Response {
	t.Helper()
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func readBody(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return string(b)
}

// echo is what the echo backend saw.
type echo struct {
	Backend    string      `json:"backend"`
	Method     string      `json:"method"`
	Host       string      `json:"host"`
	RequestURI string      `json:"request_uri"`
	Header     http.Header `json:"header"`
}

// echoBackend answers every request with the echo of what it received.
func echoBackend(t *testing.T, name string) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(echo{Backend: name, Method: r.Method, Host: r.Host,
			RequestURI: r.RequestURI, Header: r.Header})
	}))
	t.Cleanup(s.Close)
	return s
}

func decodeEcho(t *testing.T, resp *http.Response) echo {
	t.Helper()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status: got %d, want 200 (body %q)", resp.StatusCode, readBody(t, resp))
	}
	var e echo
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
		t.Fatalf("decode echo: %v", err)
	}
	return e
}

// statusBackend answers with the status in the path's last segment: /status/503.
func statusBackend(t *testing.T) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		code, err := strconv.Atoi(r.URL.Path[len("/status/"):])
		if err != nil {
			code = 200
		}
		w.WriteHeader(code)
	}))
	t.Cleanup(s.Close)
	return s
}

// refusedURL returns an http URL nothing listens on.
//
// The port is held by a TCP socket that is bound but never listens, until the test ends:
// every dial to it is refused, and no other process can take the port meanwhile (a port
// merely closed again can be, and was, by a parallel test's server).
func refusedURL(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))
}

// blockingBackend blocks each request until release is closed (or the request ends),
// signalling arrival on started. It answers 200 "released".
type blockingBackend struct {
	*httptest.Server
	started chan struct{}
	release chan struct{}
	once    sync.Once
}

// Release lets every blocked and future request answer.
func (b *blockingBackend) Release() { b.once.Do(func() { close(b.release) }) }

func newBlockingBackend(t *testing.T) *blockingBackend {
	t.Helper()
	b := &blockingBackend{started: make(chan struct{}, 16), release: make(chan struct{})}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.started <- struct{}{}
		select {
		case <-b.release:
			_, _ = io.WriteString(w, "released")
		case <-r.Context().Done():
		}
	}))
	// Cleanups run last-in first-out: release the handlers, then close the server.
	t.Cleanup(b.Close)
	t.Cleanup(b.Release)
	return b
}

// allowUpgrade returns a TestDoneExactlyOnce prepare step that lets clients switch the
// upstream to protos.
func allowUpgrade(protos ...string) func(*testing.T, *fixture, *config.Upstream) {
	return func(_ *testing.T, _ *fixture, u *config.Upstream) { u.UpgradeProtocols = protos }
}

func oneRoute(up string) []config.Route {
	return []config.Route{{PathPrefix: "/", Upstream: up}}
}

// single is a config with one upstream "svc" routed from every path.
func single(u *config.Upstream) *config.Config {
	return &config.Config{Upstreams: map[string]*config.Upstream{"svc": u}, Routes: oneRoute("svc")}
}

func wantStatus(t *testing.T, resp *http.Response, want int) {
	t.Helper()
	if resp.StatusCode != want {
		t.Fatalf("status: got %d, want %d", resp.StatusCode, want)
	}
}

func wantResults(t *testing.T, got []call, want ...Result) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("recorder calls: got %v, want %v", got, want)
	}
	for i := range want {
		if got[i].result != want[i] {
			t.Fatalf("recorder call %d: got %v, want %v (all: %v)", i, got[i].result, want[i], got)
		}
	}
}

func (c call) String() string { return c.upstream + ":" + c.result.String() }
