// Package redistest runs a private redis-server for a test: on a free loopback port, with
// persistence off and its files in the test's temporary directory, killed when the test
// ends. Tests never touch a shared Redis.
//
//	srv := redistest.Start(t)
//	client := redis.NewClient(&redis.Options{Addr: srv.Addr()})
//	srv.Kill()    // Redis is gone: connections are refused
//	srv.Restart() // back on the same port, with no data
package redistest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fuseproxy/fuseproxy/internal/testutil/freeport"
)

// startTimeout bounds how long redis-server may take to answer PING.
const startTimeout = 10 * time.Second

// Server is a redis-server owned by one test.
type Server struct {
	t    testing.TB
	port int
	dir  string
	args []string // more configuration directives
	// sentinel, when set, makes this a Sentinel: its configuration directives (sentinel
	// monitor ...), written to a file in dir with the port (see StartSentinels).
	sentinel string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
	out    *syncBuffer   // the server's log, for failure messages
	client *redis.Client
}

// Start starts a redis-server for t and stops it when t ends. The test fails if
// redis-server is not installed or does not come up. args are more configuration
// directives for redis-server ("--rename-command", "EVALSHA", ""), on every (re)start.
func Start(t testing.TB, args ...string) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server not found: apt-get install -y redis-server")
	}
	s := &Server{t: t, dir: t.TempDir(), args: args}
	t.Cleanup(s.cleanup)
	// Another test binary may take the free port before redis-server binds it (rarely:
	// see freeport), so a failed start is retried on a new port.
	var err error
	for range 3 {
		if s.port, err = freeport.Port(); err != nil {
			t.Fatalf("redistest: no free port: %v", err)
		}
		if err = s.start(); err == nil {
			return s
		}
	}
	t.Fatalf("redistest: %v", err)
	return nil
}

// start runs redis-server on s.port and waits until it answers PING.
func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := &syncBuffer{}
	argv := append([]string{
		"--save", "", "--appendonly", "no",
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--dir", s.dir}, s.args...)
	if s.sentinel != "" {
		// A Sentinel rewrites its configuration file, which must be its own.
		conf := filepath.Join(s.dir, "sentinel.conf")
		text := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\n%s", s.port, s.dir, s.sentinel)
		if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
			return err
		}
		argv = []string{conf, "--sentinel"}
	}
	cmd := exec.Command("redis-server", argv...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.cmd, s.exited, s.out = cmd, exited, out

	deadline := time.Now().Add(startTimeout)
	for {
		if err := ping(s.Addr()); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			s.killLocked()
			return fmt.Errorf("redis-server on port %d did not answer PING within %v: %v\n%s",
				s.port, startTimeout, err, out.String())
		}
		select {
		case <-exited:
			return fmt.Errorf("redis-server on port %d exited at start:\n%s", s.port, out.String())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// ping sends one PING on a fresh connection.
func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// URL is the server's address as a redis:// URL for database 0.
func (s *Server) URL() string { return "redis://" + s.Addr() + "/0" }

// Kill stops the server with SIGKILL and waits until it is gone: connections are then
// refused on its port. Killing a stopped server does nothing.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killLocked()
}

func (s *Server) killLocked() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
	s.cmd = nil
}

// Restart kills the server if it runs and starts a new one on the same port, with no data.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	if err := s.start(); err != nil {
		s.t.Fatalf("redistest: restart: %v", err)
	}
}

// Client is a client of this server for the test's own assertions, closed when the test
// ends. It reconnects by itself after a Restart.
func (s *Server) Client() *redis.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.client == nil {
		s.client = redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
	}
	return s.client
}

// CommandStats returns how many times each command ran since the server started (or
// since CONFIG RESETSTAT), from INFO commandstats: {"evalsha": 12, "client|kill": 1}.
func (s *Server) CommandStats() map[string]int64 {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := s.Client().Info(ctx, "commandstats").Result()
	if err != nil {
		s.t.Fatalf("redistest: INFO commandstats: %v", err)
	}
	return parseCommandStats(info)
}

// parseCommandStats reads lines like "cmdstat_get:calls=2,usec=15,usec_per_call=7.50,...".
func parseCommandStats(info string) map[string]int64 {
	stats := map[string]int64{}
	for line := range strings.Lines(info) {
		name, fields, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		for f := range strings.SplitSeq(fields, ",") {
			if v, ok := strings.CutPrefix(f, "calls="); ok {
				if n, err := strconv.ParseInt(v, 10, 64); err == nil {
					stats[strings.TrimPrefix(name, "cmdstat_")] = n
				}
			}
		}
	}
	return stats
}

func (s *Server) cleanup() {
	s.mu.Lock()
	c := s.client
	s.client = nil
	s.mu.Unlock()
	if c != nil {
		if err := c.Close(); err != nil && !errors.Is(err, redis.ErrClosed) {
			s.t.Logf("redistest: closing client: %v", err)
		}
	}
	s.Kill()
}

// syncBuffer is a bytes.Buffer safe for the server's stdout and stderr writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
