package e2e

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fuseproxy/fuseproxy/internal/testutil/pgtest"
	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// fleetOptions describe a fleet of replicas sharing breaker state through one Redis (or
// one PostgreSQL).
type fleetOptions struct {
	Driver        string // redis (when empty) or postgres
	Replicas      int
	FlushInterval time.Duration
	Breaker       breakerSettings
	Env           func(i int) []string // extra environment of replica i (0-based); may be nil
}

// fleet is a set of replicas sharing one backend and one Redis (or PostgreSQL: PG).
type fleet struct {
	Backend  *Backend
	Redis    *redistest.Server
	PG       *pgtest.Server
	Replicas []*Proxy
	base     proxyConfig
}

// driver is the fleet's store.
func (f *fleet) driver() string { return f.base.Store }

// killStore kills the fleet's Redis or PostgreSQL; restartStore brings it back (Redis
// empty, PostgreSQL with its data).
func (f *fleet) killStore() {
	if f.PG != nil {
		f.PG.Kill()
		return
	}
	f.Redis.Kill()
}

func (f *fleet) restartStore() {
	if f.PG != nil {
		f.PG.Restart()
		return
	}
	f.Redis.Restart()
}

// startReplica starts one more replica of the fleet's config, named id, with env.
func (f *fleet) startReplica(t testing.TB, id string, env ...string) *Proxy {
	t.Helper()
	c := f.base
	c.Listen, c.AdminListen, c.ReplicaID = freeAddr(t), freeAddr(t), id
	p := startProxy(t, c.YAML(t), env...)
	f.Replicas = append(f.Replicas, p)
	return p
}

// startFleet starts a flaky backend, a redis-server and the replicas (ids r1, r2, ...).
func startFleet(t *testing.T, o fleetOptions) *fleet {
	t.Helper()
	f := &fleet{Backend: startBackend(t)}
	if o.Driver == "postgres" {
		f.PG = pgtest.Start(t)
		f.base = newConfig(t, f.Backend, "postgres", o.Breaker)
		f.base.PostgresURL = f.PG.DSN()
	} else {
		f.Redis = redistest.Start(t)
		f.base = newConfig(t, f.Backend, "redis", o.Breaker)
		f.base.RedisURL = f.Redis.URL()
	}
	f.base.FlushInterval = o.FlushInterval
	for i := range o.Replicas {
		var env []string
		if o.Env != nil {
			env = o.Env(i)
		}
		f.startReplica(t, "r"+strconv.Itoa(i+1), env...)
	}
	return f
}

// waitSubscribed waits until n clients subscribe to the store's channel: each replica
// resyncs when its subscription is confirmed, so from then on it learns every change.
func (f *fleet) waitSubscribed(t *testing.T, n int) {
	t.Helper()
	if f.PG != nil { // the test's own LISTEN took effect when subscribe returned
		for _, p := range f.Replicas {
			p.WaitLog(t, 10*time.Second, `"listening for notifications"`, msgPrefix("listening for notifications"))
		}
		return
	}
	ok := waitFor(10*time.Second, 5*time.Millisecond, func() bool {
		subs, err := f.Redis.Client().PubSubNumSub(context.Background(), f.channel()).Result()
		return err == nil && subs[f.channel()] >= int64(n)
	})
	if !ok {
		t.Fatalf("fewer than %d subscribers on %s after 10s", n, f.channel())
	}
}

// channel is the store's pub/sub channel, key the shared state of the test upstream.
func (f *fleet) channel() string { return f.base.Prefix + ":events" }
func (f *fleet) key() string     { return f.base.Prefix + ":{" + upstream + "}:state" }

// subscribe subscribes the test to the store's channel and returns the messages, each
// stamped with the time it arrived.
func (f *fleet) subscribe(t *testing.T) <-chan stateMessage {
	t.Helper()
	if f.PG != nil {
		return listenEvents(t, f.PG, "fuse_events")
	}
	return subscribeEvents(t, f.Redis, f.channel())
}

