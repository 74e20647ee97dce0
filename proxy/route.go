package proxy

import (
	"net/http/httputil"
	"net/url"
	"path"
	"slices"
	"strings"
	"unicode/utf8"
)

// route is one compiled config.Route. It is immutable once built.
type route struct {
	index   int    // position in config.Routes: the lowest matching index wins
	host    string // as configured, lower-cased: "", "api.example.com" or "*.example.com"
	prefix  string // path prefix, never empty
	methods []string
	strip   bool
	up      *upstream
	rp      *httputil.ReverseProxy // its Rewrite is rt.rewrite
}

// matches reports whether the route accepts a request for the cleaned path with method.
// Methods compare exactly: HTTP methods are case-sensitive.
func (rt *route) matches(cleanPath, method string) bool {
	if !strings.HasPrefix(cleanPath, rt.prefix) {
		return false
	}
	return len(rt.methods) == 0 || slices.Contains(rt.methods, method)
}

// rewrite is the route's httputil.ReverseProxy Rewrite function. The outbound request
// gets the cleaned path (with the prefix removed when the route strips it), the next
// target in round-robin order, and X-Forwarded-For/-Host/-Proto. X-Forwarded-For
// appends the client's address to the one the client sent. The Host header is the
// target's (httputil.ProxyRequest.SetURL's behaviour); the client's Host is in
// X-Forwarded-Host.
func (rt *route) rewrite(pr *httputil.ProxyRequest) {
	out := pr.Out.URL
	out.Path, out.RawPath = rt.forwardPath(pr.In.URL)
	pr.SetURL(rt.up.pick())
	if xff := pr.In.Header["X-Forwarded-For"]; len(xff) > 0 {
		pr.Out.Header["X-Forwarded-For"] = xff // SetXForwarded replaces, never mutates, it
	}
	pr.SetXForwarded()
}

// forwardPath returns the outbound Path and RawPath for an inbound URL that routed to rt.
// A clean path is forwarded as it came (keeping its escaping, %2F included); a path that
// needed cleaning is forwarded cleaned and in canonical escaping, so the upstream sees
// exactly the path the route matched.
func (rt *route) forwardPath(in *url.URL) (p, raw string) {
	p, raw = in.Path, in.RawPath
	if p == "" {
		p = "/"
	}
	if c := cleanPath(p); c != p {
		p, raw = c, ""
	}
	if rt.strip {
		p, raw = stripPrefix(p, raw, rt.prefix)
	}
	return p, raw
}

// stripPrefix removes prefix (which p starts with) from p and the corresponding escaped
// bytes from raw. The result always begins with "/". An inconsistent raw is harmless:
// url.URL.EscapedPath ignores a RawPath that does not decode to Path.
func stripPrefix(p, raw, prefix string) (string, string) {
	p = p[len(prefix):]
	if raw != "" {
		raw = skipDecoded(raw, len(prefix))
		if raw == "" || raw[0] != '/' {
			raw = "/" + raw
		}
	}
	if p == "" {
		p = "/"
	} else if p[0] != '/' {
		p = "/" + p
	}
	return p, raw
}

// skipDecoded drops the escaped bytes of raw that decode to its first n bytes.
func skipDecoded(raw string, n int) string {
	i := 0
	for ; n > 0 && i < len(raw); n-- {
		if raw[i] == '%' && i+2 < len(raw) {
			i += 3
		} else {
			i++
		}
	}
	return raw[i:]
}

// routingPath returns the path requests are routed on: the decoded path cleaned of
// dot-segments and duplicate slashes, keeping a trailing slash, so "/api/../admin" routes
// as "/admin". ok is false for a path that must be refused: one not starting with "/", or
// one in which percent-encoding hides a dot-segment ("/api/%2e%2e/admin",
// "/api/..%2fadmin"), which the proxy and the upstream could resolve differently.
func routingPath(u *url.URL) (clean string, ok bool) {
	p := u.Path
	if p == "" {
		return "/", true
	}
	if p[0] != '/' {
		return "", false
	}
	// RawPath is empty when the path is in canonical escaping, which never encodes '.'
	// or '/': then no dot-segment can hide in it.
	if u.RawPath != "" && dotSegments(p) != dotSegments(u.EscapedPath()) {
		return "", false
	}
	return cleanPath(p), true
}

// dotSegments counts the "." and ".." segments of a slash-separated path. Decoding can
// only add such segments (from %2e or %2f), so an escaped path with fewer of them than
// its decoded form hides one.
func dotSegments(p string) int {
	n := 0
	for len(p) > 0 {
		seg := p
		if i := strings.IndexByte(p, '/'); i >= 0 {
			seg, p = p[:i], p[i+1:]
		} else {
			p = ""
		}
		if seg == "." || seg == ".." {
			n++
		}
	}
	return n
}

