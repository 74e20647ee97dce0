package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/fuseproxy/fuseproxy/config"
)

func TestRoutingOverHTTP(t *testing.T) {
	api, web := echoBackend(t, "api"), echoBackend(t, "web")
	cfg := &config.Config{
		Upstreams: map[string]*config.Upstream{
			"api": upstreamCfg(t, api.URL),
			"web": upstreamCfg(t, web.URL),
		},
		Routes: []config.Route{
			{Host: "api.example.com", PathPrefix: "/", Upstream: "api"},
			{Host: "*.example.com", PathPrefix: "/api/", Upstream: "api"},
			{Host: "*.example.com", PathPrefix: "/", Methods: []string{"GET"}, Upstream: "web"},
		},
	}
	f := newFixture(t, cfg)

	for _, tc := range []struct{ host, path, want string }{
		{"api.example.com", "/x", "api"},
		{"www.example.com", "/api/x", "api"},
		{"WWW.Example.com:1234", "/page", "web"},
	} {
		if got := decodeEcho(t, f.get(t, tc.host, tc.path)).Backend; got != tc.want {
			t.Errorf("GET %s%s: got backend %q, want %q", tc.host, tc.path, got, tc.want)
		}
	}

	t.Run("no route", func(t *testing.T) {
		resp := f.get(t, "example.com", "/x")
		wantStatus(t, resp, http.StatusNotFound)
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type: got %q, want application/json", ct)
		}
		want := `{"error":"no_route","message":"no route for GET example.com/x"}`
		if got := readBody(t, resp); got != want {
			t.Errorf("body: got %s, want %s", got, want)
		}
	})

	t.Run("method not routed", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/page", nil)
		req.Host = "www.example.com"
		wantStatus(t, f.do(t, req), http.StatusNotFound)
	})

	t.Run("CONNECT", func(t *testing.T) {
		resp := rawRequest(t, f.srv.Listener.Addr().String(),
			"CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n")
		wantStatus(t, resp, http.StatusMethodNotAllowed)
		if got := resp.Header.Get("Content-Type"); got != "application/json" {
			t.Errorf("Content-Type: got %q, want application/json", got)
		}
	})

	if got := f.rec.snapshot(); len(got) != 3 {
		t.Errorf("recorder calls: got %v, want 3 (unrouted requests are not recorded)", got)
	}
}

// rawRequest writes a raw HTTP/1.1 request to addr and reads the response.
func rawRequest(t *testing.T, addr, req string) *http.Response {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// TestNotAnOpenProxy sends absolute-form request URIs naming other hosts: they route by
// their host like any request and only ever reach configured targets.
func TestNotAnOpenProxy(t *testing.T) {
	victim := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("request reached a host that is not a target: %s %s", r.Method, r.RequestURI)
	}))
	t.Cleanup(victim.Close)
	backend := echoBackend(t, "ours")

	cfg := single(upstreamCfg(t, backend.URL))
	cfg.Routes[0].Host = "api.example.com"
	f := newFixture(t, cfg)
	addr, victimHost := f.srv.Listener.Addr().String(), victim.Listener.Addr().String()

	resp := rawRequest(t, addr, "GET http://"+victimHost+"/secret HTTP/1.1\r\nHost: "+victimHost+"\r\n\r\n")
	wantStatus(t, resp, http.StatusNotFound)

	// With a host-less route the request goes to our target, never to the victim.
	cfg = single(upstreamCfg(t, backend.URL))
	if err := f.p.Update(cfg, f.breakers); err != nil {
		t.Fatal(err)
	}
	resp = rawRequest(t, addr, "GET http://"+victimHost+"/secret HTTP/1.1\r\nHost: "+victimHost+"\r\n\r\n")
	e := decodeEcho(t, resp)
	if e.Backend != "ours" || e.RequestURI != "/secret" {
		t.Errorf("got backend %q URI %q, want ours /secret", e.Backend, e.RequestURI)
	}
}

