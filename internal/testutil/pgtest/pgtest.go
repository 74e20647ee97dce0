// Package pgtest runs a private PostgreSQL server for a test: initdb on a fresh
// directory, postgres on a free loopback port with its unix socket in that directory,
// fsync off (a killed server loses no commit, only an OS crash could), killed and removed when the test ends. Tests never touch a shared server
// (nothing here goes near port 5432).
//
//	srv := pgtest.Start(t)
//	pool := srv.Pool()      // a pgxpool.Pool for the test's own statements
//	dsn := srv.DSN()        // postgres://postgres@127.0.0.1:PORT/postgres?sslmode=disable
//	srv.Kill()              // SIGKILL: connections are refused
//	srv.Restart()           // back on the same port, same data directory (crash recovery)
//	srv.Stop()              // clean shutdown
//
// The binaries are Debian's (/usr/lib/postgresql/<version>/bin, the highest version),
// or those in $PGTEST_BIN, or initdb and postgres on $PATH. PostgreSQL refuses to run as
// root, so under root (CI) the server runs as the OS user "postgres" (which Debian's
// postgresql package creates) in a directory under os.TempDir() that it owns; otherwise
// as the current user. The superuser is "postgres", authentication is trust (loopback
// and the socket only).
package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fuseproxy/fuseproxy/internal/testutil/freeport"
)

// startTimeout bounds how long initdb, and then postgres until it accepts a query, may
// take.
const startTimeout = 60 * time.Second

// Superuser is the name of the server's superuser role.
const Superuser = "postgres"

// Server is a PostgreSQL server owned by one test.
type Server struct {
	t        testing.TB
	bin      string   // directory of initdb and postgres
	root     string   // our directory: data/, sock/; removed at cleanup
	data     string   // the data directory
	sock     string   // the unix socket directory
	port     int      // loopback TCP port
	settings []string // more -c name=value settings, on every (re)start
	cred     *syscall.Credential

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
	out    *syncBuffer   // the server's log, for failure messages
	pool   *pgxpool.Pool
	conns  []*pgx.Conn
}

// Start runs initdb and starts postgres for t, and kills it and removes its files when t
// ends. The test fails if PostgreSQL is not installed or does not come up. settings are
// more server settings as "name=value" (passed as -c name=value on every (re)start).
func Start(t testing.TB, settings ...string) *Server {
	t.Helper()
	s, err := start(t, settings)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return s
}

// New starts a server that no test owns, for a whole test binary (one shared server
// for many tests, each in a database or a table prefix of its own): TestMain must Close
// it after m.Run. Its helpers (Pool, Exec, ...) panic where Start's fail the test.
func New(settings ...string) (*Server, error) {
	return start(nil, settings)
}

// Close kills the server and removes its files (what the cleanup of Start does).
func (s *Server) Close() { s.cleanup() }

func start(t testing.TB, settings []string) (*Server, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	for _, s := range settings {
		if !strings.Contains(s, "=") {
			return nil, fmt.Errorf("setting %q is not name=value", s)
		}
	}
	s := &Server{t: t, bin: bin, settings: settings}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root needs the OS user \"postgres\" to run the server (apt-get install -y postgresql creates it): %v", err)
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)} // and no supplementary groups (root's)
	}
	// Not t.TempDir(): its parents are 0700 and owned by us, which the postgres user
	// could not traverse. os.TempDir() (/tmp) is world-traversable.
	root, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		return nil, err
	}
	s.root = root
	if t != nil {
		t.Cleanup(s.cleanup)
	}
	fail := func(err error) (*Server, error) {
		if t == nil {
			s.cleanup()
		}
		return nil, err
	}
	if err := os.Chmod(root, 0o755); err != nil {
		return fail(err)
	}
	s.data, s.sock = filepath.Join(root, "data"), filepath.Join(root, "sock")
	for _, d := range []string{s.data, s.sock} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return fail(err)
		}
		if s.cred != nil {
			if err := os.Chown(d, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
				return fail(err)
			}
		}
	}
	if err := s.initdb(); err != nil {
		return fail(err)
	}
	// Another test binary may take the free port before postgres binds it (rarely: see
	// freeport), so a failed start is retried on a new port.
	for range 3 {
		if s.port, err = freeport.Port(); err != nil {
			return fail(fmt.Errorf("no free port: %v", err))
		}
		if err = s.start(); err == nil {
			return s, nil
		}
	}
	return fail(err)
}

