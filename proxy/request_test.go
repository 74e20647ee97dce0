package proxy

import (
	"bufio"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path"
	"strings"
	"testing"

	"github.com/fuseproxy/fuseproxy/config"
)

func TestRoutingPath(t *testing.T) {
	tests := []struct {
		target, want string // want "" means refused
	}{
		{"/a/b", "/a/b"},
		{"/a/b/", "/a/b/"},
		{"/a/../b", "/b"},
		{"/a/./b/", "/a/b/"},
		{"/../../etc/passwd", "/etc/passwd"},
		{"//a//b", "/a/b"},
		{"/api/..", "/"},
		{"/file%2etxt", "/file.txt"}, // an encoded dot inside a segment is harmless
		{"/a%2Fb", "/a/b"},
		{"/%61pi/x", "/api/x"},
		{"/api/%2e%2e/admin", ""},
		{"/api/%2E%2E/admin", ""},
		{"/api/.%2e/admin", ""},
		{"/api/%2e./admin", ""},
		{"/api/%2e/admin", ""},
		{"/api/..%2fadmin", ""},
		{"/api%2f..%2fadmin", ""},
		{"/api/%2e%2e", ""},
		{"*", ""},
	}
	for _, tc := range tests {
		u, err := url.ParseRequestURI(tc.target)
		if err != nil {
			t.Fatalf("parse %q: %v", tc.target, err)
		}
		got, ok := routingPath(u)
		if !ok {
			got = ""
		}
		if got != tc.want {
			t.Errorf("routingPath(%q): got %q (ok %v), want %q", tc.target, got, ok, tc.want)
		}
	}
	if got, ok := routingPath(&url.URL{}); !ok || got != "/" {
		t.Errorf("routingPath(empty): got %q, %v, want \"/\", true", got, ok)
	}
}

// TestCleanPath checks cleanPath against its definition on random paths.
func TestCleanPath(t *testing.T) {
	ref := func(p string) string {
		np := path.Clean(p)
		if p[len(p)-1] == '/' && np != "/" {
			np += "/"
		}
		return np
	}
	rng := rand.New(rand.NewPCG(3, 4))
	parts := []string{"/", "a", "b", ".", "..", "...", ".a", "a."}
	for range 20000 {
		p := "/"
		for range rng.IntN(8) {
			p += parts[rng.IntN(len(parts))]
		}
		if got, want := cleanPath(p), ref(p); got != want {
			t.Fatalf("cleanPath(%q): got %q, want %q", p, got, want)
		}
	}
}

func TestValidHost(t *testing.T) {
	for _, tc := range []struct {
		host string
		want bool
	}{
		{"", true}, // HTTP/1.0 without Host: routed by any-host routes
		{"example.com", true},
		{"example.com:8080", true},
		{"127.0.0.1:80", true},
		{"[::1]", true},
		{"[::1]:8080", true},
		{"[::1", false},      // unterminated IPv6 literal
		{"[::1]x", false},    // junk after the literal
		{"[::1]:80a", false}, // non-numeric port
		{"example.com:http", false},
		{"::1", false}, // IPv6 without brackets
		{"a:b:c", false},
	} {
		if got := validHost(tc.host); got != tc.want {
			t.Errorf("validHost(%q) = %v, want %v", tc.host, got, tc.want)
		}
	}
}

// A malformed Host is refused before routing, so it never falls through to the
// any-host routes.
func TestMalformedHostRefused(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("backend reached with Host %q", r.Host)
	}))
	defer backend.Close()
	f := newFixture(t, &config.Config{Upstreams: map[string]*config.Upstream{"svc": upstreamCfg(t, backend.URL)},
		Routes: oneRoute("svc")})
	req := httptest.NewRequest(http.MethodGet, "/x", nil)
	req.Host = "[::1"
	w := httptest.NewRecorder()
	f.p.ServeHTTP(w, req)
	if w.Code != http.StatusBadRequest {
		t.Fatalf("status: got %d, want 400", w.Code)
	}
}

// The asterisk form ("OPTIONS *", "GET *") names no path: it is refused with 400, never
// forwarded as a path. (The server in internal/app hands "OPTIONS *" to the proxy rather
// than answering it itself; e2e's TestFaultBadInput checks that end to end.)
func TestAsteriskFormRefused(t *testing.T) {
	backend, hits := countingBackend(t)
	f := newFixture(t, single(upstreamCfg(t, backend.URL)))
	for _, method := range []string{http.MethodOptions, http.MethodGet} {
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(method + " * HTTP/1.1\r\nHost: x\r\n\r\n")))
		if err != nil {
			t.Fatal(err)
		}
		w := httptest.NewRecorder()
		f.p.ServeHTTP(w, req)
		if w.Code != http.StatusBadRequest {
			t.Errorf("%s *: got %d, want 400", method, w.Code)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("the backend got %d requests", n)
	}
}
