package store

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// pgStoreAs runs a store of fleet f as the pool of o, with its logs observed, until t
// ends.
func pgStoreAs(t *testing.T, f *pgFleet, o PostgresClientOptions) (*Postgres, *breaker.Breaker, *observer.ObservedLogs) {
	t.Helper()
	pool, err := NewPostgresPool(o)
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	st, err := NewPostgres(pool, PostgresOptions{Prefix: f.prefix, ReplicaID: "r1", FlushInterval: 20 * time.Millisecond,
		DegradeAfter: 2, Timeout: time.Second, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	b := breaker.New(circuitName, longOpen(), breaker.Options{})
	st.Attach(map[string]Circuit{circuitName: {Breaker: b, SettingsHash: "h", TrialLease: 10 * time.Second}})
	_ = st.Resync(t.Context())
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = st.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait(); st.Close() })
	return st, b, logs
}

// TestPostgresReadOnlyDegrades: a database that takes no writes (a hot standby after a
// failover pointed the DNS name at it, default_transaction_read_only) answers every
// call with 25006: the store degrades, the breakers protect locally, and it recovers
// when writes are taken again.
func TestPostgresReadOnlyDegrades(t *testing.T) {
	srv := pgServer(t)
	f := newPgFleet(t, srv)
	role := f.prefix + "ro"
	srv.Exec("CREATE ROLE " + role + " LOGIN SUPERUSER")
	st, b, _ := pgStoreAs(t, f, PostgresClientOptions{URL: srv.DSNFor(role, "postgres"), PoolSize: 2})
	eventually(t, waitFor, "synced", func() bool { return !st.Status().Degraded && st.Status().LastError == "" })
	srv.Exec("ALTER ROLE " + role + " SET default_transaction_read_only = on")
	srv.Exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
	eventually(t, waitFor, "degraded", func() bool { return st.Status().Degraded })
	if e := st.Status().LastError; !strings.Contains(e, "25006") {
		t.Fatalf("LastError %q, want the database's read-only error", e)
	}
	for range 3 {
		fail(t, b)
	}
	waitState(t, b, breaker.Open)
	srv.Exec("ALTER ROLE " + role + " RESET default_transaction_read_only")
	srv.Exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
	eventually(t, waitFor, "recovered", func() bool { return !st.Status().Degraded })
}

// TestPostgresPasswordNeverShown: a password in the URL (or the password key) appears in
// no status and no log line when the database cannot be reached.
func TestPostgresPasswordNeverShown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close() // nothing listens there now
	f := newPgFleet(t, pgServer(t))
	for _, o := range []PostgresClientOptions{
		{URL: fmt.Sprintf("postgres://fuse:S3cretInURL@127.0.0.1:%d/db?sslmode=disable", port)},
		{Host: "127.0.0.1", Port: port, User: "fuse", Password: "S3cretInKey", SSLMode: "disable"},
	} {
		st, _, logs := pgStoreAs(t, f, o)
		eventually(t, waitFor, "degraded", func() bool { return st.Status().Degraded })
		s := fmt.Sprintf("%+v", st.Status())
		for _, e := range logs.All() {
			s += fmt.Sprintf("\n%s %v", e.Message, e.ContextMap())
		}
		if strings.Contains(s, "S3cret") {
			t.Fatalf("the password shows:\n%s", s)
		}
	}
}
