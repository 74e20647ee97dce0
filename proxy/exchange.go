package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// Result is how the proxy classified one request, as reported to a Recorder. Its String
// form is meant as a metric label value.
//
// The failure results are exactly the outcomes the breaker counted as failures. A
// transport error or timeout that the upstream's failure settings exclude is Ignored,
// like a request whose client went away.
type Result uint8

// The results of a request. The first seven partition the requests routed: each is
// reported to Recorder.Request exactly once with one of them. FailureBody and
// WouldReject are facts reported besides (Recorder.BodyBroken, Recorder.WouldReject),
// never through Recorder.Request.
const (
	// Success: the upstream answered with a status the failure settings do not list.
	Success Result = iota
	// FailureStatus: the upstream answered with a status counted as a failure.
	FailureStatus
	// FailureTransport: the upstream could not be reached or broke the connection
	// (the client got 502).
	FailureTransport
	// FailureTimeout: the upstream did not answer in time (the client got 504).
	FailureTimeout
	// Rejected: the circuit rejected the request; it never reached the upstream.
	Rejected
	// Ignored: the outcome did not count for the breaker: the client cancelled its
	// request or failed to send its body, or the failure settings exclude the error.
	Ignored
	// RejectedConcurrency: the upstream's bulkhead (max_concurrent_requests) was full;
	// the request got the fallback and never reached the breaker or the upstream.
	RejectedConcurrency
	// FailureBody: the upstream broke its response body off after headers counted as a
	// Success (a reset, a truncated body, the upstream's timeout mid-body), or a gRPC
	// answer's trailers carried a failing grpc-status (grpc.go). The request
	// stays a Success in the partition; the breaker takes that success back as a
	// failure (breaker.LateFailure) and the Recorder gets BodyBroken.
	FailureBody
	// WouldReject: a metrics-only breaker admitted a request it would have rejected
	// (Recorder.WouldReject, besides the request's real result).
	WouldReject
)

// NumOutcomes is the number of Results that partition the requests routed (Outcomes).
const NumOutcomes = 7

// Outcomes lists the Results reported through Recorder.Request, which partition the
// requests routed, for pre-registering metric label values.
func Outcomes() []Result {
	return []Result{Success, FailureStatus, FailureTransport, FailureTimeout, Rejected, Ignored, RejectedConcurrency}
}

// Results lists every Result: the outcomes, then FailureBody and WouldReject.
func Results() []Result { return append(Outcomes(), FailureBody, WouldReject) }

// String returns the result's metric label value, such as "failure_status".
func (r Result) String() string {
	switch r {
	case Success:
		return "success"
	case FailureStatus:
		return "failure_status"
	case FailureTransport:
		return "failure_transport"
	case FailureTimeout:
		return "failure_timeout"
	case FailureBody:
		return "failure_body"
	case Rejected:
		return "rejected"
	case WouldReject:
		return "would_reject"
	case Ignored:
		return "ignored"
	case RejectedConcurrency:
		return "rejected_concurrency"
	}
	return "unknown"
}

// Recorder receives the metrics' account of each routed request. Request is called
// exactly once per routed request, with one of the Outcomes, the status the client got
// (the upstream's, the proxy's own 502/504/400/413, the fallback's, or 499 for a client
// that went away; 101 for a protocol switch), and the time from admission to the
// upstream's response headers (to the error for failures; zero for rejections).
// WouldReject follows it for a request a metrics-only breaker would have rejected.
// BodyBroken is called after the Request of a Success whose body the upstream then
// breaks off, with the time from admission to the break. Requests that match no route,
// or are refused before routing (400, 405), are not reported. Every method is called on
// the request's goroutine and must not block.
type Recorder interface {
	Request(upstream string, r Result, status int, elapsed time.Duration)
	WouldReject(upstream string)
	BodyBroken(upstream string, elapsed time.Duration)
	// Retry is called when a failed attempt is tried again, before the next attempt
	// (retries: each request sent to a target is an attempt; a routed request that was
	// not rejected made one plus its retries). RetryDenied is called when a retry was
	// due but the upstream's retry budget had no room: the failure goes to the client.
	Retry(upstream string, reason RetryReason)
	RetryDenied(upstream string)
	// FallbackServed is called when a request upstream's circuit rejected is served by
	// its fallback upstream (fallback.upstream), before the fallback's own Request.
	FallbackServed(upstream, fallback string)
}

