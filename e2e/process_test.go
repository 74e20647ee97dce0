package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/internal/testutil/freeport"
)

// stopGrace is how long a process may take to exit after SIGTERM before it is killed.
const stopGrace = 10 * time.Second

// freePort returns a loopback port nobody listens on right now, for a process to bind
// (freeport: outside the kernel's ephemeral range, never handed out twice).
func freePort(t testing.TB) int {
	t.Helper()
	p, err := freeport.Port()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// freeAddr returns "127.0.0.1:PORT" for a free port.
func freeAddr(t testing.TB) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
}

// process is one child process of the test, with its output captured. It is stopped
// (SIGTERM, then SIGKILL after stopGrace) and waited for when the test ends; its stderr is
// dumped if the test failed, and a data race it reported fails the test.
type process struct {
	t      testing.TB
	name   string
	cmd    *exec.Cmd
	stdout *lineBuffer
	stderr *lineBuffer

	done     chan struct{} // closed once the process has been waited for
	exitCode int           // valid once done is closed
	killed   bool          // we sent SIGKILL or SIGTERM on purpose (guarded by mu)
	mu       sync.Mutex
}

// childEnv is the test's environment without the variables fuseproxy reads as config
// overrides, plus extra ("NAME=value"). A -race binary sleeps 1 s at exit by default so
// that late races get reported; unless GORACE is set, that is cut to 100 ms, which saves
// a second per process stopped (races are reported when they happen).
func childEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "FUSE_") || strings.HasPrefix(kv, "REDIS_") {
			continue
		}
		env = append(env, kv)
	}
	if _, ok := os.LookupEnv("GORACE"); !ok {
		env = append(env, "GORACE=atexit_sleep_ms=100")
	}
	return append(env, extra...)
}

// startProcess starts binary with args in dir ("" for the test's temporary directory).
func startProcess(t testing.TB, name, dir string, env []string, args ...string) *process {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	p := &process{t: t, name: name, stdout: &lineBuffer{}, stderr: &lineBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(binary, args...)
	p.cmd.Dir = dir
	p.cmd.Env = childEnv(env...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		err := p.cmd.Wait()
		p.exitCode = exitCode(err)
		close(p.done)
	}()
	t.Cleanup(p.cleanup)
	return p
}

func exitCode(err error) int {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	default:
		return -1
	}
}

// runProcess runs binary to completion (bounded by timeout) and returns its exit code,
// stdout and stderr.
func runProcess(t testing.TB, dir string, timeout time.Duration, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	p := startProcess(t, "fuseproxy "+strings.Join(args, " "), dir, nil, args...)
	code, ok := p.Wait(timeout)
	if !ok {
		p.Kill()
		t.Fatalf("%s did not exit within %v\nstderr:\n%s", p.name, timeout, p.stderr.String())
	}
	return code, p.stdout.String(), p.stderr.String()
}

// Exited reports whether the process has exited.
func (p *process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Wait waits up to timeout for the process to exit and returns its exit code (128+signal
// when a signal ended it); ok is false if it is still running.
func (p *process) Wait(timeout time.Duration) (code int, ok bool) {
	select {
	case <-p.done:
		return p.exitCode, true
	case <-time.After(timeout):
		return 0, false
	}
}

// ExitCode is the exit code, or -1 while the process runs.
func (p *process) ExitCode() int {
	if !p.Exited() {
		return -1
	}
	return p.exitCode
}

// Signal sends sig to the process. The cleanup then does not insist on exit code 0.
func (p *process) Signal(sig os.Signal) {
	p.mu.Lock()
	p.killed = true
	p.mu.Unlock()
	if err := p.cmd.Process.Signal(sig); err != nil && !p.Exited() {
		p.t.Errorf("signal %v to %s: %v", sig, p.name, err)
	}
}

// Kill sends SIGKILL and waits until the process is gone.
func (p *process) Kill() {
	p.Signal(syscall.SIGKILL)
	<-p.done
}

// Stderr is everything the process wrote to stderr so far.
func (p *process) Stderr() string { return p.stderr.String() }

// Logs returns the JSON log lines written to stderr so far.
func (p *process) Logs() []logLine { return p.stderr.Lines() }

func (p *process) cleanup() {
	t := p.t
	if !p.Exited() {
		start := time.Now()
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		defer func() {
			if d := time.Since(start); d > time.Second {
				t.Logf("%s took %v to exit after SIGTERM; its last lines:\n%s", p.name, d.Round(time.Millisecond), tail(p.stderr.String(), 8))
			}
		}()
		if _, ok := p.Wait(stopGrace); !ok {
			t.Errorf("%s did not exit within %v of SIGTERM; killed", p.name, stopGrace)
			_ = p.cmd.Process.Kill()
			<-p.done
		} else if code := p.exitCode; code != 0 {
			p.mu.Lock()
			deliberate := p.killed
			p.mu.Unlock()
			if !deliberate {
				t.Errorf("%s exited with code %d after SIGTERM, want 0", p.name, code)
			}
		}
	}
	stderr := p.stderr.String()
	if strings.Contains(stderr, "WARNING: DATA RACE") {
		t.Errorf("%s reported a data race:\n%s", p.name, tail(stderr, 400))
	} else if t.Failed() {
		t.Logf("--- %s stderr (last lines, exit code %d) ---\n%s", p.name, p.ExitCode(), tail(stderr, 150))
	}
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.SplitAfter(s, "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... (%d lines left out)\n", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "")
}

// logLine is one JSON log line of a process, with the time the test read it.
type logLine struct {
	At     time.Time // when the line reached the test
	Fields map[string]any
}

// Msg is the line's message.
func (l logLine) Msg() string { return l.Str("msg") }

// Str is a string field ("" when absent or not a string).
func (l logLine) Str(key string) string {
	s, _ := l.Fields[key].(string)
	return s
}

// Num is a number field (0 when absent or not a number).
func (l logLine) Num(key string) float64 {
	f, _ := l.Fields[key].(float64)
	return f
}

func (l logLine) String() string {
	b, _ := json.Marshal(l.Fields)
	return string(b)
}

// lineBuffer collects a process's output and parses its JSON lines as they arrive.
type lineBuffer struct {
	mu      sync.Mutex
	raw     bytes.Buffer
	partial []byte
	lines   []logLine
}

func (b *lineBuffer) Write(p []byte) (int, error) {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.raw.Write(p)
	b.partial = append(b.partial, p...)
	for {
		i := bytes.IndexByte(b.partial, '\n')
		if i < 0 {
			break
		}
		line := b.partial[:i]
		if len(line) > 0 && line[0] == '{' {
			var fields map[string]any
			if json.Unmarshal(line, &fields) == nil {
				b.lines = append(b.lines, logLine{At: now, Fields: fields})
			}
		}
		b.partial = b.partial[i+1:]
	}
	if len(b.partial) == 0 {
		b.partial = nil // let the consumed backing array go
	}
	return len(p), nil
}

func (b *lineBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.raw.String()
}

// Lines returns the JSON lines so far (a copy of the slice; the lines are shared).
func (b *lineBuffer) Lines() []logLine {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]logLine(nil), b.lines...)
}

// waitFor polls cond every interval until it holds or timeout passes; it reports whether
// cond held. The number of polls is bounded by timeout/interval+1.
func waitFor(timeout, interval time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
	}
}