// listenEvents is subscribeEvents for the postgres store: LISTEN on its events channel.
func listenEvents(t *testing.T, srv *pgtest.Server, channel string) <-chan stateMessage {
	t.Helper()
	conn := srv.Conn("")
	if _, err := conn.Exec(t.Context(), "LISTEN "+channel); err != nil {
		t.Fatalf("LISTEN %s: %v", channel, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan stateMessage, 1024)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			n, err := conn.WaitForNotification(ctx)
			if err != nil {
				return
			}
			sm := parseStateMessage(n.Payload)
			sm.At = time.Now()
			select {
			case out <- sm:
			default: // the test stopped reading; drop
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return out
}

// subscribeEvents subscribes the test to a store's events channel and returns the
// messages, each stamped with the time it arrived.
func subscribeEvents(t *testing.T, r *redistest.Server, channel string) <-chan stateMessage {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ps := r.Client().Subscribe(ctx, channel)
	if _, err := ps.Receive(ctx); err != nil { // the subscription confirmation
		t.Fatalf("subscribe %s: %v", channel, err)
	}
	out := make(chan stateMessage, 1024)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m := range ps.Channel() {
			sm := parseStateMessage(m.Payload)
			sm.At = time.Now()
			select {
			case out <- sm:
			default: // the test stopped reading; drop
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		ps.Close()
		<-done
	})
	return out
}

// stateMessage is one published transition: "name state mode generation remaining_ms
// open_for_ms trips now_ms epoch reason".
type stateMessage struct {
	Upstream string
	State    string // closed, open, half_open
	Reason   string
	Raw      string
	At       time.Time
}

func parseStateMessage(payload string) stateMessage {
	m := stateMessage{Raw: payload}
	f := strings.Fields(payload)
	if len(f) >= 2 {
		m.Upstream = f[0]
		m.State = map[string]string{"0": "closed", "1": "open", "2": "half_open"}[f[1]]
	}
	if len(f) >= 10 {
		m.Reason = f[9]
	}
	return m
}

// waitMessage waits for a message that says the test upstream went to state.
func waitMessage(t *testing.T, msgs <-chan stateMessage, state string, timeout time.Duration) stateMessage {
	t.Helper()
	return waitTargetMessage(t, msgs, upstream, state, timeout)
}

// waitTargetMessage waits for a message that says the named circuit went to state.
func waitTargetMessage(t *testing.T, msgs <-chan stateMessage, name, state string, timeout time.Duration) stateMessage {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case m := <-msgs:
			if m.Upstream == name && m.State == state {
				return m
			}
		case <-timer.C:
			t.Fatalf("no %q message for %s on the events channel within %v", state, name, timeout)
		}
	}
}

func drain(msgs <-chan stateMessage) {
	for {
		select {
		case <-msgs:
		default:
			return
		}
	}
}

// sendFailures sends n requests round-robin over the replicas (the backend failing) and
// checks that each reached the backend (the backend's own 503, not a rejection).
func (f *fleet) sendFailures(t *testing.T, n int) {
	t.Helper()
	for i := range n {
		p := f.Replicas[i%len(f.Replicas)]
		if r := p.Get("/fail"); r.Err != nil || r.Status != http.StatusServiceUnavailable || r.Circuit != "" {
			t.Fatalf("failing request %d via %s: got %v, want the backend's own 503", i+1, p.ID, r)
		}
	}
}

// waitAll waits until every replica has logged at least n transitions to state.
func (f *fleet) waitAll(t *testing.T, timeout time.Duration, state string, n int) {
	t.Helper()
	for _, p := range f.Replicas {
		p.WaitTransitions(t, timeout, upstream, state, n)
	}
}

