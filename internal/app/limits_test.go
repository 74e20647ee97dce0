package app

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/config"
)

// limitsBackend is an upstream that answers with the number of body bytes it read, or
// 400 when reading the body failed; requests to /hold wait until release is closed, and
// requests to /late wait 1 s before reading their body.
type limitsBackend struct {
	*httptest.Server
	held     chan struct{}
	release  chan struct{}
	complete atomic.Int64 // requests whose body arrived whole
	broken   atomic.Int64 // requests whose body read failed
}

func newLimitsBackend(t *testing.T) *limitsBackend {
	b := &limitsBackend{held: make(chan struct{}, 64), release: make(chan struct{})}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/hold":
			b.held <- struct{}{}
			select {
			case <-b.release:
			case <-r.Context().Done():
			}
		case "/late":
			time.Sleep(time.Second)
		}
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			b.broken.Add(1)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if r.ContentLength < 0 || n == r.ContentLength {
			b.complete.Add(1)
		}
		fmt.Fprintf(w, "%d", n)
	}))
	t.Cleanup(b.Close)
	t.Cleanup(func() { close(b.release) }) // runs before Close
	return b
}

// startLimitsApp runs an App in process with the given server settings (YAML lines
// indented under "server:") and upstream settings, proxying every path to backend. It
// returns the app and its proxy address; the test's end stops it.
func startLimitsApp(t *testing.T, server, upstream, backend string) (*App, string) {
	t.Helper()
	yaml := fmt.Sprintf(`listen: "127.0.0.1:0"
admin: {listen: "127.0.0.1:0"}
server:
  shutdown_timeout: 2s
%s
upstreams:
  api:
    targets: [%q]
%s
routes:
  - {path_prefix: /, upstream: api}
`, server, backend, upstream)
	return runYAML(t, "limits.yaml", yaml)
}

// runYAML runs an App in process from the config yaml (named name in errors) and
// returns it with its proxy address once it is ready; the test's end stops it.
func runYAML(t *testing.T, name, yaml string) (*App, string) {
	t.Helper()
	return runYAMLWith(t, name, yaml, Options{})
}