// fatalf fails the owning test, or panics for a server New started.
func (s *Server) fatalf(format string, args ...any) {
	if s.t == nil {
		panic(fmt.Sprintf(format, args...))
	}
	s.t.Helper()
	s.t.Fatalf(format, args...)
}

func (s *Server) helper() {
	if s.t != nil {
		s.t.Helper()
	}
}

// logf logs to the owning test, if any.
func (s *Server) logf(format string, args ...any) {
	if s.t != nil {
		s.t.Logf(format, args...)
	}
}

// BinDir finds the directory holding initdb and postgres: $PGTEST_BIN, else the highest
// /usr/lib/postgresql/<version>/bin, else the directory of initdb on $PATH.
func BinDir() (string, error) {
	if d := os.Getenv("PGTEST_BIN"); d != "" {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err != nil {
			return "", fmt.Errorf("PGTEST_BIN=%s: %w", d, err)
		}
		return d, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	type cand struct {
		v   float64
		dir string
	}
	var cs []cand
	for _, p := range dirs {
		d := filepath.Dir(p)
		v, err := strconv.ParseFloat(filepath.Base(filepath.Dir(d)), 64)
		if err == nil {
			cs = append(cs, cand{v, d})
		}
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].v > cs[j].v })
	if len(cs) > 0 {
		return cs[0].dir, nil
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errors.New("PostgreSQL not found (no /usr/lib/postgresql/*/bin/initdb, no initdb on $PATH): apt-get install -y postgresql")
}

// command runs a PostgreSQL binary as the server's OS user, in its root directory.
func (s *Server) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(s.bin, name), args...)
	cmd.Dir = s.root
	cmd.Env = append(os.Environ(), "LC_ALL=C", "TZ=UTC")
	// its own process group, so Kill reaches the backends too
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: s.cred}
	return cmd
}

func (s *Server) initdb() error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	cmd := s.command("initdb", "-D", s.data, "-U", Superuser, "-A", "trust", "-E", "UTF8",
		"--locale=C", "--no-sync", "--no-instructions")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start initdb: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("initdb -D %s: %v\n%s", s.data, err, out.String())
		}
		return nil
	case <-ctx.Done():
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return fmt.Errorf("initdb -D %s: no result within %v\n%s", s.data, startTimeout, out.String())
	}
}

// start runs postgres on s.port and waits until it answers a query.
func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := &syncBuffer{}
	args := []string{"-D", s.data,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "port=" + strconv.Itoa(s.port),
		"-c", "unix_socket_directories=" + s.sock,
		"-c", "fsync=off",
		"-c", "full_page_writes=off",
		"-c", "shared_buffers=16MB",
		"-c", "max_connections=100",
		"-c", "timezone=UTC",
		"-c", "log_min_messages=warning",
	}
	for _, kv := range s.settings {
		args = append(args, "-c", kv)
	}
	cmd := s.command("postgres", args...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.cmd, s.exited, s.out = cmd, exited, out

	deadline := time.Now().Add(startTimeout)
	for {
		err := s.ping()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			s.killLocked()
			return fmt.Errorf("postgres on port %d did not answer within %v: %v\n%s", s.port, startTimeout, err, out.String())
		}
		select {
		case <-exited:
			s.killLocked()
			return fmt.Errorf("postgres on port %d exited at start:\n%s", s.port, out.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// ping runs SELECT 1 on a fresh connection.
func (s *Server) ping() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, s.DSN())
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	var one int
	return c.QueryRow(ctx, "SELECT 1").Scan(&one)
}

// Port is the server's loopback TCP port.
func (s *Server) Port() int { return s.port }

// Addr is the server's host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// SocketDir is the directory of the server's unix socket.
func (s *Server) SocketDir() string { return s.sock }

// DataDir is the server's data directory.
func (s *Server) DataDir() string { return s.data }

// DSN is a postgres:// URL for the superuser and database postgres over TCP.
func (s *Server) DSN() string { return s.DSNFor(Superuser, "postgres") }

// DSNFor is a postgres:// URL for role user (trust: no password) and database db.
func (s *Server) DSNFor(user, db string) string {
	u := url.URL{Scheme: "postgres", User: url.User(user), Host: s.Addr(), Path: "/" + db,
		RawQuery: "sslmode=disable"}
	return u.String()
}

// SocketDSN is a keyword/value connection string for the superuser over the unix socket.
func (s *Server) SocketDSN() string {
	return fmt.Sprintf("host=%s port=%d user=%s dbname=postgres sslmode=disable", s.sock, s.port, Superuser)
}

// Pool is a connection pool of the superuser on database postgres for the test's own
// statements, closed when the test ends. It reconnects by itself after a Restart.
func (s *Server) Pool() *pgxpool.Pool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pool == nil {
		p, err := pgxpool.New(context.Background(), s.DSN())
		if err != nil {
			s.fatalf("pgtest: pool: %v", err)
		}
		s.pool = p
	}
	return s.pool
}

