package proxy

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// spoofHeaders are forwarding headers a client may send to pose as another address,
// host, scheme or URL. Each is sent by the test's clients.
var spoofHeaders = map[string]string{
	"X-Forwarded-For":    "203.0.113.7",
	"X-Forwarded-Host":   "spoofed.example",
	"X-Forwarded-Proto":  "https",
	"X-Forwarded-Port":   "443",
	"X-Forwarded-Prefix": "/admin",
	"X-Forwarded-Server": "spoofed",
	"Forwarded":          "for=192.0.2.1;proto=https",
	"X-Real-Ip":          "203.0.113.8",
	"X-Client-Ip":        "203.0.113.9",
	"True-Client-Ip":     "203.0.113.10",
	"X-Original-Url":     "/admin/users",
	"X-Rewrite-Url":      "/admin/users",
}

// TestTrustedProxies: forwarding headers are kept and extended only from a peer in
// server.trusted_proxies; from any other they are replaced (X-Forwarded-For/-Host/-Proto
// with the proxy's own view) or removed (the rest), whatever their spelling.
func TestTrustedProxies(t *testing.T) {
	backend := echoBackend(t, "b")
	send := func(t *testing.T, trusted []string, extra http.Header) echo {
		t.Helper()
		cfg := single(upstreamCfg(t, backend.URL))
		cfg.Server.TrustedProxies = trusted
		f := newFixture(t, cfg)
		req, _ := http.NewRequest(http.MethodGet, f.srv.URL+"/x", nil)
		req.Host = "public.example.com"
		for k, v := range spoofHeaders {
			req.Header[k] = []string{v}
		}
		for k, v := range extra {
			req.Header[k] = v
		}
		return decodeEcho(t, f.do(t, req))
	}

	for _, tc := range []struct {
		name    string
		trusted []string
	}{
		{"no one trusted (default)", nil},
		{"other peers trusted", []string{"10.0.0.0/8", "192.0.2.1", "::1/128"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := send(t, tc.trusted, http.Header{
				"X_real_ip":        {"203.0.113.11"}, // '_' for '-', sent as is
				"X-FORWARDED-PORT": {"8443"},         // canonicalised by the server
			})
			want := map[string]string{
				"X-Forwarded-For":   "127.0.0.1",
				"X-Forwarded-Host":  "public.example.com",
				"X-Forwarded-Proto": "http",
			}
			sent := []string{"X_real_ip", "X-FORWARDED-PORT"}
			for k := range spoofHeaders {
				sent = append(sent, k)
			}
			for k := range e.Header {
				for _, s := range sent {
					if strings.EqualFold(strings.ReplaceAll(k, "_", "-"), strings.ReplaceAll(s, "_", "-")) && want[k] == "" {
						t.Errorf("%s reached the upstream: %q", k, e.Header[k])
						break
					}
				}
			}
			for k, v := range want {
				if got := strings.Join(e.Header[k], ","); got != v {
					t.Errorf("%s: got %q, want %q", k, got, v)
				}
			}
		})
	}

	t.Run("trusted peer", func(t *testing.T) {
		e := send(t, []string{"192.0.2.0/24", "127.0.0.0/8"}, nil)
		for k, v := range spoofHeaders {
			if k == "X-Forwarded-For" {
				v += ", 127.0.0.1" // appended to
			}
			if got := strings.Join(e.Header[k], ","); got != v {
				t.Errorf("%s: got %q, want %q (passed on from a trusted proxy)", k, got, v)
			}
		}
	})
}

// A request without Host (HTTP/1.0) gets no X-Forwarded-Host rather than an empty one.
func TestNoHostNoForwardedHost(t *testing.T) {
	backend := echoBackend(t, "b")
	f := newFixture(t, single(upstreamCfg(t, backend.URL)))
	e := decodeEcho(t, rawRequest(t, f.srv.Listener.Addr().String(), "GET /x HTTP/1.0\r\n\r\n"))
	if v, ok := e.Header["X-Forwarded-Host"]; ok {
		t.Errorf("X-Forwarded-Host: got %q, want none", v)
	}
	if got := strings.Join(e.Header["X-Forwarded-For"], ","); got != "127.0.0.1" {
		t.Errorf("X-Forwarded-For: got %q", got)
	}
}

// An invalid trusted_proxies entry in a Config built in code is refused by New.
func TestTrustedProxiesInvalid(t *testing.T) {
	u := upstreamCfg(t, "http://127.0.0.1:1")
	u.Breaker.Enabled = false
	cfg := single(u)
	cfg.Server.TrustedProxies = []string{"10.0.0.0/33"}
	if _, err := New(cfg, nil, Options{}); err == nil || !strings.Contains(err.Error(), "server.trusted_proxies[0]") {
		t.Fatalf("New: got %v, want an error naming server.trusted_proxies[0]", err)
	}
}

// TestForwardingHeaderNames: the header names forwardingHeader recognises, in any
// spelling a backend might read as the same.
func TestForwardingHeaderNames(t *testing.T) {
	for k, want := range map[string]bool{
		"X-Forwarded-For": true, "x-forwarded-for": true, "X_Forwarded_For": true, "X-Forwarded-Anything": true,
		"Forwarded": true, "X-Real-Ip": true, "X_REAL_IP": true, "True-Client-Ip": true, "X-Original-Url": true,
		"User-Agent": false, "X-Request-Id": false, "Forwarded-Custom": false, "X-Forwarder": false,
	} {
		if got := forwardingHeader(k); got != want {
			t.Errorf("forwardingHeader(%q) = %v, want %v", k, got, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { forwardingHeader("User-Agent") }); n != 0 {
		t.Errorf("allocations for a canonical name: %v", n)
	}
}

func TestForwardPath(t *testing.T) {
	tests := []struct {
		prefix string
		strip  bool
		target string
		want   string // the outbound escaped path
	}{
		{"/", false, "/a/b", "/a/b"},
		{"/", false, "/a%2Fb/c", "/a%2Fb/c"}, // escaping kept
		{"/", false, "/a/../b", "/b"},
		{"/api/", true, "/api/users", "/users"},
		{"/api/", true, "/api/", "/"},
		{"/api", true, "/api", "/"},
		{"/api", true, "/api/users/", "/users/"},
		{"/api/", true, "/api/a%2Fb", "/a%2Fb"},
		{"/api/", true, "/%61pi/a%2Fb", "/a%2Fb"},
		{"/api/", true, "/api%2Fa%2Fb", "/a%2Fb"},
		{"/api/", true, "/api/x/../y", "/y"},
		{"/api/", true, "/x/../api/a%2Fb/../c", "/a/c"}, // cleaned: canonical escaping
		{"/api/", false, "/api/users?x=1", "/api/users"},
		{"/a b/", true, "/a%20b/c%20d", "/c%20d"},
	}
	for _, tc := range tests {
		u, err := url.ParseRequestURI(tc.target)
		if err != nil {
			t.Fatalf("parse %q: %v", tc.target, err)
		}
		clean, ok := routingPath(u)
		if !ok || !strings.HasPrefix(clean, tc.prefix) {
			t.Fatalf("%q does not route to prefix %q (clean %q, ok %v)", tc.target, tc.prefix, clean, ok)
		}
		rt := &route{prefix: tc.prefix, strip: tc.strip}
		p, raw := rt.forwardPath(u)
		out := &url.URL{Path: p, RawPath: raw}
		if got := out.EscapedPath(); got != tc.want {
			t.Errorf("prefix %q strip %v, %q: got %q (path %q, raw %q), want %q",
				tc.prefix, tc.strip, tc.target, got, p, raw, tc.want)
		}
	}
}
