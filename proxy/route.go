package proxy

import (
	"net/http/httputil"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
)

// route is one compiled config.Route. It is immutable once built.
type route struct {
	// The struct is one per route, tens of thousands in a large table: its fields are
	// packed into 96 bytes (a size class).
	index   int32  // position in config.Routes: the lowest matching index wins
	strip   bool   // strip_prefix
	host    string // as configured, lower-cased: "", "api.example.com" or "*.example.com"
	prefix  string // path prefix, never empty
	methods []string
	up      *upstream
	trusted *[]netip.Prefix // server.trusted_proxies, shared by the table's routes
	// rps holds one ReverseProxy per target of up, by index (Rewrite is rt.rewrite),
	// built at the route's first request (Proxy.routeProxies): most routes of a large
	// table are idle, and a ReverseProxy per route and target is most of an idle route's
	// memory.
	rps atomic.Pointer[[]*httputil.ReverseProxy]
	// fallbackRPs are the same for the targets of up's fallback upstream.
	fallbackRPs atomic.Pointer[[]*httputil.ReverseProxy]
}

// matches reports whether the route accepts a request for the cleaned path with method.
// Methods compare exactly: HTTP methods are case-sensitive.
func (rt *route) matches(cleanPath, method string) bool {
	return prefixMatch(cleanPath, rt.prefix) && rt.allows(method)
}

// prefixMatch reports whether a cleaned path starts with prefix at a segment boundary:
// the prefix ends with "/", or the path ends right after it or goes on with "/". So
// "/v1" matches "/v1" and "/v1/x" but not "/v1x" or "/v1..": what strip_prefix removes
// is always whole segments, and what it leaves is a clean path of whole segments.
func prefixMatch(cleanPath, prefix string) bool {
	return strings.HasPrefix(cleanPath, prefix) &&
		(len(cleanPath) == len(prefix) || prefix[len(prefix)-1] == '/' || cleanPath[len(prefix)] == '/')
}

// allows reports whether the route accepts method.
func (rt *route) allows(method string) bool {
	return len(rt.methods) == 0 || slices.Contains(rt.methods, method)
}
