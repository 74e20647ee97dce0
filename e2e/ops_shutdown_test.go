package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// TestOpsShutdownDrainsInFlight: SIGTERM while N slow requests are in flight. /readyz
// turns 503 at once and new connections are refused while they drain; every one of them
// completes with 200; the process exits 0; and the counts of the last moments, which only
// the final flush can have delivered (flush_interval 10s), are in Redis.
func TestOpsShutdownDrainsInFlight(t *testing.T) {
	const (
		inFlight = 20                      // slow requests in flight at SIGTERM
		failures = 7                       // failing requests just before (below the threshold)
		latency  = 1500 * time.Millisecond // the backend's answer time for the slow ones
	)
	backend := startBackend(t)
	rds := redistest.Start(t)
	cfg := newOpsConfig(t, []opsUpstream{
		{Name: upstream, Target: backend.URL(), ConsecutiveFailures: 1000},
	}, []opsRoute{{"/", upstream}})
	cfg.Store, cfg.RedisURL, cfg.ReplicaID = "redis", rds.URL(), "drain"
	cfg.FlushInterval, cfg.ShutdownTimeout = 10*time.Second, 10*time.Second
	p := startProxy(t, cfg.YAML(t))
	adm := newAdminAPI(t, cfg.AdminListen)
	if r := adm.Get("/readyz"); r.Err != nil || r.Status != http.StatusOK {
		t.Fatalf("/readyz while serving: %v, want 200", r)
	}
	key := cfg.Prefix + ":{" + upstream + "}:state"
	hash := func() map[string]string {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		h, err := rds.Client().HGetAll(ctx, key).Result()
		if err != nil {
			t.Fatalf("HGETALL %s: %v", key, err)
		}
		return h
	}

	// The store's start-up exchanges (a resync at start and one on the loop's first turn)
	// send whatever was counted; let them finish, so that the next is the final flush.
	waitRedisQuiet(t, rds, 300*time.Millisecond)

	backend.Set(t, "fail=on")
	for i := range failures {
		if r := p.Get("/fail"); r.Err != nil || r.Status != http.StatusServiceUnavailable || r.Circuit != "" {
			t.Fatalf("failing request %d: got %v, want the backend's own 503", i+1, r)
		}
	}
	backend.Set(t, "fail=off&latency="+latency.String())
	if req, _, _ := sumBuckets(t, hash()); req != 0 {
		t.Fatalf("Redis already holds %d requests before shutdown: a periodic flush ran, so the test cannot show the final one", req)
	}

	results := make([]response, inFlight)
	var wg sync.WaitGroup
	for i := range inFlight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = p.Get(fmt.Sprintf("/slow/%d", i))
		}()
	}
	if !waitFor(10*time.Second, 2*time.Millisecond, func() bool { return backend.Stats(t).InFlight == inFlight }) {
		t.Fatalf("backend has %d requests in flight, want %d", backend.Stats(t).InFlight, inFlight)
	}

	sigAt := time.Now()
	p.Signal(syscall.SIGTERM)
	var notReadyAt, refusedAt time.Time
	waitFor(10*time.Second, 2*time.Millisecond, func() bool {
		if notReadyAt.IsZero() {
			if r := adm.Get("/readyz"); r.Err == nil && r.Status == http.StatusServiceUnavailable {
				notReadyAt = time.Now()
			}
		}
		if refusedAt.IsZero() && refused(cfg.Listen) {
			refusedAt = time.Now()
		}
		return !notReadyAt.IsZero() && !refusedAt.IsZero() || p.Exited()
	})
	wg.Wait()
	code, ok := p.Wait(cfg.ShutdownTimeout + 10*time.Second)
	exitAfter := time.Since(sigAt)
	if !ok {
		t.Fatalf("still running %v after SIGTERM", exitAfter)
	}

	firstDone := results[0].At
	var lat []time.Duration
	for _, r := range results {
		if r.At.Before(firstDone) {
			firstDone = r.At
		}
		lat = append(lat, r.At.Sub(r.Sent))
	}
	if c := count(results); c.OK != inFlight {
		t.Errorf("in-flight requests at SIGTERM: %v; want all %d to complete with 200", c, inFlight)
	}
	switch {
	case notReadyAt.IsZero():
		t.Errorf("/readyz never answered 503 between SIGTERM and exit")
	case !notReadyAt.Before(firstDone):
		t.Errorf("/readyz turned 503 %v after SIGTERM, after the first in-flight request completed (%v): not at once",
			notReadyAt.Sub(sigAt), firstDone.Sub(sigAt))
	}
	switch {
	case refusedAt.IsZero():
		t.Errorf("new connections to %s were never refused between SIGTERM and exit", cfg.Listen)
	case !refusedAt.Before(firstDone):
		t.Errorf("connections refused %v after SIGTERM, only after the first in-flight request completed (%v)",
			refusedAt.Sub(sigAt), firstDone.Sub(sigAt))
	}
	if code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
	if p.hasLog(func(l logLine) bool { return l.Msg() == "last flush failed" }) {
		t.Errorf("the final flush failed")
	}
	req, fail, slow := sumBuckets(t, hash())
	if req != failures+inFlight || fail != failures {
		t.Errorf("Redis %s after exit: %d requests %d failures in its buckets, want %d and %d (the final flush)",
			key, req, fail, failures+inFlight, failures)
	}
	report(t, "shutdown_in_flight_latency", lat, map[string]any{
		"in_flight": inFlight, "completed_ok": count(results).OK,
		"not_ready_after_ms": ms(notReadyAt.Sub(sigAt)), "refused_after_ms": ms(refusedAt.Sub(sigAt)),
		"exit_after_ms": ms(exitAfter), "redis_requests": req, "redis_failures": fail, "redis_slow": slow,
	})
}

