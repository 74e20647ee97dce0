package store

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// scriptCounter is a client hook counting the scripts a replica sends, by script, and
// the flush scripts that carry requests (not polls).
type scriptCounter struct {
	mu      sync.Mutex
	n       map[string]int // by SHA
	counted int
}

func newScriptCounter() *scriptCounter { return &scriptCounter{n: map[string]int{}} }

func (c *scriptCounter) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (c *scriptCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (c *scriptCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.mu.Lock()
		for _, cmd := range cmds {
			if a := cmd.Args(); len(a) > 1 && strings.EqualFold(a[0].(string), "evalsha") {
				c.n[a[1].(string)]++
				// evalsha sha numkeys state leases replica generation requests ...
				if a[1] == flushScript.Hash() && len(a) > 7 && fmt.Sprint(a[7]) != "0" {
					c.counted++
				}
			}
		}
		c.mu.Unlock()
		return next(ctx, cmds)
	}
}

func (c *scriptCounter) flushes() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counted
}

func (c *scriptCounter) count(s *redis.Script) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[s.Hash()]
}

// windowRequests sums the requests of the circuit's window in Redis.
func windowRequests(t *testing.T, srv *redistest.Server) int {
	t.Helper()
	e := luaEnvOn(t, srv, circuitName, baseSettings(), 1)
	req, _, _ := e.windowTotals()
	return req
}

// TestRedisQuietCircuitHoldsSuccesses: a busy replica whose circuit is quiet sends no
// script for its successes (only heartbeats, a few per second); those a window old are
// dropped, never sent, and a failure sends those of the last window with it.
func TestRedisQuietCircuitHoldsSuccesses(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := longOpen()
	s.Window = 2 * time.Second
	sc := newScriptCounter()
	r := startReplica(t, srv, "r", replicaConfig{settings: s, hook: sc})
	c, _ := r.st.get(circuitName)
	if !c.quiet.Load() {
		t.Fatal("a fresh circuit is not quiet after Resync")
	}
	// Warm up until the start-up resyncs (which send whatever was counted) are over.
	sent := 0
	exchangesDone(t, 3, func() { succeed(t, r.b); sent++ }, r)
	flushes0, beats0, inRedis := sc.flushes(), sc.count(heartbeatScript), windowRequests(t, srv)
	start := time.Now()
	for time.Since(start) < time.Second {
		for range 50 {
			succeed(t, r.b)
			sent++
		}
		time.Sleep(time.Millisecond)
	}
	flushes, beats := sc.flushes()-flushes0, sc.count(heartbeatScript)-beats0
	t.Logf("%d successes in %v: %d flush scripts, %d heartbeats", sent, time.Since(start), flushes, beats)
	if flushes != 0 {
		t.Errorf("%d flush scripts for successes of a quiet circuit within its window, want 0", flushes)
	}
	if beats == 0 || beats > 15 {
		t.Errorf("%d heartbeats in a second with a 20 ms flush interval, want about 10 (one per 5 intervals)", beats)
	}
	if n := windowRequests(t, srv); n != inRedis {
		t.Errorf("Redis holds %d requests, %d before: successes were sent within the window", n, inRedis)
	}
	// A window and a part of it later, nothing was sent: those successes are dropped.
	time.Sleep(s.Window + s.Window/holdSpan - time.Since(start) + time.Second)
	if flushes := sc.flushes() - flushes0; flushes != 0 {
		t.Errorf("%d flush scripts for successes held for a window, want 0", flushes)
	}
	recent := 0
	for range 20 {
		succeed(t, r.b)
		recent++
	}
	fail(t, r.b)
	// (the warm-up's bucket, stale, leaves the hash with the failure's flush)
	eventually(t, waitFor, "the failure and the last window's successes in Redis, not the older ones", func() bool {
		return windowRequests(t, srv) == recent+1
	})
}

