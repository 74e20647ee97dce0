package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/internal/testutil/pgtest"
)

// pgFleet is a schema (a table prefix of its own, migrated) on a private PostgreSQL
// server, which replicas of the PostgreSQL store share.
type pgFleet struct {
	srv    *pgtest.Server
	prefix string
}

var pgFleetSeq atomic.Int64

// newPgFleet migrates a fresh prefix on srv: the package's shared server (pgServer), or,
// when nil, a new one of the test's own (to kill and restart).
func newPgFleet(t testing.TB, srv *pgtest.Server) *pgFleet {
	t.Helper()
	if srv == nil {
		srv = pgtest.Start(t)
	}
	f := &pgFleet{srv: srv, prefix: fmt.Sprintf("s%d_", pgFleetSeq.Add(1))}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := Migrate(ctx, srv.Pool(), f.prefix); err != nil {
		t.Fatalf("migrate %s: %v", f.prefix, err)
	}
	return f
}

// pgReplica is one replica of the PostgreSQL store serving circuitName.
type pgReplica struct {
	id   string
	st   *Postgres
	b    *breaker.Breaker
	logs *observer.ObservedLogs
	stop func()
}

// startPgReplica is startReplica (redis_test.go) for the PostgreSQL store: rc's
// settings, hash, quorum, lease, flush interval, timeout and degradeAfter apply.
func startPgReplica(t *testing.T, f *pgFleet, id string, rc replicaConfig) *pgReplica {
	t.Helper()
	pool, err := NewPostgresPool(PostgresClientOptions{URL: f.srv.DSN(), PoolSize: 4,
		ConnectTimeout: 250 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	r := &pgReplica{id: id, logs: logs}
	r.st, err = NewPostgres(pool, PostgresOptions{Prefix: f.prefix, ReplicaID: id,
		FlushInterval: or(rc.flush, 20*time.Millisecond), DegradeAfter: or(rc.degradeAfter, 3),
		Timeout: or(rc.timeout, time.Second), Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	r.b = breaker.New(circuitName, rc.settings, breaker.Options{})
	r.st.Attach(map[string]Circuit{circuitName: {Breaker: r.b, MinReplicasReporting: rc.minReplicas,
		SettingsHash: or(rc.hash, "h"), TrialLease: or(rc.lease, 10*time.Second)}})
	if rc.resyncMayFail {
		_ = r.st.Resync(t.Context())
	} else {
		startResync(t, id, r.st.Resync)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	if !rc.noRun {
		wg.Go(func() {
			if err := r.st.Run(ctx); err != nil {
				t.Errorf("replica %s: Run: %v", id, err)
			}
		})
		// Tests count on its listener (they expect news at once).
		eventually(t, waitFor, id+" listening", func() bool { return logs.FilterMessage("listening for notifications").Len() > 0 })
	}
	r.stop = sync.OnceFunc(func() {
		cancel()
		wg.Wait()
		if err := r.st.Close(); err != nil {
			t.Errorf("replica %s: Close: %v", id, err)
		}
	})
	t.Cleanup(func() {
		r.stop()
		if t.Failed() {
			for _, e := range logs.All() {
				t.Logf("%s %s %s %v", id, e.Level, e.Message, e.ContextMap())
			}
		}
	})
	return r
}

// flushNow runs one exchange now, as the loop would.
func (r *pgReplica) flushNow(t *testing.T) {
	t.Helper()
	r.st.xmu.Lock()
	defer r.st.xmu.Unlock()
	if err := r.st.exchange(t.Context(), r.st.list(), false); err != nil && !errors.Is(err, errIdle) {
		t.Fatalf("%s: exchange: %v", r.id, err)
	}
}

func newPostgresHarness(t *testing.T, s breaker.Settings) harness {
	r := startPgReplica(t, newPgFleet(t, pgServer(t)), "solo", replicaConfig{settings: s})
	return harness{st: r.st, b: r.b, elapse: func(time.Duration) {}, settle: func() { r.flushNow(t) }}
}

// Two replicas on one PostgreSQL: a trip by one reaches the other by NOTIFY; with the
// database killed both degrade and protect locally; when it returns they resync to what
// it holds and decide as one fleet again.
func TestPostgresFleetDegradesAndResyncs(t *testing.T) {
	f := newPgFleet(t, nil)
	rc := replicaConfig{settings: longOpen(), flush: 20 * time.Millisecond, timeout: 300 * time.Millisecond, degradeAfter: 2}
	a, b := startPgReplica(t, f, "a", rc), startPgReplica(t, f, "b", rc)
	fail(t, a.b)
	fail(t, b.b)
	fail(t, a.b)
	allInPg(t, breaker.Open, a, b)
	if err := a.st.Control(t.Context(), circuitName, Command{Op: OpClose}); err != nil {
		t.Fatal(err)
	}
	allInPg(t, breaker.Closed, a, b)

	f.srv.Kill()
	eventually(t, waitFor, "both degraded", func() bool { return a.st.Status().Degraded && b.st.Status().Degraded })
	for range 3 { // local protection: a's own three failures trip a alone
		fail(t, a.b)
	}
	waitState(t, a.b, breaker.Open)
	if b.b.State() != breaker.Closed {
		t.Fatalf("b followed a's local trip while degraded: %v", b.b.State())
	}

	f.srv.Restart()
	eventually(t, waitFor, "both recovered", func() bool { return !a.st.Status().Degraded && !b.st.Status().Degraded })
	// the database holds the fleet's closed state: a's local trip is dropped
	allInPg(t, breaker.Closed, a, b)
	for _, r := range []*pgReplica{a, b} {
		if r.logs.FilterMessage("LISTEN reconnected; resyncing").Len() == 0 {
			eventually(t, waitFor, r.id+" listening again", func() bool {
				return r.logs.FilterMessage("LISTEN reconnected; resyncing").Len() > 0
			})
		}
	}
	fail(t, b.b)
	fail(t, a.b)
	fail(t, b.b)
	allInPg(t, breaker.Open, a, b)
	if m, err := a.st.Inspect(t.Context(), circuitName); err != nil || m["state"] != "open" || m["reason"] != breaker.ReasonConsecutiveFailures {
		t.Fatalf("Inspect = %v, %v", m, err)
	}
}

func allInPg(t *testing.T, st breaker.State, rs ...*pgReplica) {
	t.Helper()
	eventually(t, waitFor, "every replica "+st.String(), func() bool {
		for _, r := range rs {
			if r.b.State() != st {
				return false
			}
		}
		return true
	})
}

// attachKey gives replica r a key's circuit of upstream api, as the proxy does.
func (r *pgReplica) attachKey(key string, maxKeys int, ttl time.Duration) *breaker.Breaker {
	name := circuitName + "#" + key
	b := breaker.New(name, baseSettings(), breaker.Options{})
	r.st.AttachKey(name, KeyCircuit{Circuit: Circuit{Breaker: b, SettingsHash: "h", TrialLease: 10 * time.Second},
		Upstream: circuitName, MaxKeys: maxKeys, IdleTTL: ttl})
	return b
}

// Per-key circuits on PostgreSQL: a key's failures open it on every replica (its own
// circuit only), a replica that resyncs while a key is open learns it from the registry
// (<p>keys_read), and a key the full registry refuses (the functions' -1) decides alone.
func TestPostgresKeys(t *testing.T) {
	f := newPgFleet(t, pgServer(t))
	rc := replicaConfig{settings: baseSettings(), flush: 20 * time.Millisecond}
	a, b := startPgReplica(t, f, "a", rc), startPgReplica(t, f, "b", rc)
	ka, kb := a.attachKey("acme", 2, time.Minute), b.attachKey("acme", 2, time.Minute)
	oa, ob := a.attachKey("other", 2, time.Minute), b.attachKey("other", 2, time.Minute)
	for range 50 {
		succeed(t, oa)
		succeed(t, ob)
	}
	fail(t, ka)
	fail(t, kb)
	fail(t, ka)
	// Each is seen open, not both at one instant: the open period is 100 ms, and on a
	// loaded machine one replica may hear of the trip when the other's period has ended.
	var seenA, seenB bool
	eventually(t, waitFor, "acme open on both", func() bool {
		seenA, seenB = seenA || ka.State() == breaker.Open, seenB || kb.State() == breaker.Open
		return seenA && seenB
	})
	if oa.State() != breaker.Closed || ob.State() != breaker.Closed || a.b.State() != breaker.Closed {
		t.Fatalf("another key or the upstream followed: %v %v %v", oa.State(), ob.State(), a.b.State())
	}
	m, err := a.st.InspectKey(t.Context(), circuitName+"#acme", KeyCircuit{})
	if err != nil || m["state"] != "open" || m["key"] == "" {
		t.Fatalf("InspectKey = %v, %v", m, err)
	}

	// a replica told of the keyed upstream reads its registry when it resyncs, and starts
	// acme open
	c := startPgReplica(t, f, "c", rc)
	c.st.KeyUpstreams(map[string]KeyCircuit{circuitName: {Circuit: Circuit{SettingsHash: "h", TrialLease: 10 * time.Second},
		Settings: baseSettings(), Upstream: circuitName, MaxKeys: 2, IdleTTL: time.Minute}})
	if err := c.st.Resync(t.Context()); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitFor, "c remembers acme", func() bool {
		c.st.kmu.Lock()
		defer c.st.kmu.Unlock()
		_, ok := c.st.remembered[circuitName+"#acme"]
		return ok
	})
	if kc := c.attachKey("acme", 2, time.Minute); kc.State() != breaker.Open {
		t.Fatalf("c's acme starts %v, want open", kc.State())
	}

	// the registry holds 2 keys once other has a failure to report (acme, other): a
	// third is refused and decides alone
	fail(t, oa)
	a.flushNow(t)
	full := a.attachKey("third", 2, time.Minute)
	fail(t, full)
	eventually(t, waitFor, "the third key refused", func() bool { return a.st.KeyRefusals() == 1 })
	fail(t, full)
	fail(t, full)
	waitState(t, full, breaker.Open) // its own three failures, locally
}

// A statement's error is the database's answer and counts like a dropped connection, as
// Redis's error replies do: a role that lost EXECUTE on the functions degrades the store,
// whose status names the database's error, and it recovers once the right is back.
func TestPostgresStatementErrorsDegrade(t *testing.T) {
	srv := pgServer(t)
	f := newPgFleet(t, srv)
	role := f.prefix + "rt"
	srv.Exec("CREATE ROLE " + role + " LOGIN")
	for _, g := range PostgresGrants(f.prefix, "public", "postgres", role) {
		srv.Exec(g)
	}
	pool, err := NewPostgresPool(PostgresClientOptions{URL: srv.DSNFor(role, "postgres"), PoolSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	st, err := NewPostgres(pool, PostgresOptions{Prefix: f.prefix, ReplicaID: "r1", FlushInterval: 20 * time.Millisecond,
		DegradeAfter: 2, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	b := breaker.New(circuitName, longOpen(), breaker.Options{})
	st.Attach(map[string]Circuit{circuitName: {Breaker: b, SettingsHash: "h", TrialLease: 10 * time.Second}})
	if err := st.Resync(t.Context()); err != nil {
		t.Fatalf("Resync as a role with PostgresGrants' rights: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = st.Run(ctx) })
	defer func() { cancel(); wg.Wait(); st.Close() }()

	srv.Exec("REVOKE EXECUTE ON FUNCTION " + f.prefix + "heartbeat(text, text[]) FROM " + role)
	srv.Exec("REVOKE EXECUTE ON FUNCTION " + f.prefix + "flush(text, text[]) FROM " + role)
	eventually(t, waitFor, "degraded", func() bool { return st.Status().Degraded })
	if e := st.Status().LastError; !strings.Contains(e, "permission denied") || !strings.Contains(e, "42501") {
		t.Fatalf("LastError %q, want the database's permission error", e)
	}
	for range 3 { // local protection
		fail(t, b)
	}
	waitState(t, b, breaker.Open)
	srv.Exec("GRANT EXECUTE ON FUNCTION " + f.prefix + "heartbeat(text, text[]) TO " + role)
	srv.Exec("GRANT EXECUTE ON FUNCTION " + f.prefix + "flush(text, text[]) TO " + role)
	eventually(t, waitFor, "recovered", func() bool { return !st.Status().Degraded })
}