// TestOpsShutdownCutsStreamsAtDeadline: a stream that never ends (server-sent events, or
// a WebSocket: an upgraded, hijacked connection) keeps flowing after SIGTERM until
// server.shutdown_timeout, is closed then, and the process exits 0 right after.
func TestOpsShutdownCutsStreamsAtDeadline(t *testing.T) {
	for _, kind := range []string{"sse", "websocket"} {
		t.Run(kind, func(t *testing.T) { testStreamCut(t, kind) })
	}
}

func testStreamCut(t *testing.T, kind string) {
	const timeout = time.Second
	be := newStreamBackend(t)
	cfg := newOpsConfig(t, []opsUpstream{{Name: upstream, Target: be.URL, ConsecutiveFailures: 5}}, []opsRoute{{"/", upstream}})
	cfg.ShutdownTimeout = timeout
	p := startProxy(t, cfg.YAML(t))

	var s *clientStream
	if kind == "sse" {
		s = openSSE(t, p.Addr())
	} else {
		s = openWebSocket(t, p.Addr())
	}
	if !waitFor(10*time.Second, 2*time.Millisecond, func() bool { return s.events() >= 3 }) {
		t.Fatalf("%s: only %d events through the proxy", kind, s.events())
	}

	sigAt := time.Now()
	p.Signal(syscall.SIGTERM)
	closed := s.waitClosed(timeout + 10*time.Second)
	code, ok := p.Wait(timeout + 10*time.Second)
	exitAfter := time.Since(sigAt)
	if !ok {
		t.Fatalf("still running %v after SIGTERM with shutdown_timeout %v", exitAfter, timeout)
	}
	if closed.IsZero() {
		t.Fatalf("%s: the client's stream was not closed", kind)
	}
	cutAfter := closed.Sub(sigAt)
	lastEvent := s.lastEvent().Sub(sigAt)
	t.Logf("%s: cut %v after SIGTERM (last event at %v), process exited after %v with code %d",
		kind, cutAfter.Round(time.Millisecond), lastEvent.Round(time.Millisecond), exitAfter.Round(time.Millisecond), code)
	// The stream kept flowing during the grace period, and was cut at its end.
	if lastEvent < timeout/2 {
		t.Errorf("%s: the last event reached the client %v after SIGTERM: the stream was cut long before shutdown_timeout (%v)",
			kind, lastEvent, timeout)
	}
	if cutAfter < timeout-100*time.Millisecond || cutAfter > timeout+2*time.Second {
		t.Errorf("%s: the stream was cut %v after SIGTERM, want at the shutdown deadline (%v)", kind, cutAfter, timeout)
	}
	if code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	if exitAfter > timeout+3*time.Second {
		t.Errorf("exited %v after SIGTERM, want within shutdown_timeout %v plus a margin of 3s", exitAfter, timeout)
	}
	cutLog := map[string]string{
		"sse":       "in-flight requests cut at the shutdown deadline",
		"websocket": "upgraded connections (WebSockets) cut at the shutdown deadline",
	}[kind]
	if !p.hasLog(func(l logLine) bool { return l.Msg() == cutLog }) {
		t.Errorf("%s: no log line %q", kind, cutLog)
	}
	// The upstream side of the stream is closed too.
	if !waitFor(5*time.Second, 5*time.Millisecond, func() bool { return be.open() == 0 }) {
		t.Errorf("%s: the backend still has %d streams open after the proxy exited", kind, be.open())
	}
	report(t, "stream_cut_"+kind, []time.Duration{cutAfter}, map[string]any{
		"shutdown_timeout_ms": timeout.Milliseconds(), "exit_after_ms": ms(exitAfter), "last_event_ms": ms(lastEvent),
	})
}

// streamBackend is an in-process upstream with two never-ending streams: /sse (server-sent
// events) and /ws (a WebSocket-style upgrade to a raw connection). Each writes a line
// every 50 ms until its client goes away.
type streamBackend struct {
	*httptest.Server
	mu      sync.Mutex
	streams int
}