func TestPathEscapes(t *testing.T) {
	admin, api := echoBackend(t, "admin"), echoBackend(t, "api")
	cfg := &config.Config{
		Upstreams: map[string]*config.Upstream{
			"admin": upstreamCfg(t, admin.URL),
			"api":   upstreamCfg(t, api.URL),
		},
		Routes: []config.Route{
			{PathPrefix: "/api/", Upstream: "api"},
			{PathPrefix: "/admin", Upstream: "admin"},
		},
	}
	f := newFixture(t, cfg)
	addr := f.srv.Listener.Addr().String()
	for _, tc := range []struct {
		target  string
		status  int
		backend string
		uri     string
	}{
		{"/api/users", 200, "api", "/api/users"},
		{"/api/../admin", 200, "admin", "/admin"}, // routed and forwarded cleaned
		{"/api/./../admin/x", 200, "admin", "/admin/x"},
		{"/api/%2e%2e/admin", 400, "", ""},
		{"/api/%2E%2e/admin", 400, "", ""},
		{"/api/..%2Fadmin", 400, "", ""},
		{"/api/%2e/x", 400, "", ""},
		{"/api/a%2Fb", 200, "api", "/api/a%2Fb"}, // encoded slashes pass through
	} {
		// Raw requests: Go's client would clean some of these paths itself.
		resp := rawRequest(t, addr, "GET "+tc.target+" HTTP/1.1\r\nHost: example.com\r\n\r\n")
		if resp.StatusCode != tc.status {
			t.Errorf("GET %s: got status %d, want %d", tc.target, resp.StatusCode, tc.status)
			continue
		}
		if tc.status != 200 {
			continue
		}
		e := decodeEcho(t, resp)
		if e.Backend != tc.backend || e.RequestURI != tc.uri {
			t.Errorf("GET %s: got %s %s, want %s %s", tc.target, e.Backend, e.RequestURI, tc.backend, tc.uri)
		}
	}
}

func TestStripPrefixOverHTTP(t *testing.T) {
	backend := echoBackend(t, "b")
	based := echoBackend(t, "based")
	cfg := &config.Config{
		Upstreams: map[string]*config.Upstream{
			"b":     upstreamCfg(t, backend.URL),
			"based": upstreamCfg(t, based.URL+"/base"),
		},
		Routes: []config.Route{
			{PathPrefix: "/api/", StripPrefix: true, Upstream: "b"},
			{PathPrefix: "/svc", StripPrefix: true, Upstream: "based"},
			{PathPrefix: "/keep/", Upstream: "b"},
		},
	}
	f := newFixture(t, cfg)
	for _, tc := range []struct{ path, want string }{
		{"/api/users?id=1", "/users?id=1"},
		{"/api/", "/"},
		{"/api/a%2Fb", "/a%2Fb"},
		{"/svc", "/base/"}, // the stripped path is "/", joined to the target's path
		{"/svc/x", "/base/x"},
		{"/keep/x?q", "/keep/x?q"},
	} {
		if got := decodeEcho(t, f.get(t, "", tc.path)).RequestURI; got != tc.want {
			t.Errorf("GET %s: upstream got %q, want %q", tc.path, got, tc.want)
		}
	}
}

func TestForwardedHeaders(t *testing.T) {
	backend := echoBackend(t, "b")
	f := newFixture(t, single(upstreamCfg(t, backend.URL)))
	backendHost := strings.TrimPrefix(backend.URL, "http://")

	req, _ := http.NewRequest(http.MethodGet, f.srv.URL+"/x", nil)
	req.Host = "public.example.com"
	e := decodeEcho(t, f.do(t, req))
	for _, h := range []struct{ name, want string }{
		{"X-Forwarded-For", "127.0.0.1"},
		{"X-Forwarded-Host", "public.example.com"},
		{"X-Forwarded-Proto", "http"},
	} {
		if got := strings.Join(e.Header[h.name], ","); got != h.want {
			t.Errorf("%s: got %q, want %q", h.name, got, h.want)
		}
	}
	if e.Host != backendHost {
		t.Errorf("Host: got %q, want the target's %q", e.Host, backendHost)
	}

	// From a client that is not a trusted proxy (none is, by default), forwarding
	// headers are replaced, not extended (see TestTrustedProxies).
	req, _ = http.NewRequest(http.MethodGet, f.srv.URL+"/x", nil)
	req.Host = "public.example.com"
	req.Header.Add("X-Forwarded-For", "203.0.113.7")
	req.Header.Add("X-Forwarded-For", "198.51.100.1")
	req.Header.Set("X-Forwarded-Host", "spoofed.example")
	req.Header.Set("X-Forwarded-Proto", "https")
	req.Header.Set("Forwarded", "for=192.0.2.1")
	e = decodeEcho(t, f.do(t, req))
	for _, h := range []struct{ name, want string }{
		{"X-Forwarded-For", "127.0.0.1"},
		{"X-Forwarded-Host", "public.example.com"},
		{"X-Forwarded-Proto", "http"},
		{"Forwarded", ""},
	} {
		if got := strings.Join(e.Header[h.name], ","); got != h.want {
			t.Errorf("%s: got %q, want %q", h.name, got, h.want)
		}
	}
}

