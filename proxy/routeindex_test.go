package proxy

import (
	"fmt"
	"math/rand/v2"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/fuseproxy/fuseproxy/config"
)

// buildTable compiles routes (all to upstream "svc") without starting anything.
func buildTable(t *testing.T, routes []config.Route) *table {
	t.Helper()
	for i := range routes {
		if routes[i].Upstream == "" {
			routes[i].Upstream = "svc"
		}
	}
	u := upstreamCfg(t, "http://127.0.0.1:1")
	u.Breaker.Enabled = false
	p, err := New(&config.Config{Upstreams: map[string]*config.Upstream{"svc": u}, Routes: routes}, nil, Options{})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return p.table.Load()
}

// lookupIndex routes a request the way ServeHTTP does and returns the route's index, or -1.
func lookupIndex(t *testing.T, tab *table, method, host, target string) int {
	t.Helper()
	u, err := url.ParseRequestURI(target)
	if err != nil {
		t.Fatalf("parse %q: %v", target, err)
	}
	p, ok := routingPath(u)
	if !ok {
		t.Fatalf("routingPath(%q) refused", target)
	}
	if rt := tab.routes.lookup(normalizeHost(host), p, method); rt != nil {
		return int(rt.index)
	}
	return -1
}

func TestRouteLookup(t *testing.T) {
	tab := buildTable(t, []config.Route{
		0: {Host: "api.example.com", PathPrefix: "/v1/", Methods: []string{"GET"}},
		1: {Host: "*.example.com", PathPrefix: "/v1/"},
		2: {Host: "api.example.com", PathPrefix: "/"},
		3: {Host: "", PathPrefix: "/health"},
		4: {Host: "*.b.example.com", PathPrefix: "/"},
		5: {Host: "*.example.com", PathPrefix: "/"},
		6: {Host: "", PathPrefix: "/static/", Methods: []string{"get", "HEAD"}},
		7: {Host: "Upper.Example.org", PathPrefix: "/"},
		8: {Host: "", PathPrefix: "/"},
	})
	tests := []struct {
		method, host, path string
		want               int
	}{
		{"GET", "api.example.com", "/v1/users", 0},
		{"POST", "api.example.com", "/v1/users", 1},          // method excludes 0; wildcard 1 is next
		{"POST", "api.example.com", "/health", 2},            // exact 2 comes before any-host 3
		{"GET", "other.net", "/health", 3},                   // any-host
		{"GET", "other.net", "/healthz", 8},                  // a prefix ends at a segment boundary
		{"GET", "other.net", "/health/live", 3},              // at a boundary
		{"GET", "x.b.example.com", "/v2", 4},                 // deepest wildcard
		{"GET", "x.b.example.com", "/v1/a", 1},               // an earlier, shallower wildcard wins
		{"GET", "b.example.com", "/z", 5},                    // *.b.example.com excludes its apex
		{"GET", "example.com", "/v1/a", 8},                   // *.example.com excludes its apex
		{"GET", "API.Example.COM:8443", "/v1/", 0},           // case and port ignored
		{"GET", "api.example.com.", "/v1/x", 0},              // trailing dot ignored
		{"GET", "", "/x", 8},                                 // no Host: host-less routes only
		{"GET", "other.net", "/static/app.js", 6},            // methods upper-cased at build
		{"DELETE", "other.net", "/static/app.js", 8},         // method not listed
		{"GET", "upper.example.org", "/", 7},                 // configured host lower-cased
		{"GET", "api.example.com", "/v1/../health", 2},       // cleaned to /health
		{"GET", "other.net", "/static/../health/x", 3},       // cleaned
		{"GET", "other.net", "/a/b/../../static/x", 6},       // cleaned
		{"GET", "[::1]:8080", "/health", 3},                  // IPv6 literal
		{"GET", "deep.x.b.example.com", "/v2", 4},            // any depth of subdomain
		{"GET", "api.example.com", "/v1", 2},                 // "/v1/" does not match "/v1"
		{"GET", "a.example.com.evil.net", "/v1/users", 8},    // suffix must be the domain
		{"GET", "evil-example.com", "/v1/users", 8},          // not a subdomain
		{"GET", "api.example.com", "//v1//users", 0},         // duplicate slashes cleaned
		{"GET", "x.api.example.com", "/v1/users", 1},         // wildcard, not the exact host
		{"GET", "other.net", "/static", 8},                   // "/static/" needs the slash
		{"HEAD", "other.net", "/static/", 6},                 //
		{"get", "other.net", "/static/", 8},                  // methods are case-sensitive
		{"GET", "other.net:", "/health", 3},                  // empty port
		{"GET", "OTHER.NET", "/HEALTH", 8},                   // paths are case-sensitive
		{"GET", "api.example.com", "/v1/%2e/../health", -99}, // refused: see TestRoutingPath
	}
	for _, tc := range tests {
		if tc.want == -99 {
			continue
		}
		if got := lookupIndex(t, tab, tc.method, tc.host, tc.path); got != tc.want {
			t.Errorf("%s %s%s: got route %d, want %d", tc.method, tc.host, tc.path, got, tc.want)
		}
	}

	noAny := buildTable(t, []config.Route{{Host: "a.example.com", PathPrefix: "/"}})
	if got := lookupIndex(t, noAny, "GET", "b.example.com", "/"); got != -1 {
		t.Errorf("unrouted host: got route %d, want -1 (none)", got)
	}
}

