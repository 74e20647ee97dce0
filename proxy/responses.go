package proxy

import (
	"errors"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
)

// Response headers fuseproxy sets on its own answers.
const (
	// HeaderCircuit marks a rejection by the circuit breaker; its value is the circuit's
	// state as the rejection saw it ("open" or "half_open"). Proxied responses never
	// carry it, so a client can tell a rejection from an upstream's own 503.
	HeaderCircuit    = "X-Fuse-Circuit"
	headerRetryAfter = "Retry-After"
	headerCT         = "Content-Type"
	contentTypeJSON  = "application/json"
	contentTypeText  = "text/plain; charset=utf-8"
)

// HeaderFallback names the fallback upstream (fallback.upstream) that served a request its
// upstream's circuit rejected; such an answer also carries HeaderCircuit with the
// rejecting circuit's state. Other proxied responses never carry it.
const HeaderFallback = "X-Fuse-Fallback"

// served marks the answers of a fallback upstream: HeaderCircuit and HeaderFallback
// values, read-only.
type served struct {
	state, by []string
}

// mark sets the headers on h.
func (s *served) mark(h http.Header) {
	h[HeaderCircuit] = s.state
	h[HeaderFallback] = s.by
}

// HeaderLimit marks a request the proxy refused because one of its own limits was
// reached, not because of the circuit: its value names the limit. The only one today is
// "concurrency", the upstream's bulkhead (max_concurrent_requests). Proxied responses
// never carry it.
const HeaderLimit = "X-Fuse-Limit"

// fallback is an upstream's rejection response, precomputed when the routing table is
// built. Its header value slices are shared by every rejection and never modified (they
// have cap == len, so appending to one copies it).
type fallback struct {
	status int
	header http.Header // configured headers plus Content-Type, canonical keys
	body   []byte      // the configured body; nil: the JSON body below
	// jsonPrefix is the JSON body up to the state: {"error":"circuit_open","upstream":"x","state":"
	jsonPrefix []byte
	open       []string // HeaderCircuit values
	halfOpen   []string
}

func newFallback(name string, f config.Fallback) fallback {
	fb := fallback{
		status:   f.Status,
		header:   make(http.Header, len(f.Headers)+1),
		open:     readOnly(breaker.Open.String()),
		halfOpen: readOnly(breaker.HalfOpen.String()),
	}
	for k, v := range f.Headers {
		fb.header[http.CanonicalHeaderKey(k)] = readOnly(v)
	}
	if f.Body != "" {
		fb.body = []byte(f.Body)
	}
	if _, ok := fb.header[headerCT]; !ok {
		ct := contentTypeJSON
		if fb.body != nil {
			ct = contentTypeText
		}
		fb.header[headerCT] = readOnly(ct)
	}
	fb.jsonPrefix = append([]byte(`{"error":"circuit_open","upstream":`), appendJSONString(nil, name)...)
	fb.jsonPrefix = append(fb.jsonPrefix, `,"state":"`...)
	return fb
}

func readOnly(v string) []string { return []string{v}[:1:1] }

// reject answers a request the circuit rejected with err and ticket (from breaker.Allow):
// the fallback status and headers, Retry-After (the ticket's hint, the rest of the open
// period, in whole seconds, rounded up, at least 1), HeaderCircuit, and the configured
// body or a JSON one:
//
//	{"error":"circuit_open","upstream":"payments","state":"open","retry_after_seconds":12}
func (fb *fallback) reject(w http.ResponseWriter, tk breaker.Ticket, err error) {
	state := fb.open
	if errors.Is(err, breaker.ErrTooManyTrials) {
		state = fb.halfOpen
	}
	secs := retryAfterSeconds(tk.RetryAfter())
	h := w.Header()
	for k, v := range fb.header {
		h[k] = v
	}
	h[headerRetryAfter] = []string{strconv.FormatInt(secs, 10)}
	h[HeaderCircuit] = state
	w.WriteHeader(fb.status)
	if fb.body != nil {
		_, _ = w.Write(fb.body)
		return
	}
	body := make([]byte, 0, len(fb.jsonPrefix)+48)
	body = append(body, fb.jsonPrefix...)
	body = append(body, state[0]...)
	body = append(body, `","retry_after_seconds":`...)
	body = strconv.AppendInt(body, secs, 10)
	body = append(body, '}')
	_, _ = w.Write(body)
}

// retryAfterSeconds rounds d up to whole seconds, at least 1.
func retryAfterSeconds(d time.Duration) int64 {
	s := int64((d + time.Second - 1) / time.Second)
	return max(s, 1)
}

// limitResponse is an upstream's answer to a request its bulkhead refused, precomputed
// when the routing table is built: the fallback's status and headers, Retry-After: 1,
// HeaderLimit, and the configured body or
//
//	{"error":"concurrency_limit","upstream":"payments","max_concurrent_requests":1024}
type limitResponse struct {
	status int
	header http.Header // shared read-only slices
	body   []byte
}

var (
	limitConcurrency = readOnly("concurrency")
	retryAfterOne    = readOnly("1")
)

func newLimitResponse(name string, cu *config.Upstream, fb *fallback) limitResponse {
	lr := limitResponse{status: fb.status, header: make(http.Header, len(fb.header)+2), body: fb.body}
	for k, v := range fb.header {
		lr.header[k] = v
	}
	lr.header[headerRetryAfter] = retryAfterOne
	lr.header[HeaderLimit] = limitConcurrency
	if lr.body == nil {
		b := append([]byte(`{"error":"concurrency_limit","upstream":`), appendJSONString(nil, name)...)
		b = append(b, `,"max_concurrent_requests":`...)
		b = strconv.AppendInt(b, int64(cu.MaxConcurrentRequests), 10)
		lr.body = append(b, '}')
	}
	return lr
}

func (lr *limitResponse) write(w http.ResponseWriter) {
	h := w.Header()
	for k, v := range lr.header {
		h[k] = v
	}
	w.WriteHeader(lr.status)
	_, _ = w.Write(lr.body)
}

// errorBody returns {"error":code,"upstream":name}.
func errorBody(code, upstream string) []byte {
	b := append([]byte(`{"error":`), appendJSONString(nil, code)...)
	b = append(b, `,"upstream":`...)
	b = appendJSONString(b, upstream)
	return append(b, '}')
}

// writeJSON writes one of fuseproxy's own JSON error responses.
func writeJSON(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h.Set(headerCT, contentTypeJSON)
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// writeProblem writes {"error":code,"message":msg} with status.
func writeProblem(w http.ResponseWriter, status int, code, msg string) {
	b := append([]byte(`{"error":`), appendJSONString(nil, code)...)
	b = append(b, `,"message":`...)
	b = appendJSONString(b, msg)
	writeJSON(w, status, append(b, '}'))
}

// maxEcho bounds how much of a client's host or path an error message repeats.
const maxEcho = 256

// noRoute answers a request no route matches:
//
//	{"error":"no_route","message":"no route for GET example.com/x"}
func noRoute(w http.ResponseWriter, r *http.Request) {
	writeProblem(w, http.StatusNotFound, "no_route",
		"no route for "+truncate(r.Method)+" "+truncate(r.Host)+truncate(r.URL.Path))
}

func truncate(s string) string {
	if len(s) <= maxEcho {
		return s
	}
	return s[:maxEcho] + "..."
}

// appendJSONString appends s as a JSON string, escaped as encoding/json does (HTML-safe;
// invalid UTF-8 becomes U+FFFD).
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c == '\t':
				b = append(b, '\\', 't')
			case c < 0x20 || c == '<' || c == '>' || c == '&':
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
		default:
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
