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

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// These tests run several Redis stores ("replicas") in one process against one private
// redis-server, each with its own client, breaker and replica id, as a fleet would.

const circuitName = "api"

// replicaConfig is one replica's setup; zero fields take the defaults below.
type replicaConfig struct {
	settings     breaker.Settings
	hash         string        // settings hash; "h" when empty
	minReplicas  int           // quorum
	lease        time.Duration // trial lease; 10 s when zero
	flush        time.Duration // flush interval; 20 ms when zero
	timeout      time.Duration // RedisOptions.Timeout; 1 s when zero
	readTimeout  time.Duration // the client's read/write timeout; 1 s when zero
	degradeAfter int
	hook         redis.Hook // added to the replica's client
	noRun        bool       // attach and resync only: the test drives exchanges itself
	// username and password of the replica's client; resyncMayFail lets the first
	// Resync fail (the store is broken from the start).
	username, password string
	resyncMayFail      bool
}

type replica struct {
	id        string
	st        *Redis
	b         *breaker.Breaker
	logs      *observer.ObservedLogs
	exchanges atomic.Int64 // exchanges attempted (the Flush hook)
	flushErrs atomic.Int64 // of which failed
	degraded  atomic.Int64 // Degraded hook calls with true
	stop      func()       // cancels Run, waits for it and closes the store; idempotent
}