// TestRouteLookupMatchesLinearScan checks the index against its definition, "the first
// route in config order that matches", on random tables and requests.
func TestRouteLookupMatchesLinearScan(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	hosts := []string{"", "a.com", "b.a.com", "c.b.a.com", "*.a.com", "*.b.a.com", "x.org", "*.org", "*.com"}
	reqHosts := []string{"", "a.com", "b.a.com", "c.b.a.com", "d.b.a.com", "z.a.com", "x.org", "y.x.org", "org", "q.com"}
	prefixes := []string{"/", "/a", "/a/", "/a/b", "/b/"}
	paths := []string{"/", "/a", "/a/", "/a/b", "/a/bc", "/b/", "/b/c", "/c"}
	methods := [][]string{nil, {"GET"}, {"POST"}, {"GET", "POST"}}
	reqMethods := []string{"GET", "POST", "PUT"}

	for round := range 200 {
		n := 1 + rng.IntN(12)
		routes := make([]config.Route, n)
		for i := range routes {
			routes[i] = config.Route{Host: pickOf(rng, hosts), PathPrefix: pickOf(rng, prefixes),
				Methods: methods[rng.IntN(len(methods))]}
		}
		tab := buildTable(t, slices.Clone(routes))
		for range 50 {
			checkLookup(t, tab, routes, pickOf(rng, reqMethods), pickOf(rng, reqHosts), pickOf(rng, paths),
				fmt.Sprint("round ", round))
		}
	}
}

// TestRouteLookupLongLists checks the index against a linear scan where lists are long
// enough to be searched through a prefix trie: many routes per host, shared and nested
// prefixes ("/a", "/a/", "/a/b", "/ab"), prefixes a clean path never has ("/a//"),
// method filters.
func TestRouteLookupLongLists(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	hosts := []string{"", "", "a.com", "b.a.com", "*.a.com", "x.org"}
	reqHosts := []string{"", "a.com", "b.a.com", "c.b.a.com", "z.a.com", "x.org", "q.com"}
	tokens := []string{"a", "b", "/", "ab", "a/", "b/c"}
	methods := [][]string{nil, nil, {"GET"}, {"POST"}, {"GET", "POST"}}
	reqMethods := []string{"GET", "POST", "PUT"}
	pick := func(s []string) string { return s[rng.IntN(len(s))] }
	randPath := func(max int) string {
		p := "/"
		for range rng.IntN(max + 1) {
			p += pick(tokens)
		}
		return p
	}
	for round := range 150 {
		n := prefixTrieMin - 2 + rng.IntN(60)
		routes := make([]config.Route, n)
		for i := range routes {
			routes[i] = config.Route{Host: pick(hosts), PathPrefix: randPath(4), Methods: methods[rng.IntN(len(methods))]}
		}
		tab := buildTable(t, slices.Clone(routes))
		for range 100 {
			p := randPath(6)
			if rng.IntN(2) == 0 { // extend a configured prefix
				p = routes[rng.IntN(n)].PathPrefix + randPath(2)[1:]
			}
			checkLookup(t, tab, routes, pick(reqMethods), pick(reqHosts), p, fmt.Sprintf("round %d", round))
		}
	}
}