// AccessLog receives one Access per sampled routed request, when the request ends.
// Sample is called once per routed request, before admission, and must be cheap: with
// the log off it returns false and the request costs nothing more. Log must not block
// for long and must not keep a after it returns.
type AccessLog interface {
	Sample() bool
	Log(a *Access)
}

// Access is one routed request's account for an access log.
type Access struct {
	Route    int    // the route's index in config.Routes
	Upstream string // the upstream's name
	Target   string // host:port of the target the request went to; "" if none (rejected)
	Method   string
	Path     string // the request's path as the client sent it, without the query
	Status   int    // as in Recorder.Request
	// Duration: from the start of routing (before admission) until the response ended
	// (the handler returned).
	Duration time.Duration
	Bytes    int64         // response body bytes written to the client
	Circuit  breaker.State // the circuit's state when the request ended
	Breaker  bool          // the upstream has a breaker (else Circuit means nothing)
	Attempts int           // requests sent to a target: 0 when rejected, else 1 plus the retries
	Outcome  Result        // one of the Outcomes, as Recorder.Request got it
	// BodyBroken and WouldReject: as Recorder.BodyBroken and Recorder.WouldReject.
	BodyBroken, WouldReject bool
}

// stater is the part of a breaker the access log reads (only when a request is logged).
type stater interface{ State() breaker.State }

// circuitState returns up's circuit state for the access log.
func (up *upstream) circuitState() (breaker.State, bool) {
	if s, ok := up.breaker.(stater); ok {
		return s.State(), true
	}
	return 0, false
}

// countingWriter counts the body bytes of an answer the proxy writes itself (a
// rejection), for the access log.
type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (w *countingWriter) Write(b []byte) (int, error) {
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	return n, err
}

// reject answers a request the bulkhead (res RejectedConcurrency) or the circuit (res
// Rejected, with Allow's ticket and error) refused, and reports it. A request the
// circuit rejected goes to the upstream's fallback upstream first, if it has one; if
// that serves it, the fallback upstream's exchange reports its answer and this reports
// Rejected with no status (the client's status class is counted once, where the answer
// came from).
func (p *Proxy) reject(w http.ResponseWriter, r *http.Request, rt *route, res Result, tk breaker.Ticket, err error,
	chunked, logged bool, start time.Time) {
	up := rt.up
	if res == Rejected {
		if fb := up.fallbackUp; fb != nil && p.serveFallback(w, r, rt, fb, err, chunked, logged, start) {
			if p.rec != nil {
				p.rec.Request(up.name, Rejected, 0, 0)
			}
			return
		}
	}
	var cw *countingWriter
	if logged {
		cw = &countingWriter{ResponseWriter: w}
		w = cw
	}
	status := up.fallback.status
	switch {
	case isGRPC(r.Header): // gRPC hook (grpc.go): an answer gRPC clients can read
		status = http.StatusOK
		rejectGRPC(w, up, res, tk, err)
	case res == RejectedConcurrency:
		up.fallback.writeLimit(w, up.name, up.maxConcurrent)
	default:
		up.fallback.reject(w, up.name, tk, err)
	}
	if p.rec != nil {
		p.rec.Request(up.name, res, status, 0)
	}
	if logged {
		a := Access{Route: int(rt.index), Upstream: up.name, Method: r.Method, Path: r.URL.Path,
			Status: status, Duration: p.now().Sub(start), Bytes: cw.n, Outcome: res}
		a.Circuit, a.Breaker = up.circuitState()
		p.access.Log(&a)
	}
}

// StatusClientClosedRequest is the status logged for a request whose client went away
// before the upstream answered (nginx's 499). Nobody receives it.
const StatusClientClosedRequest = 499

// classifyStatus maps an upstream's response status to a breaker outcome.
func (up *upstream) classifyStatus(code int) (Result, breaker.Outcome) {
	if up.failureStatus.Has(code) {
		return FailureStatus, breaker.Failure
	}
	return Success, breaker.Success
}

// reportStatus reports the outcome of a response status: to the upstream's breaker by
// its failure settings, to the target's circuit by targetOutcome.
func (e *exchange) reportStatus(code int) {
	r, o := e.up.classifyStatus(code)
	if e.up.honorRetryAfter && (code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable) {
		e.pause = retryAfter(e.w.Header()[headerRetryAfter], e.p.now())
	}
	e.report(r, o, targetOutcome(code), code)
}