func startReplica(t *testing.T, srv *redistest.Server, id string, rc replicaConfig) *replica {
	t.Helper()
	client, err := NewRedisClient(RedisClientOptions{URL: srv.URL(), PoolSize: 4,
		Username: rc.username, Password: rc.password,
		DialTimeout: 250 * time.Millisecond, ReadTimeout: or(rc.readTimeout, time.Second),
		WriteTimeout: or(rc.readTimeout, time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if rc.hook != nil {
		client.AddHook(rc.hook)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	r := &replica{id: id, logs: logs}
	r.st = newTestRedis(t, client, RedisOptions{
		ReplicaID: id, FlushInterval: or(rc.flush, 20*time.Millisecond),
		DegradeAfter: rc.degradeAfter, Timeout: or(rc.timeout, time.Second), Logger: zap.New(core),
		Hooks: Hooks{
			Flush: func(_ time.Duration, err error) {
				r.exchanges.Add(1)
				if err != nil {
					r.flushErrs.Add(1)
				}
			},
			Degraded: func(d bool) {
				if d {
					r.degraded.Add(1)
				}
			},
		},
	})
	r.b = breaker.New(circuitName, rc.settings, breaker.Options{})
	hash := rc.hash
	if hash == "" {
		hash = "h"
	}
	r.st.Attach(map[string]Circuit{circuitName: {Breaker: r.b, MinReplicasReporting: rc.minReplicas,
		SettingsHash: hash, TrialLease: or(rc.lease, 10*time.Second)}})
	ctx, cancel := context.WithCancel(context.Background())
	if rc.resyncMayFail {
		_ = r.st.Resync(ctx)
	} else {
		startResync(t, id, r.st.Resync)
	}
	done := make(chan struct{})
	if rc.noRun {
		close(done)
	} else {
		subs := numSub(t, srv)
		go func() {
			defer close(done)
			if err := r.st.Run(ctx); err != nil {
				t.Errorf("replica %s: Run: %v", id, err)
			}
		}()
		// Tests count on its subscription (they kill it, or expect news at once).
		eventually(t, waitFor, id+" subscribed", func() bool { return numSub(t, srv) > subs })
	}
	r.stop = sync.OnceFunc(func() {
		cancel()
		<-done
		if err := r.st.Close(); err != nil {
			t.Errorf("replica %s: Close: %v", id, err)
		}
	})
	t.Cleanup(func() {
		r.stop()
		if t.Failed() { // the replica's story, for the failure's reader
			for _, e := range logs.All() {
				t.Logf("%s %s %s %v", id, e.Level, e.Message, e.ContextMap())
			}
		}
	})
	return r
}

// numSub is the number of subscriptions to the stores' channel.
func numSub(t *testing.T, srv *redistest.Server) int64 {
	t.Helper()
	n, err := srv.Client().PubSubNumSub(t.Context(), "fuse:events").Result()
	if err != nil {
		t.Fatal(err)
	}
	return n["fuse:events"]
}

// newTestRedis is NewRedis with the values these tests use for the options a test
// leaves out: fixtures (the operator's defaults are config.Default()'s), so a test says
// only what it is about.
func newTestRedis(tb testing.TB, client redis.UniversalClient, o RedisOptions) *Redis {
	tb.Helper()
	o.Prefix = or(o.Prefix, "fuse")
	o.FlushInterval = or(o.FlushInterval, 100*time.Millisecond)
	o.DegradeAfter = or(o.DegradeAfter, 3)
	o.Timeout = or(o.Timeout, 500*time.Millisecond)
	st, err := NewRedis(client, o)
	if err != nil {
		tb.Fatal(err)
	}
	return st
}

func or[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// flushNow runs one exchange now, as the loop would: what the breaker counted reaches
// Redis and Redis's answer is applied before it returns.
func (r *replica) flushNow(t *testing.T) {
	t.Helper()
	r.st.xmu.Lock()
	defer r.st.xmu.Unlock()
	if err := r.st.exchange(t.Context(), r.st.list(), false); err != nil && !errors.Is(err, errIdle) {
		t.Fatalf("%s: exchange: %v", r.id, err)
	}
}

func startFleet(t *testing.T, srv *redistest.Server, n int, rc replicaConfig) []*replica {
	t.Helper()
	fleet := make([]*replica, n)
	for i := range fleet {
		fleet[i] = startReplica(t, srv, fmt.Sprintf("r%d", i), rc)
	}
	return fleet
}

// allIn waits until every replica's breaker is in state st.
func allIn(t *testing.T, st breaker.State, fleet ...*replica) {
	t.Helper()
	eventually(t, waitFor, "every replica "+st.String(), func() bool {
		for _, r := range fleet {
			if r.b.State() != st {
				return false
			}
		}
		return true
	})
}

// exchangesDone waits until each replica has attempted n more exchanges with Redis,
// calling between (if not nil) while it waits.
func exchangesDone(t *testing.T, n int64, between func(), fleet ...*replica) {
	t.Helper()
	want := make([]int64, len(fleet))
	for i, r := range fleet {
		want[i] = r.exchanges.Load() + n
	}
	eventually(t, waitFor, fmt.Sprintf("%d more exchanges", n), func() bool {
		if between != nil {
			between()
		}
		for i, r := range fleet {
			if r.exchanges.Load() < want[i] {
				return false
			}
		}
		return true
	})
}

func longOpen() breaker.Settings {
	s := baseSettings()
	s.OpenDuration = time.Minute
	return s
}

func TestRedisFailuresSplitAcrossReplicasOpenAll(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := longOpen()
	s.ConsecutiveFailures = 6
	fleet := startFleet(t, srv, 3, replicaConfig{settings: s, minReplicas: 2})
	for _, r := range fleet { // 2 each: no replica sees enough to trip on its own
		fail(t, r.b)
		fail(t, r.b)
	}
	allIn(t, breaker.Open, fleet...)
	for _, r := range fleet {
		if _, err := r.b.Allow(); !errors.Is(err, breaker.ErrOpen) {
			t.Errorf("%s: Allow = %v, want ErrOpen", r.id, err)
		}
		if d := r.b.RetryAfter(); d <= 0 || d > time.Minute {
			t.Errorf("%s: RetryAfter = %v", r.id, d)
		}
	}
	gen := fleet[0].b.Snapshot().Generation
	for _, r := range fleet[1:] {
		if g := r.b.Snapshot().Generation; g != gen {
			t.Errorf("%s at generation %d, %s at %d", r.id, g, fleet[0].id, gen)
		}
	}
}

func TestRedisHalfOpenTrialsLimitedFleetWide(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := baseSettings()
	s.HalfOpenMaxRequests, s.SuccessThreshold = 2, 100
	fleet := startFleet(t, srv, 3, replicaConfig{settings: s})
	if err := fleet[0].st.Control(t.Context(), circuitName, Command{Op: OpOpen}); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitFor, "every replica to hear of it", func() bool {
		for _, r := range fleet {
			if r.b.State() == breaker.Closed { // it goes on to half-open by itself
				return false
			}
		}
		return true
	})

	// Every replica asks for trials, over and over; nobody finishes one.
	var trials []breaker.Ticket
	var owners []*replica
	try := func() {
		for _, r := range fleet {
			tk, err := r.b.Allow()
			switch {
			case err == nil && tk.Trial():
				trials, owners = append(trials, tk), append(owners, r)
			case err == nil:
				t.Fatalf("%s admitted a non-trial request while recovering (state %v)", r.id, r.b.State())
			case !errors.Is(err, breaker.ErrOpen) && !errors.Is(err, breaker.ErrTooManyTrials):
				t.Fatalf("%s: Allow: %v", r.id, err)
			}
		}
		if len(trials) > s.HalfOpenMaxRequests {
			t.Fatalf("%d trials in flight across the fleet, want at most %d", len(trials), s.HalfOpenMaxRequests)
		}
	}
	eventually(t, waitFor, "two trials admitted", func() bool { try(); return len(trials) == 2 })
	exchangesDone(t, 10, try, fleet...) // and no more while they are in flight
	if n := srv.Client().ZCard(t.Context(), "fuse:{api}:leases").Val(); n != 2 {
		t.Errorf("%d leases in Redis, want 2", n)
	}

	// Both succeed: the permits come back and are granted again, still two at a time.
	gen := fleet[0].b.Snapshot().Generation
	for i, tk := range trials {
		owners[i].b.Done(tk, breaker.Success, time.Millisecond)
	}
	trials, owners = nil, nil
	eventually(t, waitFor, "two new trials", func() bool { try(); return len(trials) == 2 })
	exchangesDone(t, 5, try, fleet...)
	for _, r := range fleet {
		if st, g := r.b.State(), r.b.Snapshot().Generation; st != breaker.HalfOpen || g != gen {
			t.Errorf("%s: %v gen %d, want still half-open gen %d", r.id, st, g, gen)
		}
	}
}

func TestRedisNewReplicaResyncWhileOpenRejectsAtOnce(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	first := startReplica(t, srv, "first", replicaConfig{settings: longOpen()})
	if err := first.st.Control(t.Context(), circuitName, Command{Op: OpOpen}); err != nil {
		t.Fatal(err)
	}
	late := startReplica(t, srv, "late", replicaConfig{settings: longOpen(), noRun: true})
	if _, err := late.b.Allow(); !errors.Is(err, breaker.ErrOpen) {
		t.Fatalf("first request after Resync: %v, want ErrOpen", err)
	}
	if d := late.b.RetryAfter(); d < 50*time.Second {
		t.Fatalf("RetryAfter %v, want about a minute (the fleet's open period)", d)
	}
	if sn := late.b.Snapshot(); !sn.Shared || sn.Trips != 1 {
		t.Fatalf("snapshot %+v", sn)
	}
}

func TestRedisDegradesWhenKilledAndRecovers(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	fleet := startFleet(t, srv, 2, replicaConfig{settings: longOpen()})
	a, b := fleet[0], fleet[1]

	srv.Kill()
	killed := time.Now()
	traffic := func() { // counts to flush, so that the replicas notice
		for _, r := range fleet {
			succeedIfAdmitted(r.b)
		}
	}
	eventually(t, waitFor, "both replicas degraded", func() bool {
		traffic()
		return a.st.Status().Degraded && b.st.Status().Degraded
	})
	// Three refused connections a flush interval apart, not three rounds of dial retries.
	if d := time.Since(killed); d > time.Second {
		t.Errorf("degraded %v after Redis died", d)
	}
	for _, r := range fleet {
		st := r.st.Status()
		if st.LastError == "" || st.Since.IsZero() || r.degraded.Load() != 1 {
			t.Errorf("%s: status %+v, degraded hook calls %d", r.id, st, r.degraded.Load())
		}
		if r.b.Shared() {
			t.Errorf("%s: breaker still shared while degraded", r.id)
		}
	}
	// Local breakers decide locally: a's failures open a at once, b does not hear of it.
	for range 3 {
		fail(t, a.b)
	}
	if a.b.State() != breaker.Open {
		t.Fatalf("a: %v after 3 local failures while degraded, want open", a.b.State())
	}
	if b.b.State() != breaker.Closed {
		t.Fatalf("b: %v, want closed", b.b.State())
	}

	srv.Restart()
	eventually(t, waitFor, "both replicas recovered", func() bool {
		return !a.st.Status().Degraded && !b.st.Status().Degraded
	})
	// The resync adopted what Redis holds (a fresh closed circuit) over a's local trip.
	allIn(t, breaker.Closed, fleet...)
	for _, r := range fleet {
		if !r.b.Shared() {
			t.Errorf("%s: not shared after recovery", r.id)
		}
	}
	// And they agree again: b's failures open both.
	for range 3 {
		fail(t, b.b)
	}
	allIn(t, breaker.Open, fleet...)
}

// pauseWrites makes redis-server hold every script (CLIENT PAUSE WRITE blocks EVAL and
// EVALSHA) while other commands, such as the test's own CLIENT UNPAUSE, still run.
func pauseWrites(t *testing.T, srv *redistest.Server, d time.Duration) {
	t.Helper()
	if err := srv.Client().Do(t.Context(), "CLIENT", "PAUSE", d.Milliseconds(), "WRITE").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Client().ClientUnpause(context.Background()) })
}

// TestRedisHungRedisDegrades covers a Redis that accepts connections but never answers:
// each exchange must end after Timeout, the store must degrade, and while it is degraded
// the breakers must keep deciding locally, also while the store keeps trying to resync.
func TestRedisHungRedisDegrades(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	r := startReplica(t, srv, "r", replicaConfig{settings: longOpen(), timeout: 100 * time.Millisecond,
		readTimeout: 30 * time.Second})
	pauseWrites(t, srv, 30*time.Second)
	start := time.Now()
	eventually(t, waitFor, "degraded", func() bool {
		succeedIfAdmitted(r.b)
		return r.st.Status().Degraded
	})
	// 3 exchanges of 100 ms, and the flush intervals between them: not the client's 30 s.
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("degraded after %v: an exchange is not bounded by RedisOptions.Timeout", d)
	}
	// The store retries (and hangs for 100 ms) every flush interval; whenever the
	// failures come, the breaker trips on the third.
	for i := range 10 {
		r.b.Close()
		for range 3 {
			fail(t, r.b)
		}
		if st := r.b.State(); st != breaker.Open {
			t.Fatalf("round %d: %v after 3 local failures while degraded (shared=%v)", i, st, r.b.Shared())
		}
		exchangesDone(t, 1, nil, r)
	}
	if err := srv.Client().ClientUnpause(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitFor, "recovered", func() bool { return !r.st.Status().Degraded })
	allIn(t, breaker.Closed, r) // Redis never saw the local trips
}

func TestRedisPubSubKilledFlushesConverge(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	const flush = 50 * time.Millisecond
	fleet := startFleet(t, srv, 3, replicaConfig{settings: longOpen(), flush: flush})
	traffic := func() {
		for _, r := range fleet[1:] {
			succeedIfAdmitted(r.b)
		}
	}
	exchangesDone(t, 2, traffic, fleet[1:]...)
	n, err := srv.Client().ClientKillByFilter(t.Context(), "TYPE", "pubsub").Result()
	if err != nil || n != 3 {
		t.Fatalf("CLIENT KILL TYPE pubsub: %d, %v; want 3 subscriptions killed", n, err)
	}
	for range 3 {
		fail(t, fleet[0].b)
	}
	eventually(t, waitFor, "the trip in Redis", func() bool { traffic(); return fleet[0].b.State() == breaker.Open })
	opened := time.Now()
	eventually(t, waitFor, "every replica open", func() bool {
		traffic()
		return fleet[1].b.State() == breaker.Open && fleet[2].b.State() == breaker.Open
	})
	t.Logf("the others followed %v after the trip (flush interval %v)", time.Since(opened), flush)
}

// TestRedisFlushReplyIsTheBackstop shows, without any subscription, that a flush reply
// alone brings a replica to the fleet's state, in both directions.
func TestRedisFlushReplyIsTheBackstop(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	a := startReplica(t, srv, "a", replicaConfig{settings: longOpen()})
	b := startReplica(t, srv, "b", replicaConfig{settings: longOpen(), noRun: true})
	exchange := func() { t.Helper(); b.flushNow(t) }
	for range 3 {
		fail(t, a.b)
	}
	allIn(t, breaker.Open, a)
	fail(t, b.b) // news to flush (a failure: a quiet circuit's successes may wait); b learns the state from the reply
	exchange()
	if b.b.State() != breaker.Open {
		t.Fatalf("b: %v after its flush, want open", b.b.State())
	}
	if err := a.st.Control(t.Context(), circuitName, Command{Op: OpClose}); err != nil {
		t.Fatal(err)
	}
	exchange() // an open circuit is polled without counts: the first flush after it opened
	if b.b.State() != breaker.Closed {
		t.Fatalf("b: %v after its poll, want closed", b.b.State())
	}

	// Open again: far from the end of its open period an open circuit is polled only every
	// openPollEvery (jittered), its backstop; the subscription brings its transitions.
	if err := a.st.Control(t.Context(), circuitName, Command{Op: OpOpen}); err != nil {
		t.Fatal(err)
	}
	fail(t, b.b)
	exchange()
	if b.b.State() != breaker.Open {
		t.Fatalf("b: %v after its flush, want open", b.b.State())
	}
	exchange() // the first poll of the open period
	if err := a.st.Control(t.Context(), circuitName, Command{Op: OpClose}); err != nil {
		t.Fatal(err)
	}
	c, _ := b.st.get(circuitName)
	b.st.xmu.Lock()
	pollAt := c.more.pollAt
	b.st.xmu.Unlock()
	if left := time.Until(pollAt); left < openPollEvery/2-time.Second || left > 3*openPollEvery/2 {
		t.Fatalf("the next backstop poll in %v, want %v ± half", left, openPollEvery)
	}
	exchange()
	if b.b.State() != breaker.Open {
		t.Fatalf("b: %v, want open until its backstop poll (the close was not heard: no subscription)", b.b.State())
	}
	b.st.xmu.Lock()
	c.more.pollAt = time.Now() // the backstop poll is due
	b.st.xmu.Unlock()
	exchange()
	if b.b.State() != breaker.Closed {
		t.Fatalf("b: %v after its backstop poll, want closed", b.b.State())
	}
}

func TestRedisControlAppliesFleetWide(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	fleet := startFleet(t, srv, 3, replicaConfig{settings: longOpen()})
	ctx := t.Context()
	control := func(r *replica, c Command) {
		t.Helper()
		if err := r.st.Control(ctx, circuitName, c); err != nil {
			t.Fatal(err)
		}
	}
	control(fleet[0], Command{Op: OpOpen})
	if fleet[0].b.State() != breaker.Open {
		t.Fatal("Control returned before applying the command to its own replica")
	}
	allIn(t, breaker.Open, fleet...)
	for _, r := range fleet {
		if _, err := r.b.Allow(); !errors.Is(err, breaker.ErrOpen) {
			t.Errorf("%s: %v, want ErrOpen", r.id, err)
		}
	}
	control(fleet[1], Command{Op: OpClose})
	allIn(t, breaker.Closed, fleet...)
	control(fleet[2], Command{Op: OpMode, Mode: breaker.ForcedOpen})
	eventually(t, waitFor, "forced open everywhere", func() bool {
		for _, r := range fleet {
			if _, err := r.b.Allow(); !errors.Is(err, breaker.ErrOpen) || r.b.Mode() != breaker.ForcedOpen {
				return false
			}
		}
		return true
	})
	control(fleet[0], Command{Op: OpReset})
	eventually(t, waitFor, "normal everywhere", func() bool {
		for _, r := range fleet {
			if r.b.Mode() != breaker.Normal || r.b.State() != breaker.Closed {
				return false
			}
		}
		return true
	})
	if err := fleet[0].st.Control(ctx, "nope", Command{Op: OpOpen}); !errors.Is(err, ErrUnknownCircuit) {
		t.Fatalf("unknown circuit: %v", err)
	}
	for _, bad := range []Command{{Op: Op(9)}, {Op: OpMode, Mode: breaker.Mode(7)}} {
		if err := fleet[0].st.Control(ctx, circuitName, bad); err == nil {
			t.Errorf("Control(%+v) = nil, want an error", bad)
		}
	}
}

func TestRedisControlWhileDownIsLocalOnly(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	fleet := startFleet(t, srv, 2, replicaConfig{settings: longOpen()})
	srv.Kill()
	err := fleet[0].st.Control(t.Context(), circuitName, Command{Op: OpOpen})
	var local *LocalOnlyError
	if !errors.As(err, &local) {
		t.Fatalf("Control with Redis down: %v, want *LocalOnlyError", err)
	}
	if fleet[0].b.State() != breaker.Open || fleet[1].b.State() != breaker.Closed {
		t.Fatalf("states %v/%v, want open here and closed on the other replica",
			fleet[0].b.State(), fleet[1].b.State())
	}
	srv.Restart()
	// Once Redis answers again, its state (a fresh closed circuit) wins over the
	// local-only command.
	allIn(t, breaker.Closed, fleet...)
}

// TestRedisLocalOnlyControlDoesNotWedge: a command that reached only this replica while
// Redis itself stayed healthy must not leave the replica a generation ahead of Redis,
// where it would ignore every reply and stay open for good.
func TestRedisLocalOnlyControlDoesNotWedge(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := baseSettings() // open 100 ms
	r := startReplica(t, srv, "r", replicaConfig{settings: s})
	ctx, cancel := context.WithCancel(t.Context())
	cancel() // the command cannot reach Redis; the flushes can
	var local *LocalOnlyError
	if err := r.st.Control(ctx, circuitName, Command{Op: OpOpen}); !errors.As(err, &local) {
		t.Fatalf("Control: %v, want *LocalOnlyError", err)
	}
	eventually(t, waitFor, "the replica admitting requests again", func() bool {
		_, err := r.b.Allow()
		return err == nil && r.b.State() == breaker.Closed
	})
}

func TestRedisSettingsHashDisagreementWarns(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	a := startReplica(t, srv, "a", replicaConfig{settings: longOpen(), hash: "aaa"})
	b := startReplica(t, srv, "b", replicaConfig{settings: longOpen(), hash: "bbb"})
	// A failure each time (then a success, so no run builds): a quiet circuit's successes
	// alone are held, not sent, and a replica that sends nothing for a circuit hears of
	// the other's settings at its next exchange for it (a failure, a transition, the
	// key's refresh every 12 hours).
	traffic := func() { fail(t, a.b); succeed(t, a.b); fail(t, b.b); succeed(t, b.b) }
	const msg = "replicas disagree on breaker settings"
	eventually(t, waitFor, "both replicas to warn", func() bool {
		traffic()
		return a.logs.FilterMessage(msg).Len() > 0 && b.logs.FilterMessage(msg).Len() > 0
	})
	exchangesDone(t, 5, traffic, a, b)
	for _, r := range []*replica{a, b} {
		warns := r.logs.FilterMessage(msg).All()
		if len(warns) != 1 {
			t.Fatalf("%s warned %d times, want once", r.id, len(warns))
		}
		f := warns[0].ContextMap()
		if warns[0].Level != zapcore.WarnLevel || f["upstream"] != circuitName || f["ours"] == f["theirs"] {
			t.Fatalf("%s: warning %v %v", r.id, warns[0].Level, f)
		}
	}
	if f := b.logs.FilterMessage(msg).All()[0].ContextMap(); f["theirs"] != "aaa" || f["their_replica"] != "a" {
		t.Fatalf("b's warning: %v", f)
	}
	// Replicas that agree never warn.
	a.stop() // their last flushes are done
	b.stop()
	c := startReplica(t, srv, "c", replicaConfig{settings: longOpen(), hash: "same"})
	d := startReplica(t, srv, "d", replicaConfig{settings: longOpen(), hash: "same"})
	exchangesDone(t, 5, func() { succeed(t, c.b); succeed(t, d.b) }, c, d)
	if n := d.logs.FilterMessage(msg).Len(); n != 0 {
		t.Fatalf("d warned %d times although it agrees with c", n)
	}
}

// pipelineWatch is a client hook that knows which pipelines (exchanges) are in flight
// and since when.
type pipelineWatch struct {
	mu       sync.Mutex
	next     int
	inflight map[int]time.Time
}

func newPipelineWatch() *pipelineWatch { return &pipelineWatch{inflight: map[int]time.Time{}} }

func (w *pipelineWatch) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (w *pipelineWatch) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (w *pipelineWatch) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		w.mu.Lock()
		id := w.next
		w.next++
		w.inflight[id] = time.Now()
		w.mu.Unlock()
		defer func() {
			w.mu.Lock()
			delete(w.inflight, id)
			w.mu.Unlock()
		}()
		return next(ctx, cmds)
	}
}

