package app

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fuseproxy/fuseproxy/proxy"
)

// This file holds the proxy listener's limits against exhaustion that http.Server does
// not have: a cap on client connections (server.max_connections) and a progress
// deadline for request bodies (server.body_read_timeout, server.body_min_rate).

// limitListener caps the connections open at once. A connection accepted past the cap
// is closed at once, with a reset (SO_LINGER 0: no FIN handshake, no TIME_WAIT), rather
// than left waiting in the kernel's accept queue: the client learns at once that this
// replica is full and can try another, instead of waiting unseen behind idle keep-alive
// connections that may stay for the idle timeout. A connection counts until it is
// closed, upgraded (hijacked) ones included.
type limitListener struct {
	net.Listener
	max      int64
	open     atomic.Int64
	onReject func()          // counts a refused connection; may be nil
	onOpen   func(delta int) // counts connections opened (+1) and closed (-1); may be nil
}

// newLimitListener caps ln at limit connections (0: no cap, only counted); onOpen gets
// +1 and -1 as connections open and close, onReject a call per connection refused.
func newLimitListener(ln net.Listener, limit int, onOpen func(int), onReject func()) net.Listener {
	if limit <= 0 && onOpen == nil {
		return ln
	}
	return &limitListener{Listener: ln, max: int64(limit), onOpen: onOpen, onReject: onReject}
}

// Accept returns the next connection within the cap, closing those past it.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if n := l.open.Add(1); l.max > 0 && n > l.max {
			l.open.Add(-1)
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			_ = c.Close()
			if l.onReject != nil {
				l.onReject()
			}
			continue
		}
		if l.onOpen != nil {
			l.onOpen(1)
		}
		return &limitConn{Conn: c, l: l}, nil
	}
}

// limitConn gives its slot back when closed (once, however often Close is called).
type limitConn struct {
	net.Conn
	l      *limitListener
	closed atomic.Bool
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	if c.closed.CompareAndSwap(false, true) {
		c.l.open.Add(-1)
		if c.l.onOpen != nil {
			c.l.onOpen(-1)
		}
	}
	return err
}

// bodyLimits is the progress deadline of request bodies. Each read of a body must get
// bytes from the client within timeout; and once timeout has passed, the body must have
// arrived at minRate bytes per second on average. Only the time spent waiting for the
// client counts (inside Read): time the upstream takes to accept what was read does not,
// so a slow upstream never makes a client look slow. The deadline is the connection's
// read deadline (http.ResponseController.SetReadDeadline), moved at each read, cleared
// at the body's end or before a protocol switch, and kept (or set) for a body the
// handler left unread (see finish). A request without a body is not touched and costs
// nothing.
type bodyLimits struct {
	timeout     time.Duration // 0: off
	minRate     int           // bytes per second; 0: no rate rule
	readTimeout time.Duration // server.read_timeout, a fixed deadline never extended
	now         func() time.Time
}

// wrap returns h with the deadline applied to every request body.
func (bl bodyLimits) wrap(h http.Handler) http.Handler {
	if bl.timeout <= 0 {
		return h
	}
	if bl.now == nil {
		bl.now = time.Now
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody || grpcStream(r) {
			h.ServeHTTP(w, r)
			return
		}
		b := &deadlineBody{ResponseWriter: w, rc: r.Body, limits: &bl, start: bl.now()}
		if bl.readTimeout > 0 {
			b.cap = b.start.Add(bl.readTimeout)
		}
		r.Body = b
		defer b.finish()
		h.ServeHTTP(b, r)
	})
}

// grpcStream reports whether r is a gRPC call (HTTP/2, Content-Type application/grpc
// or application/grpc+codec/;params). Its request body is a stream of messages a client
// may leave idle for as long as the call lasts (a bidirectional stream waiting for
// events), so the body progress deadline does not apply: it would cut every such call
// after body_read_timeout. A stalled call holds an HTTP/2 stream, not a connection
// (server.max_connections still caps those), and the upstream's timeout and the
// client's grpc-timeout still bound it.
func grpcStream(r *http.Request) bool {
	if r.ProtoMajor != 2 {
		return false
	}
	ct := r.Header.Get("Content-Type")
	const grpc = "application/grpc"
	return len(ct) >= len(grpc) && ct[:len(grpc)] == grpc &&
		(len(ct) == len(grpc) || ct[len(grpc)] == '+' || ct[len(grpc)] == ';')
}

