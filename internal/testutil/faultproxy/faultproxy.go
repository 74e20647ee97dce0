// Package faultproxy is a TCP proxy for tests that breaks the connection between two
// processes on purpose: it listens on a free loopback port, forwards every connection to
// a target, and misbehaves as told, at run time, without restarting anything.
//
//	fp := faultproxy.Start(t, redisAddr)              // closed when the test ends
//	fp.Set(faultproxy.Faults{Latency: 200 * time.Millisecond})
//	fp.Set(faultproxy.Faults{Stall: true})            // forward nothing, keep connections
//	fp.Set(faultproxy.Faults{Drop: true}); fp.Reset() // a blip: RST all, refuse new ones
//	fp.Set(faultproxy.Faults{ResponseLimit: 20, Cut: faultproxy.CutReset})
//	fp.Set(faultproxy.Faults{})                       // healthy again
//
// "Response" is the direction from the target back to whoever connected. Every goroutine
// the proxy starts (one accept loop, two per connection) is stopped and waited for by
// Close.
package faultproxy

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Cut is what happens to a connection once ResponseLimit bytes went back through it.
type Cut uint8

const (
	// CutReset closes both sides at once, the client's with an RST (SO_LINGER 0).
	CutReset Cut = iota
	// CutStall stops forwarding on that connection and keeps it open.
	CutStall
	// CutClose closes both sides with a FIN.
	CutClose
)

// Faults is the proxy's behaviour. The zero value forwards everything untouched.
type Faults struct {
	// Latency delays every chunk, in both directions, before it is forwarded.
	Latency time.Duration
	// Stall stops all forwarding, in both directions, on every connection; connections
	// (old and new) stay open, and resume forwarding when Stall is switched off.
	Stall bool
	// Drop accepts new connections and closes them at once. Existing ones carry on
	// (call Reset as well to break them).
	Drop bool
	// ResponseLimit, when > 0, forwards at most this many response bytes per
	// connection; then Cut applies. Counted from each connection's start.
	ResponseLimit int64
	// Cut is what happens once a connection reached ResponseLimit.
	Cut Cut
}

// Stats are the proxy's counts since it started.
type Stats struct {
	Accepted  int64 // connections accepted (dropped ones included)
	Dropped   int64 // closed at once because Drop was set
	Resets    int64 // connections closed with an RST (Reset, CutReset)
	Active    int64 // connections open now
	Received  int64 // read from clients, forwarded or not (held by a stall, cut by Reset)
	BytesUp   int64 // forwarded from clients to the target
	BytesDown int64 // forwarded from the target back to clients
}

// Proxy is one fault-injecting TCP proxy. Its methods are safe for concurrent use.
type Proxy struct {
	ln     net.Listener
	target string
	ctx    context.Context // cancelled by Close: every goroutine returns
	stop   context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	faults  Faults
	changed chan struct{} // closed (and replaced) whenever faults change
	links   map[*link]struct{}
	closed  bool

	accepted, dropped, resets, received, bytesUp, bytesDown atomic.Int64
}

// New starts a proxy on 127.0.0.1:0 forwarding to target (host:port).
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ctx, stop := context.WithCancel(context.Background())
	p := &Proxy{ln: ln, target: target, ctx: ctx, stop: stop,
		changed: make(chan struct{}), links: map[*link]struct{}{}}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Start is New for a test: it fails the test on error and closes the proxy when the
// test ends.
func Start(t testing.TB, target string) *Proxy {
	t.Helper()
	p, err := New(target)
	if err != nil {
		t.Fatalf("faultproxy: %v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Target is the address connections are forwarded to.
func (p *Proxy) Target() string { return p.target }

// Set changes the behaviour, for open connections as well as new ones.
func (p *Proxy) Set(f Faults) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults = f
	close(p.changed)
	p.changed = make(chan struct{})
}

// Faults returns the behaviour in effect.
func (p *Proxy) Faults() Faults {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.faults
}

// Reset closes every open connection now, each client's side with an RST, and returns
// how many it closed. New connections are not affected (see Faults.Drop).
func (p *Proxy) Reset() int {
	p.mu.Lock()
	ls := make([]*link, 0, len(p.links))
	for l := range p.links {
		ls = append(ls, l)
	}
	p.mu.Unlock()
	for _, l := range ls {
		l.reset()
	}
	return len(ls)
}

// Stats returns the counts so far.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	active := int64(len(p.links))
	p.mu.Unlock()
	return Stats{Accepted: p.accepted.Load(), Dropped: p.dropped.Load(), Resets: p.resets.Load(),
		Active: active, Received: p.received.Load(), BytesUp: p.bytesUp.Load(), BytesDown: p.bytesDown.Load()}
}

// Close stops accepting, closes every connection and waits for the proxy's goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.stop()
	ls := make([]*link, 0, len(p.links))
	for l := range p.links {
		ls = append(ls, l)
	}
	p.mu.Unlock()
	err := p.ln.Close()
	for _, l := range ls {
		l.close()
	}
	p.wg.Wait()
	return err
}