// stuck returns a pipeline that has been in flight for longer than d.
func (w *pipelineWatch) stuck(d time.Duration) (id int, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for id, since := range w.inflight {
		if time.Since(since) > d {
			return id, true
		}
	}
	return 0, false
}

func (w *pipelineWatch) running(id int) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.inflight[id]
	return ok
}

// TestRedisRequestPathNeverWaits runs 10,000 requests through a breaker while its store
// is stuck in an exchange that Redis will not answer: they all complete before it returns.
func TestRedisRequestPathNeverWaits(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	w := newPipelineWatch()
	s := longOpen()
	s.ConsecutiveFailures = 1_000_000
	s.Window = time.Minute
	r := startReplica(t, srv, "r", replicaConfig{settings: s, hook: w,
		timeout: 30 * time.Second, readTimeout: 30 * time.Second})

	pauseWrites(t, srv, 30*time.Second)
	var blocked int
	eventually(t, waitFor, "an exchange stuck on the paused Redis", func() bool {
		succeed(t, r.b) // news to flush, so that an exchange starts
		var ok bool
		blocked, ok = w.stuck(200 * time.Millisecond)
		return ok
	})
	sent := r.b.Snapshot().Counts.Requests
	requests := func() (total, worst time.Duration) {
		start := time.Now()
		for i := range 10_000 {
			t0 := time.Now()
			tk, err := r.b.Allow()
			if err != nil {
				t.Fatalf("request %d: %v", i, err)
			}
			o := breaker.Success
			if i%3 == 0 {
				o = breaker.Failure
			}
			r.b.Done(tk, o, time.Millisecond)
			worst = max(worst, time.Since(t0))
		}
		return time.Since(start), worst
	}
	total, worst := requests()
	if !w.running(blocked) {
		t.Fatal("the exchange returned while Redis was paused: the test proves nothing")
	}
	t.Logf("10,000 Allow+Done during a blocked exchange: %v (slowest %v)", total, worst)
	if err := srv.Client().ClientUnpause(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	// The counts were not lost: they reach Redis on the next flushes.
	want := int(sent) + 10_000
	eventually(t, waitFor, fmt.Sprintf("%d requests counted in Redis", want), func() bool {
		var req int
		for f, v := range srv.Client().HGetAll(t.Context(), "fuse:{api}:state").Val() {
			var a, b, c int
			if _, err := fmt.Sscanf(v, "%d %d %d", &a, &b, &c); err == nil && strings.HasPrefix(f, "b:") {
				req += a
			}
		}
		return req == want
	})

	// With redis-server gone, the same.
	srv.Kill()
	total, worst = requests()
	t.Logf("10,000 Allow+Done with Redis killed: %v (slowest %v)", total, worst)
}

// TestRedisStoppedReplicaReleasesPermits: a replica that stops while holding a trial
// permit gives it back, so the fleet need not wait for the lease to expire.
func TestRedisStoppedReplicaReleasesPermits(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := baseSettings() // open 100 ms, one trial at a time
	rc := replicaConfig{settings: s, lease: time.Minute}
	a := startReplica(t, srv, "a", rc)
	if err := a.st.Control(t.Context(), circuitName, Command{Op: OpOpen}); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitFor, "a holding the permit", func() bool { return holdsPermit(a.b) })
	b := startReplica(t, srv, "b", rc)
	exchangesDone(t, 3, func() {
		if tk, err := b.b.Allow(); err == nil {
			t.Fatalf("b admitted %+v while a holds the only permit", tk)
		}
	}, b)
	a.stop()
	eventually(t, waitFor, "b to get the permit", func() bool {
		tk, err := b.b.Allow()
		return err == nil && tk.Trial()
	})
}