// TestRedisStopSendsHeldSuccesses: the last flush at shutdown sends what was held.
func TestRedisStopSendsHeldSuccesses(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := longOpen()
	s.Window = time.Minute
	sc := newScriptCounter()
	r := startReplica(t, srv, "r", replicaConfig{settings: s, hook: sc})
	sent := 0
	exchangesDone(t, 3, func() { succeed(t, r.b); sent++ }, r) // past the start-up resyncs
	flushes0 := sc.flushes()
	for range 500 {
		succeed(t, r.b)
	}
	sent += 500
	exchangesDone(t, 3, nil, r) // heartbeats: the loop has taken (and held) them
	if n := sc.flushes() - flushes0; n != 0 {
		t.Fatalf("%d flush scripts before the stop, want 0 (held)", n)
	}
	r.stop()
	if n := windowRequests(t, srv); n != sent {
		t.Errorf("after the stop Redis holds %d requests, want %d", n, sent)
	}
}

// TestRedisOnsetSendsHeldSuccesses: a healthy replica's held successes still dilute
// another replica's failures. The sick replica's 30 failures (100 % of its traffic) would
// open the circuit by the rate rule on their own; the healthy replica's 1,000 successes,
// held while the circuit was quiet, are sent when the onset is published, within the
// grace, and keep it closed (30 of 1,030).
func TestRedisOnsetSendsHeldSuccesses(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := longOpen()
	s.ConsecutiveFailures = 0
	s.FailureRate, s.MinimumRequests, s.Window = 50, 20, time.Minute
	hc := newScriptCounter()
	healthy := startReplica(t, srv, "healthy", replicaConfig{settings: s, hook: hc})
	sick := startReplica(t, srv, "sick", replicaConfig{settings: s})
	for range 1000 {
		succeed(t, healthy.b)
	}
	exchangesDone(t, 3, nil, healthy)
	if n := hc.flushes(); n != 0 {
		t.Fatalf("healthy sent %d flush scripts before the onset, want 0 (held)", n)
	}
	for range 30 {
		fail(t, sick.b)
	}
	eventually(t, waitFor, "the held successes in Redis", func() bool { return windowRequests(t, srv) == 1030 })
	c, _ := sick.st.get(circuitName)
	eventually(t, waitFor, "sick's polls after the grace to decide", func() bool {
		sick.st.xmu.Lock()
		defer sick.st.xmu.Unlock()
		return !c.deciding
	})
	allIn(t, breaker.Closed, healthy, sick)
	if st := luaEnvOn(t, srv, circuitName, s, 1).hgetall()["st"]; st != "0" {
		t.Fatalf("Redis state %s, want 0 (closed): 30 failures of 1,030 requests", st)
	}
}

// TestRedisHeldSuccessesDoNotEndARun: successes held while the circuit was quiet came
// before the run of failures the fleet builds now, so they do not end it: 2 failures on
// each of 3 replicas, each of which held successes, make the 6 in a row that trip it.
func TestRedisHeldSuccessesDoNotEndARun(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := longOpen()
	s.ConsecutiveFailures, s.Window = 6, time.Minute
	fleet := startFleet(t, srv, 3, replicaConfig{settings: s})
	// Past the start-up resyncs (which send what was counted), successes are held.
	exchangesDone(t, 3, func() {
		for _, r := range fleet {
			for range 10 {
				succeed(t, r.b)
			}
		}
	}, fleet...)
	exchangesDone(t, 2, nil, fleet...) // heartbeats: every success has been taken and held
	for _, r := range fleet {
		fail(t, r.b)
		fail(t, r.b)
	}
	eventually(t, waitFor, "the fleet open", func() bool {
		return fleet[0].b.State() == breaker.Open && fleet[1].b.State() == breaker.Open &&
			fleet[2].b.State() == breaker.Open
	})
}