// cleanPath is path.Clean keeping a trailing slash (as net/http.ServeMux cleans) for a
// path starting with "/". It does not allocate for a path that is already clean.
func cleanPath(p string) string {
	if isClean(p) {
		return p
	}
	np := path.Clean(p)
	if p[len(p)-1] == '/' && np != "/" {
		if len(p) == len(np)+1 && strings.HasPrefix(p, np) {
			return p
		}
		return np + "/"
	}
	return np
}

// isClean reports whether p, which starts with "/", has no empty, "." or ".." segment
// (a trailing slash aside): the common case, checked faster than path.Clean.
func isClean(p string) bool {
	start := 1 // of the current segment
	for i := 1; i <= len(p); i++ {
		if i < len(p) && p[i] != '/' {
			continue
		}
		switch p[start:i] {
		case "":
			if i < len(p) {
				return false
			}
		case ".", "..":
			return false
		}
		start = i + 1
	}
	return true
}

// routeIndex finds the first route, in config order, matching a request. Lookup costs a
// map lookup per label of the request's host, independent of how many hosts there are;
// only the routes of the candidate hosts are scanned.
type routeIndex struct {
	exact    map[string][]*route // host → its routes, in config order
	wildcard map[string][]*route // "example.com" (from "*.example.com") → routes, in config order
	any      []*route            // routes without a host, in config order
}

// newRouteIndex indexes routes, which are in config order.
func newRouteIndex(routes []*route) routeIndex {
	ix := routeIndex{exact: map[string][]*route{}, wildcard: map[string][]*route{}}
	for _, rt := range routes {
		switch {
		case rt.host == "":
			ix.any = append(ix.any, rt)
		case strings.HasPrefix(rt.host, "*."):
			k := rt.host[2:]
			ix.wildcard[k] = append(ix.wildcard[k], rt)
		default:
			ix.exact[rt.host] = append(ix.exact[rt.host], rt)
		}
	}
	return ix
}

// lookup returns the first route in config order that matches, or nil. host must be
// normalised (normalizeHost) and path cleaned (routingPath).
//
// The candidates come from up to three kinds of list: the host's exact routes, the
// routes of every wildcard suffix of the host, and the host-less routes. Each list is in
// config order, so its first match is its best; the answer is the best of those.
func (ix *routeIndex) lookup(host, path, method string) *route {
	var best *route
	if host != "" {
		best = firstMatch(ix.exact[host], path, method, best)
		if len(ix.wildcard) > 0 {
			// "*.example.com" matches any name ending in ".example.com" but not the apex:
			// try the suffix after each dot, requiring a non-empty first label.
			for i := strings.IndexByte(host, '.'); i > 0 && i < len(host)-1; {
				best = firstMatch(ix.wildcard[host[i+1:]], path, method, best)
				j := strings.IndexByte(host[i+1:], '.')
				if j < 0 {
					break
				}
				i += j + 1
			}
		}
	}
	return firstMatch(ix.any, path, method, best)
}

// firstMatch returns the first route of l that matches and comes before best, else best.
func firstMatch(l []*route, path, method string, best *route) *route {
	for _, rt := range l {
		if best != nil && rt.index >= best.index {
			break
		}
		if rt.matches(path, method) {
			return rt
		}
	}
	return best
}

// validHost reports whether a Host header is a host with an optional numeric port:
// an IPv6 literal must close its bracket, and only ":port" may follow a host. (net/http
// has already refused characters that are never allowed in a Host.)
func validHost(h string) bool {
	port := ""
	if strings.HasPrefix(h, "[") {
		i := strings.IndexByte(h, ']')
		if i < 0 {
			return false
		}
		if rest := h[i+1:]; rest != "" {
			if rest[0] != ':' {
				return false
			}
			port = rest[1:]
		}
	} else if i := strings.LastIndexByte(h, ':'); i >= 0 {
		if strings.IndexByte(h[:i], ':') >= 0 {
			return false // an IPv6 address without brackets
		}
		port = h[i+1:]
	}
	for i := 0; i < len(port); i++ {
		if port[i] < '0' || port[i] > '9' {
			return false
		}
	}
	return true
}

// normalizeHost turns a Host header into the form routes are indexed by: the port
// removed, lower-cased, without a trailing dot. It does not allocate unless the host
// has upper-case letters.
func normalizeHost(h string) string {
	if h == "" {
		return ""
	}
	if h[0] == '[' { // IPv6 literal
		if i := strings.IndexByte(h, ']'); i > 0 {
			h = h[:i+1]
		}
	} else if i := strings.LastIndexByte(h, ':'); i >= 0 {
		h = h[:i]
	}
	h = strings.TrimSuffix(h, ".")
	for i := 0; i < len(h); i++ {
		if c := h[i]; 'A' <= c && c <= 'Z' || c >= utf8.RuneSelf {
			return strings.ToLower(h)
		}
	}
	return h
}