// state returns the faults in effect and a channel closed when they next change.
func (p *Proxy) state() (Faults, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.faults, p.changed
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if p.ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// A temporary accept error (too many open files): back off a little.
			select {
			case <-p.ctx.Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
			continue
		}
		p.accepted.Add(1)
		if f, _ := p.state(); f.Drop {
			p.dropped.Add(1)
			_ = c.Close()
			continue
		}
		l := &link{p: p, client: c, gone: make(chan struct{}), upDone: make(chan struct{})}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = c.Close()
			return
		}
		p.links[l] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go l.run()
	}
}

// link is one proxied connection: the client's side and the target's.
type link struct {
	p      *Proxy
	client net.Conn

	mu     sync.Mutex
	target net.Conn      // nil until dialled
	gone   chan struct{} // closed with the link: no more I/O
	upDone chan struct{} // closed when the client → target direction ended

	down atomic.Int64 // response bytes forwarded
}

// run dials the target and pumps both directions until both end, then forgets the link.
func (l *link) run() {
	defer l.p.wg.Done()
	defer l.forget()
	d := net.Dialer{Timeout: 2 * time.Second}
	t, err := d.DialContext(l.p.ctx, "tcp", l.p.target)
	if err != nil {
		l.close()
		return
	}
	l.mu.Lock()
	if l.closed() {
		l.mu.Unlock()
		_ = t.Close()
		return
	}
	l.target = t
	l.mu.Unlock()

	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		defer close(l.upDone)
		l.pump(t, l.client, false)
	}()
	l.pump(l.client, t, true)
	wg.Done()
	wg.Wait()
	l.close()
}

func (l *link) forget() {
	l.p.mu.Lock()
	delete(l.p.links, l)
	l.p.mu.Unlock()
}

// pump copies src to dst, chunk by chunk, applying the faults in effect. response is
// true for the target → client direction.
func (l *link) pump(dst, src net.Conn, response bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if !response {
			l.p.received.Add(int64(n))
		}
		if n > 0 && !l.forward(dst, buf[:n], response) {
			return
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				// Pass the half-close on; the other direction may still be talking.
				if cw, ok := dst.(interface{ CloseWrite() error }); ok {
					_ = cw.CloseWrite()
					return
				}
			}
			l.close()
			return
		}
	}
}

// forward writes one chunk after the faults allow it; false means stop pumping.
func (l *link) forward(dst net.Conn, b []byte, response bool) bool {
	for {
		f, changed := l.p.state()
		if f.Stall {
			select {
			case <-changed:
				continue
			case <-l.gone:
				return false
			case <-l.p.ctx.Done():
				return false
			}
		}
		if f.Latency > 0 {
			timer := time.NewTimer(f.Latency)
			select {
			case <-timer.C:
			case <-l.gone:
				timer.Stop()
				return false
			case <-l.p.ctx.Done():
				timer.Stop()
				return false
			}
		}
		if response && f.ResponseLimit > 0 {
			room := f.ResponseLimit - l.down.Load()
			if room < int64(len(b)) {
				if room > 0 {
					if !l.write(dst, b[:room], response) {
						return false
					}
				}
				l.cut(f.Cut)
				return false
			}
		}
		return l.write(dst, b, response)
	}
}

// write forwards b. The bytes are counted before they are written, so whoever has
// received them finds them in Stats; a short write takes back what was not written.
func (l *link) write(dst net.Conn, b []byte, response bool) bool {
	count := &l.p.bytesUp
	if response {
		count = &l.p.bytesDown
		l.down.Add(int64(len(b)))
	}
	count.Add(int64(len(b)))
	n, err := dst.Write(b)
	if n < len(b) {
		count.Add(int64(n - len(b)))
		if response {
			l.down.Add(int64(n - len(b)))
		}
	}
	if err != nil {
		l.close()
		return false
	}
	return true
}

// cut ends a connection that reached its response limit.
func (l *link) cut(c Cut) {
	switch c {
	case CutStall:
		// Hold the connection open without forwarding until the client is done with it
		// (or it or the proxy is closed).
		select {
		case <-l.upDone:
		case <-l.gone:
		case <-l.p.ctx.Done():
		}
	case CutClose:
		l.close()
	default:
		l.reset()
	}
}

func (l *link) closed() bool {
	select {
	case <-l.gone:
		return true
	default:
		return false
	}
}

// reset closes both sides, the client's with an RST.
func (l *link) reset() {
	if tc, ok := l.client.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	if l.close() {
		l.p.resets.Add(1)
	}
}

// close closes both sides once; it reports whether this call closed them.
func (l *link) close() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed() {
		return false
	}
	close(l.gone)
	_ = l.client.Close()
	if l.target != nil {
		_ = l.target.Close()
	}
	return true
}