// maxPause bounds a Retry-After before the breaker's max_open_duration caps it.
const maxPause = 365 * 24 * time.Hour

// retryAfter reads a Retry-After header (RFC 9110 §10.2.3): a number of seconds, or an
// HTTP date, from now. It returns 0 when there is none, or it is malformed or past.
func retryAfter(v []string, now time.Time) time.Duration {
	if len(v) != 1 {
		return 0
	}
	s := strings.TrimSpace(v[0])
	if n, err := strconv.ParseUint(s, 10, 64); err == nil {
		if n > uint64(maxPause/time.Second) {
			return maxPause
		}
		return time.Duration(n) * time.Second
	}
	t, err := http.ParseTime(s)
	if err != nil {
		return 0
	}
	return min(max(t.Sub(now), 0), maxPause)
}

// exchange is the per-request state of an admitted request. It is also the
// http.ResponseWriter handed to the upstream's ReverseProxy, which is how the
// ErrorHandler finds it: the first final status written, a protocol switch (Hijack), or
// the ErrorHandler reports the outcome to the breaker and the Recorder, exactly once. A
// body copy the upstream breaks off after the headers turns a Success into a late
// failure (see bodyBroken). Exchanges are pooled; every field is owned by the request's
// goroutine (1xx responses, written from the transport's goroutine, touch only w).
type exchange struct {
	w      http.ResponseWriter
	p      *Proxy
	up     *upstream
	client context.Context // the inbound request's context, before any upstream timeout
	body   *clientBody     // nil when the request has no body
	ticket breaker.Ticket
	start  time.Time
	// target is the target picked (upstream.pick). When tracked, its circuit admitted
	// the request with tticket and is told the outcome (treceipt: a success's receipt).
	target   *target
	tticket  breaker.Ticket
	tracked  bool
	treceipt breaker.Receipt
	// pause is the Retry-After the upstream's answer asked for (honor_retry_after).
	pause time.Duration
	// Retries (retry.go). retry is the policy when the request may be retried, else nil;
	// attempt counts the attempts sent (1 during the first); tried has a bit per target
	// tried (by index, modulo 64); retrying is set when the current attempt failed and
	// will be retried.
	// replay is the buffered request body a retry sends again. attemptStart is when the
	// current attempt started (the target's circuit measures attempts).
	retry        *retryPolicy
	attempt      int
	tried        uint64
	retrying     bool
	reason       RetryReason   // why the current attempt is retried (once retrying)
	wait         time.Duration // the backoff before the next attempt (again sets it)
	replay       []byte
	attemptStart time.Time
	// key is the request's key circuit and ticket (keyed.go), kreceipt its success's.
	key      keyAdmission
	kreceipt breaker.Receipt
	// via is set when up serves as another upstream's fallback (its answers are marked).
	via    *served
	status int   // the status the client got (once done)
	bytes  int64 // response body bytes written to the client
	// logged: the request is sampled for the access log; its route, method, path and
	// start are kept for it, and acc is the account handed over (pooled with the exchange).
	logged   bool
	logStart time.Time // before admission
	route    *route
	method   string
	path     string
	acc      Access
	done     bool            // the outcome was reported
	result   Result          // the outcome reported (once done)
	receipt  breaker.Receipt // the breaker's receipt for a success, for a late failure
	// upstream is the upstream request's context when it has its own deadline (the
	// upstream's timeout), else nil.
	upstream context.Context
	returned bool // ReverseProxy.ServeHTTP returned rather than panicked
	writeErr bool // a write to the client failed
	// informational counts the upstream's 1xx responses (see WriteHeader). It is
	// written on the transport's goroutine, under ReverseProxy's lock, which the request's
	// goroutine takes before it goes on once the round trip is over.
	informational int
	// closeConn: the request had a chunked body, so every answer says Connection: close
	// (see Proxy.ServeHTTP). ReverseProxy clears the response header map after each 1xx
	// it relays, so the final answer sets it again (closeAfter).
	closeConn bool
	// grpc: a gRPC answer whose grpc-status comes in its trailers (grpc.go).
	grpc bool
}