func TestRedisInspect(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := baseSettings()
	s.OpenDuration = 50 * time.Millisecond
	r := startReplica(t, srv, "r", replicaConfig{settings: s})
	if err := r.st.Control(t.Context(), circuitName, Command{Op: OpOpen}); err != nil {
		t.Fatal(err)
	}
	// The permit may be granted in advance, while Redis still holds the open period:
	// Redis goes half-open once the replica's breaker has (see acquire.lua, flush.lua).
	var m map[string]string
	eventually(t, waitFor, "a lease in the half-open period", func() bool {
		if !holdsPermit(r.b) {
			return false
		}
		var err error
		if m, err = r.st.Inspect(t.Context(), circuitName); err != nil {
			t.Fatal(err)
		}
		return m["st"] == "2"
	})
	if m["st"] != "2" || m["key"] != "fuse:{api}:state" || m["leases"] == "" || m["cfgr"] != "r" {
		t.Fatalf("Inspect = %v", m)
	}
	if _, err := r.st.Inspect(t.Context(), "nope"); !errors.Is(err, ErrUnknownCircuit) {
		t.Fatalf("unknown circuit: %v", err)
	}
	if st := r.st.Status(); st.Driver != "redis" || st.ReplicaID != "r" || st.Degraded {
		t.Fatalf("Status = %+v", st)
	}
}

