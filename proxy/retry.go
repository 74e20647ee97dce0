package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
)

// RetryReason is why a failed attempt was retried. Its String form is a metric label.
type RetryReason uint8

// The reasons a failed attempt is retried (retries.on and retries.statuses).
const (
	// RetryConnect: the attempt could not connect (refused, unreachable, dial timeout,
	// TLS handshake): nothing of the request reached the upstream.
	RetryConnect RetryReason = iota
	// RetryReset: the connection broke before the response headers.
	RetryReset
	// RetryTimeout: no response headers within the attempt's timeout.
	RetryTimeout
	// RetryStatus: the upstream answered with a status listed in retries.statuses.
	RetryStatus
)

// RetryReasons lists every RetryReason, for pre-registering metric label values.
func RetryReasons() []RetryReason {
	return []RetryReason{RetryConnect, RetryReset, RetryTimeout, RetryStatus}
}

func (r RetryReason) String() string {
	switch r {
	case RetryConnect:
		return "connect_failure"
	case RetryReset:
		return "reset"
	case RetryTimeout:
		return "timeout"
	case RetryStatus:
		return "status"
	}
	return "unknown"
}

// retryPolicy is an upstream's compiled retries section; nil when it does not retry.
type retryPolicy struct {
	attempts                int
	methods                 []string // upper case; a few, so a scan beats a map
	onConnect, onReset      bool
	onTimeout               bool
	codes                   config.StatusSet
	backoffBase, backoffMax time.Duration
	bufferBody              int64
	budget                  *RetryBudget
}

func newRetryPolicy(r *config.Retries, budget *RetryBudget) *retryPolicy {
	if !r.Enabled() {
		return nil
	}
	rp := &retryPolicy{attempts: r.Attempts, backoffBase: r.BackoffBase, backoffMax: r.BackoffMax,
		bufferBody: int64(r.BufferBody), budget: budget}
	for _, m := range r.Methods {
		rp.methods = append(rp.methods, strings.ToUpper(m))
	}
	for _, o := range r.On {
		switch o {
		case "connect_failure":
			rp.onConnect = true
		case "reset":
			rp.onReset = true
		case "timeout":
			rp.onTimeout = true
		}
	}
	for _, c := range r.Statuses {
		if c >= 400 {
			rp.codes.Set(c, true)
		}
	}
	return rp
}

// method reports whether a request with this method may be retried at all.
func (rp *retryPolicy) method(m string) bool { return slices.Contains(rp.methods, m) }

// backoff is the wait before attempt n+1 (n ≥ 1 attempts done): full jitter, a random
// time in [0, min(max, base·2ⁿ⁻¹)] (AWS's "full jitter": retrying clients spread out).
func (rp *retryPolicy) backoff(n int) time.Duration {
	d := rp.backoffBase << min(n-1, 30)
	if d <= 0 || d > rp.backoffMax {
		d = rp.backoffMax
	}
	if d <= 0 {
		return 0
	}
	return rand.N(d + 1)
}

// failureReason classifies a failed attempt's error for retries. A connect failure means
// the request never reached the upstream (a refused or unreachable dial, a dial timeout,
// a failed TLS handshake); a reset, that the connection broke after the request was
// (perhaps) sent; a timeout, that the headers did not come in time.
func failureReason(err error) RetryReason {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" {
		return RetryConnect
	}
	var (
		rh tls.RecordHeaderError
		ae tls.AlertError
		ce *tls.CertificateVerificationError
		ua x509.UnknownAuthorityError
		hn x509.HostnameError
		ci x509.CertificateInvalidError
	)
	if errors.As(err, &rh) || errors.As(err, &ae) || errors.As(err, &ce) || errors.As(err, &ua) ||
		errors.As(err, &hn) || errors.As(err, &ci) {
		return RetryConnect
	}
	if isTimeout(err) {
		return RetryTimeout
	}
	return RetryReset
}

func (rp *retryPolicy) on(reason RetryReason) bool {
	switch reason {
	case RetryConnect:
		return rp.onConnect
	case RetryReset:
		return rp.onReset
	case RetryTimeout:
		return rp.onTimeout
	}
	return true
}

// retryFor returns the policy that applies to r, or nil when r is sent once.
func (up *upstream) retryFor(r *http.Request) *retryPolicy {
	rp := up.retry
	if rp == nil || !rp.method(r.Method) {
		return nil
	}
	return rp
}