// closeAfter puts back the Connection: close of an answer to a chunked request before
// the final status is written.
func (e *exchange) closeAfter() {
	if e.closeConn {
		e.w.Header().Set("Connection", "close")
	}
}

// maxInformational is how many informational (1xx) responses of one upstream response
// are relayed to the client; the rest are dropped. 103 Early Hints and 102 Processing
// come one or a few at a time; an upstream sending more is not relayed, and one that
// never stops ends at its response_header_timeout (a 504 and a timeout failure), as the
// transport does not reset that timer for 1xx responses.
const maxInformational = 10

// errInvalidStatus is checkStatus's error: ReverseProxy hands it to the ErrorHandler,
// which counts it as a transport failure and answers 502.
var errInvalidStatus = errors.New("upstream response status outside 100-599")

// checkStatus is every route's ReverseProxy ModifyResponse: a final status outside
// 100-599 (999, 600, 099: three digits, as Go's transport accepts them) is not HTTP. It
// is neither passed on (net/http would even panic writing a status below 100) nor
// counted as a success, but refused as the upstream's protocol error.
//
// A 101 switch to another protocol than the request asked for (or unasked) is refused
// the same way, here rather than by ReverseProxy: ReverseProxy answers such a switch with
// its error but never closes the upstream's connection, which would then leak, once per
// such answer (and once per retry of it).
func checkStatus(res *http.Response) error {
	if res.StatusCode < 100 || res.StatusCode > 599 {
		return errInvalidStatus
	}
	if res.StatusCode == http.StatusSwitchingProtocols && res.Request != nil {
		asked, got := upgradeTo(res.Request.Header), upgradeTo(res.Header)
		if asked == "" || !asciiEqualFold(asked, got) {
			return errBadSwitch
		}
	}
	return nil
}

// asciiEqualFold reports whether a and b are equal ignoring ASCII case, and both
// printable ASCII: ReverseProxy's own test of a switch (strings.EqualFold also folds
// Unicode, so "websoc\u212Aet", with a Kelvin sign, passed checkStatus, and ReverseProxy
// then refused it without closing the upstream's connection).
func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if x < 0x20 || x > 0x7e || y < 0x20 || y > 0x7e {
			return false
		}
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// errBadSwitch is checkStatus's error for a switch to a protocol the request did not ask for.
var errBadSwitch = errors.New("upstream switched to a protocol the request did not ask for")

// upgradeTo is the protocol a header asks or agrees to switch to, as ReverseProxy reads it:
// Upgrade, when Connection lists "upgrade"; else "".
func upgradeTo(h http.Header) string {
	for _, v := range h["Connection"] {
		for tok := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "upgrade") {
				return h.Get("Upgrade")
			}
		}
	}
	return ""
}

// report hands the outcome to the breaker (o), the target's circuit (to) and the
// Recorder, with the status the client gets, unless that was done already.
func (e *exchange) report(r Result, o, to breaker.Outcome, status int) {
	if e.done {
		return
	}
	e.done, e.result, e.status = true, r, status
	// The breakers judge the upstream by the last attempt (its latency for the slow-call
	// rule: not the failed attempts and backoffs before it); the metrics see what the
	// client waited, from admission. Without retries the two are the same.
	now := e.p.now()
	elapsed, attempt := now.Sub(e.start), now.Sub(e.attemptStart)
	if b := e.up.breaker; b != nil {
		e.receipt = b.DonePause(e.ticket, o, attempt, e.pause)
	}
	e.reportKey(o, attempt)
	if e.tracked {
		e.treceipt = e.target.gate.Done(e.tticket, to, attempt)
	}
	if rec := e.p.rec; rec != nil {
		rec.Request(e.up.name, r, status, elapsed)
		if e.ticket.WouldReject() {
			rec.WouldReject(e.up.name)
		}
	}
}

// logAccess hands a logged request's account to the access log, when it ends.
func (e *exchange) logAccess() {
	a := &e.acc
	*a = Access{Route: int(e.route.index), Upstream: e.up.name, Target: e.target.url.Host, Method: e.method,
		Path: e.path, Status: e.status, Duration: e.p.now().Sub(e.logStart), Bytes: e.bytes,
		Attempts: e.attempt, Outcome: e.result, WouldReject: e.ticket.WouldReject()}
	if a.Outcome == FailureBody {
		a.Outcome, a.BodyBroken = Success, true
	}
	a.Circuit, a.Breaker = e.up.circuitState()
	e.p.access.Log(a)
}