// recover heals the backend and sends requests round-robin until every replica has
// logged its n-th transition to closed; then it waits a few flush intervals so that the
// successes' counts have reached Redis (a stale success flushed later would reset the
// fleet's run of consecutive failures).
func (f *fleet) recover(t *testing.T, n int) {
	t.Helper()
	f.Backend.Set(t, "fail=off&latency=0")
	rr := &roundRobin{proxies: f.Replicas}
	ok := waitFor(10*time.Second, 5*time.Millisecond, func() bool {
		rr.Next().Get("/recover")
		for _, p := range f.Replicas {
			if p.CountTransitionsTo(upstream, "closed") < n {
				return false
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("the fleet did not close within 10s (trip %d)", n)
	}
	for _, p := range f.Replicas {
		if r := p.Get("/recovered"); !r.OK() {
			t.Fatalf("%s after recovery: got %v, want 200", p.ID, r)
		}
	}
	time.Sleep(3 * f.base.FlushInterval)
}

// TestFleetOpensTogether spreads failures over three replicas (each sees fewer than the
// threshold), so only the fleet-wide count in Redis can open the circuit, and measures how
// long after Redis's decision every replica rejects.
func TestFleetOpensTogether(t *testing.T) {
	for _, d := range []string{"redis", "postgres"} {
		t.Run(d, func(t *testing.T) { testFleetOpensTogether(t, d) })
	}
}

func testFleetOpensTogether(t *testing.T, driver string) {
	const (
		replicas  = 3
		threshold = 6 // 2 failures per replica
		trips     = 25
		flush     = 50 * time.Millisecond
	)
	f := startFleet(t, fleetOptions{Driver: driver, Replicas: replicas, FlushInterval: flush, Breaker: breakerSettings{
		ConsecutiveFailures: threshold, OpenDuration: 200 * time.Millisecond,
		HalfOpenMaxRequests: 1, SuccessThreshold: 1,
	}})
	msgs := f.subscribe(t)
	f.waitSubscribed(t, replicas+1) // the replicas and the test

	var lags, tripLags, productLags []time.Duration
	for trip := 1; trip <= trips; trip++ {
		f.Backend.Set(t, "fail=on")
		drain(msgs)
		before := f.Backend.Stats(t).Requests
		f.sendFailures(t, threshold)
		tripped := time.Now() // the last failure's answer: the trip is the next flush's
		m := waitMessage(t, msgs, "open", 5*time.Second)
		t0 := m.At
		if m.Reason != "consecutive_failures" {
			t.Errorf("trip %d: open message %q: got reason %q, want consecutive_failures", trip, m.Raw, m.Reason)
		}

		// Each replica is polled, ~1 ms apart, until it rejects.
		firsts := make([]response, replicas)
		var wg sync.WaitGroup
		for i, p := range f.Replicas {
			wg.Add(1)
			go func() {
				defer wg.Done()
				firsts[i] = pollUntil(p, 2*time.Second, time.Millisecond, response.Rejected)
			}()
		}
		wg.Wait()
		var lag time.Duration
		for i, r := range firsts {
			// A half_open rejection also shows the replica adopted the trip (its first
			// poll came after the open period, as happens on a loaded machine).
			if !r.Rejected() || (r.Circuit != "open" && r.Circuit != "half_open") {
				t.Fatalf("trip %d: %s still not rejecting 2s after the open message: last %v", trip, f.Replicas[i].ID, r)
			}
			lag = max(lag, r.At.Sub(t0))
		}
		lags = append(lags, lag)
		tripLags = append(tripLags, lag+t0.Sub(tripped))
		leaked := f.Backend.Stats(t).Requests - before - threshold
		t.Logf("trip %d: every replica rejecting %v after the store published the open, %v after the last failure (requests that reached the backend after the threshold: %d)",
			trip, lag.Round(10*time.Microsecond), (lag + t0.Sub(tripped)).Round(10*time.Microsecond), leaked)
		f.recover(t, trip)
	}

	for _, p := range f.Replicas {
		for _, l := range p.LogsWhere(func(l logLine) bool {
			return l.Msg() == "applied shared state" && l.Str("to") == "open"
		}) {
			productLags = append(productLags, time.Duration(l.Num("lag_ms")*float64(time.Millisecond)))
		}
	}
	name, suffix := "open_lag_redis_to_all_rejecting", ""
	if driver != "redis" {
		name, suffix = "open_lag_"+driver+"_to_all_rejecting", "_"+driver
	}
	fig := report(t, name, lags, map[string]any{
		"replicas": replicas, "flush_interval_ms": flush.Milliseconds(), "trips": trips,
	})
	report(t, "open_lag_product_lag_ms_field"+suffix, productLags, map[string]any{"replicas": replicas})
	// From the trip (the last failure's answer) the fleet needs at most one flush (±10 %)
	// to bring the failures to the store, then the round trip and the delivery.
	tripFig := report(t, "trip_to_all_rejecting"+suffix, tripLags, map[string]any{
		"replicas": replicas, "flush_interval_ms": flush.Milliseconds(), "trips": trips,
		"bound_1.1F_ms": 1.1 * float64(flush.Milliseconds()),
	})
	t.Logf("trip to every replica rejecting: p99 %.1fms (1.1·F = %.0fms; the rest is the round trip and the delivery)",
		tripFig.P99ms, 1.1*float64(flush.Milliseconds()))
	if fig.P99ms > 250 {
		t.Errorf("lag from the store's decision to every replica rejecting: got p99 %.1fms, want <= 250ms (goal 50ms)", fig.P99ms)
	} else if fig.P99ms > 50 {
		t.Logf("NOTE: p99 lag %.1fms is over the 50ms goal (tolerated on a noisy machine)", fig.P99ms)
	}
}

// pollUntil sends GET requests through p, spaced by every, until done(response) or the
// timeout; it returns the last response.
func pollUntil(p *Proxy, timeout, every time.Duration, done func(response) bool) response {
	deadline := time.Now().Add(timeout)
	var r response
	for i := 0; i < 100000; i++ {
		r = p.Get("/poll")
		if done(r) || time.Now().After(deadline) {
			return r
		}
		time.Sleep(every)
	}
	return r
}

// TestFleetHalfOpenTrialsBounded checks that half_open_max_requests bounds trials across
// the whole fleet: while every replica gets bursts of concurrent requests, the backend
// never has more than 2 requests in flight during a half-open period.
func TestFleetHalfOpenTrialsBounded(t *testing.T) {
	for _, d := range []string{"redis", "postgres"} {
		t.Run(d, func(t *testing.T) { testFleetHalfOpenTrialsBounded(t, d) })
	}
}

func testFleetHalfOpenTrialsBounded(t *testing.T, driver string) {
	const (
		threshold    = 6
		halfOpenMax  = 2
		successes    = 2
		cycles       = 3
		openDuration = 300 * time.Millisecond
	)
	f := startFleet(t, fleetOptions{Driver: driver, Replicas: 3, FlushInterval: 50 * time.Millisecond, Breaker: breakerSettings{
		ConsecutiveFailures: threshold, OpenDuration: openDuration,
		HalfOpenMaxRequests: halfOpenMax, SuccessThreshold: successes,
	}})
	// Rejections while trials are in flight say half_open; in one cycle the trials may
	// finish before any other replica has adopted the half-open state (it then rejects
	// as open while it waits for a permit), so the label is checked over all cycles.
	halfOpenRejections := 0
	defer func() {
		if halfOpenRejections == 0 && !t.Failed() {
			t.Errorf("in %d cycles no request was rejected with X-Fuse-Circuit: half_open", cycles)
		}
	}()
	for cycle := 1; cycle <= cycles; cycle++ {
		f.Backend.Set(t, "fail=on")
		f.sendFailures(t, threshold)
		f.waitAll(t, 5*time.Second, "open", cycle)
		// Start the bursts after the open period (see testCircuitLifecycle).
		time.Sleep(openDuration)

		tp := trialPhase(t, f.Backend, f.Replicas, 7, cycle)
		t.Logf("cycle %d: %v", cycle, tp)
		if tp.MaxInFlight > halfOpenMax {
			t.Errorf("cycle %d: the backend had %d requests in flight at once while half-open, want at most %d", cycle, tp.MaxInFlight, halfOpenMax)
		}
		// Trials are bounded in flight, not in number: one may start when another ends,
		// so a half-open period admits at most successes+halfOpenMax-1 that all succeed.
		if most := int64(successes + halfOpenMax - 1); tp.Requests < successes || tp.Requests > most {
			t.Errorf("cycle %d: the backend received %d trial requests, want %d to %d", cycle, tp.Requests, successes, most)
		}
		halfOpenRejections += tp.Tally.RejectedHalfOpen

		f.Backend.Set(t, "latency=0")
		for _, p := range f.Replicas {
			if c := count(burst([]*Proxy{p}, 5, "/after")); c.OK != 5 {
				t.Fatalf("cycle %d: %s after the fleet closed: got %v, want 5 ok", cycle, p.ID, c)
			}
		}
		time.Sleep(3 * f.base.FlushInterval) // the successes reach Redis before the next trip
	}
}

// TestReplicaStartedWhileOpen starts a replica while the fleet's circuit is open: its very
// first request is rejected, and the backend sees nothing.
func TestReplicaStartedWhileOpen(t *testing.T) {
	for _, d := range []string{"redis", "postgres"} {
		t.Run(d, func(t *testing.T) { testReplicaStartedWhileOpen(t, d) })
	}
}

func testReplicaStartedWhileOpen(t *testing.T, driver string) {
	const threshold = 6
	open := 30 * time.Second
	f := startFleet(t, fleetOptions{Driver: driver, Replicas: 3, FlushInterval: 50 * time.Millisecond, Breaker: breakerSettings{
		ConsecutiveFailures: threshold, OpenDuration: open, HalfOpenMaxRequests: 1, SuccessThreshold: 1,
	}})
	f.Backend.Set(t, "fail=on")
	f.sendFailures(t, threshold)
	f.waitAll(t, 5*time.Second, "open", 1)
	var retryAfters []int
	for _, p := range f.Replicas {
		r := p.Get("/open")
		assertRejection(t, p.ID, r, "open")
		n, _ := strconv.Atoi(r.RetryAfter)
		retryAfters = append(retryAfters, n)
	}

	before := f.Backend.Stats(t).Requests
	started := time.Now()
	late := f.startReplica(t, "late")
	r := late.Get("/first")
	t.Logf("late replica ready in %v; its first request: %v", time.Since(started).Round(time.Millisecond), r)
	assertRejection(t, "the late replica's first request", r, "open")
	if got := f.Backend.Stats(t).Requests - before; got != 0 {
		t.Errorf("backend received %d requests from the late replica, want 0", got)
	}
	n, _ := strconv.Atoi(r.RetryAfter)
	lo, hi := slices.Min(retryAfters), slices.Max(retryAfters)
	if n < lo-2 || n > hi || n < 1 || n > int(open.Seconds()) {
		t.Errorf("late replica's Retry-After: got %d, want about what the others said (%v), within the %v open period", n, retryAfters, open)
	}
	late.WaitLog(t, time.Second, `"applied shared state" closed→open`, func(l logLine) bool {
		return l.Msg() == "applied shared state" && l.Str("to") == "open"
	})
}

// TestRedisKilledUnderLoad kills Redis under steady load: no request may fail because of
// the proxy; breakers keep working locally; when Redis is back the replicas resync and act
// as one fleet again.
func TestRedisKilledUnderLoad(t *testing.T) { testStoreKilledUnderLoad(t, "redis") }

// TestPostgresKilledUnderLoad is TestRedisKilledUnderLoad with PostgreSQL killed (and
// restarted with its data: the replicas resync to what it holds).
func TestPostgresKilledUnderLoad(t *testing.T) { testStoreKilledUnderLoad(t, "postgres") }

func testStoreKilledUnderLoad(t *testing.T, driver string) {
	const (
		threshold = 5
		clients   = 3
		loadFor   = 6 * time.Second
		killAt    = 2 * time.Second
		flush     = 50 * time.Millisecond
	)
	f := startFleet(t, fleetOptions{Driver: driver, Replicas: 3, FlushInterval: flush, Breaker: breakerSettings{
		ConsecutiveFailures: threshold, OpenDuration: 2 * time.Second, HalfOpenMaxRequests: 1, SuccessThreshold: 1,
	}})

	// Steady load, the store killed in the middle of it.
	rr := &roundRobin{proxies: f.Replicas}
	results := make([]tally, clients)
	var wg sync.WaitGroup
	start := time.Now()
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20000 && time.Since(start) < loadFor; i++ {
				r := rr.Next().Get("/load")
				results[c].add(count([]response{r}))
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	time.Sleep(killAt)
	f.killStore()
	killed := time.Now()
	wg.Wait()
	var total tally
	for _, r := range results {
		total.add(r)
	}
	t.Logf("load: %v (%.0f req/s), the store killed %v in", total, float64(total.OK+total.Other+total.RejectedOpen+total.RejectedHalfOpen)/loadFor.Seconds(), killAt)
	if total.OK == 0 || total.Other+total.RejectedOpen+total.RejectedHalfOpen > 0 {
		t.Errorf("under load with the store killed: got %v, want every response a 200 from the backend", total)
	}
	for _, p := range f.Replicas {
		l := p.WaitLog(t, 5*time.Second, `"`+driver+` store degraded"`, msgPrefix(driver+" store degraded"))
		t.Logf("%s degraded %v after the kill", p.ID, l.At.Sub(killed).Round(time.Millisecond))
	}

	// The store down: each replica's breaker still opens, on its own failures: after exactly
	// `threshold` of them in a row. Failures are sent 5 ms apart until the first rejection.
	f.Backend.Set(t, "fail=on")
	for _, p := range f.Replicas {
		n, r := 0, response{}
		for ; n < 100; n++ {
			if r = p.Get("/fail"); r.Rejected() {
				break
			}
			if r.Err != nil || r.Status != http.StatusServiceUnavailable {
				t.Fatalf("%s failing request %d with the store down: got %v, want the backend's own 503", p.ID, n+1, r)
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Logf("%s with the store down: %d failures reached the backend before the first rejection (%v)", p.ID, n, r)
		if !r.Rejected() {
			t.Errorf("%s with the store down: still not rejecting after %d consecutive failures, want rejections after %d", p.ID, n, threshold)
			continue
		}
		assertRejection(t, p.ID+" with the store down", r, "open")
		if n != threshold {
			t.Errorf("%s with the store down: the circuit opened after %d consecutive failures, want %d (consecutive_failures)", p.ID, n, threshold)
		}
	}

	// The store back (Redis empty, PostgreSQL with its closed state), backend healed: the replicas resync and agree.
	f.restartStore()
	restarted := time.Now()
	f.Backend.Reset(t)
	var resync []time.Duration
	for _, p := range f.Replicas {
		l := p.WaitLog(t, 10*time.Second, `"`+driver+` store recovered"`, func(l logLine) bool {
			return strings.HasPrefix(l.Msg(), driver+" store recovered") && l.At.After(killed)
		})
		resync = append(resync, l.At.Sub(restarted))
	}
	report(t, driver+"_restart_to_all_replicas_recovered", []time.Duration{slices.Max(resync)},
		map[string]any{"per_replica_ms": durationsMs(resync), "flush_interval_ms": flush.Milliseconds()})
	if slowest := slices.Max(resync); slowest > 2*time.Second {
		t.Errorf("the last replica resynced %v after the store came back, want within 2s", slowest)
	}
	for _, p := range f.Replicas {
		if r := p.Get("/after-resync"); !r.OK() {
			t.Errorf("%s after resync (the store holds a closed state): got %v, want 200", p.ID, r)
		}
	}

	// One fleet again: threshold failures spread over the replicas open all of them.
	time.Sleep(3 * flush)
	opens := make([]int, len(f.Replicas))
	for i, p := range f.Replicas {
		opens[i] = p.CountTransitionsTo(upstream, "open")
	}
	f.Backend.Set(t, "fail=on")
	before := f.Backend.Stats(t).Requests
	f.sendFailures(t, threshold)
	var openAt []time.Time
	for i, p := range f.Replicas {
		p.WaitTransitions(t, 3*time.Second, upstream, "open", opens[i]+1)
		tr := p.Transitions(upstream)
		openAt = append(openAt, tr[len(tr)-1].At)
		assertRejection(t, p.ID+" after the shared trip", p.Get("/open"), "open")
	}
	spread := slices.MaxFunc(openAt, time.Time.Compare).Sub(slices.MinFunc(openAt, time.Time.Compare))
	t.Logf("after resync, %d failures spread over the fleet opened every replica within %v", threshold, spread.Round(time.Microsecond))
	if got := f.Backend.Stats(t).Requests - before; got != threshold {
		t.Errorf("backend received %d requests before the fleet opened, want %d", got, threshold)
	}
	if spread > time.Second {
		t.Errorf("replicas opened %v apart, want within 1s (goal: a flush interval, %v)", spread, flush)
	}
}

// msgPrefix matches log lines whose message starts with prefix.
func msgPrefix(prefix string) func(logLine) bool {
	return func(l logLine) bool { return strings.HasPrefix(l.Msg(), prefix) }
}

// TestRedisKilledLowTraffic kills Redis in front of a replica whose upstream gets little
// traffic (a request every few flush intervals): the replica must still notice that Redis
// is gone and let its breaker open on its own failures.
func TestRedisKilledLowTraffic(t *testing.T) {
	const (
		threshold = 5
		flush     = 50 * time.Millisecond
		every     = 4 * flush
	)
	f := startFleet(t, fleetOptions{Replicas: 1, FlushInterval: flush, Breaker: breakerSettings{
		ConsecutiveFailures: threshold, OpenDuration: 5 * time.Second, HalfOpenMaxRequests: 1, SuccessThreshold: 1,
	}})
	p := f.Replicas[0]
	if r := p.Get("/warm"); !r.OK() {
		t.Fatalf("healthy request: got %v, want 200", r)
	}
	time.Sleep(10 * flush) // the replica settles: startup resync done, counts flushed, idle
	f.Redis.Kill()
	f.Backend.Set(t, "fail=on")
	n, r := 0, response{}
	for ; n < 3*threshold; n++ {
		time.Sleep(every)
		if r = p.Get("/fail"); r.Rejected() {
			break
		}
		if r.Err != nil || r.Status != http.StatusServiceUnavailable {
			t.Fatalf("failing request %d with Redis down: got %v, want the backend's own 503", n+1, r)
		}
	}
	degraded := len(p.LogsWhere(msgPrefix("redis store degraded"))) > 0
	t.Logf("Redis down, one request every %v: %d failures reached the backend before the first rejection (degraded logged: %t)", every, n, degraded)
	switch {
	case !r.Rejected():
		t.Errorf("Redis down, one request every %v: got no rejection after %d consecutive failures (store degraded: %t), want the circuit open after %d",
			every, n, degraded, threshold)
	case n != threshold:
		t.Errorf("Redis down, one request every %v: the circuit opened after %d consecutive failures, want %d", every, n, threshold)
	}
}

func durationsMs(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = ms(d)
	}
	return out
}

// TestPubSubLossConverges kills every pub/sub connection just before a trip: replicas must
// still converge on the open state within a few flush intervals, without any request.
func TestPubSubLossConverges(t *testing.T) {
	const (
		threshold = 6
		rounds    = 5
		flush     = 100 * time.Millisecond
	)
	f := startFleet(t, fleetOptions{Replicas: 3, FlushInterval: flush, Breaker: breakerSettings{
		ConsecutiveFailures: threshold, OpenDuration: 500 * time.Millisecond, HalfOpenMaxRequests: 1, SuccessThreshold: 1,
	}})
	time.Sleep(3 * flush)
	client := f.Redis.Client()
	ctx := context.Background()
	var converge []time.Duration
	for round := 1; round <= rounds; round++ {
		killed, err := client.ClientKillByFilter(ctx, "TYPE", "pubsub").Result()
		if err != nil || killed < int64(len(f.Replicas)) {
			t.Fatalf("CLIENT KILL TYPE pubsub: got %d killed, %v; want at least %d", killed, err, len(f.Replicas))
		}
		f.Backend.Set(t, "fail=on")
		f.sendFailures(t, threshold)

		decided, ok := openInRedis(client, f.key(), 10*flush)
		if !ok {
			state, _ := client.HGetAll(ctx, f.key()).Result()
			t.Errorf("round %d: %d consecutive failures spread over the fleet right after its pub/sub connections were killed did not open the circuit within %v: counts were lost (Redis holds cf=%s: %v)",
				round, threshold, 10*flush, state["cf"], state)
			// Top the count up so that convergence can still be measured.
			rr := &roundRobin{proxies: f.Replicas}
			for i := 0; i < 20*threshold && !ok; i++ {
				if r := rr.Next().Get("/fail"); r.Rejected() {
					break
				}
				decided, ok = openInRedis(client, f.key(), 0)
			}
			decided = waitOpenInRedis(t, client, f.key(), 5*time.Second)
		}
		var worst time.Duration
		for _, p := range f.Replicas {
			p.WaitTransitions(t, 5*time.Second, upstream, "open", round)
			tr := p.Transitions(upstream)
			d := max(tr[len(tr)-1].At.Sub(decided), 0)
			worst = max(worst, d)
		}
		converge = append(converge, worst)
		t.Logf("round %d: %d pub/sub connections killed; every replica open %v after Redis decided", round, killed, worst.Round(100*time.Microsecond))
		for _, p := range f.Replicas {
			resubscribed := func() int { return len(p.LogsWhere(msgPrefix("pub/sub resubscribed"))) }
			if !waitFor(5*time.Second, 2*time.Millisecond, func() bool { return resubscribed() >= round }) {
				t.Fatalf("round %d: %s logged %d \"pub/sub resubscribed\" lines, want %d", round, p.ID, resubscribed(), round)
			}
		}
		f.recover(t, round)
	}
	fig := report(t, "pubsub_killed_convergence", converge, map[string]any{"flush_interval_ms": flush.Milliseconds(), "rounds": rounds})
	if limit := 3*flush + 100*time.Millisecond; fig.MaxMs > ms(limit) {
		t.Errorf("convergence after pub/sub loss: got max %.1fms, want <= %v (3 flush intervals + margin)", fig.MaxMs, limit)
	}
}

// openInRedis polls the shared state until it is open and returns when Redis decided (its
// "at" field, Redis milliseconds: Redis runs on this machine's clock); ok is false if it
// is not open within timeout.
func openInRedis(client *redis.Client, key string, timeout time.Duration) (decided time.Time, ok bool) {
	ok = waitFor(timeout, time.Millisecond, func() bool {
		v, err := client.HMGet(context.Background(), key, "st", "at").Result()
		if err != nil || len(v) != 2 || v[0] != "1" {
			return false
		}
		n, err := strconv.ParseInt(fmt.Sprint(v[1]), 10, 64)
		if err != nil {
			return false
		}
		decided = time.UnixMilli(n)
		return true
	})
	return decided, ok
}

func waitOpenInRedis(t *testing.T, client *redis.Client, key string, timeout time.Duration) time.Time {
	t.Helper()
	decided, ok := openInRedis(client, key, timeout)
	if !ok {
		state, err := client.HGetAll(context.Background(), key).Result()
		t.Fatalf("%s not open in Redis within %v: %v %v", key, timeout, state, err)
	}
	return decided
}

// TestSkewedClocksAgree runs replicas whose wall clocks are 90 s ahead, 90 s behind and
// right: they must agree on the open period (Retry-After, and when rejecting stops).
func TestSkewedClocksAgree(t *testing.T) {
	const (
		threshold = 6
		open      = 3 * time.Second
		flush     = 100 * time.Millisecond
	)
	offsets := []string{"90s", "-90s", "0s"}
	f := startFleet(t, fleetOptions{Replicas: 3, FlushInterval: flush, Breaker: breakerSettings{
		ConsecutiveFailures: threshold, OpenDuration: open, HalfOpenMaxRequests: 1, SuccessThreshold: 1,
	}, Env: func(i int) []string { return []string{"FUSE_TEST_CLOCK_OFFSET=" + offsets[i]} }})
	time.Sleep(3 * flush)

	f.Backend.Set(t, "fail=on")
	f.sendFailures(t, threshold)
	decided := waitOpenInRedis(t, f.Redis.Client(), f.key(), 5*time.Second)
	f.waitAll(t, 5*time.Second, "open", 1)
	var retryAfter []int
	for i, p := range f.Replicas {
		r := p.Get("/open")
		assertRejection(t, p.ID+" (clock "+offsets[i]+")", r, "open")
		n, _ := strconv.Atoi(r.RetryAfter)
		retryAfter = append(retryAfter, n)
	}
	t.Logf("Retry-After per replica (clock offsets %v): %v", offsets, retryAfter)
	if slices.Max(retryAfter)-slices.Min(retryAfter) > 1 || slices.Max(retryAfter) > int(open.Seconds()) || slices.Min(retryAfter) < 1 {
		t.Errorf("Retry-After: got %v, want values within 1s of each other, in 1..%d", retryAfter, int(open.Seconds()))
	}

	// When does each replica stop rejecting as open? Poll each every 5 ms.
	f.Backend.Set(t, "fail=off")
	stops := make([]response, len(f.Replicas))
	var wg sync.WaitGroup
	for i, p := range f.Replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stops[i] = pollUntil(p, open+5*time.Second, 5*time.Millisecond, func(r response) bool {
				return !(r.Rejected() && r.Circuit == "open")
			})
		}()
	}
	wg.Wait()
	var ends []time.Time
	for i, r := range stops {
		if r.Err != nil || (r.Rejected() && r.Circuit == "open") {
			t.Fatalf("%s (clock %s): got %v %v after the trip, want it to stop rejecting as open after about %v",
				f.Replicas[i].ID, offsets[i], r, time.Since(decided).Round(time.Millisecond), open)
		}
		// The replica had stopped rejecting as open by the time this request reached it
		// (a trial admitted may then take a while to answer).
		ends = append(ends, r.Sent)
		t.Logf("%s (clock %s): stopped rejecting as open %v after Redis decided (%v)", f.Replicas[i].ID, offsets[i], r.Sent.Sub(decided).Round(time.Millisecond), r)
	}
	// A clock skew leaking into the open period would show as ±90 s; the bounds leave room
	// for a busy machine (a stalled replica applies the half-open state late).
	spread := slices.MaxFunc(ends, time.Time.Compare).Sub(slices.MinFunc(ends, time.Time.Compare))
	report(t, "skewed_clocks_open_end_spread", []time.Duration{spread}, map[string]any{"offsets": offsets, "open_ms": open.Milliseconds()})
	if spread > time.Second {
		t.Errorf("replicas stopped rejecting %v apart, want within 1s (goal: a flush interval, %v)", spread, flush)
	}
	for i, e := range ends {
		if d := e.Sub(decided); d < open-250*time.Millisecond || d > open+2*time.Second {
			t.Errorf("%s (clock %s) stopped rejecting %v after the trip, want about %v", f.Replicas[i].ID, offsets[i], d, open)
		}
	}

	// The product's own propagation lag estimate must not be fooled by the skew either.
	for i, p := range f.Replicas {
		for _, l := range p.LogsWhere(func(l logLine) bool { return l.Msg() == "applied shared state" }) {
			if lag := l.Num("lag_ms"); lag > 1000 {
				t.Errorf("%s (clock %s) logged lag_ms %.1f, want < 1000 (skew leaking into the estimate): %v", p.ID, offsets[i], lag, l)
			}
		}
	}
}