// again decides, once an attempt failed (reason; to is its outcome for the target's
// circuit), whether the request is tried again, and if so gets the attempt out of the
// way: its target's circuit is told the outcome, and the attempt is over (retrying: its
// answer, if any, was set aside unread by checkResponse); next tells the Recorder the retry once it is sent. A request is retried
// while it has attempts left, its client and its upstream deadline are still there, the
// upstream's circuit still passes every request (a half-open trial, or a request the
// circuit would reject in metrics-only mode, is never retried: the circuit is judging
// the upstream) and the budget has room. The upstream's circuit itself counts the request once, with the
// final attempt's outcome (see report). A request whose outcome was reported (a protocol
// switch, which the client's writer then failed to take over) is never retried.
func (e *exchange) again(reason RetryReason, to breaker.Outcome) bool {
	rp := e.retry
	if rp == nil || e.done || e.attempt >= rp.attempts || !rp.on(reason) || e.client.Err() != nil ||
		(e.upstream != nil && e.upstream.Err() != nil) || e.ticket.Trial() || e.ticket.WouldReject() {
		return false
	}
	if b := e.up.breaker; b != nil && !b.Passing() {
		return false
	}
	// The same for the request's key circuit (keyed): a key's trial is sent once, and a
	// key whose circuit no longer passes is not retried.
	if kc := e.key.kc; kc != nil && (e.key.ticket.Trial() || e.key.ticket.WouldReject() || !kc.b.Passing()) {
		return false
	}
	now := e.p.now()
	// A retry that could not start before the upstream's deadline is not made: the
	// client gets this failure now rather than a 504 at the deadline, and no target is
	// charged with an attempt that never reached it.
	e.wait = rp.backoff(e.attempt)
	if e.upstream != nil {
		if d, ok := e.upstream.Deadline(); ok && !time.Now().Add(e.wait).Before(d) {
			return false
		}
	}
	if !rp.budget.take(now) {
		if rec := e.p.rec; rec != nil {
			rec.RetryDenied(e.up.name)
		}
		return false
	}
	if e.tracked {
		e.target.gate.Done(e.tticket, to, now.Sub(e.attemptStart))
		e.tracked = false
	}
	e.tried |= 1 << (e.target.index % 64)
	e.retrying, e.reason = true, reason
	return true
}

// pausesFor reports whether an answer with this status and header asks, through
// Retry-After, for a pause the upstream's circuit honours (breaker.honor_retry_after):
// such an answer is not retried, it opens the circuit.
func (e *exchange) pausesFor(code int, h http.Header) bool {
	return e.up.honorRetryAfter && (code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable) &&
		retryAfter(h[headerRetryAfter], e.p.now()) > 0
}

// retryableStatus is the error with which an upstream's ModifyResponse (checkResponse)
// hands an answer with a status listed in retries.statuses to the ErrorHandler before
// ReverseProxy copies anything of it to the client: handleError then retries the request
// (the answer is dropped unread, its connection closed) or, when no retry may follow,
// serves the answer as it came (serveAnswer). body is the answer's body, which
// ReverseProxy does not close (it closes the stand-in put in its place).
type retryableStatus struct {
	res  *http.Response
	body io.ReadCloser
}

func (rs *retryableStatus) Error() string {
	return "upstream answered " + strconv.Itoa(rs.res.StatusCode) + ", a status retried"
}

// keptBody stands in for a retryable answer's body while ReverseProxy hands the answer
// to the ErrorHandler: ReverseProxy closes it, which leaves the real body alone.
type keptBody struct{}

func (keptBody) Read([]byte) (int, error) { return 0, io.EOF }
func (keptBody) Close() error             { return nil }

// checkResponse is an upstream's ReverseProxy ModifyResponse: checkStatus, then, when the
// upstream retries, an answer with a status it retries (for a method it retries) goes to
// the ErrorHandler as a retryableStatus, before anything of it reaches the client. An
// answer a retry may follow is so never read: however slowly its body would come, the
// next attempt does not wait for it.
func (up *upstream) checkResponse(res *http.Response) error {
	if err := checkStatus(res); err != nil {
		return err
	}
	if rp := up.retry; rp != nil && rp.codes.Has(res.StatusCode) && (res.Request == nil || rp.method(res.Request.Method)) {
		rs := &retryableStatus{res: res, body: res.Body}
		res.Body = keptBody{}
		return rs
	}
	return nil
}