// TestRedisStaleResyncReplyDoesNotUndoNewerState: a resync adopts Redis's state whatever
// the generation, to override local decisions; but a resync reply that was on its way
// while a newer state arrived (pub/sub, Control) must not take the breaker back.
func TestRedisStaleResyncReplyDoesNotUndoNewerState(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	r := startReplica(t, srv, "r", replicaConfig{settings: longOpen(), noRun: true})
	c, _ := r.st.get(circuitName)
	stale := reply{state: breaker.SharedState{State: breaker.Closed, Generation: 0}, epoch: c.epoch.Load()}

	if err := r.st.Control(t.Context(), circuitName, Command{Op: OpOpen}); err != nil {
		t.Fatal(err)
	}
	r.st.apply(c, stale, true, "flush") // read before the Control, applied after it
	if st, gen := r.b.State(), r.b.Snapshot().Generation; st != breaker.Open || gen != 1 {
		t.Fatalf("after a stale resync reply: %v gen %d, want open gen 1", st, gen)
	}

	// Local decisions are still overridden: the breaker trips on its own while Redis
	// stays at generation 1 ...
	r.b.SetShared(false)
	r.b.Close()
	r.b.Trip() // gen 3
	r.b.SetShared(true)
	current := reply{state: breaker.SharedState{State: breaker.Open, Generation: 1,
		OpenRemaining: time.Minute, OpenFor: time.Minute, Trips: 1}, epoch: c.epoch.Load()}
	r.st.apply(c, current, false, "flush")
	if gen := r.b.Snapshot().Generation; gen != 3 {
		t.Fatalf("a plain reply overrode a newer local generation: gen %d", gen)
	}
	r.st.apply(c, current, true, "flush") // ... and a resync brings it back to Redis's
	if gen := r.b.Snapshot().Generation; gen != 1 {
		t.Fatalf("resync left the breaker at gen %d, want Redis's 1", gen)
	}
	// A new epoch (the state was lost or replaced in Redis) is adopted whatever.
	fresh := reply{state: breaker.SharedState{State: breaker.Closed}, epoch: c.epoch.Load() + 1}
	r.st.apply(c, fresh, false, "pubsub")
	if st, gen := r.b.State(), r.b.Snapshot().Generation; st != breaker.Closed || gen != 0 {
		t.Fatalf("after a new epoch: %v gen %d, want closed gen 0", st, gen)
	}
}

