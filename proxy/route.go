package proxy

import (
	"math"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/textproto"
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
	trusted []netip.Prefix         // server.trusted_proxies, shared by the table's routes
	rp      *httputil.ReverseProxy // its Rewrite is rt.rewrite
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

// rewrite is the route's httputil.ReverseProxy Rewrite function. The outbound request
// gets the cleaned path (with the prefix removed when the route strips it), the next
// target in round-robin order, only an allowed upgrade (filterUpgrade), and
// X-Forwarded-For/-Host/-Proto. The Host header is the target's
// (httputil.ProxyRequest.SetURL's behaviour); the client's Host is in X-Forwarded-Host,
// which is left out for a request without Host (HTTP/1.0).
//
// Forwarding headers say who the client is and what it asked for, so they are believed
// only from a trusted proxy (server.trusted_proxies). From one, X-Forwarded-For gets the
// peer's address appended, and X-Forwarded-Host/-Proto, Forwarded and the other
// forwarding headers it sent pass on. From anyone else, X-Forwarded-For is the peer's
// address alone, X-Forwarded-Host/-Proto are the request's own, and every other
// forwarding header is removed (forwardingHeader). ReverseProxy has removed the
// client's Forwarded and X-Forwarded-For/-Host/-Proto from the outbound header already.
func (rt *route) rewrite(pr *httputil.ProxyRequest) {
	out := pr.Out.URL
	out.Path, out.RawPath = rt.forwardPath(pr.In.URL)
	in, h := pr.In.Header, pr.Out.Header
	rt.up.filterUpgrade(h, in)
	pr.SetURL(rt.up.pick())
	trusted := rt.fromTrustedProxy(pr.In.RemoteAddr)
	if trusted {
		if xff := in["X-Forwarded-For"]; len(xff) > 0 {
			h["X-Forwarded-For"] = xff // SetXForwarded replaces, never mutates, it
		}
	} else {
		for k := range h {
			if forwardingHeader(k) {
				delete(h, k)
			}
		}
	}
	pr.SetXForwarded()
	if pr.In.Host == "" {
		delete(h, "X-Forwarded-Host")
	}
	if trusted {
		for _, k := range [...]string{"X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded"} {
			if v := in[k]; len(v) > 0 {
				h[k] = v
			}
		}
	}
}

// fromTrustedProxy reports whether a request's peer (its RemoteAddr) is in
// server.trusted_proxies.
func (rt *route) fromTrustedProxy(remoteAddr string) bool {
	if len(rt.trusted) == 0 {
		return false
	}
	ap, err := netip.ParseAddrPort(remoteAddr)
	if err != nil {
		return false
	}
	a := ap.Addr().Unmap()
	for _, p := range rt.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// spoofableHeaders are the forwarding headers, besides X-Forwarded-*, through which a
// client could claim another address or URL to a backend (canonical forms).
var spoofableHeaders = map[string]bool{
	"Forwarded":                true,
	"X-Real-Ip":                true,
	"X-Client-Ip":              true,
	"True-Client-Ip":           true,
	"X-Cluster-Client-Ip":      true,
	"Cf-Connecting-Ip":         true,
	"Fastly-Client-Ip":         true,
	"X-Original-Forwarded-For": true,
	"X-Original-Url":           true,
	"X-Original-Uri":           true,
	"X-Rewrite-Url":            true,
	"X-Original-Host":          true,
	"X-Host":                   true,
	"X-Proxyuser-Ip":           true,
}

// forwardingHeader reports whether the header named k (as parsed) is a forwarding
// header: X-Forwarded-* or one of spoofableHeaders, in any case, also with '_' for '-'
// (CGI-style backends read X_Real_IP as X-Real-IP). It does not allocate for a
// canonical name without '_'.
func forwardingHeader(k string) bool {
	if strings.IndexByte(k, '_') >= 0 {
		k = strings.ReplaceAll(k, "_", "-")
	}
	k = textproto.CanonicalMIMEHeaderKey(k)
	return strings.HasPrefix(k, "X-Forwarded-") || spoofableHeaders[k]
}

// filterUpgrade keeps only an upgrade the upstream allows on the outbound header h.
//
// ReverseProxy has already removed the hop-by-hop headers and, when the client's
// Connection named "upgrade", put back "Connection: Upgrade" and the client's first
// Upgrade line; without that, h has no Upgrade. After the upstream's 101 the connection
// is a raw tunnel that routing, methods and the breaker no longer see, so an upgrade
// not on the upstream's list (upgrade_protocols) is not forwarded: of the offered
// protocols ("foo, websocket/13") the first allowed one is kept, by name and
// case-insensitively; if none is allowed, Upgrade and Connection are removed and the
// request goes on as a plain one (RFC 9110 §7.8 lets a server ignore Upgrade). An
// upstream answering 101 to it anyway gets a 502 (ReverseProxy refuses a switch that was
// not asked for). HTTP2-Settings, which only means something with an h2c upgrade, is
// removed unless h2c is the protocol forwarded; then it is the client's (in).
func (up *upstream) filterUpgrade(h, in http.Header) {
	v, ok := h["Upgrade"]
	if !ok {
		if _, ok := h["Http2-Settings"]; ok {
			delete(h, "Http2-Settings")
		}
		return
	}
	proto := ""
	if len(v) > 0 {
		proto = up.allowedUpgrade(v[0])
	}
	if proto == "" {
		delete(h, "Upgrade")
		delete(h, "Connection")
		delete(h, "Http2-Settings")
		return
	}
	if name, _, _ := strings.Cut(proto, "/"); !strings.EqualFold(name, "h2c") {
		delete(h, "Http2-Settings")
	} else if s, ok := in["Http2-Settings"]; ok {
		// The client named it in Connection, as RFC 7540 §3.2.1 asks, so ReverseProxy
		// removed it with the hop-by-hop headers: put it back, and name it again.
		h["Http2-Settings"] = s
		h["Connection"] = []string{"Upgrade, HTTP2-Settings"}
	}
	if len(v) != 1 || v[0] != proto {
		h["Upgrade"] = []string{proto}
	}
}

// allowedUpgrade returns the first protocol of an Upgrade list that the upstream allows,
// or "".
func (up *upstream) allowedUpgrade(list string) string {
	for list != "" {
		var proto string
		proto, list, _ = strings.Cut(list, ",")
		proto = strings.TrimSpace(proto)
		name, _, _ := strings.Cut(proto, "/")
		for _, allowed := range up.upgrades {
			if strings.EqualFold(name, allowed) {
				return proto
			}
		}
	}
	return ""
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

// cleanBasePath reports whether a target's path is one the forwarded paths can be
// joined to safely: empty, or clean (cleanPath) without a dot-like segment, a '%' in its
// decoded form (a second decoding would change it) or a dot-segment in its escaped form.
// Forwarded paths then start with it and stay below it.
func cleanBasePath(t *url.URL) bool {
	if t.Path == "" {
		return true
	}
	return t.Path[0] == '/' && cleanPath(t.Path) == t.Path && !hasDotLikeSegment(t.Path) &&
		strings.IndexByte(t.Path, '%') < 0 && dotSegments(t.EscapedPath()) == 0
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
// as "/admin". ok is false for a path that must be refused: one not starting with "/"
// (the asterisk form "*" included), one in which percent-encoding hides a dot-segment
// ("/api/%2e%2e/admin", "/api/..%2fadmin"), which the proxy and the upstream could
// resolve differently, or one whose cleaned form still has a segment that some backend
// reads as a dot-segment (see dotLike: "..;x", "..\x", "%2e%2e" once more encoded,
// "...").
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
	clean = cleanPath(p)
	if hasDotLikeSegment(clean) {
		return "", false
	}
	return clean, true
}

// hasDotLikeSegment reports whether a cleaned path has a segment that dotLike flags.
// It does not allocate unless a segment holds a '%'.
func hasDotLikeSegment(p string) bool {
	for len(p) > 0 {
		seg := p
		if i := strings.IndexByte(p, '/'); i >= 0 {
			seg, p = p[:i], p[i+1:]
		} else {
			p = ""
		}
		if dotLike(seg) {
			return true
		}
	}
	return false
}

// maxUnescapes bounds how many more times dotLike decodes a segment.
const maxUnescapes = 4

// dotLike reports whether a decoded path segment could be taken for "." or ".." by a
// backend that decodes again (%252e%252e is "%2e%2e" once decoded), splits on
// backslashes (IIS, Windows), drops ";" parameters (Tomcat, Jetty: "..;x"), or trims
// trailing dots and spaces (Windows: "...", ".. "): after up to maxUnescapes further
// decodings, some piece between slashes or backslashes, up to its first ';', consists of
// dots and spaces with at least one dot.
func dotLike(seg string) bool {
	if strings.IndexByte(seg, '.') < 0 && strings.IndexByte(seg, '%') < 0 {
		return false // the common segment: nothing to look at
	}
	for range maxUnescapes {
		if strings.IndexByte(seg, '%') < 0 {
			break
		}
		d, err := url.PathUnescape(seg)
		if err != nil || d == seg {
			break
		}
		seg = d
	}
	for len(seg) > 0 {
		piece := seg
		if i := strings.IndexAny(seg, "/\\"); i >= 0 {
			piece, seg = seg[:i], seg[i+1:]
		} else {
			seg = ""
		}
		if i := strings.IndexByte(piece, ';'); i >= 0 {
			piece = piece[:i]
		}
		if strings.IndexByte(piece, '.') >= 0 && strings.Trim(piece, ". ") == "" {
			return true
		}
	}
	return false
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
// only the routes of the candidate hosts are searched. A list of more than prefixTrieMin
// routes is searched through a prefix trie, in time bounded by the length of the path
// rather than by the number of routes.
type routeIndex struct {
	exact    map[string]routeList // host → its routes
	wildcard map[string]routeList // "example.com" (from "*.example.com") → its routes
	any      routeList            // routes without a host
}

// newRouteIndex indexes routes, which are in config order.
func newRouteIndex(routes []*route) routeIndex {
	exact, wildcard := map[string][]*route{}, map[string][]*route{}
	var hostless []*route
	for _, rt := range routes {
		switch {
		case rt.host == "":
			hostless = append(hostless, rt)
		case strings.HasPrefix(rt.host, "*."):
			k := rt.host[2:]
			wildcard[k] = append(wildcard[k], rt)
		default:
			exact[rt.host] = append(exact[rt.host], rt)
		}
	}
	ix := routeIndex{
		exact:    make(map[string]routeList, len(exact)),
		wildcard: make(map[string]routeList, len(wildcard)),
		any:      newRouteList(hostless),
	}
	for h, l := range exact {
		ix.exact[h] = newRouteList(l)
	}
	for h, l := range wildcard {
		ix.wildcard[h] = newRouteList(l)
	}
	return ix
}

// lookup returns the first route in config order that matches, or nil. host must be
// normalised (normalizeHost) and path cleaned (routingPath).
//
// The candidates come from up to three kinds of list: the host's exact routes, the
// routes of every wildcard suffix of the host, and the host-less routes. Each list's
// first match in config order is its best; the answer is the best of those.
func (ix *routeIndex) lookup(host, path, method string) *route {
	var best *route
	if host != "" {
		if l, ok := ix.exact[host]; ok {
			best = l.first(path, method, best)
		}
		if len(ix.wildcard) > 0 {
			// "*.example.com" matches any name ending in ".example.com" but not the apex:
			// try the suffix after each dot, requiring a non-empty first label.
			for i := strings.IndexByte(host, '.'); i > 0 && i < len(host)-1; {
				if l, ok := ix.wildcard[host[i+1:]]; ok {
					best = l.first(path, method, best)
				}
				j := strings.IndexByte(host[i+1:], '.')
				if j < 0 {
					break
				}
				i += j + 1
			}
		}
	}
	return ix.any.first(path, method, best)
}

// prefixTrieMin is the longest list of routes searched one by one; a longer one gets a
// prefix trie.
const prefixTrieMin = 8

// routeList is one host's (or the host-less) routes, in config order.
type routeList struct {
	routes []*route
	trie   *prefixTrie // nil for a list of at most prefixTrieMin routes
}

func newRouteList(routes []*route) routeList {
	l := routeList{routes: routes}
	if len(routes) > prefixTrieMin {
		l.trie = newPrefixTrie(routes)
	}
	return l
}

// first returns the first route of l, in config order, that matches and comes before
// best, else best.
func (l *routeList) first(path, method string, best *route) *route {
	if l.trie != nil {
		return l.trie.first(path, method, best)
	}
	return firstMatch(l.routes, path, method, best)
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

// prefixTrie finds the first route, in config order, of a list whose prefix the path
// starts with and whose methods allow the request. It is a radix tree of the routes'
// prefixes: the path is walked once, byte by byte along the edges, and the routes of
// each prefix met on the way (the prefixes of the path, no others) are candidates if the
// prefix ends at a segment boundary of the path (prefixMatch: "/api" matches "/api/x",
// not "/apiary"), so this finds exactly the routes rt.matches would, whatever the
// prefixes look like.
type prefixTrie struct {
	// nodes[0] is the root; the children of a node are contiguous, in the order of their
	// first bytes in its indices.
	nodes []prefixNode
}

type prefixNode struct {
	label    string   // the bytes from the parent to here (the root's: the prefix shared by all)
	indices  string   // the first byte of each child's label
	routes   []*route // the routes whose prefix ends here, in config order
	child0   int32    // the first child's position in nodes
	minIndex int32    // the smallest route index in this node's subtree
}

// newPrefixTrie builds the trie of routes, which are in config order. Route indices
// must fit in an int32.
func newPrefixTrie(routes []*route) *prefixTrie {
	byPrefix := map[string][]*route{}
	prefixes := make([]string, 0, len(routes))
	for _, rt := range routes {
		if byPrefix[rt.prefix] == nil {
			prefixes = append(prefixes, rt.prefix)
		}
		byPrefix[rt.prefix] = append(byPrefix[rt.prefix], rt)
	}
	slices.Sort(prefixes)

	// Breadth first, so that each node's children are appended together. A group is the
	// sorted prefixes below one node, which all start with the same depth bytes.
	type group struct {
		prefixes []string
		depth    int
	}
	t := &prefixTrie{nodes: make([]prefixNode, 1, 2*len(prefixes))}
	queue := []group{{prefixes, 0}}
	all := make([]*route, 0, len(routes))      // the nodes' routes, sharing one array
	children := make([]int32, 0, cap(t.nodes)) // each node's number of children
	for n := 0; n < len(queue); n++ {
		g := queue[n]
		ps := g.prefixes
		d := commonPrefixLen(ps[0], ps[len(ps)-1]) // sorted: the shortest common prefix
		// node stays valid: t.nodes never grows, a radix tree having < 2×len(prefixes) nodes.
		node := &t.nodes[n]
		node.label = ps[0][g.depth:d]
		if len(ps[0]) == d { // ps[0] ends here; it sorts before the longer ones
			start := len(all)
			all = append(all, byPrefix[ps[0]]...)
			node.routes = all[start:len(all):len(all)]
			ps = ps[1:]
		}
		node.child0 = int32(len(t.nodes))
		for len(ps) > 0 { // a child per distinct next byte
			j := 1
			for j < len(ps) && ps[j][d] == ps[0][d] {
				j++
			}
			t.nodes = append(t.nodes, prefixNode{})
			queue = append(queue, group{ps[:j], d})
			ps = ps[j:]
		}
		children = append(children, int32(len(t.nodes))-node.child0)
	}

	// The indices of all nodes in one string: firsts[i] is node i's first byte, and a
	// node's children are contiguous, so their first bytes are too.
	first := make([]byte, len(t.nodes))
	for i := 1; i < len(t.nodes); i++ {
		first[i] = t.nodes[i].label[0]
	}
	firsts := string(first)
	// Children come after their parent: compute minIndex from the leaves up. Every
	// subtree holds a route: a leaf is where a prefix ends.
	for i := len(t.nodes) - 1; i >= 0; i-- {
		node := &t.nodes[i]
		c0, c1 := node.child0, node.child0+children[i]
		node.indices = firsts[c0:c1]
		node.minIndex = math.MaxInt32
		if len(node.routes) > 0 {
			node.minIndex = int32(node.routes[0].index)
		}
		for _, c := range t.nodes[c0:c1] {
			node.minIndex = min(node.minIndex, c.minIndex)
		}
	}
	t.nodes = slices.Clone(t.nodes) // without the spare capacity
	return t
}

// first returns the first route of t, in config order, that matches and comes before
// best, else best.
func (t *prefixTrie) first(path, method string, best *route) *route {
	n := &t.nodes[0]
	if best != nil && int(n.minIndex) >= best.index || !strings.HasPrefix(path, n.label) {
		return best
	}
	rest := path[len(n.label):]
	for {
		// The routes here match at a segment boundary only (prefixMatch).
		if len(n.routes) > 0 && (rest == "" || rest[0] == '/' || path[len(path)-len(rest)-1] == '/') {
			best = firstMethodMatch(n.routes, method, best)
		}
		if rest == "" {
			return best
		}
		// The child whose label starts with rest[0], if any. For the few children most
		// nodes have, a loop is faster than calling IndexByte.
		i := 0
		if len(n.indices) <= 16 {
			for i < len(n.indices) && n.indices[i] != rest[0] {
				i++
			}
		} else if i = strings.IndexByte(n.indices, rest[0]); i < 0 {
			i = len(n.indices)
		}
		if i == len(n.indices) {
			return best
		}
		n = &t.nodes[int(n.child0)+i]
		if best != nil && int(n.minIndex) >= best.index {
			return best // nothing below comes earlier
		}
		// rest[0] is the label's first byte: compare the others.
		if len(n.label) > 1 && !strings.HasPrefix(rest[1:], n.label[1:]) {
			return best
		}
		rest = rest[len(n.label):]
	}
}

// firstMethodMatch returns the first route of l (routes whose prefix the path starts
// with) that allows method and comes before best, else best.
func firstMethodMatch(l []*route, method string, best *route) *route {
	for _, rt := range l {
		if best != nil && rt.index >= best.index {
			break
		}
		if rt.allows(method) {
			return rt
		}
	}
	return best
}

// commonPrefixLen returns the length of the longest common prefix of a and b.
func commonPrefixLen(a, b string) int {
	n := min(len(a), len(b))
	for i := range n {
		if a[i] != b[i] {
			return i
		}
	}
	return n
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