// retryStatus handles an answer checkResponse set aside: retried if it may be, else
// served to the client as it came.
func (p *Proxy) retryStatus(e *exchange, req *http.Request, rs *retryableStatus) {
	res := rs.res
	res.Body = rs.body
	if e.retry != nil && !e.pausesFor(res.StatusCode, res.Header) && e.again(RetryStatus, targetOutcome(res.StatusCode)) {
		res.Body.Close() // unread: the connection is closed rather than drained
		return
	}
	e.retry = nil // this answer is the request's
	ctx := context.WithValue(req.Context(), answerKey{}, res)
	p.answers.ServeHTTP(e, req.WithContext(ctx))
}

// answerKey carries a set-aside answer to the answers ReverseProxy (answerTransport).
type answerKey struct{}

// answerTransport "sends" a request by returning the answer its context carries: the
// answers ReverseProxy serves a set-aside answer through it, exactly as the attempt's
// ReverseProxy would have (headers, trailers, flushing, the body copy and its failures).
type answerTransport struct{}

func (answerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	res, ok := req.Context().Value(answerKey{}).(*http.Response)
	if !ok {
		return nil, errors.New("proxy: no answer to serve")
	}
	res.Request = req
	return res, nil
}

// next prepares the next attempt of a request whose attempt failed and is retried: it
// waits the backoff (cut short if the client goes away or the upstream deadline passes:
// the attempt then fails at once, and is answered as such), clears what the failed
// attempt put in the response headers, and picks a target, another than those tried when
// there is one.
func (p *Proxy) next(e *exchange, r *http.Request) {
	e.retrying, e.grpc = false, false
	if d := e.wait; d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
		}
	}
	clear(e.w.Header())
	if r.Context().Err() != nil {
		// The client went away (or the deadline passed) during the backoff: no attempt
		// is sent, and no target picked. The request fails at once on the target that
		// was tried last (its circuit already told), and is answered as such.
		if e.replay != nil {
			r.Body = io.NopCloser(bytes.NewReader(e.replay))
		}
		return
	}
	// The Recorder counts the retries sent (each an attempt: upstream_attempts_total).
	if rec := p.rec; rec != nil {
		rec.Retry(e.up.name, e.reason)
	}
	if e.up.leastRequests {
		e.target.inflight.Add(-1)
	}
	e.target, e.tticket, e.tracked = e.up.pickAgain(e.tried, e.target.index)
	if e.up.leastRequests {
		e.target.inflight.Add(1)
	}
	if e.replay != nil {
		r.Body = io.NopCloser(bytes.NewReader(e.replay))
	}
	e.attempt++
	e.attemptStart = p.now()
}

// bufferBody reads a request body of at most retries.buffer_body bytes, so that a retry
// can send it again. A longer body (or any, at buffer_body 0) is streamed, and the
// request is sent once: e.retry is cleared. It reports false when reading the body
// failed (the client's fault); the failure has then been answered.
func (p *Proxy) bufferBody(e *exchange, r *http.Request) bool {
	limit := e.retry.bufferBody
	if limit == 0 || r.ContentLength > limit {
		e.retry = nil
		return true
	}
	buf, err := io.ReadAll(io.LimitReader(e.body, limit+1))
	if err != nil {
		p.handleError(e, r, err)
		return false
	}
	if int64(len(buf)) <= limit {
		e.replay = buf
		r.Body, r.ContentLength, r.TransferEncoding = io.NopCloser(bytes.NewReader(buf)), int64(len(buf)), nil
		return true
	}
	// Longer than the limit: stream what was read, then the rest; no retry.
	e.retry = nil
	r.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(buf), e.body), e.body}
	return true
}

// pickAgain chooses the target of a retry, the last attempt having gone to target last:
// among the targets not tried yet (tried: bits by index), the next one after last in
// config order (round robin: the rotation of first choices is left as it was), or for
// least_requests from where a first choice would start; a target ejected within the cap
// is skipped, as pick skips it. When every target was tried, or the untried are ejected,
// the targets are taken again in the same order.
func (up *upstream) pickAgain(tried uint64, last int) (t *target, ticket breaker.Ticket, tracked bool) {
	n := len(up.targets)
	if n == 1 {
		return up.targets[0], ticket, false
	}
	start := last + 1
	if up.leastRequests {
		start = up.first(n)
	}
	for _, fresh := range [2]bool{true, false} {
		for k := range n {
			j := (start + k) % n
			if fresh && tried&(1<<(j%64)) != 0 {
				continue
			}
			o := up.targets[j]
			if o.gate == nil {
				return o, ticket, false
			}
			if tk, err := o.gate.Allow(); err == nil {
				return o, tk, true
			}
			if !up.honoured(j) {
				return o, ticket, false
			}
		}
	}
	return up.pick()
}
