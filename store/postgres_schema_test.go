package store

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fuseproxy/fuseproxy/breaker"
)

func TestPostgresPrefixValidated(t *testing.T) {
	t.Parallel()
	for _, p := range []string{"fuse_", "_", "a", "x9_", strings.Repeat("a", 30)} {
		if err := ValidPostgresPrefix(p); err != nil {
			t.Errorf("%q: %v", p, err)
		}
	}
	for _, p := range []string{"", "Fuse_", "9x", "a-b", "a b", "fuse;drop", `a"`, strings.Repeat("a", 31), "é"} {
		if err := ValidPostgresPrefix(p); err == nil {
			t.Errorf("%q accepted", p)
		}
		if _, err := Migrate(context.Background(), nil, p); err == nil || !strings.Contains(err.Error(), "prefix") {
			t.Errorf("Migrate with prefix %q: %v, want the prefix refused", p, err)
		}
	}
}

// TestPostgresMigrateConcurrent: replicas that start together migrate together; each
// version is applied once, every call succeeds, and a later call applies nothing.
func TestPostgresMigrateConcurrent(t *testing.T) {
	t.Parallel()
	srv := pgServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const replicas = 4
	const prefix = "concurrent_"
	var wg sync.WaitGroup
	results := make([]MigrateResult, replicas)
	errs := make([]error, replicas)
	for i := range replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, srv.DSN()) // a connection of its own, as a replica has
			if err != nil {
				errs[i] = err
				return
			}
			defer conn.Close(context.Background())
			results[i], errs[i] = Migrate(ctx, conn, prefix)
		}()
	}
	wg.Wait()
	var applied []int
	for i := range replicas {
		if errs[i] != nil {
			t.Fatalf("replica %d: %v", i, errs[i])
		}
		if results[i].Version != PostgresSchemaVersion() || results[i].Schema != "public" {
			t.Errorf("replica %d: %+v, want version %d in public", i, results[i], PostgresSchemaVersion())
		}
		applied = append(applied, results[i].Applied...)
	}
	slices.Sort(applied)
	var want []int
	for v := 1; v <= PostgresSchemaVersion(); v++ {
		want = append(want, v)
	}
	if !slices.Equal(applied, want) {
		t.Fatalf("versions applied across the replicas: %v, want each of %v once", applied, want)
	}
	var rows int
	if err := srv.Pool().QueryRow(ctx, "SELECT count(*) FROM "+prefix+"schema").Scan(&rows); err != nil || rows != len(want) {
		t.Fatalf("%sschema holds %d rows (%v), want %d", prefix, rows, err, len(want))
	}
	res, err := Migrate(ctx, srv.Pool(), prefix)
	if err != nil || len(res.Applied) != 0 {
		t.Fatalf("a later Migrate: %+v, %v; want nothing applied", res, err)
	}
}

