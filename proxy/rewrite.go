package proxy

import (
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/textproto"
	"net/url"
	"strings"
)

// rewrite is the route's httputil.ReverseProxy Rewrite function for the target picked
// (upstream.pick). The outbound request gets the cleaned path (with the prefix removed
// when the route strips it), the target, only an allowed upgrade (filterUpgrade), and
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
func (rt *route) rewrite(pr *httputil.ProxyRequest, target *url.URL) {
	out := pr.Out.URL
	out.Path, out.RawPath = rt.forwardPath(pr.In.URL)
	in, h := pr.In.Header, pr.Out.Header
	rt.up.filterUpgrade(h, in)
	pr.SetURL(target)
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

// fromTrustedProxy reports whether a request's peer (its RemoteAddr) is in
// server.trusted_proxies.
func (rt *route) fromTrustedProxy(remoteAddr string) bool {
	if rt.trusted == nil || len(*rt.trusted) == 0 {
		return false
	}
	ap, err := netip.ParseAddrPort(remoteAddr)
	if err != nil {
		return false
	}
	a := ap.Addr().Unmap()
	for _, p := range *rt.trusted {
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
