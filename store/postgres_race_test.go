package store

import (
	"context"
	"testing"
	"time"
)

// flushArgs is a flush of 2 requests, 1 failure by replica on the circuit of e.
func (e *luaEnv) flushArgs(t testing.TB, replica string) []string {
	t.Helper()
	args, err := pgArgs([]any{replica, 0, 2, 1, 0, 1, 1, e.settingsArg, "h", 0.5, e.channel,
		e.name, e.onset, 0, 0, 1, 0})
	if err != nil {
		t.Fatal(err)
	}
	return args
}

// waitLocked polls until the backend pid waits for a lock.
func waitLocked(t testing.TB, b *pgScripts, pid uint32) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for b.count(t, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'", int(pid)) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("backend %d never waited for a lock", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestPostgresFlushWaitingForTheLockLosesNoBucket: a flush that waits for the circuit's
// row while another flush holds it must not judge the buckets by a clock read before
// the wait. The holder's flush lands in a later bucket than the waiter's clock reading;
// a waiter that prunes by its old reading takes that bucket for one from the future and
// drops it (the counts TestPostgresConcurrentFlushesSerialize lost under load).
func TestPostgresFlushWaitingForTheLockLosesNoBucket(t *testing.T) {
	t.Parallel()
	s := baseSettings()
	s.ConsecutiveFailures = 0
	s.Window = 10 * time.Second
	s.Buckets = 100 // 100 ms buckets
	e, b := pgEnv(t, "api", s)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	flushQ := "SELECT " + b.prefix + "flush($1, $2)"
	var out []*string
	if err := b.pool.QueryRow(ctx, flushQ, e.name, e.flushArgs(t, "r0")).Scan(&out); err != nil {
		t.Fatal(err)
	}
	holder := pgConnect(t, b.srv.DSN())
	waiter := pgConnect(t, b.srv.DSN())
	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, "SELECT 1 FROM "+b.prefix+"circuits WHERE upstream = $1 FOR UPDATE", e.name); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		var out []*string
		done <- waiter.QueryRow(ctx, flushQ, e.name, e.flushArgs(t, "r2")).Scan(&out)
	}()
	waitLocked(t, b, waiter.PgConn().PID())
	// the waiter read the clock before now: the holder flushes in a later bucket
	nowMs := func() int64 {
		var ms int64
		if err := tx.QueryRow(ctx, "SELECT "+b.prefix+"now_ms()").Scan(&ms); err != nil {
			t.Fatal(err)
		}
		return ms
	}
	k := nowMs() / 100
	for nowMs()/100 == k {
		time.Sleep(5 * time.Millisecond)
	}
	if err := tx.QueryRow(ctx, flushQ, e.name, e.flushArgs(t, "r1")).Scan(&out); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if req, fail, _ := e.windowTotals(); req != 6 || fail != 3 {
		t.Fatalf("window %d/%d after 3 flushes of 2/1, want 6/3", req, fail)
	}
}