// bodyBroken runs when ReverseProxy aborted the response after its headers (it panics
// with http.ErrAbortHandler when the body copy fails). If the copy failed on the
// client's side (a failed write, or the client went away, which also cancels the
// upstream request) it is not the upstream's failure. Otherwise the upstream broke the
// body off: if the headers were reported as a Success and the failure settings count
// this kind of error (a timeout when the upstream's deadline passed, else a transport
// error), the request failed after all: the breaker takes the success back and the
// Recorder gets FailureBody.
//
// The target's circuit takes back its success whenever the upstream broke the body off,
// whatever the upstream's failure settings (a zero receipt changes nothing).
func (e *exchange) bodyBroken() {
	if !e.done || e.writeErr || e.client.Err() != nil {
		return
	}
	if e.tracked {
		e.target.gate.LateFailure(e.treceipt)
	}
	if e.result != Success {
		return
	}
	timeout := e.upstream != nil && errors.Is(e.upstream.Err(), context.DeadlineExceeded)
	if timeout && !e.up.countTimeouts || !timeout && !e.up.countTransport {
		return
	}
	e.result = FailureBody
	if b := e.up.breaker; b != nil {
		b.LateFailure(e.receipt)
	}
	e.lateKey()
	if rec := e.p.rec; rec != nil {
		rec.BodyBroken(e.up.name, e.p.now().Sub(e.start))
	}
}

// release reports an exchange that ended without an outcome (a panic before the
// response headers: not the upstream's fault) and returns it to the pool. It runs
// deferred, so on a panic it runs before the panic continues up the stack. A panic
// after the outcome was reported is the http.ErrAbortHandler with which ReverseProxy
// aborts a broken body copy: bodyBroken tells whether the upstream broke it.
func (p *Proxy) release(e *exchange) {
	if !e.returned {
		e.bodyBroken()
	} else if e.grpc {
		e.grpcTrailers() // gRPC hook (grpc.go): the grpc-status in the trailers
	}
	e.report(Ignored, breaker.Ignored, breaker.Ignored, 0)
	if e.logged {
		e.logAccess()
	}
	if e.up.leastRequests {
		e.target.inflight.Add(-1)
	}
	*e = exchange{}
	p.exchanges.Put(e)
}

func (e *exchange) Header() http.Header { return e.w.Header() }

// WriteHeader classifies the first final status. Informational 1xx responses pass
// through untouched, the first maxInformational of them; later ones are dropped (101
// arrives through Hijack instead). ReverseProxy calls it for every proxied response,
// after copying the upstream's headers.
func (e *exchange) WriteHeader(code int) {
	if code >= 100 && code <= 199 {
		if e.informational++; e.informational <= maxInformational {
			e.w.WriteHeader(code)
		}
		return
	}
	if !e.done && !e.reportGRPC(code) { // gRPC hook (grpc.go): grpc-status in the headers
		e.reportStatus(code)
	}
	// Only rejections (and a fallback upstream's answers) carry HeaderCircuit,
	// HeaderFallback or HeaderLimit, even behind another fuseproxy.
	h := e.w.Header()
	delete(h, HeaderCircuit)
	delete(h, HeaderLimit)
	delete(h, HeaderFallback)
	if e.via != nil {
		e.via.mark(h)
	}
	e.closeAfter()
	e.w.WriteHeader(code)
}

func (e *exchange) Write(b []byte) (int, error) {
	if !e.done {
		e.reportStatus(http.StatusOK)
	}
	n, err := e.w.Write(b)
	e.bytes += int64(n)
	if err != nil {
		e.writeErr = true
	}
	return n, err
}

// Hijack is how ReverseProxy takes over the client's connection after the upstream
// switched protocols (WebSocket): the outcome is the 101's, reported now rather than
// when the tunnel closes.
func (e *exchange) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if !e.done {
		e.reportStatus(http.StatusSwitchingProtocols)
	}
	return http.NewResponseController(e.w).Hijack()
}

// FlushError flushes the underlying writer (http.ResponseController looks for it).
func (e *exchange) FlushError() error {
	if !e.done {
		e.reportStatus(http.StatusOK)
	}
	err := http.NewResponseController(e.w).Flush()
	if err != nil {
		e.writeErr = true
	}
	return err
}