// deadlineBody is a request body whose reads move the connection's read deadline, and
// the request's ResponseWriter (one allocation for both): it answers 408 for a body it
// cut, and clears the deadline before a protocol switch hijacks the connection. Its Read
// may run on the transport's goroutine, even after the handler returned; the connection
// is then no longer the request's, so finish makes later reads leave it alone.
type deadlineBody struct {
	http.ResponseWriter
	rc     io.ReadCloser
	limits *bodyLimits
	start  time.Time
	cap    time.Time // server.read_timeout's deadline, zero when none

	mu       sync.Mutex
	cut      bool          // the body was cut by the deadline or the rate rule
	received int64         // bytes read so far
	waited   time.Duration // time spent inside Read, waiting for the client
	set      bool          // a deadline is in force on the connection
	done     bool          // EOF or error seen, or the handler returned
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	if b.done {
		b.mu.Unlock()
		return b.rc.Read(p) // the body's own answer: EOF, or the error after Close
	}
	now := b.limits.now()
	budget := b.limits.timeout
	if rate := b.limits.minRate; rate > 0 {
		// Time the bytes so far have earned, beyond the grace of one timeout.
		earned := b.limits.timeout + time.Duration(float64(b.received)/float64(rate)*float64(time.Second))
		budget = min(budget, earned-b.waited)
	}
	// Too slow on average makes the budget 0 or less: a deadline already passed, so the
	// read fails (once nothing is left in the server's buffer) like a stalled one.
	deadline := now.Add(budget)
	if !b.cap.IsZero() && b.cap.Before(deadline) {
		deadline = b.cap
	}
	b.setDeadline(deadline)
	b.mu.Unlock()

	n, err := b.rc.Read(p)

	b.mu.Lock()
	defer b.mu.Unlock()
	b.received += int64(n)
	b.waited += b.limits.now().Sub(now)
	switch {
	case err == io.EOF && !b.done:
		// The body is over: the server reads the connection again on its own (to notice
		// the client going away, and for the next request), without our deadline.
		b.clearLocked()
		b.done = true
	case err != nil:
		// Broken (our deadline passed, or the client went away): the deadline stays, so
		// the server does not wait for the rest of the body before it answers.
		b.done = true
		b.cut = b.cut || errors.Is(err, os.ErrDeadlineExceeded)
	}
	return n, err
}

func (b *deadlineBody) Close() error { return b.rc.Close() }

// setDeadline sets the connection's read deadline (b.mu held).
func (b *deadlineBody) setDeadline(t time.Time) {
	if http.NewResponseController(b.ResponseWriter).SetReadDeadline(t) == nil {
		b.set = true
	}
}

// clearLocked removes the deadline this body set, if any (b.mu held).
func (b *deadlineBody) clearLocked() {
	if b.set {
		_ = http.NewResponseController(b.ResponseWriter).SetReadDeadline(time.Time{})
		b.set = false
	}
}

// finish runs when the handler returns: the connection stops being the request's, so
// later reads no longer touch it. The server reads the rest of a body the handler left
// unread (up to 256 KiB) before it answers, and must not wait for a stalled client
// without a deadline: a deadline in force stays, and a body never read at all (a
// rejection, a 404) gets one of body_read_timeout. The server sets its own deadlines
// for the next request.
func (b *deadlineBody) finish() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.done && !b.set {
		deadline := b.limits.now().Add(b.limits.timeout)
		if !b.cap.IsZero() && b.cap.Before(deadline) {
			deadline = b.cap
		}
		b.setDeadline(deadline)
	}
	b.done = true
}

// WriteHeader answers 408 Request Timeout, closing the connection, where the proxy
// answers a request whose body broke off because the client went away (499): when the
// body was cut by its deadline, the client is still there, only too slow.
func (b *deadlineBody) WriteHeader(code int) {
	if code == proxy.StatusClientClosedRequest {
		b.mu.Lock()
		cut := b.cut
		b.mu.Unlock()
		if cut {
			b.ResponseWriter.Header().Set("Connection", "close")
			code = http.StatusRequestTimeout
		}
	}
	b.ResponseWriter.WriteHeader(code)
}

// Hijack clears the deadline before a protocol switch takes the connection over (the
// tunnel must not inherit it).
func (b *deadlineBody) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	b.mu.Lock()
	b.clearLocked()
	b.done = true
	b.mu.Unlock()
	return http.NewResponseController(b.ResponseWriter).Hijack()
}

// FlushError and Unwrap let http.ResponseController reach the writer's other features.
func (b *deadlineBody) FlushError() error {
	return http.NewResponseController(b.ResponseWriter).Flush()
}

func (b *deadlineBody) Unwrap() http.ResponseWriter { return b.ResponseWriter }
