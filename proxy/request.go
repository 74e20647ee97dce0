package proxy

import (
	"net/http"
	"net/url"
	"path"
	"strings"
)

// chunkedBody reports whether the request's body was framed by chunked transfer coding
// (net/http accepts no other transfer coding).
func chunkedBody(r *http.Request) bool {
	for _, te := range r.TransferEncoding {
		if te == "chunked" {
			return true
		}
	}
	return false
}

// validUpgrade reports whether the Upgrade header is printable ASCII, as ReverseProxy
// requires; refusing it here keeps the client's mistake from counting as an upstream
// transport error.
func validUpgrade(h http.Header) bool {
	for _, v := range h["Upgrade"] {
		for i := 0; i < len(v); i++ {
			if v[i] < ' ' || v[i] > '~' {
				return false
			}
		}
	}
	return true
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
	for seg := range strings.SplitSeq(p, "/") {
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
// backslashes (IIS, Windows), drops ";" parameters (Tomcat, Jetty: "..;x"), stops at a
// decoded NUL, '?' or '#' (C string handling, a second URL parse: "..%00", "..%3f"), or
// trims trailing dots and white space (Windows: "...", ".. ", "..%09"): after up to
// maxUnescapes further decodings, some piece between slashes or backslashes, up to its
// first ';', NUL, '?' or '#', consists of dots and white space with at least one dot.
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
	for piece := range strings.FieldsFuncSeq(seg, isPathSeparator) {
		if i := strings.IndexAny(piece, ";\x00?#"); i >= 0 {
			piece = piece[:i]
		}
		if strings.IndexByte(piece, '.') >= 0 && strings.Trim(piece, ". \t\r\n") == "" {
			return true
		}
	}
	return false
}

// isPathSeparator: a backend may split a path on '/' or '\\'.
func isPathSeparator(r rune) bool { return r == '/' || r == '\\' }

// dotSegments counts the "." and ".." segments of a slash-separated path. Decoding can
// only add such segments (from %2e or %2f), so an escaped path with fewer of them than
// its decoded form hides one.
func dotSegments(p string) int {
	n := 0
	for seg := range strings.SplitSeq(p, "/") {
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