func (b *streamBackend) open() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.streams
}

func (b *streamBackend) track(d int) {
	b.mu.Lock()
	b.streams += d
	b.mu.Unlock()
}

func newStreamBackend(t *testing.T) *streamBackend {
	b := &streamBackend{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	mux := http.NewServeMux()
	mux.HandleFunc("/sse", func(w http.ResponseWriter, r *http.Request) {
		b.track(1)
		defer b.track(-1)
		rc := http.NewResponseController(w)
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			if _, err := fmt.Fprintf(w, "data: %d\n\n", i); err != nil {
				return
			}
			if rc.Flush() != nil {
				return
			}
			select {
			case <-r.Context().Done():
				return
			case <-stop:
				return
			case <-tick.C:
			}
		}
	})
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			http.Error(w, "want an upgrade to websocket", http.StatusBadRequest)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		b.track(1)
		wg.Add(1)
		defer wg.Done()
		defer b.track(-1)
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		if brw.Flush() != nil {
			return
		}
		gone := make(chan struct{})
		go func() { // the client's side: anything it sends is discarded; EOF means gone
			defer close(gone)
			buf := make([]byte, 512)
			for {
				if _, err := conn.Read(buf); err != nil {
					return
				}
			}
		}()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := fmt.Fprintf(conn, "tick %d\n", i); err != nil {
				return
			}
			select {
			case <-gone:
				return
			case <-stop:
				return
			case <-tick.C:
			}
		}
	})
	b.Server = httptest.NewServer(mux)
	t.Cleanup(func() {
		close(stop)
		b.Server.CloseClientConnections()
		b.Server.Close()
		wg.Wait()
	})
	return b
}

// clientStream reads a stream's lines on the client side and records when each event
// arrived and when the stream ended.
type clientStream struct {
	mu     sync.Mutex
	n      int
	last   time.Time
	closed time.Time
	done   chan struct{}
}

func (s *clientStream) events() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

func (s *clientStream) lastEvent() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// waitClosed waits up to timeout for the stream to end and returns when it ended (zero
// if it did not).
func (s *clientStream) waitClosed(timeout time.Duration) time.Time {
	select {
	case <-s.done:
	case <-time.After(timeout):
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// read counts the lines that start with prefix until the reader fails.
func (s *clientStream) read(r *bufio.Reader, prefix string) {
	defer close(s.done)
	for {
		line, err := r.ReadString('\n')
		now := time.Now()
		s.mu.Lock()
		if err != nil {
			s.closed = now
			s.mu.Unlock()
			return
		}
		if strings.HasPrefix(line, prefix) {
			s.n++
			s.last = now
		}
		s.mu.Unlock()
	}
}

// openSSE opens GET /sse through the proxy on addr.
func openSSE(t *testing.T, addr string) *clientStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	tr := &http.Transport{Proxy: nil, DisableCompression: true}
	t.Cleanup(func() { cancel(); tr.CloseIdleConnections() })
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/sse", nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatalf("GET /sse: %v", err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		resp.Body.Close()
		t.Fatalf("GET /sse: status %d, Content-Type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	s := &clientStream{done: make(chan struct{})}
	go s.read(bufio.NewReader(resp.Body), "data: ")
	t.Cleanup(func() { resp.Body.Close(); <-s.done })
	return s
}

// openWebSocket sends a raw upgrade request (Connection: Upgrade, Upgrade: websocket)
// for /ws through the proxy on addr and expects 101 Switching Protocols.
func openWebSocket(t *testing.T, addr string) *clientStream {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := fmt.Fprintf(conn, "GET /ws HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", addr); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("upgrade response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") {
		t.Fatalf("upgrade: status %d, Upgrade %q; want 101 and websocket", resp.StatusCode, resp.Header.Get("Upgrade"))
	}
	s := &clientStream{done: make(chan struct{})}
	go s.read(br, "tick ")
	t.Cleanup(func() { conn.Close(); <-s.done })
	return s
}

// waitRedisQuiet waits (up to 10 s) until no script has run in Redis for quiet.
func waitRedisQuiet(t *testing.T, rds *redistest.Server, quiet time.Duration) {
	t.Helper()
	scripts := func() int64 {
		st := rds.CommandStats()
		return st["evalsha"] + st["eval"] + st["evalsha_ro"] + st["eval_ro"]
	}
	last, since := scripts(), time.Now()
	ok := waitFor(10*time.Second, 20*time.Millisecond, func() bool {
		if n := scripts(); n != last {
			last, since = n, time.Now()
		}
		return time.Since(since) >= quiet
	})
	if !ok {
		t.Fatalf("Redis did not go quiet for %v within 10s (%d scripts run)", quiet, last)
	}
}
