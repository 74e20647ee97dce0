package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/fuseproxy/fuseproxy/config"
)

// oneConnListener hands out one connection, then blocks until closed.
type oneConnListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	addr  net.Addr
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *oneConnListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return l.addr }

// bufferedConn reads through the bufio.Reader that may hold bytes already read from c.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// h2cBackend is an HTTP/1.1 server that accepts "Upgrade: h2c" as RFC 7540 §3.2
// describes: it answers 101 and serves the connection as HTTP/2 (net/http's own
// unencrypted HTTP/2 server, the client sending its connection preface after the 101).
// Requests that do not ask for h2c get 200 "plain". Every request is counted by the path
// it reached and by the protocol it came in.
type h2cBackend struct {
	*httptest.Server
	mu      sync.Mutex
	seen    []string // "HTTP/1.1 GET /public/x", "HTTP/2.0 DELETE /admin/users"
	h2      []*http.Server
	upgrade []http.Header // the headers of each request asking for an upgrade
}

func newH2CBackend(t *testing.T) *h2cBackend {
	t.Helper()
	b := &h2cBackend{}
	inner := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		b.seen = append(b.seen, r.Proto+" "+r.Method+" "+r.URL.Path)
		b.mu.Unlock()
		_, _ = io.WriteString(w, "reached "+r.Method+" "+r.URL.Path+" over "+r.Proto)
	})
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "" {
			b.mu.Lock()
			b.upgrade = append(b.upgrade, r.Header.Clone())
			b.mu.Unlock()
		}
		if !strings.EqualFold(r.Header.Get("Upgrade"), "h2c") {
			inner.ServeHTTP(w, r)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("backend hijack: %v", err)
			return
		}
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
		if err := brw.Flush(); err != nil {
			conn.Close()
			return
		}
		var protos http.Protocols
		protos.SetUnencryptedHTTP2(true)
		srv := &http.Server{Handler: inner, Protocols: &protos}
		l := &oneConnListener{conns: make(chan net.Conn, 1), done: make(chan struct{}), addr: conn.LocalAddr()}
		l.conns <- &bufferedConn{Conn: conn, r: brw.Reader}
		b.mu.Lock()
		b.h2 = append(b.h2, srv)
		b.mu.Unlock()
		_ = srv.Serve(l) // until Close
		conn.Close()
	}))
	t.Cleanup(func() {
		b.mu.Lock()
		servers := b.h2
		b.mu.Unlock()
		for _, s := range servers {
			s.Close()
		}
		b.Close()
	})
	return b
}

func (b *h2cBackend) requests() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.seen...)
}

// TestH2CSmugglingRefused: a client asks to upgrade a request on an allowed route to h2c.
// Were the upgrade forwarded, the backend would switch, the proxy would tunnel, and the
// client would send HTTP/2 requests for any path and method straight to the backend,
// past routing and the breaker. By default h2c is not allowed: the backend gets a plain
// request without Upgrade or HTTP2-Settings, and the client a plain 200.
func TestH2CSmugglingRefused(t *testing.T) {
	backend := newH2CBackend(t)
	u := upstreamCfg(t, backend.URL) // upgrade_protocols: [websocket], the default
	cfg := &config.Config{
		Upstreams: map[string]*config.Upstream{"svc": u},
		Routes:    []config.Route{{PathPrefix: "/public/", Methods: []string{"GET"}, Upstream: "svc"}},
	}
	f := newFixture(t, cfg)

	for _, req := range []string{
		"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
		"Connection: keep-alive, UPGRADE\r\nUpgrade: H2C\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
		"Connection: upgrade\r\nUpgrade: foo, h2c\r\n",
		"Connection: close\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n",
	} {
		conn, err := net.Dial("tcp", f.srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.WriteString(conn, "GET /public/x HTTP/1.1\r\nHost: example.com\r\n"+req+"\r\n")
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			conn.Close()
			t.Fatalf("%q: read response: %v", req, err)
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			// Show what the tunnel allows: DELETE /admin/users, which no route allows.
			got := smuggleH2C(t, &bufferedConn{Conn: conn, r: br})
			conn.Close()
			t.Fatalf("%q: the proxy switched to h2c; through the tunnel: %s", req, got)
		}
		body := readBody(t, resp)
		conn.Close()
		if resp.StatusCode != http.StatusOK || body != "reached GET /public/x over HTTP/1.1" {
			t.Errorf("%q: got %d %q, want 200 from the backend over HTTP/1.1", req, resp.StatusCode, body)
		}
	}
	backend.mu.Lock()
	upgrades := backend.upgrade
	backend.mu.Unlock()
	if len(upgrades) != 0 {
		t.Errorf("the backend was asked to upgrade: %v", upgrades)
	}
	for _, r := range backend.requests() {
		if r != "HTTP/1.1 GET /public/x" {
			t.Errorf("the backend saw %q", r)
		}
	}
}

// smuggleH2C speaks HTTP/2 over an upgraded connection and returns what a request the
// routes do not allow got.
func smuggleH2C(t *testing.T, conn net.Conn) string {
	t.Helper()
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	var used atomic.Bool
	tr := &http.Transport{Protocols: &protos, DialContext: func(context.Context, string, string) (net.Conn, error) {
		if used.Swap(true) {
			return nil, net.ErrClosed
		}
		return conn, nil
	}}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodDelete, "http://example.com/admin/users", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return "error " + err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.Status + " " + string(b)
}

