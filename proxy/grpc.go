package proxy

import (
	"net/http"
	"strconv"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// gRPC through the proxy. A gRPC call is an HTTP/2 request and response of Content-Type
// application/grpc (or application/grpc+proto, ...; gRPC-Web is not gRPC here) whose
// outcome is the grpc-status code, not the HTTP status: a server answers 200 and puts
// grpc-status in the trailers after the messages, or, when it fails before sending any
// message, in the response headers alone (a trailers-only response). ReverseProxy relays
// the calls as they are (HTTP/2 on both sides, TE: trailers and the trailers kept); this
// file classifies them and answers gRPC clients in their own terms. Its hooks in
// exchange.go and responses.go are marked "gRPC hook".
//
// Classification (failure.grpc_codes lists the failing codes):
//   - A trailers-only response is classified when its headers arrive, as any response:
//     the grpc-status there is the outcome (FailureStatus, or Success).
//   - Otherwise the headers count as a Success when they arrive, as for any response,
//     so a half-open trial does not hold its slot for the length of a stream, and the
//     slow-call rule measures the time to the headers. When the stream ends, a failing
//     grpc-status in the trailers (or none at all: the call failed) takes that success
//     back as a late failure, exactly as a body the upstream breaks off (breaker.
//     LateFailure, Result FailureBody, Recorder.BodyBroken): a trial whose success
//     already closed the circuit is of an older generation by then, and its late
//     failure then counts in the closed window, like any other.
//   - A stream the upstream cuts (a reset, a connection closed) is a broken body.
//
// An open circuit (or a full bulkhead) answers a gRPC client with a trailers-only
// response: HTTP 200, grpc-status 14 (UNAVAILABLE) and a grpc-message, rather than the
// fallback's HTTP 503 and JSON body; a 502 or 504 of the proxy's own becomes grpc-status
// 14 or 4 (DEADLINE_EXCEEDED). grpc-timeout bounds the upstream request like the
// upstream's timeout (the shorter of the two applies).

const (
	headerGRPCStatus  = "Grpc-Status"
	headerGRPCMessage = "Grpc-Message"
	headerGRPCTimeout = "Grpc-Timeout"
	contentTypeGRPC   = "application/grpc"

	grpcUnknown          = 2
	grpcDeadlineExceeded = 4
	grpcUnavailable      = 14
	grpcMaxCode          = 16
)

var (
	grpcCT           = readOnly(contentTypeGRPC)
	grpcStatusValues = func() (v [grpcMaxCode + 1][]string) {
		for i := range v {
			v[i] = readOnly(strconv.Itoa(i))
		}
		return v
	}()
)

// isGRPC reports whether h's Content-Type is gRPC's: application/grpc, alone or followed
// by "+" (a codec) or ";" (parameters). gRPC-Web (application/grpc-web) is not.
func isGRPC(h http.Header) bool {
	v := h[headerCT]
	if len(v) == 0 {
		return false
	}
	ct := v[0]
	if len(ct) < len(contentTypeGRPC) || ct[:len(contentTypeGRPC)] != contentTypeGRPC {
		return false
	}
	return len(ct) == len(contentTypeGRPC) || ct[len(contentTypeGRPC)] == '+' || ct[len(contentTypeGRPC)] == ';'
}

// grpcCode parses a grpc-status value; ok is false for anything but 0-16.
func grpcCode(v []string) (int, bool) {
	if len(v) != 1 {
		return 0, false
	}
	n, err := strconv.Atoi(v[0])
	return n, err == nil && n >= 0 && n <= grpcMaxCode
}

// grpcFails reports whether grpc-status code counts as a failure for up.
func (up *upstream) grpcFails(code int) bool { return up.grpcFailure&(1<<code) != 0 }

// reportGRPC classifies a gRPC answer's headers (status code; called by WriteHeader
// before the outcome is reported): a trailers-only response is reported by its
// grpc-status, and true is returned; for any other 200 gRPC answer the exchange watches
// its trailers (grpcTrailers) and false is returned, as for every other response, which
// is then reported by its HTTP status.
func (e *exchange) reportGRPC(code int) bool {
	if code != http.StatusOK {
		return false
	}
	h := e.w.Header()
	if !isGRPC(h) {
		return false
	}
	v, ok := h[headerGRPCStatus]
	if !ok {
		e.grpc = true
		return false
	}
	if c, valid := grpcCode(v); valid && !e.up.grpcFails(c) {
		e.report(Success, breaker.Success, breaker.Success, code)
	} else if !valid && !e.up.grpcFails(grpcUnknown) {
		e.report(Success, breaker.Success, breaker.Success, code)
	} else {
		e.report(FailureStatus, breaker.Failure, breaker.Failure, code)
	}
	return true
}

// grpcTrailers runs when a gRPC answer whose headers counted as a success ended without
// a break (ReverseProxy returned): a failing grpc-status in its trailers, or none (the
// call ended without a status: UNKNOWN), takes the success back as a late failure.
func (e *exchange) grpcTrailers() {
	if e.writeErr || e.client.Err() != nil {
		return // the client went away: not the upstream's outcome
	}
	h := e.w.Header()
	v, ok := h[http.TrailerPrefix+headerGRPCStatus] // trailers the upstream did not announce
	if !ok {
		v = h[headerGRPCStatus]
	}
	c, valid := grpcCode(v)
	if !valid {
		c = grpcUnknown
	}
	if !e.up.grpcFails(c) {
		return
	}
	if e.tracked {
		e.target.gate.LateFailure(e.treceipt)
	}
	if e.result != Success {
		return
	}
	e.result = FailureBody
	if b := e.up.breaker; b != nil {
		b.LateFailure(e.receipt)
	}
	if rec := e.p.rec; rec != nil {
		rec.BodyBroken(e.up.name, e.p.now().Sub(e.start))
	}
}

// rejectGRPC answers a gRPC request the circuit (res Rejected, with Allow's ticket and
// error) or the bulkhead (RejectedConcurrency) refused: a trailers-only response with
// grpc-status 14 UNAVAILABLE, a grpc-message naming the upstream, and the headers of
// the HTTP answer (HeaderCircuit or HeaderLimit, Retry-After).
func rejectGRPC(w http.ResponseWriter, up *upstream, res Result, tk breaker.Ticket, err error) {
	h := w.Header()
	h[headerCT] = grpcCT
	h[headerGRPCStatus] = grpcStatusValues[grpcUnavailable]
	var msg string
	if res == RejectedConcurrency {
		h[HeaderLimit] = limitConcurrency
		h[headerRetryAfter] = retryAfterOne
		msg = "fuseproxy: upstream " + up.name + " is at its concurrency limit"
	} else {
		state := rejectState(err)
		secs := retryAfterSeconds(tk.RetryAfter())
		h[HeaderCircuit] = state
		h[headerRetryAfter] = []string{strconv.FormatInt(secs, 10)}
		msg = "fuseproxy: circuit " + state[0] + " for upstream " + up.name + "; retry after " + strconv.FormatInt(secs, 10) + "s"
	}
	h[headerGRPCMessage] = []string{grpcPercentEncode(msg)}
	w.WriteHeader(http.StatusOK)
}

// writeGRPCError answers a gRPC request with a trailers-only response for one of the
// proxy's own gateway errors: 504 is DEADLINE_EXCEEDED, 502 UNAVAILABLE.
func writeGRPCError(w http.ResponseWriter, status int, upstream string) {
	code, msg := grpcUnavailable, "fuseproxy: upstream "+upstream+" failed ("+strconv.Itoa(status)+")"
	if status == http.StatusGatewayTimeout {
		code, msg = grpcDeadlineExceeded, "fuseproxy: upstream "+upstream+" timed out"
	}
	h := w.Header()
	h[headerCT] = grpcCT
	h[headerGRPCStatus] = grpcStatusValues[code]
	h[headerGRPCMessage] = []string{grpcPercentEncode(msg)}
	w.WriteHeader(http.StatusOK)
}

// grpcPercentEncode encodes a grpc-message: bytes outside printable ASCII, and '%',
// as %XX (gRPC over HTTP/2, "Responses").
func grpcPercentEncode(s string) string {
	const hex = "0123456789ABCDEF"
	var b []byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c <= 0x7e && c != '%' {
			if b != nil {
				b = append(b, c)
			}
			continue
		}
		if b == nil {
			b = append(make([]byte, 0, len(s)+8), s[:i]...)
		}
		b = append(b, '%', hex[c>>4], hex[c&0xf])
	}
	if b == nil {
		return s
	}
	return string(b)
}

// grpcTimeout returns the deadline a gRPC request's grpc-timeout asks for (at most 8
// digits and a unit: H, M, S, m, u or n), or the upstream's timeout when that is
// shorter or the header is missing or malformed, or the request is not gRPC (then 0
// means none). Only HTTP/2 requests are looked at: gRPC needs HTTP/2, and HTTP/1.1
// requests pay one comparison.
func grpcTimeout(r *http.Request, timeout time.Duration) time.Duration {
	if r.ProtoMajor != 2 {
		return timeout
	}
	v := r.Header[headerGRPCTimeout]
	if len(v) != 1 || len(v[0]) < 2 || len(v[0]) > 9 || !isGRPC(r.Header) {
		return timeout
	}
	s := v[0]
	n, err := strconv.ParseUint(s[:len(s)-1], 10, 64)
	if err != nil {
		return timeout
	}
	var unit time.Duration
	switch s[len(s)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return timeout
	}
	d := time.Duration(n) * unit
	if d/unit != time.Duration(n) { // overflow: hours beyond 290 years
		return timeout
	}
	if timeout > 0 && timeout < d {
		return timeout
	}
	return max(d, 1) // 0 would mean no deadline; "0n" is already past
}