// TestRedisLoadDoesNotGrowWithRequests: Redis sees at most a pipeline per flush interval
// (for a quiet circuit, far fewer: see hold_test.go), not a command per request.
func TestRedisLoadDoesNotGrowWithRequests(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := longOpen()
	s.ConsecutiveFailures = 0
	r := startReplica(t, srv, "r", replicaConfig{settings: s})
	r.flushNow(t)
	before, exchanges := srv.CommandStats(), r.exchanges.Load()
	const requests = 50_000
	for range requests {
		succeed(t, r.b)
	}
	r.flushNow(t)
	after := srv.CommandStats()
	scripts := after["evalsha"] - before["evalsha"] + after["eval"] - before["eval"]
	n := r.exchanges.Load() - exchanges
	t.Logf("%d requests: %d exchanges, %d script calls", requests, n, scripts)
	if scripts > 3*n || scripts > requests/100 {
		t.Fatalf("%d script calls for %d requests in %d exchanges", scripts, requests, n)
	}
}

// BenchmarkRedisAllowDone measures the request path with a live Redis store behind it,
// and how many Redis commands each request costs (about 0).
func BenchmarkRedisAllowDone(b *testing.B) {
	srv := redistest.Start(b)
	s := longOpen()
	s.ConsecutiveFailures = 0
	client, err := NewRedisClient(RedisClientOptions{URL: srv.URL()})
	if err != nil {
		b.Fatal(err)
	}
	st := newTestRedis(b, client, RedisOptions{ReplicaID: "bench", FlushInterval: 20 * time.Millisecond})
	br := breaker.New(circuitName, s, breaker.Options{})
	st.Attach(map[string]Circuit{circuitName: {Breaker: br, TrialLease: 10 * time.Second}})
	if err := st.Resync(b.Context()); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = st.Run(ctx) }()
	defer func() { cancel(); <-done; _ = st.Close() }()
	before := srv.CommandStats()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			tk, err := br.Allow()
			if err != nil {
				b.Error(err)
				return
			}
			br.Done(tk, breaker.Success, time.Millisecond)
		}
	})
	b.StopTimer()
	var cmds int64
	for name, n := range srv.CommandStats() {
		if name != "info" {
			cmds += n - before[name]
		}
	}
	b.ReportMetric(float64(cmds)/float64(b.N), "redis-cmds/op")
}

