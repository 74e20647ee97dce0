package faultproxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// target is a loopback TCP server for the tests. Each connection echoes what it reads,
// except that a line "GIVE n\n" is answered with n bytes 'x' instead.
type target struct {
	ln net.Listener
	wg sync.WaitGroup
	mu sync.Mutex
	cs []net.Conn
}

func startTarget(t *testing.T) *target {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &target{ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.cs = append(s.cs, c)
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						out := buf[:n]
						if give, ok := parseGive(string(out)); ok {
							out = bytes.Repeat([]byte("x"), give)
						}
						if _, werr := c.Write(out); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for _, c := range s.cs {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

// parseGive parses "GIVE n\n".
func parseGive(s string) (int, bool) {
	rest, ok := strings.CutPrefix(s, "GIVE ")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimSuffix(rest, "\n"))
	return n, err == nil && strings.HasSuffix(rest, "\n")
}

func (s *target) addr() string { return s.ln.Addr().String() }

func dial(t *testing.T, p *Proxy) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", p.Addr(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip writes msg and reads want bytes back, within timeout.
func roundTrip(c net.Conn, msg string, want int, timeout time.Duration) ([]byte, error) {
	_ = c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte(msg)); err != nil {
		return nil, err
	}
	buf := make([]byte, want)
	n, err := io.ReadFull(c, buf)
	return buf[:n], err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestPassThrough(t *testing.T) {
	p := Start(t, startTarget(t).addr())
	c := dial(t, p)
	got, err := roundTrip(c, "hello", 5, 2*time.Second)
	if err != nil || string(got) != "hello" {
		t.Fatalf("echo: got %q, %v", got, err)
	}
	got, err = roundTrip(c, "GIVE 1000\n", 1000, 2*time.Second)
	if err != nil || len(got) != 1000 {
		t.Fatalf("GIVE 1000: got %d bytes, %v", len(got), err)
	}
	st := p.Stats()
	if st.Accepted != 1 || st.Active != 1 || st.Received != 15 || st.BytesUp != 15 || st.BytesDown != 1005 {
		t.Fatalf("stats %+v, want 1 accepted and active, 15 bytes received and up, 1005 down", st)
	}
}

func TestLatency(t *testing.T) {
	p := Start(t, startTarget(t).addr())
	c := dial(t, p)
	const lat = 60 * time.Millisecond
	p.Set(Faults{Latency: lat})
	start := time.Now()
	if got, err := roundTrip(c, "ping", 4, 5*time.Second); err != nil || string(got) != "ping" {
		t.Fatalf("echo with latency: %q, %v", got, err)
	}
	if d := time.Since(start); d < 2*lat {
		t.Fatalf("round trip took %v, want at least %v (latency each way)", d, 2*lat)
	}
	p.Set(Faults{})
	start = time.Now()
	if _, err := roundTrip(c, "pong", 4, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d >= lat {
		t.Errorf("round trip after the latency was removed took %v", d)
	}
}

func TestStallHoldsConnectionsAndResumes(t *testing.T) {
	p := Start(t, startTarget(t).addr())
	old := dial(t, p)
	if _, err := roundTrip(old, "a", 1, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	p.Set(Faults{Stall: true})
	fresh := dial(t, p) // accepted while stalled
	for _, c := range []net.Conn{old, fresh} {
		if _, err := roundTrip(c, "b", 1, 150*time.Millisecond); !isTimeout(err) {
			t.Fatalf("read while stalled: got %v, want a timeout (nothing forwarded)", err)
		}
	}
	if st := p.Stats(); st.Active != 2 || st.Received != 3 || st.BytesUp != 1 {
		t.Fatalf("stalled: %+v, want 2 connections kept open, 3 bytes received, 1 forwarded", st)
	}
	p.Set(Faults{})
	for _, c := range []net.Conn{old, fresh} {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 1)
		if _, err := io.ReadFull(c, buf); err != nil || buf[0] != 'b' {
			t.Fatalf("after the stall: got %q, %v; want the held byte", buf, err)
		}
	}
}

func TestDropAndReset(t *testing.T) {
	p := Start(t, startTarget(t).addr())
	old := dial(t, p)
	if _, err := roundTrip(old, "a", 1, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	p.Set(Faults{Drop: true})
	fresh := dial(t, p)
	_ = fresh.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := fresh.Read(make([]byte, 1)); n != 0 || err == nil || isTimeout(err) {
		t.Fatalf("new connection while dropping: read %d, %v; want it closed at once", n, err)
	}
	if _, err := roundTrip(old, "b", 1, 2*time.Second); err != nil {
		t.Fatalf("an existing connection while dropping: %v, want it to carry on", err)
	}
	if n := p.Reset(); n != 1 {
		t.Fatalf("Reset closed %d connections, want 1", n)
	}
	_ = old.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := old.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read after Reset: got %v, want connection reset", err)
	}
	st := p.Stats()
	if st.Dropped != 1 || st.Resets != 1 || st.Accepted != 2 {
		t.Fatalf("stats %+v, want 2 accepted, 1 dropped, 1 reset", st)
	}
	p.Set(Faults{})
	if _, err := roundTrip(dial(t, p), "c", 1, 2*time.Second); err != nil {
		t.Fatalf("after the faults were cleared: %v", err)
	}
}

func TestResponseLimit(t *testing.T) {
	p := Start(t, startTarget(t).addr())
	for _, tc := range []struct {
		name string
		cut  Cut
		// check is given the read error after the limit
		check func(err error) bool
		want  string
	}{
		{"reset", CutReset, func(err error) bool { return errors.Is(err, syscall.ECONNRESET) }, "connection reset"},
		{"close", CutClose, func(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) }, "EOF (io.ReadFull: unexpected EOF)"},
		{"stall", CutStall, isTimeout, "a timeout (held open)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p.Set(Faults{ResponseLimit: 10, Cut: tc.cut})
			c := dial(t, p)
			got, err := roundTrip(c, "GIVE 100\n", 100, 300*time.Millisecond)
			if len(got) != 10 {
				t.Fatalf("got %d response bytes, want exactly the limit, 10", len(got))
			}
			if !tc.check(err) {
				t.Fatalf("after the limit: got %v, want %s", err, tc.want)
			}
		})
	}
	// A stalled cut connection goes once its client is done with it.
	p.Set(Faults{})
	if !waitFor(2*time.Second, func() bool { return p.Stats().Active == 0 }) {
		// the stall subtest's client is closed by its cleanup
		t.Fatalf("%d connections still open after their clients closed", p.Stats().Active)
	}
}

func TestTargetDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	p := Start(t, addr)
	c := dial(t, p)
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("target down: read %v, want the connection closed", err)
	}
}

func TestCloseStopsEverything(t *testing.T) {
	s := startTarget(t)
	p, err := New(s.addr())
	if err != nil {
		t.Fatal(err)
	}
	a, b := dial(t, p), dial(t, p)
	if _, err := roundTrip(a, "x", 1, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	p.Set(Faults{Stall: true, Latency: time.Hour})
	_, _ = b.Write([]byte("held"))
	done := make(chan error, 1)
	go func() { done <- p.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return within 5s with stalled connections")
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		t.Fatal("still accepting after Close")
	}
	_ = a.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := a.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("read after Close: %v, want the connection closed", err)
	}
}

func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}