func TestMergeHeldSuccesses(t *testing.T) {
	t.Parallel()
	held := breaker.Delta{Generation: 3, Counts: breaker.Counts{Requests: 100}, HadSuccess: true, GatewayEnded: true}
	cases := []struct {
		name string
		h, d breaker.Delta
		want breaker.Delta
	}{
		{"held alone ends no run", held, breaker.Delta{},
			breaker.Delta{Generation: 3, Counts: breaker.Counts{Requests: 100}}},
		{"failures after held successes continue the run", held,
			breaker.Delta{Generation: 3, Counts: breaker.Counts{Requests: 2, Failures: 2}, Tail: 2},
			breaker.Delta{Generation: 3, Counts: breaker.Counts{Requests: 102, Failures: 2}, Tail: 2}},
		{"gateway failures after held successes continue the gateway run", held,
			breaker.Delta{Generation: 3, Counts: breaker.Counts{Requests: 2, Failures: 2}, Tail: 2, GatewayTail: 2},
			breaker.Delta{Generation: 3, Counts: breaker.Counts{Requests: 102, Failures: 2}, Tail: 2, GatewayTail: 2}},
		{"a fresh success still ends it", held,
			breaker.Delta{Generation: 3, Counts: breaker.Counts{Requests: 3, Failures: 1}, Tail: 1, HadSuccess: true},
			breaker.Delta{Generation: 3, Counts: breaker.Counts{Requests: 103, Failures: 1}, Tail: 1, HadSuccess: true}},
		{"held of an older generation is dropped", held,
			breaker.Delta{Generation: 4, Counts: breaker.Counts{Requests: 1, Failures: 1}, Tail: 1},
			breaker.Delta{Generation: 4, Counts: breaker.Counts{Requests: 1, Failures: 1}, Tail: 1}},
		{"nothing held", breaker.Delta{},
			breaker.Delta{Generation: 3, Counts: breaker.Counts{Requests: 1}, HadSuccess: true},
			breaker.Delta{Generation: 3, Counts: breaker.Counts{Requests: 1}, HadSuccess: true}},
	}
	for _, tc := range cases {
		if got := merge(tc.h, tc.d); got != tc.want {
			t.Errorf("%s: merge = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

// TestPlanSkipsOnlyCircuitsWithNothingToSend: a flush passes over a closed, synced,
// quiet circuit without news whose held successes may wait (no call, the hold kept);
// each condition of that shortcut, when it does not hold, gets the circuit its script.
func TestPlanSkipsOnlyCircuitsWithNothingToSend(t *testing.T) {
	t.Parallel()
	const held = 5
	cases := []struct {
		name  string
		setup func(c *circuit, now time.Time)
		calls int    // scripts planned
		sent  uint32 // requests in the flush script, when there is one
		hold  uint32 // requests held afterwards
	}{
		{"idle", func(*circuit, time.Time) {}, 0, 0, 0},
		{"holding, within the window", func(c *circuit, now time.Time) {
			c.addHeld(breaker.Delta{Counts: breaker.Counts{Requests: held}}, now.Add(-time.Second))
		}, 0, 0, held},
		{"a new success joins the hold", func(c *circuit, now time.Time) {
			c.addHeld(breaker.Delta{Counts: breaker.Counts{Requests: held}}, now.Add(-time.Second))
			gate(c.Breaker).Done(must(gate(c.Breaker).Allow()), breaker.Success, 0)
		}, 0, 0, held + 1},
		{"a failure", func(c *circuit, now time.Time) {
			gate(c.Breaker).Done(must(gate(c.Breaker).Allow()), breaker.Failure, 0)
		}, 1, 1, 0},
		{"held successes a window old are dropped", func(c *circuit, now time.Time) {
			c.addHeld(breaker.Delta{Counts: breaker.Counts{Requests: held}}, now.Add(-c.cfg.holdFor-c.cfg.holdFor/holdSpan))
		}, 0, 0, 0},
		{"those of the last window are kept", func(c *circuit, now time.Time) {
			c.addHeld(breaker.Delta{Counts: breaker.Counts{Requests: held}}, now.Add(-c.cfg.holdFor-c.cfg.holdFor/holdSpan))
			c.addHeld(breaker.Delta{Counts: breaker.Counts{Requests: 2}}, now.Add(-c.cfg.holdFor+c.cfg.holdFor/holdSpan/2))
			c.addHeld(breaker.Delta{Counts: breaker.Counts{Requests: 3}}, now.Add(-time.Second))
		}, 0, 0, 5},
		{"the key's refresh is due", func(c *circuit, now time.Time) {
			c.addHeld(breaker.Delta{Counts: breaker.Counts{Requests: held}}, now.Add(-time.Second))
			c.refreshAt = now
		}, 1, held, 0},
		{"the key was never refreshed", func(c *circuit, now time.Time) {
			c.refreshAt = time.Time{}
			gate(c.Breaker).Done(must(gate(c.Breaker).Allow()), breaker.Success, 0)
		}, 1, 1, 0},
		{"no longer quiet (an onset)", func(c *circuit, now time.Time) {
			c.addHeld(breaker.Delta{Counts: breaker.Counts{Requests: held}}, now.Add(-time.Second))
			c.quiet.Store(false)
		}, 1, held, 0},
		{"not synced yet", func(c *circuit, _ time.Time) { c.synced.Store(false) }, 1, 0, 0},
		{"a rate decision waits", func(c *circuit, _ time.Time) { c.deciding = true }, 1, 0, 0},
		{"open: the first poll", func(c *circuit, _ time.Time) { openFor(c, time.Minute) }, 1, 0, 0},
		{"open: polled, far from the end", func(c *circuit, now time.Time) {
			openFor(c, time.Minute)
			c.x().pollAt = now.Add(time.Second)
		}, 0, 0, 0},
		{"open: the backstop poll is due", func(c *circuit, now time.Time) {
			openFor(c, time.Minute)
			c.x().pollAt = now
		}, 1, 0, 0},
		{"open: near the end (the advance lead and a flush)", func(c *circuit, now time.Time) {
			openFor(c, 400*time.Millisecond) // offlineStore's flush interval: 100 ms, lead 300 ms
			c.x().pollAt = now.Add(time.Minute)
		}, 1, 0, 0},
		{"open: leases to give back", func(c *circuit, now time.Time) {
			openFor(c, time.Minute)
			c.x().pollAt = now.Add(time.Minute)
			c.x().refused = []string{"r:1:*"}
		}, 2, 0, 0},
		{"forced open", func(c *circuit, now time.Time) {
			openFor(c, time.Minute)
			c.x().pollAt = now.Add(time.Minute)
			c.Breaker.SetMode(breaker.ForcedOpen)
			c.Breaker.TakeDelta()
			c.Breaker.TakeTrials()
		}, 1, 0, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := offlineStore(t)
			s := baseSettings()
			s.Window = 10 * time.Second
			b := breaker.New("u", s, breaker.Options{})
			st.Attach(map[string]Circuit{"u": {Breaker: b, SettingsHash: "h", TrialLease: 10 * time.Second}})
			c := st.list()[0]
			b.SetShared(true)
			b.TakeDelta()
			c.synced.Store(true)
			c.quiet.Store(true)
			now := time.Now()
			c.refreshAt = now.Add(time.Hour)
			tc.setup(c, now)

			calls := st.plan(nil, c, now, false)
			if len(calls) != tc.calls {
				t.Fatalf("planned %d scripts, want %d", len(calls), tc.calls)
			}
			if tc.calls > 0 {
				if calls[0].script != flushScript {
					t.Fatal("planned a script other than the flush")
				}
				if got := calls[0].args[2]; got != tc.sent {
					t.Errorf("flush sends %v requests, want %d", got, tc.sent)
				}
			}
			if c.heldRequests() != tc.hold {
				t.Errorf("holds %d requests afterwards, want %d", c.heldRequests(), tc.hold)
			}
			if st.holding != (tc.hold > 0) {
				t.Errorf("store holding = %v, want %v", st.holding, tc.hold > 0)
			}
		})
	}
}

// openFor adopts an open state with d left, as from Redis, and takes the news flag
// down (Apply leaves it up).
func openFor(c *circuit, d time.Duration) {
	c.Breaker.Apply(breaker.SharedState{State: breaker.Open, Generation: 1, OpenRemaining: d,
		OpenFor: d, Trips: 1}, true)
	c.Breaker.TakeDelta()
	c.Breaker.TakeTrials()
}

// startMany is a running replica with one circuit per name (settings s, flush interval
// flush), on its own client: the breakers by name. It stops with the test.
func startMany(t testing.TB, srv *redistest.Server, id string, names []string, s breaker.Settings, flush time.Duration, hooks Hooks) (*Redis, map[string]*breaker.Breaker) {
	t.Helper()
	client, err := NewRedisClient(RedisClientOptions{URL: srv.URL(), PoolSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	st := newTestRedis(t, client, RedisOptions{ReplicaID: id, FlushInterval: flush, Timeout: 2 * time.Second, Hooks: hooks})
	bs := make(map[string]*breaker.Breaker, len(names))
	cs := make(map[string]Circuit, len(names))
	for _, n := range names {
		bs[n] = breaker.New(n, s, breaker.Options{})
		cs[n] = Circuit{Breaker: bs[n], SettingsHash: "h", TrialLease: 10 * time.Second}
	}
	st.Attach(cs)
	ctx, cancel := context.WithCancel(context.Background())
	startResync(t, id, st.Resync)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := st.Run(ctx); err != nil {
			t.Errorf("replica %s: Run: %v", id, err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		st.Close()
	})
	return st, bs
}

// commands is the number of commands Redis ran (those run by scripts included), INFO
// and CONFIG excluded.
func commands(srv *redistest.Server) int64 {
	var n int64
	for name, c := range srv.CommandStats() {
		if name != "info" && !strings.HasPrefix(name, "config") {
			n += c
		}
	}
	return n
}

// TestRedisQuietBusyCircuitsCostNoCommands: a replica whose 50 circuits all serve
// successes and stay quiet sends Redis nothing for them over several windows: its held
// successes age out of the window instead of being sent, so Redis hears only its
// heartbeats (one script and its SET every 5 flush intervals), however many circuits are
// busy. (Before: one flush script per busy circuit per window, ≈ 9 commands each.)
func TestRedisQuietBusyCircuitsCostNoCommands(t *testing.T) {
	t.Parallel()
	const n, flush = 50, 20 * time.Millisecond
	srv := redistest.Start(t)
	s := longOpen()
	s.Window = 200 * time.Millisecond
	names := make([]string, n)
	for i := range names {
		names[i] = "u" + strconv.Itoa(i)
	}
	var exchanges atomic.Int64
	st, bs := startMany(t, srv, "r", names, s, flush, Hooks{Flush: func(time.Duration, error) { exchanges.Add(1) }})
	traffic := func() {
		for _, b := range bs {
			succeed(t, b)
		}
	}
	// past the start-up resyncs, which send whatever was counted
	for w := exchanges.Load() + 5; exchanges.Load() < w; time.Sleep(time.Millisecond) {
		traffic()
	}
	for _, c := range st.list() {
		if !c.quiet.Load() {
			t.Fatalf("%s is not quiet after the start", c.name)
		}
	}
	c0, start := commands(srv), time.Now()
	for time.Since(start) < 5*s.Window {
		traffic()
		time.Sleep(time.Millisecond)
	}
	elapsed, cmds := time.Since(start), commands(srv)-c0
	beats := float64(elapsed) / float64(5*flush)
	t.Logf("%d busy quiet circuits for %v (%d windows): %d Redis commands (heartbeats: about %.0f, 2 commands each)",
		n, elapsed.Round(time.Millisecond), int(elapsed/s.Window), cmds, beats)
	if limit := int64(2*(beats+2)) + 10; cmds > limit {
		t.Errorf("%d Redis commands in %v, want at most %d (heartbeats alone)", cmds, elapsed, limit)
	}
}
