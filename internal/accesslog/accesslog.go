// Package accesslog is fuseproxy's optional access log: one JSON line per routed
// request (a proxy.Access), sampled, written to standard error, standard output or a
// file.
//
// The request path never waits for the disk. Each line is formatted on the request's
// goroutine into a pooled buffer and appended, under a mutex held for that copy only,
// to the sink's pending buffer. One writer goroutine per sink swaps the pending buffer
// for an empty one every FlushInterval, or at once when it holds 64 KiB, and writes it
// out with one write call: no wake-up and no system call per line, and lines reach the
// file within FlushInterval. When access_log.buffer_size bytes are pending (the disk is
// slower than the traffic) the line is dropped and counted (Dropped,
// fuseproxy_access_log_dropped_total): a blocked disk slows down the log, never the
// proxy.
//
// Configure applies a config at start and on every reload: a new path gets a new sink
// (the file opened, created if missing, appended to); the old sink's writer writes what
// was pending and closes its file. Close does the same at shutdown.
package accesslog

import (
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/proxy"
)

// Options are a Log's collaborators. The zero value is usable.
type Options struct {
	// Logger receives the sink's write errors (the first of each sink, then a count at
	// close); nil means zap.NewNop().
	Logger *zap.Logger
	// Stderr and Stdout replace os.Stderr and os.Stdout (tests).
	Stderr, Stdout io.Writer
	// Now is the clock of the lines' time; nil means time.Now.
	Now func() time.Time
}

// Log is the access log. It implements proxy.AccessLog; its methods are safe for
// concurrent use.
type Log struct {
	opts    Options
	cur     atomic.Pointer[state] // nil: off
	mu      sync.Mutex            // serialises Configure and Close
	dropped atomic.Uint64
	buffers sync.Pool // of *[]byte
}

// state is the log's settings in effect.
type state struct {
	threshold uint64 // a request is logged when a random uint64 is below it; MaxUint64: all
	all       bool
	sink      *sink
}

var _ proxy.AccessLog = (*Log)(nil)

// New returns a Log that is off until Configure turns it on.
func New(o Options) *Log {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Stderr == nil {
		o.Stderr = os.Stderr
	}
	if o.Stdout == nil {
		o.Stdout = os.Stdout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	l := &Log{opts: o}
	l.buffers.New = func() any { b := make([]byte, 0, 512); return &b }
	return l
}

// Configure applies c: off, on with a sample rate, to a path. A changed path (or
// buffer size) gets a new sink and the old one is closed once its queue is written; an
// unchanged one keeps its sink. If the new file cannot be opened, the log stays as it
// was and the error names the key.
func (l *Log) Configure(c config.AccessLog) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	old := l.cur.Load()
	if !c.Enabled {
		l.cur.Store(nil)
		if old != nil {
			old.sink.close()
		}
		return nil
	}
	s := &state{all: c.SampleRate >= 1}
	if !s.all {
		s.threshold = uint64(c.SampleRate * math.MaxUint64)
	}
	if old != nil && old.sink.path == c.Path && old.sink.max == c.BufferSize {
		s.sink = old.sink
		l.cur.Store(s)
		return nil
	}
	sk, err := l.open(c.Path, c.BufferSize)
	if err != nil {
		return fmt.Errorf("access_log.path: %w", err)
	}
	s.sink = sk
	l.cur.Store(s)
	if old != nil {
		old.sink.close()
	}
	return nil
}

// Close turns the log off and closes its sink, after writing what was pending.
func (l *Log) Close() error {
	return l.Configure(config.AccessLog{})
}

// Dropped returns how many lines were dropped because buffer_size bytes were pending.
func (l *Log) Dropped() uint64 { return l.dropped.Load() }

// Sample implements proxy.AccessLog: false when the log is off, else true for the
// configured share of requests.
func (l *Log) Sample() bool {
	s := l.cur.Load()
	if s == nil {
		return false
	}
	return s.all || rand.Uint64() < s.threshold
}

// Log implements proxy.AccessLog: it formats a and appends the line to the pending
// buffer, or drops it if the buffer is full.
func (l *Log) Log(a *proxy.Access) {
	s := l.cur.Load()
	if s == nil {
		return
	}
	bp := l.buffers.Get().(*[]byte)
	*bp = AppendLine((*bp)[:0], l.opts.Now(), a)
	if !s.sink.send(*bp) {
		l.dropped.Add(1)
	}
	l.buffers.Put(bp)
}

// FlushInterval is the longest a line waits in the pending buffer before it is written.
const FlushInterval = 100 * time.Millisecond

// flushAt is the pending size that wakes the writer before FlushInterval.
const flushAt = 64 << 10

// sink is one destination with its pending buffer and writer goroutine.
type sink struct {
	l    *Log
	path string
	w    io.Writer
	file *os.File // nil for standard error and output
	max  int      // bytes pending beyond which lines are dropped

	mu      sync.Mutex // guards pending and closed
	pending []byte
	closed  bool

	kick chan struct{} // capacity 1: pending reached flushAt
	stop chan struct{} // closed by close
	done chan struct{} // closed when the writer has written everything and returned
}