func TestRoundRobin(t *testing.T) {
	a, b := echoBackend(t, "a"), echoBackend(t, "b")
	f := newFixture(t, single(upstreamCfg(t, a.URL, b.URL)))
	var got []string
	for range 6 {
		got = append(got, decodeEcho(t, f.get(t, "", "/")).Backend)
	}
	if want := "a b a b a b"; strings.Join(got, " ") != want {
		t.Errorf("backends: got %v, want %s", got, want)
	}
}

func TestStreaming(t *testing.T) {
	for _, tc := range []struct {
		name, contentType string
		first, second     string
	}{
		{"server-sent events", "text/event-stream", "data: one\n\n", "data: two\n\n"},
		{"chunked", "application/octet-stream", "first chunk\n", "second chunk\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			release := make(chan struct{})
			backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tc.contentType)
				_, _ = io.WriteString(w, tc.first)
				http.NewResponseController(w).Flush()
				select { // the backend cannot finish before the client saw the first part
				case <-release:
				case <-r.Context().Done():
					return
				}
				_, _ = io.WriteString(w, tc.second)
			}))
			t.Cleanup(backend.Close)
			f := newFixture(t, single(upstreamCfg(t, backend.URL)))

			resp := f.get(t, "", "/stream")
			wantStatus(t, resp, http.StatusOK)
			if resp.ContentLength != -1 {
				t.Errorf("ContentLength: got %d, want -1 (streamed)", resp.ContentLength)
			}
			got := make(chan string, 1)
			go func() {
				buf := make([]byte, len(tc.first))
				_, err := io.ReadFull(resp.Body, buf)
				if err != nil {
					got <- "error: " + err.Error()
					return
				}
				got <- string(buf)
			}()
			if s := recv(t, "the first part", got); s != tc.first {
				close(release)
				t.Fatalf("first part: got %q, want %q", s, tc.first)
			}
			close(release)
			if rest := readBody(t, resp); rest != tc.second {
				t.Errorf("rest: got %q, want %q", rest, tc.second)
			}
			wantResults(t, f.rec.wait(t, 1), Success)
		})
	}
}

func TestWebSocketUpgrade(t *testing.T) {
	tunnelClosed := make(chan struct{})
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" || !strings.EqualFold(r.Header.Get("Connection"), "upgrade") {
			http.Error(w, "want an upgrade to echo", http.StatusBadRequest)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("backend hijack: %v", err)
			return
		}
		defer close(tunnelClosed)
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		_ = brw.Flush()
		_, _ = io.Copy(conn, brw) // echo until the client closes
	}))
	t.Cleanup(backend.Close)
	u := upstreamCfg(t, backend.URL)
	u.UpgradeProtocols = []string{"echo"}
	f := newFixture(t, single(u))

	conn, err := net.Dial("tcp", f.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = io.WriteString(conn, "GET /ws HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read 101: %v", err)
	}
	wantStatus(t, resp, http.StatusSwitchingProtocols)
	if got := resp.Header.Get("Upgrade"); got != "echo" {
		t.Errorf("Upgrade: got %q, want echo", got)
	}
	// The outcome is reported when the protocol switches, not when the tunnel closes.
	wantResults(t, f.rec.wait(t, 1), Success)

	for _, msg := range []string{"hello", "world"} {
		if _, err := io.WriteString(conn, msg); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(br, buf); err != nil {
			t.Fatalf("read echo: %v", err)
		}
		if string(buf) != msg {
			t.Errorf("echo: got %q, want %q", buf, msg)
		}
	}
	conn.Close()
	recv(t, "the tunnel to close", tunnelClosed)
	if sn := f.breakers["svc"].Snapshot(); sn.Counts.Requests != 1 || sn.Counts.Failures != 0 {
		t.Errorf("breaker counts: got %+v, want 1 request, 0 failures", sn.Counts)
	}
	wantResults(t, f.rec.snapshot(), Success)
}

