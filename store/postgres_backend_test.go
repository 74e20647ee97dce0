package store

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/internal/testutil/pgtest"
)

// These tests hold the PostgreSQL backend's Go side (the pipeline, the encodings, the
// listener) to the engine's contract with stand-in SQL functions of the contract's shape
// (name text, args text[]) → text[]: the real ones (store/sql) have tests of their own.

func TestPgTextArrayEncoding(t *testing.T) {
	args, err := pgArgs([]any{"r1", 7, int64(-3), uint64(1 << 63), 0.25, "", `a"b\c,{}`, true})
	if err != nil {
		t.Fatal(err)
	}
	b := encodeTextArray(args)
	got, err := decodeTextArray(b)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"r1", "7", "-3", "9223372036854775808", "0.25", "", `a"b\c,{}`, "1"}
	if len(got) != len(want) {
		t.Fatalf("decoded %d elements, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] == nil || *got[i] != want[i] {
			t.Fatalf("element %d = %v, want %q", i, got[i], want[i])
		}
	}
	for _, bad := range [][]byte{nil, {0, 0, 0, 2}, b[:len(b)-1], b[:24]} {
		if _, err := decodeTextArray(bad); err == nil {
			t.Fatalf("decodeTextArray(%v) accepted", bad)
		}
	}
}

// fakeFunctions creates stand-ins for prefix's flush and heartbeat functions: flush
// answers a closed state (the circuit "bad" raises an error), heartbeat 1; every call is
// counted in <prefix>calls.
func fakeFunctions(t *testing.T, srv *pgtest.Server, prefix string) {
	t.Helper()
	srv.Exec(`CREATE TABLE ` + prefix + `calls (fn text, name text, args text[])`)
	srv.Exec(`CREATE FUNCTION ` + prefix + `flush(name text, args text[]) RETURNS text[] LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO ` + prefix + `calls VALUES ('flush', name, args);
  IF name = 'bad' THEN RAISE EXCEPTION 'bad circuit'; END IF;
  RETURN ARRAY['0','0','0','0','0','0', ((extract(epoch from clock_timestamp())*1000)::bigint)::text, '0',
    '', '', '', '1', NULL, '0'];
END $$`)
	srv.Exec(`CREATE FUNCTION ` + prefix + `heartbeat(name text, args text[]) RETURNS text[] LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO ` + prefix + `calls VALUES ('heartbeat', name, args);
  RETURN ARRAY['1'];
END $$`)
}

func newPgPool(t *testing.T, srv *pgtest.Server) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(srv.DSN())
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 4
	cfg.ConnConfig.ConnectTimeout = 250 * time.Millisecond
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return pool
}