// TestUpgradeAllowList: what reaches the upstream of each Upgrade offer, for each
// upgrade_protocols setting. Upgrade and Connection are gone when nothing offered is
// allowed; of a list, the first allowed protocol goes on alone; HTTP2-Settings only
// with h2c.
func TestUpgradeAllowList(t *testing.T) {
	backend := echoBackend(t, "b")
	const settings = "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
	for _, tc := range []struct {
		allowed     []string
		headers     string
		wantUpgrade string // "" means no Upgrade and no Connection: upgrade
		wantH2Set   bool
	}{
		{[]string{"websocket"}, "Connection: Upgrade\r\nUpgrade: websocket\r\n", "websocket", false},
		{[]string{"websocket"}, "Connection: Upgrade\r\nUpgrade: WebSocket\r\n", "WebSocket", false},
		{[]string{"websocket"}, "Connection: Upgrade\r\nUpgrade: h2c\r\n" + settings, "", false},
		{[]string{"websocket"}, "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n" + settings, "", false},
		{[]string{"websocket"}, "Connection: upgrade\r\nUpgrade: h2c, websocket\r\n" + settings, "websocket", false},
		{[]string{"websocket"}, "Connection: upgrade\r\nUpgrade: foo, bar/2\r\n", "", false},
		{[]string{"websocket"}, "Connection: upgrade\r\nUpgrade: h2c\r\nUpgrade: websocket\r\n", "", false}, // the first line only, as ReverseProxy reads it
		{[]string{"websocket"}, "Upgrade: h2c\r\n" + settings, "", false},                                   // no Connection: upgrade
		{[]string{"websocket"}, settings, "", false},
		{[]string{}, "Connection: Upgrade\r\nUpgrade: websocket\r\n", "", false},
		{[]string{"h2c"}, "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n" + settings, "h2c", true},
		{[]string{"websocket", "h2c"}, "Connection: Upgrade\r\nUpgrade: foo, H2C, websocket\r\n" + settings, "H2C", true},
		{[]string{"websocket"}, "Connection: Upgrade\r\nUpgrade: websocket/13\r\n", "websocket/13", false},
	} {
		u := upstreamCfg(t, backend.URL)
		u.UpgradeProtocols = tc.allowed
		f := newFixture(t, single(u))
		resp := rawRequest(t, f.srv.Listener.Addr().String(), "GET /x HTTP/1.1\r\nHost: example.com\r\n"+tc.headers+"\r\n")
		e := decodeEcho(t, resp)
		upgrade := strings.Join(e.Header["Upgrade"], "|")
		connUpgrade := strings.Contains(strings.ToLower(strings.Join(e.Header["Connection"], ",")), "upgrade")
		_, h2set := e.Header["Http2-Settings"]
		if upgrade != tc.wantUpgrade || connUpgrade != (tc.wantUpgrade != "") || h2set != tc.wantH2Set {
			t.Errorf("allowed %v, %q: upstream got Upgrade %q, Connection %q, HTTP2-Settings %v; want Upgrade %q, HTTP2-Settings %v",
				tc.allowed, tc.headers, upgrade, e.Header["Connection"], h2set, tc.wantUpgrade, tc.wantH2Set)
		}
	}
}

// An upstream that switches protocols although no (allowed) upgrade was asked for gets
// a 502, counted as a transport failure: the proxy never tunnels it.
func TestUnrequestedSwitchRefused(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
		_ = brw.Flush()
	}))
	t.Cleanup(backend.Close)
	f := newFixture(t, single(upstreamCfg(t, backend.URL)))
	resp := rawRequest(t, f.srv.Listener.Addr().String(),
		"GET /x HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
	wantStatus(t, resp, http.StatusBadGateway)
	wantResults(t, f.rec.wait(t, 1), FailureTransport)
}

// The control for TestH2CSmugglingRefused: with h2c allowed (upgrade_protocols: [h2c])
// the same backend switches and the tunnel carries HTTP/2 requests for any path, which
// is exactly why h2c is not allowed by default.
func TestH2CAllowedTunnels(t *testing.T) {
	backend := newH2CBackend(t)
	u := upstreamCfg(t, backend.URL)
	u.UpgradeProtocols = []string{"h2c"}
	cfg := &config.Config{
		Upstreams: map[string]*config.Upstream{"svc": u},
		Routes:    []config.Route{{PathPrefix: "/public/", Methods: []string{"GET"}, Upstream: "svc"}},
	}
	f := newFixture(t, cfg)
	conn, err := net.Dial("tcp", f.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = io.WriteString(conn, "GET /public/x HTTP/1.1\r\nHost: example.com\r\n"+
		"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantStatus(t, resp, http.StatusSwitchingProtocols)
	if got := smuggleH2C(t, &bufferedConn{Conn: conn, r: br}); got != "200 OK reached DELETE /admin/users over HTTP/2.0" {
		t.Fatalf("through the tunnel: %s", got)
	}
	backend.mu.Lock()
	h2set := len(backend.upgrade) == 1 && backend.upgrade[0].Get("Http2-Settings") != ""
	backend.mu.Unlock()
	if !h2set {
		t.Errorf("the backend got the upgrade without HTTP2-Settings")
	}
}