// Conn opens a new connection to dsn (the superuser's DSN when empty), closed when the
// test ends (or earlier by the caller).
func (s *Server) Conn(dsn string) *pgx.Conn {
	s.helper()
	if dsn == "" {
		dsn = s.DSN()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		s.fatalf("pgtest: connect %s: %v", dsn, err)
	}
	s.mu.Lock()
	s.conns = append(s.conns, c)
	s.mu.Unlock()
	return c
}

// Exec runs sql as the superuser on database postgres, failing the test on an error.
func (s *Server) Exec(sql string, args ...any) {
	s.helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.Pool().Exec(ctx, sql, args...); err != nil {
		s.fatalf("pgtest: %s: %v", sql, err)
	}
}

// CreateDatabase creates database name (owned by the superuser) and returns its DSN.
func (s *Server) CreateDatabase(name string) string {
	s.helper()
	s.Exec("CREATE DATABASE " + pgx.Identifier{name}.Sanitize())
	return s.DSNFor(Superuser, name)
}

// Log is what the server wrote since its last (re)start.
func (s *Server) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.out == nil {
		return ""
	}
	return s.out.String()
}

// Kill stops the server and its backends with SIGKILL and waits until the postmaster is
// gone: connections are then refused on its port. Killing a stopped server does nothing.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killLocked()
}

func (s *Server) killLocked() {
	if s.cmd == nil {
		return
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.exited
	s.waitGroupGone(s.cmd.Process.Pid)
	s.cmd = nil
}

// waitGroupGone waits (up to 10 s) until no live process of the process group pgid is
// left: after a SIGKILL to the group the backends are dying, and a new postmaster on the
// same data directory refuses to start while they still hold its shared memory.
func (s *Server) waitGroupGone(pgid int) {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if !groupAlive(pgid) {
			return
		}
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		time.Sleep(5 * time.Millisecond)
	}
}

// groupAlive reports whether a process of group pgid still runs (zombies, which hold
// no memory, do not count).
func groupAlive(pgid int) bool {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return syscall.Kill(-pgid, 0) == nil
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...: comm may hold spaces, so cut after the last ')'
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 3 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		if g, _ := strconv.Atoi(f[2]); g == pgid && pid > 0 {
			return true
		}
	}
	return false
}

// Stop shuts the server down cleanly (fast shutdown: open transactions are rolled back)
// and waits until it has exited. Stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-s.exited:
		s.waitGroupGone(s.cmd.Process.Pid)
		s.cmd = nil
	case <-time.After(30 * time.Second):
		s.killLocked()
	}
}

// Restart kills the server if it runs and starts it again on the same port with the
// same data directory: committed data survives (after crash recovery when it was
// killed).
func (s *Server) Restart() {
	s.helper()
	s.Kill()
	var err error
	// The port may still be in TIME_WAIT-free limbo for a moment; retry briefly.
	for range 5 {
		if err = s.start(); err == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.fatalf("pgtest: restart: %v", err)
}

func (s *Server) cleanup() {
	s.mu.Lock()
	p, conns := s.pool, s.conns
	s.pool, s.conns = nil, nil
	s.mu.Unlock()
	for _, c := range conns {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = c.Close(ctx)
		cancel()
	}
	if p != nil {
		p.Close()
	}
	s.Kill()
	if s.root != "" {
		if err := os.RemoveAll(s.root); err != nil {
			s.logf("pgtest: removing %s: %v", s.root, err)
		}
	}
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