// TestPostgresRuntimeRoleGrants: a migrating role that owns the schema's objects, and a
// runtime role with only what PostgresGrants gives it, which can run Migrate (nothing to
// do) and every function, and nothing else.
func TestPostgresRuntimeRoleGrants(t *testing.T) {
	t.Parallel()
	srv := pgServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const db = "grants"
	srv.Exec("CREATE DATABASE " + db)
	srv.Exec("CREATE ROLE migrator LOGIN")
	srv.Exec("CREATE ROLE runtime LOGIN")
	// what the migrating role needs: CONNECT, and USAGE and CREATE on the schema
	super := pgConnect(t, srv.DSNFor("postgres", db))
	mustExec(t, super, "REVOKE ALL ON DATABASE "+db+" FROM PUBLIC")
	mustExec(t, super, "GRANT CONNECT ON DATABASE "+db+" TO migrator")
	mustExec(t, super, "GRANT USAGE, CREATE ON SCHEMA public TO migrator")

	mig := pgConnect(t, srv.DSNFor("migrator", db))
	if _, err := Migrate(ctx, mig, "fuse_"); err != nil {
		t.Fatalf("Migrate as the migrating role: %v", err)
	}
	if _, err := pgx.Connect(ctx, srv.DSNFor("runtime", db)); err == nil {
		t.Fatal("the runtime role connected before any grant")
	}
	for _, g := range PostgresGrants("fuse_", "public", db, "runtime") {
		// the objects' owner grants; CONNECT, the database's owner
		if strings.HasPrefix(g, "GRANT CONNECT") {
			mustExec(t, super, g)
		} else {
			mustExec(t, mig, g)
		}
	}
	rt := pgConnect(t, srv.DSNFor("runtime", db))
	if res, err := Migrate(ctx, rt, "fuse_"); err != nil || len(res.Applied) != 0 {
		t.Fatalf("Migrate as the runtime role: %+v, %v; want nothing to do", res, err)
	}
	sarg := settingsArg(baseSettings(), 1) + ",3600000,100"
	calls := []struct {
		fn   string
		args []string
	}{
		{"flush", []string{"r1", "0", "3", "3", "0", "3", "0", sarg, "h", "0.5", "fuse_events", "api", "fuse_onsets", "0", "0", "1", "0"}},
		{"acquire", []string{"r1", "1", "1000", sarg, "r1:1", "fuse_events", "api"}},
		{"trial", []string{"r1", "2", "1", "0", sarg, "0.5", "fuse_events", "api", "0", "r1:1:2:1"}},
		{"control", []string{"open", "0", sarg, "0.5", "fuse_events", "api", "r1"}},
		{"key_flush", []string{"10", "60000", "k", "r1", "0", "1", "1", "0", "1", "0", sarg, "h", "0.5", "fuse_events", "api#k", "fuse_onsets", "0", "0", "1", "0"}},
		{"key_acquire", []string{"10", "60000", "k", "r1", "1", "1000", sarg, "r1:1", "fuse_events", "api#k"}},
		{"key_trial", []string{"10", "60000", "k", "r1", "0", "1", "0", sarg, "0.5", "fuse_events", "api#k", "0"}},
		{"key_control", []string{"10", "60000", "k", "reset", "0", sarg, "0.5", "fuse_events", "api#k", "r1"}},
		{"heartbeat", []string{"5000"}},
		{"tally", []string{"r1", "1", "2", "10000"}},
		{"claim", []string{"r1", "1000"}},
	}
	for _, c := range calls {
		var out []*string
		if err := rt.QueryRow(ctx, "SELECT fuse_"+c.fn+"($1, $2)", "api", c.args).Scan(&out); err != nil {
			t.Errorf("runtime role: fuse_%s: %v", c.fn, err)
		}
	}
	var n int
	if err := rt.QueryRow(ctx, "SELECT count(*) FROM fuse_history_read('api', NULL, 10)").Scan(&n); err != nil || n == 0 {
		t.Errorf("runtime role: fuse_history_read: %d rows, %v", n, err)
	}
	if err := rt.QueryRow(ctx, "SELECT count(*) FROM fuse_keys_read('api', 10)").Scan(&n); err != nil || n != 1 {
		t.Errorf("runtime role: fuse_keys_read: %d rows, %v; want 1", n, err)
	}
	if _, err := rt.Exec(ctx, "SELECT fuse_cleanup(3600000, 100)"); err != nil {
		t.Errorf("runtime role: fuse_cleanup: %v", err)
	}
	var changes []string
	if err := rt.QueryRow(ctx, "SELECT fuse_changes(0)").Scan(&changes); err != nil || len(changes) < 2 {
		t.Errorf("runtime role: fuse_changes: %q, %v; want the clock and a transition", changes, err)
	}
	// and nothing else: no table, no helper
	for _, q := range []string{
		"SELECT * FROM fuse_circuits", "DELETE FROM fuse_history", "INSERT INTO fuse_leases VALUES ('a', '', 'x', 0)",
		"SELECT fuse__settings('1,2')", "SELECT fuse_now_ms()", "CREATE TABLE fuse_x (a int)",
	} {
		if _, err := rt.Exec(ctx, q); err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Errorf("runtime role: %s: %v, want permission denied", q, err)
		}
	}
	// without the grants, the functions are the owner's alone
	srv.Exec("CREATE ROLE other LOGIN")
	mustExec(t, super, "GRANT CONNECT ON DATABASE "+db+" TO other")
	other := pgConnect(t, srv.DSNFor("other", db))
	if _, err := other.Exec(ctx, "SELECT fuse_flush('api', '{}')"); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("a role without the grants ran fuse_flush: %v", err)
	}
}