func (l *Log) open(path string, size int) (*sink, error) {
	s := &sink{l: l, path: path, max: max(size, 1), kick: make(chan struct{}, 1),
		stop: make(chan struct{}), done: make(chan struct{})}
	switch path {
	case "", "stderr":
		s.w = l.opts.Stderr
	case "stdout":
		s.w = l.opts.Stdout
	default:
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return nil, err
		}
		if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() && fi.Mode()&os.ModeCharDevice == 0 {
			_ = f.Close()
			if err == nil {
				err = fmt.Errorf("%s is not a regular file", path)
			}
			return nil, err
		}
		s.file, s.w = f, f
	}
	go s.run()
	return s, nil
}

// send appends a line without waiting for the writer; false if max bytes are pending
// or the sink is closed.
func (s *sink) send(line []byte) bool {
	s.mu.Lock()
	if s.closed || len(s.pending)+len(line) > s.max {
		s.mu.Unlock()
		return false
	}
	s.pending = append(s.pending, line...)
	kick := len(s.pending) >= flushAt
	s.mu.Unlock()
	if kick {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
	return true
}

// close stops the sink: what was pending is written, the file closed; it waits for that.
func (s *sink) close() {
	s.mu.Lock()
	already := s.closed
	s.closed = true
	s.mu.Unlock()
	if !already {
		close(s.stop)
	}
	<-s.done
}

// run writes the pending buffer every FlushInterval, when kicked, and once more when
// stopped; the two buffers are swapped, so neither is copied or reallocated.
func (s *sink) run() {
	defer close(s.done)
	t := time.NewTicker(FlushInterval)
	defer t.Stop()
	var spare []byte
	var errs int
	var first error
	note := func(err error) {
		if err == nil {
			return
		}
		if errs++; errs == 1 {
			first = err
			s.l.opts.Logger.Error("access log write failed; lines are lost until it recovers", zap.String("path", s.path), zap.Error(err))
		}
	}
	for stopped := false; !stopped; {
		select {
		case <-t.C:
		case <-s.kick:
		case <-s.stop:
			stopped = true
		}
		s.mu.Lock()
		b := s.pending
		s.pending = spare[:0]
		s.mu.Unlock()
		if len(b) > 0 {
			_, err := s.w.Write(b)
			note(err)
		}
		spare = b
	}
	if s.file != nil {
		note(s.file.Close())
	}
	if errs > 1 {
		s.l.opts.Logger.Error("access log write errors", zap.String("path", s.path), zap.Int("errors", errs), zap.Error(first))
	}
}

// AppendLine appends a's JSON line, ending in a newline, to b:
//
//	{"time":"…","route":0,"upstream":"api","target":"10.0.0.5:8080","method":"GET","path":"/x","status":200,"duration_ms":1.234,"bytes":64,"circuit":"closed","attempts":1,"outcome":"success"}
//
// followed by "body_broken":true and "would_reject":true when they are. circuit is
// "disabled" for an upstream without a breaker.
func AppendLine(b []byte, now time.Time, a *proxy.Access) []byte {
	b = append(b, `{"time":"`...)
	b = now.UTC().AppendFormat(b, "2006-01-02T15:04:05.000Z07:00")
	b = append(b, `","route":`...)
	b = strconv.AppendInt(b, int64(a.Route), 10)
	b = append(b, `,"upstream":`...)
	b = appendString(b, a.Upstream)
	b = append(b, `,"target":`...)
	b = appendString(b, a.Target)
	b = append(b, `,"method":`...)
	b = appendString(b, a.Method)
	b = append(b, `,"path":`...)
	b = appendString(b, a.Path)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(a.Status), 10)
	b = append(b, `,"duration_ms":`...)
	b = strconv.AppendFloat(b, float64(a.Duration.Microseconds())/1000, 'f', -1, 64)
	b = append(b, `,"bytes":`...)
	b = strconv.AppendInt(b, a.Bytes, 10)
	b = append(b, `,"circuit":"`...)
	if a.Breaker {
		b = append(b, a.Circuit.String()...)
	} else {
		b = append(b, "disabled"...)
	}
	b = append(b, `","attempts":`...)
	b = strconv.AppendInt(b, int64(a.Attempts), 10)
	b = append(b, `,"outcome":"`...)
	b = append(b, a.Outcome.String()...)
	b = append(b, '"')
	if a.BodyBroken {
		b = append(b, `,"body_broken":true`...)
	}
	if a.WouldReject {
		b = append(b, `,"would_reject":true`...)
	}
	return append(b, "}\n"...)
}

const hex = "0123456789abcdef"

// appendString appends s as a JSON string: quotes, backslashes and control characters
// escaped, invalid UTF-8 replaced by U+FFFD.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