// runYAMLWith is runYAML with the App's options.
func runYAMLWith(t *testing.T, name, yaml string, opts Options) (*App, string) {
	t.Helper()
	cfg, err := config.ParseWithEnv(name, []byte(yaml), nil)
	if err != nil {
		t.Fatalf("config:\n%s\n%v", yaml, err)
	}
	a, err := New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		if addr, _ := a.Addrs(); addr != "" && a.Ready() {
			return a, addr
		}
		if time.Now().After(deadline) {
			t.Fatal("the app did not listen within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}

// sendRequest writes a request head on c and reads the response to it.
func roundTrip(t *testing.T, c net.Conn, br *bufio.Reader, path string) *http.Response {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	_ = c.SetDeadline(time.Time{})
	return resp
}

// closedWithin reports whether the server closes c (EOF or reset) within d.
func closedWithin(c net.Conn, d time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(d))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

func gaugeValue(t *testing.T, a *App, name string) float64 {
	t.Helper()
	mfs, err := a.Metrics().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			m := mf.GetMetric()[0]
			if g := m.GetGauge(); g != nil {
				return g.GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestIdleConnectionsClosedAfterIdleTimeout: keep-alive connections left idle after one
// request each are closed by the server once server.idle_timeout has passed, and the
// open-connections gauge goes back to 0.
func TestIdleConnectionsClosedAfterIdleTimeout(t *testing.T) {
	backend := newLimitsBackend(t)
	a, addr := startLimitsApp(t, "  idle_timeout: 300ms", "", backend.URL)
	const n = 20
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if resp := roundTrip(t, c, bufio.NewReader(c), "/"); resp.StatusCode != http.StatusOK {
			t.Fatalf("conn %d: status %d", i, resp.StatusCode)
		}
		conns[i] = c
	}
	if got := gaugeValue(t, a, "fuseproxy_connections_open"); got != n {
		t.Errorf("fuseproxy_connections_open with %d idle connections: %g", n, got)
	}
	start := time.Now()
	for i, c := range conns {
		if !closedWithin(c, 3*time.Second) {
			t.Fatalf("idle conn %d still open %v after its request (idle_timeout 300ms)", i, time.Since(start))
		}
	}
	deadline := time.Now().Add(3 * time.Second)
	for gaugeValue(t, a, "fuseproxy_connections_open") != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("fuseproxy_connections_open = %g after the idle connections were closed, want 0", gaugeValue(t, a, "fuseproxy_connections_open"))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestConnectionsPastTheCapAreClosed: with server.max_connections 3 and three
// connections open (idle keep-alive ones), a fourth is closed at once without an answer
// and counted in fuseproxy_connections_rejected_total; once one of the three closes, a
// new connection is served.
func TestConnectionsPastTheCapAreClosed(t *testing.T) {
	backend := newLimitsBackend(t)
	a, addr := startLimitsApp(t, "  max_connections: 3", "", backend.URL)
	var open []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		roundTrip(t, c, bufio.NewReader(c), "/")
		open = append(open, c)
	}
	// The reset can even reach the client before its connect returns.
	if over, err := net.Dial("tcp", addr); err == nil {
		defer over.Close()
		_, _ = fmt.Fprintf(over, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		_ = over.SetReadDeadline(time.Now().Add(3 * time.Second))
		b, err := io.ReadAll(over)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatal("connection past the cap was left open (read timed out), want it closed at once")
		}
		if len(b) > 0 {
			t.Fatalf("connection past the cap: read %q, %v; want it closed without an answer", b, err)
		}
	} else if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("dial past the cap: %v, want success or a reset", err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for gaugeValue(t, a, "fuseproxy_connections_rejected_total") == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := gaugeValue(t, a, "fuseproxy_connections_rejected_total"); got != 1 {
		t.Errorf("fuseproxy_connections_rejected_total = %g, want 1", got)
	}
	if got := gaugeValue(t, a, "fuseproxy_connections_open"); got != 3 {
		t.Errorf("fuseproxy_connections_open = %g, want 3", got)
	}

	// The three are still served.
	roundTrip(t, open[0], bufio.NewReader(open[0]), "/")
	open[1].Close()
	deadline = time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if errors.Is(err, syscall.ECONNRESET) && time.Now().Before(deadline) {
			// still past the cap: the server has not yet seen open[1] go (the reset can
			// reach the client before its connect returns, as above)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		_, _ = fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		c.Close()
		if err == nil && resp.StatusCode == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection served after one of the three closed: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// upload sends a POST of size bytes to path on a new connection, writing chunk bytes
// every gap (all at once when gap is 0), and returns the status (0 when the connection
// was cut without an answer) and how long the exchange took.
func upload(t *testing.T, addr, path string, size, chunk int, gap time.Duration) (int, time.Duration) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	_ = c.SetDeadline(start.Add(20 * time.Second))
	if _, err := fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", path, size); err != nil {
		t.Fatal(err)
	}
	resp := make(chan int, 1)
	go func() {
		r, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			resp <- 0
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		resp <- r.StatusCode
	}()
	buf := []byte(strings.Repeat("x", chunk))
	for sent := 0; sent < size; sent += chunk {
		if _, err := c.Write(buf[:min(chunk, size-sent)]); err != nil {
			break
		}
		if gap > 0 {
			select {
			case code := <-resp:
				return code, time.Since(start) // answered (or cut) before the body was sent
			case <-time.After(gap):
			}
		}
	}
	code := <-resp
	return code, time.Since(start)
}

// TestSlowButMovingUploadSucceeds: an upload that keeps moving above body_min_rate
// succeeds however long it takes (1.5 s here against a body_read_timeout of 300 ms), and
// so does a big one whose upstream waits 1 s before reading it (time the upstream takes
// does not count against the client).
func TestSlowButMovingUploadSucceeds(t *testing.T) {
	backend := newLimitsBackend(t)
	_, addr := startLimitsApp(t, "  body_read_timeout: 300ms\n  body_min_rate: 1000", "", backend.URL)
	code, took := upload(t, addr, "/", 3000, 200, 100*time.Millisecond) // 2000 B/s for 1.5 s
	if code != http.StatusOK || backend.complete.Load() != 1 {
		t.Fatalf("slow-but-moving upload (2000 B/s for %v): status %d, complete bodies %d; want 200 and 1", took, code, backend.complete.Load())
	}
	t.Logf("slow-but-moving upload: 200 after %v", took)
	code, took = upload(t, addr, "/late", 16<<20, 64<<10, 0)
	if code != http.StatusOK || backend.complete.Load() != 2 {
		t.Fatalf("16 MiB upload to an upstream that reads it after 1 s: status %d after %v, complete bodies %d; want 200 and 2", code, took, backend.complete.Load())
	}
}

// TestStalledUploadIsCut: an upload that stops sending is cut about body_read_timeout
// after its last bytes; one that trickles (a byte every 50 ms: every read makes progress,
// at 20 B/s) is cut once it falls below body_min_rate after the grace of
// body_read_timeout. Neither reaches the upstream whole.
func TestStalledUploadIsCut(t *testing.T) {
	backend := newLimitsBackend(t)
	_, addr := startLimitsApp(t, "  body_read_timeout: 300ms\n  body_min_rate: 1000", "", backend.URL)
	for _, c := range []struct {
		name  string
		chunk int
		gap   time.Duration
		size  int
	}{
		{"stalled", 100, 10 * time.Second, 1000}, // 100 bytes, then nothing for 10 s
		{"trickling", 1, 50 * time.Millisecond, 1000},
	} {
		code, took := upload(t, addr, "/", c.size, c.chunk, c.gap)
		if code != http.StatusRequestTimeout || took > 3*time.Second {
			t.Errorf("%s upload: status %d after %v; want it cut with 408 within 3s", c.name, code, took)
		}
		t.Logf("%s upload: %d after %v", c.name, code, took)
	}
	if n := backend.complete.Load(); n != 0 {
		t.Errorf("%d cut uploads reached the upstream whole", n)
	}
}

// TestUnreadBodyOfARejectedRequestIsBounded: a request the proxy answers without reading
// its body (here the fallback of a forced-open circuit) from a client that stops sending
// it is answered and closed after body_read_timeout: the server reads the rest of an
// unread body before it answers, and used to wait for it without a deadline.
func TestUnreadBodyOfARejectedRequestIsBounded(t *testing.T) {
	backend := newLimitsBackend(t)
	_, addr := startLimitsApp(t, "  body_read_timeout: 300ms", "    breaker: {mode: forced_open}", backend.URL)
	code, took := upload(t, addr, "/", 1000, 10, 10*time.Second) // 10 bytes, then nothing
	if code != http.StatusServiceUnavailable || took > 3*time.Second {
		t.Fatalf("stalled body of a rejected request: status %d after %v; want the fallback 503 within 3s", code, took)
	}
	t.Logf("stalled body of a rejected request: %d after %v", code, took)
}

// TestBulkheadRejectionCounted: with max_concurrent_requests 1 and one request held by
// the upstream, the next gets the fallback marked X-Fuse-Limit and is counted as
// fuseproxy_requests_total{outcome="rejected_concurrency"}.
func TestBulkheadRejectionCounted(t *testing.T) {
	backend := newLimitsBackend(t)
	a, addr := startLimitsApp(t, "", "    max_concurrent_requests: 1", backend.URL)
	go func() {
		resp, err := http.Get("http://" + addr + "/hold")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	select {
	case <-backend.held:
	case <-time.After(5 * time.Second):
		t.Fatal("the first request did not reach the upstream")
	}
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Fuse-Limit") != "concurrency" {
		t.Fatalf("second request: %d %q %s, want 503 with X-Fuse-Limit: concurrency", resp.StatusCode, resp.Header.Get("X-Fuse-Limit"), body)
	}
	mfs, err := a.Metrics().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range mfs {
		if mf.GetName() != "fuseproxy_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["outcome"] == "rejected_concurrency" && labels["upstream"] == "api" {
				found = true
				if v := m.GetCounter().GetValue(); v != 1 {
					t.Errorf("rejected_concurrency = %g, want 1", v)
				}
			}
		}
	}
	if !found {
		t.Error(`no series fuseproxy_requests_total{outcome="rejected_concurrency",upstream="api"}`)
	}
}

// TestBodyLimitsCostNothingWithoutBody: the body deadline adds no allocation to a
// request without a body.
func TestBodyLimitsCostNothingWithoutBody(t *testing.T) {
	h := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	wrapped := bodyLimits{timeout: time.Second, minRate: 500}.wrap(h)
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	w := httptest.NewRecorder()
	if n := testing.AllocsPerRun(100, func() { wrapped.ServeHTTP(w, r) }); n != 0 {
		t.Errorf("%g allocations per request without a body, want 0", n)
	}
}
