package proxy

import (
	"math"
	"slices"
	"strings"
	"unicode/utf8"
)

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
			node.minIndex = node.routes[0].index
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
	if best != nil && n.minIndex >= best.index || !strings.HasPrefix(path, n.label) {
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
		if best != nil && n.minIndex >= best.index {
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