// holdsPermit reports whether b holds a trial permit (granted, or in use by a trial
// admitted here). A replica asks for permits only while requests wait for one, so while
// it holds none this sends one (whose rejection is the request waiting).
func holdsPermit(b *breaker.Breaker) bool {
	if sn := b.Snapshot(); sn.Permits > 0 || sn.TrialsInFlight > 0 {
		return true
	}
	tk, err := b.Allow()
	return err == nil && tk.Trial()
}

// An idle replica does not take trial permits: only replicas whose requests wait for one
// ask, so a permit is never stuck with a replica that has no traffic to try.
func TestRedisIdleReplicaTakesNoPermit(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rc := replicaConfig{settings: baseSettings(), lease: time.Minute}
	idle, busy := startReplica(t, srv, "idle", rc), startReplica(t, srv, "busy", rc)
	if err := busy.st.Control(t.Context(), circuitName, Command{Op: OpOpen}); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitFor, "busy to hold the permit", func() bool { return holdsPermit(busy.b) })
	exchangesDone(t, 5, nil, idle)
	if sn := idle.b.Snapshot(); sn.Permits != 0 || sn.TrialsInFlight != 0 {
		t.Fatalf("idle replica: got %d permits and %d trials, want none", sn.Permits, sn.TrialsInFlight)
	}
}

