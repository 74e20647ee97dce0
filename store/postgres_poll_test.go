package store

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/internal/testutil/pgtest"
)

// A transition notification a replica's listener missed (its connection was down, its
// LISTEN not yet in effect, or any other fault: here the listener drops them) reaches
// it through the poll within a poll interval, though its circuit is closed and quiet
// (it exchanges nothing about it).
func TestPostgresPollMakesUpForALostNotification(t *testing.T) {
	f := newPgFleet(t, pgServer(t))
	rc := replicaConfig{settings: longOpen(), flush: 20 * time.Millisecond}
	a, b := startPgReplica(t, f, "a", rc), startPgReplica(t, f, "b", rc)
	b.st.be.(*pgBackend).deaf.Store(true)
	for range 3 {
		fail(t, a.b)
	}
	waitState(t, a.b, breaker.Open)
	every := pollInterval(20 * time.Millisecond)
	start := time.Now()
	eventually(t, every+every/10+time.Second, "b adopts the open it was not notified of", func() bool {
		return b.b.State() == breaker.Open
	})
	t.Logf("b open %v after a (poll interval %v)", time.Since(start).Round(time.Millisecond), every)
	if n := b.logs.FilterMessage("polling for missed transitions failed").Len(); n > 0 {
		t.Errorf("%d failed polls", n)
	}
}

// The poll costs one statement per poll interval per replica, whatever the number of
// circuits: every top-level statement that calls <p>changes, counted by the server
// (pg_stat_statements), against the polls the replica made, with 20 circuits of which
// 10 transitioned within the poll's reach.
func TestPostgresPollIsOneStatement(t *testing.T) {
	srv := pgtest.Start(t, "shared_preload_libraries=pg_stat_statements", "pg_stat_statements.track=all")
	srv.Exec("CREATE EXTENSION pg_stat_statements")
	f := newPgFleet(t, srv)
	pool, err := NewPostgresPool(PostgresClientOptions{URL: srv.DSN(), PoolSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	st, err := NewPostgres(pool, PostgresOptions{Prefix: f.prefix, ReplicaID: "r0", FlushInterval: 20 * time.Millisecond,
		DegradeAfter: 3, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	cs := map[string]Circuit{}
	for i := range 20 {
		name := "u" + strconv.Itoa(i)
		cs[name] = Circuit{Breaker: breaker.New(name, longOpen(), breaker.Options{}), SettingsHash: "h", TrialLease: 10 * time.Second}
	}
	st.Attach(cs)
	if err := st.Resync(t.Context()); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if err := st.Control(t.Context(), "u"+strconv.Itoa(i), Command{Op: OpOpen}); err != nil {
			t.Fatal(err)
		}
	}
	// what it returns is what NOTIFY carries, decoded by the handler's decoder: the
	// twenty circuits' new epochs (the resync created their rows), ten of them opened since
	var out []string
	if err := srv.Pool().QueryRow(t.Context(), "SELECT "+f.prefix+"changes(0)").Scan(&out); err != nil || len(out) != 21 {
		t.Fatalf("changes(0) = %q, %v; want the clock and 20 circuits", out, err)
	}
	open := 0
	for _, m := range out[1:] {
		name, rep, err := decodeMessage(m)
		if err != nil || cs[name].Breaker == nil {
			t.Errorf("changes: %q: %s, %v; want a circuit's state", m, name, err)
		}
		if rep.state.State == breaker.Open {
			open++
		}
	}
	if open != 10 {
		t.Errorf("changes: %d open, want 10: %q", open, out)
	}
	calls := func() int64 {
		var n int64
		if err := srv.Pool().QueryRow(context.Background(), `SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements
			WHERE toplevel AND query LIKE '%`+f.prefix+`changes%' AND query NOT LIKE '%pg_stat_statements%'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := calls() // the migration's statements that name it
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = st.Run(ctx) }()
	be := st.be.(*pgBackend)
	eventually(t, 3*pollInterval(20*time.Millisecond)+waitFor, "three polls", func() bool { return be.polls.Load() >= 3 })
	cancel()
	<-done
	st.Close()
	polls, n := be.polls.Load(), calls()-before
	t.Logf("%d polls, %d statements calling changes", polls, n)
	if n != polls {
		t.Errorf("%d statements for %d polls, want one each", n, polls)
	}
}