func pgConnect(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect %s: %v", dsn, err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func mustExec(t testing.TB, c *pgx.Conn, q string) {
	t.Helper()
	if _, err := c.Exec(context.Background(), q); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// pgEnv is a circuit on a fresh prefix of the shared server, and the pool to look at it.
func pgEnv(t *testing.T, name string, s breaker.Settings) (*luaEnv, *pgScripts) {
	t.Helper()
	b := newPGScripts(t)
	return env(t, b, name, s, 1), b
}

func (b *pgScripts) exec(t testing.TB, q string, args ...any) {
	t.Helper()
	if _, err := b.pool.Exec(context.Background(), strings.ReplaceAll(q, "<p>", b.prefix), args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func (b *pgScripts) count(t testing.TB, q string, args ...any) int {
	t.Helper()
	var n int
	if err := b.pool.QueryRow(context.Background(), strings.ReplaceAll(q, "<p>", b.prefix), args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// pgTransition is a row of <p>history.
type pgTransition struct {
	Key, From, To, Reason            string
	Requests, Failures, Slow, Consec int64
	Generation                       int64
	Replica                          string
	At                               time.Time
}

func (b *pgScripts) history(t testing.TB, upstream string) []pgTransition {
	t.Helper()
	rows, err := b.pool.Query(context.Background(), "SELECT key, from_state, to_state, reason, requests, failures, slow, "+
		"consecutive, generation, replica, at FROM "+b.prefix+"history_read($1, NULL, 1000)", upstream)
	if err != nil {
		t.Fatal(err)
	}
	hs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (pgTransition, error) {
		var h pgTransition
		err := r.Scan(&h.Key, &h.From, &h.To, &h.Reason, &h.Requests, &h.Failures, &h.Slow, &h.Consec, &h.Generation,
			&h.Replica, &h.At)
		return h, err
	})
	if err != nil {
		t.Fatal(err)
	}
	return hs
}

// TestPostgresHistoryTripAndRecover: a trip and a recovery append exactly the three
// transitions, once each, newest first, with the window's counts, the generation after
// each and the replica whose call made it ("" for the clock's open_timeout); a mode
// change, polls and stale reports append nothing.
func TestPostgresHistoryTripAndRecover(t *testing.T) {
	t.Parallel()
	s := baseSettings()
	s.OpenDuration = 50 * time.Millisecond
	e, b := pgEnv(t, "api", s)
	e.settingsArg += ",3600000,1000" // history on: an hour, 1000 entries

	e.flush("r1", 0, successes(2))
	e.flush("r2", 0, failures(2))
	start := time.Now()
	tripped := e.flush("r3", 0, failures(1))
	wantState(t, tripped, breaker.Open, 1)
	e.poll()
	ho := e.halfOpen("r2", time.Second)
	e.acquire("r3", time.Second) // no permit left: no transition
	closed := e.trial("r2", ho.state.Generation, 1, 0, leaseID("r2", ho))
	wantState(t, closed, breaker.Closed, 3)
	e.trial("r2", ho.state.Generation, 1, 0) // stale
	e.poll()

	hs := b.history(t, "api")
	want := []pgTransition{
		{From: "half_open", To: "closed", Reason: "trials_succeeded", Generation: 3, Replica: "r2"},
		{From: "open", To: "half_open", Reason: "open_timeout", Generation: 2, Replica: ""},
		{From: "closed", To: "open", Reason: "consecutive_failures", Requests: 5, Failures: 3, Consec: 3, Generation: 1, Replica: "r3"},
	}
	if len(hs) != len(want) {
		t.Fatalf("history %+v, want %d transitions", hs, len(want))
	}
	for i := range want {
		got := hs[i]
		at := got.At
		got.At = time.Time{}
		if got != want[i] {
			t.Errorf("transition %d: %+v, want %+v", i, got, want[i])
		}
		if at.Before(start.Add(-time.Minute)) || at.After(time.Now().Add(time.Minute)) {
			t.Errorf("transition %d at %v", i, at)
		}
	}
	if !hs[2].At.Equal(time.UnixMilli(tripped.now)) {
		t.Errorf("the trip at %v, its reply's clock %v", hs[2].At, time.UnixMilli(tripped.now))
	}
	e.control("mode", breaker.ForcedOpen)
	e.control("reset", 0)
	if hs := b.history(t, "api"); len(hs) != 4 || hs[0].Reason != "reset" || hs[0].Replica != "operator" {
		t.Fatalf("after a mode change and a reset: %+v, want the reset's transition alone added", hs)
	}
}

// TestPostgresHistoryOffAndBounded: without the history settings nothing is recorded;
// with them the upstream's history (its keys' included) holds at most max entries.
func TestPostgresHistoryOffAndBounded(t *testing.T) {
	t.Parallel()
	s := baseSettings()
	s.OpenDuration = time.Minute
	e, b := pgEnv(t, "api", s)
	e.control("open", 0)
	e.control("close", 0)
	if n := b.count(t, "SELECT count(*) FROM <p>history"); n != 0 {
		t.Fatalf("%d rows with the history off", n)
	}
	e.settingsArg += ",3600000,3"
	for range 3 {
		e.control("open", 0)
		e.control("close", 0)
	}
	hs := b.history(t, "api")
	if len(hs) != 3 || hs[0].To != "closed" || hs[1].To != "open" || hs[2].To != "closed" {
		t.Fatalf("history %+v, want the newest 3", hs)
	}
	if hs[0].Generation != 8 || hs[2].Generation != 6 {
		t.Fatalf("generations %d..%d, want 8..6", hs[0].Generation, hs[2].Generation)
	}
}

// TestPostgresCleanup: cleanup deletes what has expired, and the history beyond the
// retention or the max entries; what has not expired stays.
func TestPostgresCleanup(t *testing.T) {
	t.Parallel()
	s := baseSettings()
	s.OpenDuration = time.Minute
	e, b := pgEnv(t, "api", s)
	e.settingsArg += ",3600000,1000"
	e.control("open", 0)
	live, _ := pgEnv(t, "live", s) // another prefix: untouched
	live.poll()
	e2 := env(t, b, "idle", s, 1)
	e2.poll()
	e2.acquire("r1", time.Second)
	b.exec(t, "INSERT INTO <p>leases VALUES ('idle', '', 'old', 1), ('idle', '', 'new', <p>now_ms() + 60000)")
	b.exec(t, "INSERT INTO <p>claims VALUES ('old', 'a', 1), ('new', 'a', <p>now_ms() + 60000)")
	b.exec(t, "INSERT INTO <p>keys VALUES ('api', 'old', 1), ('api', 'new', <p>now_ms() + 60000)")
	b.exec(t, "INSERT INTO <p>tallies VALUES ('t', 'old', 1, 1, 1, 1), ('t', 'new', 1, 1, 1, <p>now_ms() + 60000)")
	b.exec(t, "INSERT INTO <p>heartbeats VALUES ('old', 1), ('new', <p>now_ms() + 60000)")
	b.exec(t, "UPDATE <p>circuits SET expires_at = 1 WHERE upstream = 'idle'")
	b.exec(t, "INSERT INTO <p>history (at, upstream, from_state, to_state, reason, requests, failures, slow, consecutive, generation) "+
		"VALUES (now() - interval '2 hours', 'api', 'closed', 'open', 'mode', 0, 0, 0, 0, 0)")
	var n int64
	if err := b.pool.QueryRow(context.Background(), "SELECT "+b.prefix+"cleanup(3600000)").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 7 {
		t.Errorf("cleanup deleted %d rows, want 7 (a circuit, a lease, a claim, a key, a tally, a heartbeat, a transition)", n)
	}
	for _, tbl := range []string{"leases", "claims", "keys", "tallies", "heartbeats"} {
		if got := b.count(t, "SELECT count(*) FROM <p>"+tbl); got != 1 {
			t.Errorf("%s: %d rows left, want the unexpired 1", tbl, got)
		}
	}
	if got := b.count(t, "SELECT count(*) FROM <p>circuits"); got != 1 {
		t.Errorf("circuits: %d left, want api's", got)
	}
	if got := len(b.history(t, "api")); got != 1 {
		t.Errorf("history: %d left, want the trip's", got)
	}
	if err := b.pool.QueryRow(context.Background(), "SELECT "+b.prefix+"cleanup(0, 0)").Scan(&n); err != nil || n != 0 {
		t.Errorf("a second cleanup: %d, %v", n, err)
	}
	if rep := e.poll(); rep.state.State != breaker.Open {
		t.Errorf("api after cleanup: %+v", rep.state)
	}
}

// TestPostgresExpiredRowReadsAbsent: a row whose expiry has passed reads as no state at
// all (a new epoch, generation 0), as an expired Redis hash, before cleanup deletes it.
func TestPostgresExpiredRowReadsAbsent(t *testing.T) {
	t.Parallel()
	e, b := pgEnv(t, "api", baseSettings())
	first := e.trip(0, 3)
	if n := b.count(t, "SELECT count(*) FROM <p>circuits WHERE expires_at > <p>now_ms() + 86400000 - 5000"); n != 1 {
		t.Fatalf("an open circuit's row expires %d: want a day after its open period", n)
	}
	eventually(t, waitFor, "the next millisecond", func() bool { return e.poll().now > first.epoch })
	b.exec(t, "UPDATE <p>circuits SET expires_at = <p>now_ms() - 1")
	rep := e.poll()
	wantState(t, rep, breaker.Closed, 0)
	if rep.epoch <= first.epoch || rep.corrupt != "" {
		t.Fatalf("after expiry: %+v, want a new epoch", rep)
	}
}

// TestPostgresCorruptRowStartsFresh: the column types rule out most of what a Redis
// hash may hold, but not a value out of range: a negative or too large number, a state
// or mode beyond the known ones, a reason no script writes. Each reads as corrupt and is
// replaced by a fresh closed state in a newer generation; a malformed bucket is dropped.
func TestPostgresCorruptRowStartsFresh(t *testing.T) {
	t.Parallel()
	b := newPGScripts(t)
	for _, tc := range []struct {
		name, set, want string
		gen             uint64
	}{
		{"negative gen", "generation = -3", "field gen", 1},
		{"huge gen", "generation = 1000000000000000", "field gen", 1},
		{"negative trips", "trips = -1", "field tr", 8},
		{"state out of range", "state = 3", "out of range", 8},
		{"mode out of range", "mode = 9", "out of range", 8},
		{"junk reason", "reason = 'two words'", `field rs is "two words"`, 8},
		{"huge reason", "reason = repeat('a', 65)", "field rs", 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := env(t, b, strings.ReplaceAll(tc.name, " ", "_"), baseSettings(), 1)
			for range 7 {
				e.control("open", 0)
			}
			before := e.poll()
			wantState(t, before, breaker.Open, 7)
			eventually(t, waitFor, "the next millisecond", func() bool { return e.poll().now > before.epoch })
			for i, step := range []func() reply{
				e.poll,
				func() reply { return e.acquire("r1", time.Second) },
				func() reply { return e.trial("r1", 7, 1, 0) },
				func() reply { return e.control("mode", breaker.Normal) },
			} {
				b.exec(t, "UPDATE <p>circuits SET "+tc.set+" WHERE upstream = $1", e.name)
				rep := step()
				if !strings.Contains(rep.corrupt, tc.want) {
					t.Fatalf("step %d: corrupt = %q, want it to mention %q", i, rep.corrupt, tc.want)
				}
				if i == 0 && rep.state.Generation != tc.gen {
					t.Fatalf("fresh state gen %d, want %d", rep.state.Generation, tc.gen)
				}
				if rep.state.State != breaker.Closed || rep.state.Trips != 0 {
					t.Fatalf("state after corruption: %+v, want fresh closed", rep.state)
				}
			}
			if rep := e.poll(); rep.corrupt != "" {
				t.Fatalf("still corrupt: %q", rep.corrupt)
			}
		})
	}
	t.Run("malformed buckets and reports", func(t *testing.T) {
		s := baseSettings()
		s.ConsecutiveFailures = 0
		s.FailureRate, s.MinimumRequests = 50, 1
		e := env(t, b, "bucket", s, 1)
		e.flush("r1", 0, successes(1))
		b.exec(t, `UPDATE <p>circuits SET buckets = buckets || '{"x": [1, 1, 1], "5": "lots", "6": [1, -1, 1], "7": [1, 2]}',
			reports = '{"r9": "junk"}' WHERE upstream = 'bucket'`)
		rep := e.flush("r1", 0, successes(1))
		if rep.corrupt != "" || rep.state.State != breaker.Closed {
			t.Fatalf("reply %+v", rep)
		}
		h := e.hgetall()
		for _, f := range []string{"b:x", "b:5", "b:6", "b:7"} {
			if _, ok := h[f]; ok {
				t.Errorf("%s kept: %v", f, h)
			}
		}
		if req, _, _ := e.windowTotals(); req != 2 {
			t.Errorf("window holds %d requests, want the 2 sent", req)
		}
		b.exec(t, `UPDATE <p>circuits SET buckets = '[1]', reports = '7' WHERE upstream = 'bucket'`)
		if rep := e.flush("r1", 0, successes(1)); rep.corrupt != "" || rep.state.State != breaker.Closed {
			t.Fatalf("buckets not an object: %+v", rep)
		}
	})
}

// TestPostgresConcurrentFlushesSerialize: many connections flushing one circuit at once
// lose no count (the row lock serializes them, as Redis runs one script at a time).
func TestPostgresConcurrentFlushesSerialize(t *testing.T) {
	t.Parallel()
	s := baseSettings()
	s.ConsecutiveFailures = 0
	s.Window = time.Minute
	e, b := pgEnv(t, "api", s)
	pool, err := pgxpool.New(context.Background(), b.srv.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	const workers, each = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				args, _ := pgArgs([]any{fmt.Sprintf("r%d", w), 0, 2, 1, 0, 1, 1, e.settingsArg, "h", 0.5, e.channel,
					e.name, e.onset, 0, 0, 1, 0})
				var out []*string
				if err := pool.QueryRow(context.Background(), "SELECT "+b.prefix+"flush($1, $2)", e.name, args).Scan(&out); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if req, fail, _ := e.windowTotals(); req != 2*workers*each || fail != workers*each {
		t.Fatalf("window %d/%d, want %d/%d", req, fail, 2*workers*each, workers*each)
	}
}

// The rights of the runtime role, for the README and `fuseproxy migrate`: run by the
// owner of fuseproxy's objects (the migrating role), CONNECT by the database's owner.
func ExamplePostgresGrants() {
	for _, g := range PostgresGrants("fuse_", "public", "fuse", "fuse_runtime") {
		fmt.Println(g + ";")
	}
	// Output:
	// GRANT CONNECT ON DATABASE "fuse" TO "fuse_runtime";
	// GRANT USAGE ON SCHEMA "public" TO "fuse_runtime";
	// GRANT SELECT ON "public"."fuse_schema" TO "fuse_runtime";
	// GRANT EXECUTE ON FUNCTION "public"."fuse_flush"(text, text[]) TO "fuse_runtime";
	// GRANT EXECUTE ON FUNCTION "public"."fuse_acquire"(text, text[]) TO "fuse_runtime";
	// GRANT EXECUTE ON FUNCTION "public"."fuse_trial"(text, text[]) TO "fuse_runtime";
	// GRANT EXECUTE ON FUNCTION "public"."fuse_control"(text, text[]) TO "fuse_runtime";
	// GRANT EXECUTE ON FUNCTION "public"."fuse_key_flush"(text, text[]) TO "fuse_runtime";
	// GRANT EXECUTE ON FUNCTION "public"."fuse_key_acquire"(text, text[]) TO "fuse_runtime";
	// GRANT EXECUTE ON FUNCTION "public"."fuse_key_trial"(text, text[]) TO "fuse_runtime";
	// GRANT EXECUTE ON FUNCTION "public"."fuse_key_control"(text, text[]) TO "fuse_runtime";
	// GRANT EXECUTE ON FUNCTION "public"."fuse_heartbeat"(text, text[]) TO "fuse_runtime";
	// GRANT EXECUTE ON FUNCTION "public"."fuse_tally"(text, text[]) TO "fuse_runtime";
	// GRANT EXECUTE ON FUNCTION "public"."fuse_claim"(text, text[]) TO "fuse_runtime";
	// GRANT EXECUTE ON FUNCTION "public"."fuse_history_read"(text, text, integer) TO "fuse_runtime";
	// GRANT EXECUTE ON FUNCTION "public"."fuse_keys_read"(text, integer) TO "fuse_runtime";
	// GRANT EXECUTE ON FUNCTION "public"."fuse_cleanup"(bigint, integer) TO "fuse_runtime";
	// GRANT EXECUTE ON FUNCTION "public"."fuse_changes"(bigint) TO "fuse_runtime";
}

// TestPostgresRandomValuesNeverWedge writes random values (numbers of every size and
// sign, junk text, jsonb of every shape) into random columns of a circuit's row and
// runs a random function after each: every call must answer with a reply the replicas
// can decode (run fails the test on an error), and whenever it reports the state
// unreadable it answers from a fresh state. The seed is logged so a failure can be
// replayed.
func TestPostgresRandomValuesNeverWedge(t *testing.T) {
	t.Parallel()
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rnd := rand.New(rand.NewPCG(uint64(seed), 0))
	s := baseSettings()
	s.OpenDuration = 10 * time.Millisecond
	s.FailureRate, s.MinimumRequests = 50, 1
	e, b := pgEnv(t, "api", s)
	e.settingsArg += ",3600000,10"
	// Not 15-digit values beyond 2^63 ns: the Lua scripts read them (count takes up to 15
	// digits) and reply with a time no replica decodes (sharedState), and so does the port.
	numbers := []string{"0", "1", "2", "3", "-1", "99999999999", "1000000000000000", "9223372036854775807",
		"-9223372036854775808", "4611686018427", strconv.FormatInt(time.Now().UnixMilli(), 10)}
	cols := []string{"state", "mode", "generation", "open_until", "open_for", "trips", "consecutive",
		"gateway_consecutive", "successes", "changed_at", "epoch", "onset", "expires_at"}
	jsons := []string{`{}`, `[]`, `7`, `"x"`, `null`, `{"1": [1, 1, 1]}`, `{"-5": [1, 2, 3]}`, `{"x": [1, 1, 1]}`,
		`{"5": [1e400, 1, 1]}`, `{"5": [1.5, 1, 1]}`, `{"5": "1 1 1"}`, `{"5": [1, 1]}`, `{"99999999999999999999": [1, 1, 1]}`,
		`{"r1": 1}`, `{"r1": -1}`, `{"r1": "x"}`, `{"r1": 1e300}`, `{"r1": null}`}
	texts := []string{"", "mode", "two words", "ünïcode", strings.Repeat("a", 65), "x\ny", `a"b\c`}
	gen := uint64(0)
	for i := range 300 {
		switch rnd.IntN(5) {
		case 0:
			b.exec(t, "UPDATE <p>circuits SET buckets = $1::jsonb WHERE upstream = 'api'", jsons[rnd.IntN(len(jsons))])
		case 1:
			b.exec(t, "UPDATE <p>circuits SET reports = $1::jsonb WHERE upstream = 'api'", jsons[rnd.IntN(len(jsons))])
		case 2:
			col := []string{"reason", "cfg", "cfg_replica"}[rnd.IntN(3)]
			b.exec(t, "UPDATE <p>circuits SET "+col+" = $1 WHERE upstream = 'api'", texts[rnd.IntN(len(texts))])
		default:
			b.exec(t, "UPDATE <p>circuits SET "+cols[rnd.IntN(len(cols))]+" = $1::bigint WHERE upstream = 'api'",
				numbers[rnd.IntN(len(numbers))])
		}
		var rep reply
		switch rnd.IntN(4) {
		case 0:
			rep = e.flush("r1", gen, failures(1+rnd.IntN(5)))
		case 1:
			rep = e.acquire("r1", time.Second)
		case 2:
			rep = e.trial("r1", gen, rnd.IntN(2), rnd.IntN(2))
		default:
			rep = e.control([]string{"open", "close", "reset"}[rnd.IntN(3)], 0)
		}
		if rep.corrupt != "" && rep.state.Trips > 1 {
			t.Fatalf("step %d: corrupt %q but state %+v, want a fresh one", i, rep.corrupt, rep.state)
		}
		if len(rep.corrupt) > 200 || len(rep.state.Reason) > 64 {
			t.Fatalf("step %d: reply carries %d bytes of problem, %d of reason", i, len(rep.corrupt), len(rep.state.Reason))
		}
		gen = rep.state.Generation
	}
}

// TestPostgresKeyHistory: a key's transitions go to its upstream's history with the key,
// and count against the upstream's max entries.
func TestPostgresKeyHistory(t *testing.T) {
	t.Parallel()
	b := newPGScripts(t)
	s := baseSettings()
	s.OpenDuration = time.Minute
	sarg := settingsArg(breaker.New("up", s, breaker.Options{}).Settings(), 1) + ",3600000,3"
	events, onsets := b.channels()
	ctx := context.Background()
	call := func(fn, name string, args ...any) []*string {
		t.Helper()
		a, err := pgArgs(args)
		if err != nil {
			t.Fatal(err)
		}
		var out []*string
		if err := b.pool.QueryRow(ctx, "SELECT "+b.prefix+fn+"($1, $2)", name, a).Scan(&out); err != nil {
			t.Fatalf("%s: %v", fn, err)
		}
		return out
	}
	call("key_flush", "up", 10, 60000, "k1", "r1", 0, 3, 3, 0, 3, 0, sarg, "h", 0.5, events, "up#k1", onsets, 0, 0, 1, 0)
	call("key_control", "up", 10, 60000, "k2", "open", 0, sarg, 0.5, events, "up#k2", "op")
	call("control", "up", "open", 0, sarg, 0.5, events, "up", "op")
	hs := b.history(t, "up")
	if len(hs) != 3 || hs[0].Key != "" || hs[1].Key != "k2" || hs[1].Replica != "op" || hs[2].Key != "k1" ||
		hs[2].Reason != "consecutive_failures" || hs[2].Replica != "r1" || hs[2].Failures != 3 {
		t.Fatalf("history %+v, want the upstream's, k2's and k1's trips", hs)
	}
	var n int
	if err := b.pool.QueryRow(ctx, "SELECT count(*) FROM "+b.prefix+"history_read('up', 'k2', 10)").Scan(&n); err != nil || n != 1 {
		t.Fatalf("k2's history: %d rows, %v", n, err)
	}
	call("key_control", "up", 10, 60000, "k3", "open", 0, sarg, 0.5, events, "up#k3", "op")
	if hs := b.history(t, "up"); len(hs) != 3 || hs[0].Key != "k3" || hs[2].Key != "k2" {
		t.Fatalf("history %+v, want the newest 3 of the upstream's and its keys'", hs)
	}
}

// TestPostgresRowsStayBounded: flushes into hundreds of buckets from thousands of replica
// ids leave a circuit's row with no more buckets than the window has and only the
// reports of its window, and an expiry.
func TestPostgresRowsStayBounded(t *testing.T) {
	t.Parallel()
	s := baseSettings()
	s.ConsecutiveFailures = 1000
	s.Window, s.Buckets = 10*time.Millisecond, 10 // 1 ms buckets
	s.FailureRate, s.MinimumRequests = 99, 1
	e, b := pgEnv(t, "api", s)
	first := e.poll().now
	for i := 0; ; i++ {
		rep := e.flush(fmt.Sprintf("replica-%d", i), 0, batch{req: 2, fail: 1, hadSuccess: true})
		if rep.state.State != breaker.Closed {
			t.Fatalf("tripped: %+v", rep)
		}
		if i >= 500 && rep.now-first >= 200 {
			break
		}
	}
	var nb, nr int
	if err := b.pool.QueryRow(context.Background(), "SELECT (SELECT count(*) FROM jsonb_object_keys(buckets)), "+
		"(SELECT count(*) FROM jsonb_object_keys(reports)) FROM "+b.prefix+"circuits WHERE upstream = 'api'").Scan(&nb, &nr); err != nil {
		t.Fatal(err)
	}
	if nb > 11 || nr > 50 {
		t.Fatalf("the row holds %d buckets and %d reports after many flushes, want at most the window's", nb, nr)
	}
	if n := b.count(t, "SELECT count(*) FROM <p>circuits WHERE expires_at > <p>now_ms() + 86000000"); n != 1 {
		t.Fatal("the row has no expiry a day ahead")
	}
}

// TestPostgresMigrateErrorNamesTheLine: a migration that fails names its file and line,
// and leaves nothing behind (the transaction is rolled back).
func TestPostgresMigrateErrorNamesTheLine(t *testing.T) {
	t.Parallel()
	srv := pgServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ms := []pgMigration{
		{version: 1, name: "001_good.sql", text: "CREATE TABLE {{.P}}a (x int);\n"},
		{version: 2, name: "002_bad.sql", text: "CREATE TABLE {{.P}}b (x int);\n\nCREATE TABLE {{.P}}c (x nosuchtype);\n"},
	}
	_, err := migrate(ctx, srv.Pool(), "broken_", ms)
	if err == nil || !strings.Contains(err.Error(), "store/sql/002_bad.sql:3: ") || !strings.Contains(err.Error(), "nosuchtype") {
		t.Fatalf("err = %v, want it to name store/sql/002_bad.sql:3 and the type", err)
	}
	var n int
	if err := srv.Pool().QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'broken\\_%'").Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d tables left behind (%v), want none", n, err)
	}
}

// TestPostgresConcurrentCallsDoNotDeadlock: replicas reporting one tally at once (their
// reports going stale between rounds), keys of one upstream whose circuits and registry
// entries expire while they are called, transitions trimming one upstream's history, and
// cleanup, all at once on connections of their own: no call waits in a cycle (PostgreSQL
// would abort one with a deadlock error after deadlock_timeout).
func TestPostgresConcurrentCallsDoNotDeadlock(t *testing.T) {
	t.Parallel()
	b := newPGScripts(t)
	pool, err := pgxpool.New(context.Background(), b.srv.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	s := baseSettings()
	s.ConsecutiveFailures = 1
	s.OpenDuration = time.Millisecond
	sarg := settingsArg(breaker.New("up", s, breaker.Options{}).Settings(), 1) + ",3600000,5"
	events, onsets := b.channels()
	call := func(fn, name string, args ...any) error {
		a, err := pgArgs(args)
		if err != nil {
			return err
		}
		var out []*string
		return pool.QueryRow(context.Background(), "SELECT "+b.prefix+fn+"($1, $2)", name, a).Scan(&out)
	}
	const workers, rounds = 6, 40
	var wg sync.WaitGroup
	errs := make(chan error, 3*workers+1)
	for w := range workers {
		replica := fmt.Sprintf("r%d", w)
		wg.Add(2)
		go func() { // a tally whose reports go stale between rounds
			defer wg.Done()
			for range rounds {
				if err := call("tally", "budget", replica, 1, 1, 2); err != nil {
					errs <- fmt.Errorf("tally: %w", err)
					return
				}
				time.Sleep(time.Duration(w) * time.Millisecond)
			}
		}()
		go func() { // keys that trip, expire and come back, each transition trimming the history
			defer wg.Done()
			for i := range rounds {
				key := fmt.Sprintf("k%d", (w+i)%4)
				if err := call("key_control", "up", 100, 1, key, "open", 0, sarg, 0.5, events, "up#"+key, replica); err != nil {
					errs <- fmt.Errorf("key_control: %w", err)
					return
				}
				if err := call("key_flush", "up", 100, 1, key, replica, 0, 2, 2, 0, 2, 0, sarg, "h", 0.5, events, "up#"+key,
					onsets, 0, 0, 1, 0, 1); err != nil {
					errs <- fmt.Errorf("key_flush: %w", err)
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() { // cleanup all along
		defer wg.Done()
		for range rounds {
			var n int64
			if err := pool.QueryRow(context.Background(), "SELECT "+b.prefix+"cleanup(1, 3)").Scan(&n); err != nil {
				errs <- fmt.Errorf("cleanup: %w", err)
				return
			}
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