// TestRouteLookupThousands checks the index against a linear scan on thousands of
// host-less prefix routes, shared (the same prefix several times, with different
// methods) and overlapping ("/svc-1", "/svc-1/", "/svc-12/"; "/wA", "/wA/", "/wAx/"
// for 60 letters), next to long per-host lists.
func TestRouteLookupThousands(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	methods := [][]string{nil, nil, nil, {"GET"}, {"POST"}}
	var routes []config.Route
	for i := range 3000 {
		var prefix string
		switch rng.IntN(7) {
		case 0:
			prefix = fmt.Sprintf("/svc-%d", rng.IntN(1000))
		case 1:
			prefix = pickOf(rng, []string{"/", "/a", "/a/", "/a/b", "/a/b/c", "/a/bc", "/ab"})
		case 2: // a node with many children
			prefix = fmt.Sprintf("/w%c%s", '0'+rng.IntN(60), pickOf(rng, []string{"", "/", "x/"}))
		default:
			prefix = fmt.Sprintf("/svc-%d/", rng.IntN(1000))
		}
		host := ""
		if i%10 == 0 {
			host = pickOf(rng, []string{"a.com", "*.a.com", "b.a.com"})
		}
		routes = append(routes, config.Route{Host: host, PathPrefix: prefix, Methods: methods[rng.IntN(len(methods))]})
	}
	tab := buildTable(t, slices.Clone(routes))
	if tab.routes.any.trie == nil || tab.routes.exact["a.com"].trie == nil || tab.routes.wildcard["a.com"].trie == nil {
		t.Fatal("long lists are not in a prefix trie")
	}
	for range 3000 {
		p := pickOf(rng, []string{"/", "/a", "/a/b/c/d", "/ab", "/abc", "/svc-", "/svc-1000/", "/w", "/w/"})
		switch rng.IntN(5) {
		case 0: // one of the above
		case 1:
			p = fmt.Sprintf("/w%c%s", '-'+rng.IntN(70), pickOf(rng, []string{"", "/", "x", "x/y"}))
		default:
			p = fmt.Sprintf("/svc-%d%s", rng.IntN(1100), pickOf(rng, []string{"", "/", "/x", "0/", "x"}))
		}
		checkLookup(t, tab, routes, pickOf(rng, []string{"GET", "POST", "PUT"}),
			pickOf(rng, []string{"", "a.com", "b.a.com", "c.a.com", "x.org"}), p, "")
	}
}

func pickOf(rng *rand.Rand, s []string) string { return s[rng.IntN(len(s))] }

// checkLookup compares the index's answer for a request with the definition: the first
// route of routes, in config order, whose host, prefix (of the cleaned path) and methods
// match.
func checkLookup(t *testing.T, tab *table, routes []config.Route, method, host, target, what string) {
	t.Helper()
	p, ok := routingPath(&url.URL{Path: target})
	if !ok {
		t.Fatalf("routingPath(%q) refused", target)
	}
	want := -1
	for i, r := range routes {
		if hostMatches(r.Host, host) && segmentPrefix(p, r.PathPrefix) &&
			(len(r.Methods) == 0 || slices.Contains(r.Methods, method)) {
			want = i
			break
		}
	}
	if got := lookupIndex(t, tab, method, host, target); got != want {
		t.Fatalf("%s %s %s%s (routed as %s): got route %d, want %d; routes %+v",
			what, method, host, target, p, got, want, routes)
	}
}

// segmentPrefix is the definition of a route's path match: the prefix, then the end of
// the path or a slash (or the prefix ends with one).
func segmentPrefix(p, prefix string) bool {
	rest, ok := strings.CutPrefix(p, prefix)
	return ok && (rest == "" || strings.HasSuffix(prefix, "/") || strings.HasPrefix(rest, "/"))
}

// hostMatches is the definition of a route's host match.
func hostMatches(pattern, host string) bool {
	switch {
	case pattern == "":
		return true
	case strings.HasPrefix(pattern, "*."):
		suffix := pattern[1:] // ".a.com"
		return strings.HasSuffix(host, suffix) && len(host) > len(suffix)
	default:
		return pattern == host
	}
}

func TestNormalizeHost(t *testing.T) {
	for in, want := range map[string]string{
		"":                 "",
		"Example.COM":      "example.com",
		"example.com:8080": "example.com",
		"example.com.":     "example.com",
		"EXAMPLE.com.:80":  "example.com",
		"[::1]:8080":       "[::1]",
		"[::1]":            "[::1]",
		"10.0.0.1:443":     "10.0.0.1",
	} {
		if got := normalizeHost(in); got != want {
			t.Errorf("normalizeHost(%q): got %q, want %q", in, got, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { normalizeHost("api.example.com:8080") }); n != 0 {
		t.Errorf("normalizeHost allocations: got %v, want 0", n)
	}
}

func TestLookupDoesNotAllocate(t *testing.T) {
	routes := []config.Route{
		{Host: "*.example.com", PathPrefix: "/x/"},
		{Host: "api.example.com", PathPrefix: "/v1/", Methods: []string{"GET"}},
	}
	for i := range 2 * prefixTrieMin { // host-less routes in a prefix trie
		routes = append(routes, config.Route{PathPrefix: fmt.Sprintf("/svc-%d/", i)})
	}
	routes = append(routes, config.Route{PathPrefix: "/"})
	tab := buildTable(t, routes)
	for _, target := range []string{"/v1/users/42", "/svc-11/users/42", "/other"} {
		u, _ := url.ParseRequestURI(target)
		n := testing.AllocsPerRun(100, func() {
			p, _ := routingPath(u)
			if tab.routes.lookup(normalizeHost("api.example.com"), p, "POST") == nil {
				panic("no route")
			}
		})
		if n != 0 {
			t.Errorf("%s: allocations per lookup: got %v, want 0", target, n)
		}
	}
}
