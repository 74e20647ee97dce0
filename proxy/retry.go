package proxy

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
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
	methods                 []string // upper case; few, so a scan beats a map
	onConnect, onReset      bool
	onTimeout               bool
	codes                   [600]bool
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
		if c >= 400 && c < len(rp.codes) {
			rp.codes[c] = true
		}
	}
	return rp
}

// method reports whether a request with this method may be retried at all.
func (rp *retryPolicy) method(m string) bool {
	for _, x := range rp.methods {
		if x == m {
			return true
		}
	}
	return false
}

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

// failureReason classifies a failed attempt's error for retries. A connect failure means the request never reached the upstream (a
// refused or unreachable dial, a dial timeout, a failed TLS handshake); a reset, that the
// connection broke after the request was (perhaps) sent; a timeout, that the headers did
// not come in time.
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
// way: its target's circuit is told the outcome, and the attempt's answer is discarded
// (retrying); next tells the Recorder the retry once it is sent. A request is retried
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

// pauses reports whether an answer with this status asks, through Retry-After, for a
// pause the upstream's circuit honours (breaker.honor_retry_after): such an answer is
// not retried, it opens the circuit.
func (e *exchange) pauses(code int) bool {
	return e.up.honorRetryAfter && (code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable) &&
		retryAfter(e.w.Header()[headerRetryAfter], e.p.now()) > 0
}

// maxDiscard is how much of a retried attempt's response body is read and dropped so
// that its connection can serve again; a longer body is cut off, and its connection with it.
const maxDiscard = 64 << 10

// errDiscarded aborts the copy of a retried attempt's long response body.
var errDiscarded = errors.New("retried attempt's response discarded")

// discard drops a retried attempt's response body.
func (e *exchange) discard(b []byte) (int, error) {
	if e.discarded += len(b); e.discarded > maxDiscard {
		return 0, errDiscarded
	}
	return len(b), nil
}

// attempt sends one attempt through rp. When the attempt is to be retried, the abort
// with which ReverseProxy ends a discarded body copy is the expected end of the attempt.
func (p *Proxy) attempt(rp *httputil.ReverseProxy, e *exchange, r *http.Request) {
	defer func() {
		if e.retrying {
			if v := recover(); v != nil && v != http.ErrAbortHandler {
				panic(v)
			}
		}
	}()
	rp.ServeHTTP(e, r)
}

// next prepares the next attempt of a request whose attempt failed and is retried: it
// waits the backoff (cut short if the client goes away or the upstream deadline passes:
// the attempt then fails at once, and is answered as such), clears what the failed
// attempt put in the response headers, and picks a target, another than those tried when
// there is one.
func (p *Proxy) next(e *exchange, r *http.Request) {
	e.retrying, e.discarded, e.grpc = false, 0, false
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
