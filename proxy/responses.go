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

// fallback is an upstream's rejection response (its fallback section) and its answer to
// a request its bulkhead refused, precomputed when the routing table is built. It names
// no upstream (the JSON bodies are written with the name at the time), so upstreams with
// equal fallback sections share one (fallbacks; most have the default). It is immutable:
// its header value slices are shared by every answer and never modified (they have cap
// == len, so appending to one copies it).
type fallback struct {
	status int
	header http.Header // configured headers plus Content-Type, canonical keys
	body   []byte      // the configured body; nil: the JSON bodies below
	// limitHeader is header plus Retry-After: 1 and HeaderLimit (see writeLimit).
	limitHeader http.Header
}

// Read-only HeaderCircuit values.
var (
	stateOpen     = readOnly(breaker.Open.String())
	stateHalfOpen = readOnly(breaker.HalfOpen.String())
)

func newFallback(f config.Fallback) *fallback {
	fb := &fallback{
		status: f.Status,
		header: make(http.Header, len(f.Headers)+1),
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
	fb.limitHeader = make(http.Header, len(fb.header)+2)
	for k, v := range fb.header {
		fb.limitHeader[k] = v
	}
	fb.limitHeader[headerRetryAfter] = retryAfterOne
	fb.limitHeader[HeaderLimit] = limitConcurrency
	return fb
}

// fallbacks builds a routing table's fallback responses, one per distinct fallback
// section without headers (the common case: thousands of upstreams share the default);
// a section with headers gets its own. It also shares the upstreams' failure tables.
type fallbacks struct {
	answers  map[fallbackKey]*fallback
	statuses map[config.StatusSet]*config.StatusSet
}

func newFallbacks() fallbacks {
	return fallbacks{answers: map[fallbackKey]*fallback{}, statuses: map[config.StatusSet]*config.StatusSet{}}
}

// status returns the table equal to s that the routing table's upstreams share.
func (fs fallbacks) status(s config.StatusSet) *config.StatusSet {
	p := fs.statuses[s]
	if p == nil {
		p = &s
		fs.statuses[s] = p
	}
	return p
}

type fallbackKey struct {
	status int
	body   string
}

func (fs fallbacks) get(f config.Fallback) *fallback {
	if len(f.Headers) > 0 {
		return newFallback(f)
	}
	k := fallbackKey{f.Status, f.Body}
	fb := fs.answers[k]
	if fb == nil {
		fb = newFallback(f)
		fs.answers[k] = fb
	}
	return fb
}

// state is the HeaderCircuit value of a rejection with err.
func rejectState(err error) []string {
	if errors.Is(err, breaker.ErrTooManyTrials) {
		return stateHalfOpen
	}
	return stateOpen
}

func readOnly(v string) []string { return []string{v}[:1:1] }

// reject answers a request the circuit rejected with err and ticket (from breaker.Allow):
// the fallback status and headers, Retry-After (the ticket's hint, the rest of the open
// period, in whole seconds, rounded up, at least 1), HeaderCircuit, and the configured
// body or a JSON one:
//
//	{"error":"circuit_open","upstream":"payments","state":"open","retry_after_seconds":12}
func (fb *fallback) reject(w http.ResponseWriter, upstream string, tk breaker.Ticket, err error) {
	state := rejectState(err)
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
	body := make([]byte, 0, len(upstream)+96)
	body = append(body, `{"error":"circuit_open","upstream":`...)
	body = appendJSONString(body, upstream)
	body = append(body, `,"state":"`...)
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

var (
	limitConcurrency = readOnly("concurrency")
	retryAfterOne    = readOnly("1")
)

// writeLimit answers a request the upstream's bulkhead refused (max is its
// max_concurrent_requests): the fallback's status and headers, Retry-After: 1,
// HeaderLimit, and the configured body or
//
//	{"error":"concurrency_limit","upstream":"payments","max_concurrent_requests":1024}
func (fb *fallback) writeLimit(w http.ResponseWriter, upstream string, max int64) {
	h := w.Header()
	for k, v := range fb.limitHeader {
		h[k] = v
	}
	w.WriteHeader(fb.status)
	if fb.body != nil {
		_, _ = w.Write(fb.body)
		return
	}
	b := make([]byte, 0, len(upstream)+96)
	b = append(b, `{"error":"concurrency_limit","upstream":`...)
	b = appendJSONString(b, upstream)
	b = append(b, `,"max_concurrent_requests":`...)
	b = strconv.AppendInt(b, max, 10)
	_, _ = w.Write(append(b, '}'))
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