// Flush implements http.Flusher.
func (e *exchange) Flush() { _ = e.FlushError() }

// Unwrap lets http.ResponseController reach the underlying writer's other features
// (deadlines, full duplex).
func (e *exchange) Unwrap() http.ResponseWriter { return e.w }

// handleError is every upstream ReverseProxy's ErrorHandler: the request got no response
// from the upstream. It classifies the error, reports it and answers the client.
func (p *Proxy) handleError(rw http.ResponseWriter, req *http.Request, err error) {
	e, ok := rw.(*exchange)
	if !ok { // every ReverseProxy is served through an exchange; never happens
		writeJSON(rw, http.StatusBadGateway, []byte(`{"error":"bad_gateway"}`))
		return
	}
	up := e.up
	if rs, ok := errors.AsType[*retryableStatus](err); ok {
		p.retryStatus(e, req, rs) // retries.statuses (retry.go)
		return
	}
	if e.retry != nil && !(e.body != nil && e.body.failed()) && e.again(failureReason(err), breaker.GatewayFailure) {
		return
	}
	e.closeAfter()
	if e.via != nil {
		e.via.mark(e.w.Header())
	}
	var status int
	var body []byte
	switch {
	case e.client.Err() != nil || errors.Is(err, context.Canceled):
		// The client went away: not the upstream's fault, and nobody is listening.
		e.report(Ignored, breaker.Ignored, breaker.Ignored, StatusClientClosedRequest)
		e.w.WriteHeader(StatusClientClosedRequest)
		status = StatusClientClosedRequest
	case e.body != nil && e.body.failed():
		// Reading the client's request body failed: the client's fault.
		status = http.StatusBadRequest
		if _, tooLarge := errors.AsType[*http.MaxBytesError](e.body.error()); tooLarge {
			status = http.StatusRequestEntityTooLarge
		}
		e.report(Ignored, breaker.Ignored, breaker.Ignored, status)
		body = errorBody("bad_request", up.name)
	case isTimeout(err):
		status = http.StatusGatewayTimeout
		if up.countTimeouts {
			e.report(FailureTimeout, breaker.Failure, breaker.GatewayFailure, status)
		} else {
			e.report(Ignored, breaker.Ignored, breaker.GatewayFailure, status)
		}
		body = errorBody("gateway_timeout", up.name)
	default:
		status = http.StatusBadGateway
		if up.countTransport {
			e.report(FailureTransport, breaker.Failure, breaker.GatewayFailure, status)
		} else {
			e.report(Ignored, breaker.Ignored, breaker.GatewayFailure, status)
		}
		body = errorBody("bad_gateway", up.name)
	}
	if (status == http.StatusBadGateway || status == http.StatusGatewayTimeout) && isGRPC(req.Header) { // gRPC hook (grpc.go)
		writeGRPCError(e.w, status, up.name)
	} else if body != nil {
		writeJSON(e.w, status, body)
		e.bytes += int64(len(body))
	}
	if status == http.StatusGatewayTimeout || status == http.StatusBadGateway {
		p.upErrs.log(p.log, p.now(), up.name, status, err) // warn, at most every 10 s per upstream
	} else if ce := p.log.Check(zap.DebugLevel, "upstream request failed"); ce != nil {
		ce.Write(zap.String("upstream", up.name), zap.Int("status", status), zap.Error(err))
	}
}

// isTimeout reports whether err is a timeout: the upstream's whole-request deadline, the
// response header timeout, or a dial/TLS/read timeout.
func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// clientBody wraps the inbound request body to remember whether reading it failed, which
// tells a client that broke off its upload from an upstream that broke the connection.
// It is allocated per request with a body, not pooled: the transport may still be
// reading it after the handler returned.
type clientBody struct {
	rc io.ReadCloser

	mu  sync.Mutex // guards err: the transport reads the body on its own goroutine
	err error      // the first read error other than io.EOF
}

func (b *clientBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err != nil && err != io.EOF {
		b.mu.Lock()
		if b.err == nil {
			b.err = err
		}
		b.mu.Unlock()
	}
	return n, err
}

func (b *clientBody) Close() error { return b.rc.Close() }

func (b *clientBody) error() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

func (b *clientBody) failed() bool { return b.error() != nil }