// One replica may run as many trials at once as the fleet allows.
func TestRedisOneReplicaRunsSeveralTrials(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := baseSettings()
	s.HalfOpenMaxRequests, s.SuccessThreshold = 3, 3
	r := startReplica(t, srv, "r", replicaConfig{settings: s, lease: time.Minute})
	if err := r.st.Control(t.Context(), circuitName, Command{Op: OpOpen}); err != nil {
		t.Fatal(err)
	}
	var tickets []breaker.Ticket
	eventually(t, waitFor, "3 trials in flight", func() bool {
		if tk, err := r.b.Allow(); err == nil {
			tickets = append(tickets, tk)
		}
		return len(tickets) == 3
	})
	exchangesDone(t, 3, func() {
		if tk, err := r.b.Allow(); err == nil {
			t.Fatalf("a 4th trial was admitted: %+v", tk)
		}
	}, r)
	for _, tk := range tickets {
		r.b.Done(tk, breaker.Success, 0)
	}
	eventually(t, waitFor, "the circuit to close", func() bool { return r.b.State() == breaker.Closed })
}

// A script that fails in Redis on its own circuit's data (WRONGTYPE: a script can meet
// it only on the two keys it was given) leaves the other circuits' replies good and does
// not degrade the store. (Today's scripts replace a foreign value they meet, see
// TestLuaForeignLeasesKey, so the reply is made by a client hook; a permission refused
// on one circuit's keys is not its data and degrades, see TestRedisErrorRepliesDegrade.)
func TestRedisOneFailingScriptSparesTheRest(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := baseSettings()
	s.SuccessThreshold = 2
	apiKey, _ := keys("fuse", circuitName)
	var corrupt atomic.Bool
	r := startReplica(t, srv, "r", replicaConfig{settings: s, lease: time.Minute, hook: replaceReplies{
		match: func(c redis.Cmder) bool {
			a := c.Args()
			return corrupt.Load() && len(a) > 3 && a[3] == apiKey
		},
		err: "WRONGTYPE Operation against a key holding the wrong kind of value script: x, on @user_script:1.",
	}})
	other := breaker.New("other", baseSettings(), breaker.Options{})
	r.st.Attach(map[string]Circuit{
		circuitName: {Breaker: r.b, SettingsHash: "h", TrialLease: time.Minute},
		"other":     {Breaker: other, SettingsHash: "h", TrialLease: time.Minute},
	})
	if err := r.st.Control(t.Context(), circuitName, Command{Op: OpOpen}); err != nil {
		t.Fatal(err)
	}
	var trial breaker.Ticket
	eventually(t, waitFor, "a trial of api", func() bool {
		tk, err := r.b.Allow()
		trial = tk
		return err == nil && tk.Trial()
	})
	corrupt.Store(true)
	r.b.Done(trial, breaker.Success, 0) // its report fails in Redis: WRONGTYPE
	eventually(t, waitFor, "api's trial report to fail in Redis", func() bool {
		return len(r.logs.FilterMessage("script failed in Redis on this circuit's data").All()) > 0
	})
	for range 3 {
		fail(t, other)
	}
	eventually(t, waitFor, "other to open through Redis", func() bool { return other.State() == breaker.Open })
	if r.st.Status().Degraded || r.degraded.Load() != 0 || !other.Shared() {
		t.Fatalf("store degraded by one circuit's bad data: %+v", r.st.Status())
	}
}

// succeedIfAdmitted sends one successful request through b if b admits it: traffic that
// keeps flowing while the fleet may trip at any moment (checking the state first would
// race with the trip).
func succeedIfAdmitted(b *breaker.Breaker) {
	if tk, err := b.Allow(); err == nil {
		b.Done(tk, breaker.Success, time.Millisecond)
	}
}