func TestPgRunPipelinesCallsEachInItsOwnTransaction(t *testing.T) {
	srv := pgtest.Start(t)
	fakeFunctions(t, srv, "t_")
	st, err := NewPostgres(newPgPool(t, srv), PostgresOptions{Prefix: "t_", ReplicaID: "r1",
		FlushInterval: time.Second, DegradeAfter: 3, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	be := st.be.(*pgBackend)
	good := &circuit{name: "up"}
	calls := []*call{
		st.beat(),
		{c: good, script: flushScript, keys: []string{"x"}, args: []any{"r1", 1, 2.5}},
		{c: &circuit{name: "bad"}, script: flushScript, args: []any{"r1"}},
		{c: good, script: flushScript, args: []any{"r1", "last"}},
	}
	err = be.run(t.Context(), calls)
	var rerr redis.Error
	if !errors.As(err, &rerr) || !strings.Contains(err.Error(), "bad circuit") {
		t.Fatalf("run = %v, want the bad circuit's statement error, as an error reply", err)
	}
	if v := calls[0].cmd.Val(); v != int64(1) {
		t.Fatalf("heartbeat reply %#v", v)
	}
	for _, i := range []int{1, 3} {
		if _, err := decodeReply(calls[i].cmd.Val()); err != nil || calls[i].cmd.Err() != nil {
			t.Fatalf("call %d: %v, %v", i, calls[i].cmd.Err(), err)
		}
	}
	if err := calls[2].cmd.Err(); !errors.As(err, &rerr) {
		t.Fatalf("the bad call's error %v", err)
	}
	// every call ran (the error rolled back the bad one's insert only)
	var n int
	var args []string
	if err := srv.Pool().QueryRow(t.Context(), `SELECT count(*), (SELECT args FROM t_calls WHERE name = 'up' LIMIT 1) FROM t_calls`).Scan(&n, &args); err != nil {
		t.Fatal(err)
	}
	if n != 3 || strings.Join(args, ",") != "r1,1,2.5" {
		t.Fatalf("%d calls recorded (want 3), args %v", n, args)
	}
	var hb string
	if err := srv.Pool().QueryRow(t.Context(), `SELECT name FROM t_calls WHERE fn = 'heartbeat'`).Scan(&hb); err != nil || hb != "r1" {
		t.Fatalf("heartbeat named %q (%v), want the replica id", hb, err)
	}

	// no answer at all: an error that is no reply, on every call
	srv.Kill()
	calls = []*call{st.beat(), {c: good, script: flushScript, args: []any{"r1"}}}
	err = be.run(t.Context(), calls)
	if err == nil || errors.As(err, &rerr) {
		t.Fatalf("run on a dead server = %v, want an error that is no reply", err)
	}
	for i, cl := range calls {
		if cl.cmd.Err() == nil {
			t.Fatalf("call %d has no error", i)
		}
	}
}

// A replica hears transitions by LISTEN, and after its listening connection comes back
// (the server restarted: notifications were lost meanwhile) it re-reads every circuit.
func TestPgListenDeliversAndResyncsAfterReconnect(t *testing.T) {
	srv := pgtest.Start(t)
	fakeFunctions(t, srv, "t_")
	core, logs := observer.New(zapcore.DebugLevel)
	st, err := NewPostgres(newPgPool(t, srv), PostgresOptions{Prefix: "t_", ReplicaID: "r1",
		FlushInterval: 20 * time.Millisecond, DegradeAfter: 2, Timeout: 500 * time.Millisecond, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	b := breaker.New("up", longOpen(), breaker.Options{})
	st.Attach(map[string]Circuit{"up": {Breaker: b, SettingsHash: "h", TrialLease: time.Second}})
	if err := st.Resync(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := st.CheckListen(t.Context()); err != nil {
		t.Fatalf("CheckListen on a direct connection: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = st.Run(ctx) })
	defer func() {
		cancel()
		wg.Wait()
		st.Close()
		if t.Failed() {
			for _, e := range logs.All() {
				t.Logf("%s %s %v", e.Level, e.Message, e.ContextMap())
			}
		}
	}()
	resyncs := func() int {
		var n int
		_ = srv.Pool().QueryRow(context.Background(), `SELECT count(*) FROM t_calls WHERE fn = 'flush'`).Scan(&n)
		return n
	}
	eventually(t, waitFor, "listening", func() bool { return logs.FilterMessage("listening for notifications").Len() > 0 })
	notify := func(gen int, st breaker.State) {
		t.Helper()
		msg := "up " + strings.Join([]string{strconv.Itoa(int(st)), "0", strconv.Itoa(gen), "60000", "60000", "1"}, " ") +
			" " + strconv.Itoa(int(time.Now().UnixMilli())) + " 1 operator"
		if _, err := srv.Pool().Exec(t.Context(), `SELECT pg_notify('t_events', $1)`, msg); err != nil {
			t.Fatal(err)
		}
	}
	notify(1, breaker.Open)
	waitState(t, b, breaker.Open)

	before := resyncs()
	srv.Kill()
	eventually(t, waitFor, "degraded", func() bool { return st.Status().Degraded })
	if st.Status().Driver != "postgres" {
		t.Fatalf("Status %+v", st.Status())
	}
	srv.Restart()
	eventually(t, waitFor, "recovered", func() bool { return !st.Status().Degraded })
	eventually(t, waitFor, "the listener's resync after it reconnected", func() bool {
		return logs.FilterMessage("LISTEN reconnected; resyncing").Len() > 0 && resyncs() > before
	})
	notify(9, breaker.Open)
	waitState(t, b, breaker.Open)
}