func TestUpstreamCircuitHeaderStripped(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(HeaderCircuit, "open") // another fuseproxy's rejection
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	t.Cleanup(backend.Close)
	f := newFixture(t, single(upstreamCfg(t, backend.URL)))
	resp := f.get(t, "", "/")
	wantStatus(t, resp, http.StatusServiceUnavailable)
	if v := resp.Header.Get(HeaderCircuit); v != "" {
		t.Errorf("%s on a proxied response: got %q, want none", HeaderCircuit, v)
	}
}

func TestNewErrors(t *testing.T) {
	ok := func() *config.Config {
		u := upstreamCfg(t, "http://127.0.0.1:1")
		u.Breaker.Enabled = false
		return single(u)
	}
	for _, tc := range []struct {
		name   string
		mutate func(*config.Config)
		want   string
	}{
		{"nil config", nil, "nil config"},
		{"unknown upstream", func(c *config.Config) { c.Routes[0].Upstream = "nope" }, `unknown upstream "nope"`},
		{"no TargetURLs", func(c *config.Config) { c.Upstreams["svc"].TargetURLs = nil }, "TargetURLs not filled"},
		{"missing breaker", func(c *config.Config) { c.Upstreams["svc"].Breaker.Enabled = true }, "breaker enabled but none given"},
		{"bad prefix", func(c *config.Config) { c.Routes[0].PathPrefix = "api" }, "does not start with"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cfg *config.Config
			if tc.mutate != nil {
				cfg = ok()
				tc.mutate(cfg)
			}
			_, err := New(cfg, nil, Options{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New: got error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{"", "plain", `q"uote\back`, "ctl\x00\x1f\n\r\t", "<a&b>", "é☃𝄞", "bad\xffutf8", "\u2028\u2029"} {
		got := appendJSONString(nil, s)
		want, _ := json.Marshal(s)
		if string(got) != string(want) {
			t.Errorf("appendJSONString(%q): got %s, want %s", s, got, want)
		}
	}
}

// TestClientCancelNotCounted cancels the client while the upstream is working: the
// breaker must not count it (a breaker that trips on one failure stays closed).
func TestClientCancelNotCounted(t *testing.T) {
	backend := newBlockingBackend(t)
	u := upstreamCfg(t, backend.URL)
	u.Breaker.ConsecutiveFailures = 1
	f := newFixture(t, single(u))

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, f.srv.URL+"/slow", nil)
	errc := make(chan error, 1)
	go func() {
		resp, err := f.client.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	recv(t, "the backend to get the request", backend.started)
	cancel()
	if err := recv(t, "the client to return", errc); !errors.Is(err, context.Canceled) {
		t.Fatalf("client error: got %v, want context.Canceled", err)
	}
	wantResults(t, f.rec.wait(t, 1), Ignored)
	sn := f.breakers["svc"].Snapshot()
	if sn.Counts.Requests != 0 || sn.Consecutive != 0 || sn.State.String() != "closed" {
		t.Errorf("breaker: got %+v, want no requests counted and closed", sn)
	}
}

// TestClientBodyAbortNotCounted: a client that breaks off its upload is not the
// upstream's failure.
func TestClientBodyAbortNotCounted(t *testing.T) {
	got := make(chan struct{}, 1)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- struct{}{}
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	t.Cleanup(backend.Close)
	u := upstreamCfg(t, backend.URL)
	u.Breaker.ConsecutiveFailures = 1
	f := newFixture(t, single(u))

	conn, err := net.Dial("tcp", f.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.WriteString(conn, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\npartial")
	recv(t, "the backend to get the request", got)
	conn.Close()

	wantResults(t, f.rec.wait(t, 1), Ignored)
	if sn := f.breakers["svc"].Snapshot(); sn.Counts.Requests != 0 || sn.State.String() != "closed" {
		t.Errorf("breaker: got %+v, want nothing counted and closed", sn)
	}
}
