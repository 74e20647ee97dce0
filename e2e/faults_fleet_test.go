package e2e

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

	"github.com/fuseproxy/fuseproxy/internal/testutil/faultproxy"
	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// TestFaultReplicaKilled kills replicas with SIGKILL, which gives them no chance to say
// goodbye. First mid-load: the other replicas keep answering every request they get.
// Then while the killed replica holds the fleet's only half-open trial lease (its trial
// in flight): the lease blocks the other replicas' trials only until it expires (the
// lease is the upstream's max(timeout, response_header_timeout) + 1s = 2s), after which
// a surviving replica takes a lease, its trial succeeds and the circuit closes.
func TestFaultReplicaKilled(t *testing.T) {
	t.Parallel()
	const (
		threshold = 4
		open      = 600 * time.Millisecond
		lease     = 2 * time.Second
	)
	f := startFaultFleet(t, 3, false, func(_ int, c *faultConfig) {
		c.FlushInterval = 50 * time.Millisecond
		u := &c.Upstreams[0]
		u.Timeout, u.ResponseHeaderTimeout = time.Second, time.Second
		u.ConsecutiveFailures, u.OpenDuration = threshold, open
	})
	r1, r2, r3 := f.Replicas[0], f.Replicas[1], f.Replicas[2]

	// Mid-load: r3 dies; r1 and r2 carry on.
	rr := &roundRobin{proxies: f.Replicas}
	load := faultLoad(t, 3, 5*time.Millisecond, "/load", rr.Next)
	time.Sleep(500 * time.Millisecond)
	r3.Kill()
	time.Sleep(time.Second)
	per, total := load.Stop()
	t.Logf("load with r3 killed %v in: r1 %v; r2 %v; r3 %v", 500*time.Millisecond, per["r1"], per["r2"], per["r3"])
	survivorsSent, survivorsFailed := 0, 0
	for _, id := range []string{"r1", "r2"} {
		s := per[id]
		survivorsSent += s.Sent
		survivorsFailed += s.Sent - s.OK
		if s.OK != s.Sent || s.Sent < 50 {
			t.Errorf("%s while r3 was killed: %v, want every request answered 200", id, s)
		}
	}
	if per["r3"].ProxyFailed == 0 {
		t.Errorf("r3 after SIGKILL: %v, want its clients refused", per["r3"])
	}

	// Trip the fleet through r1 and r2; then r2 takes the trial lease and dies with it.
	// The load's last successes reach Redis first: a success flushed after the failures
	// would restart the fleet's run of consecutive failures.
	time.Sleep(3 * f.Cfgs[0].FlushInterval)
	f.Backend.Set(t, "fail=on")
	for i := range threshold {
		p := f.Replicas[i%2]
		if r := p.Get("/fail"); !failedByBackend(r) {
			t.Fatalf("failure %d via %s: got %v, want the backend's 503", i+1, p.ID, r)
		}
	}
	r1.WaitTransitions(t, 5*time.Second, upstream, "open", 1)
	r2.WaitTransitions(t, 5*time.Second, upstream, "open", 1)
	f.Backend.Reset(t)
	f.Backend.Set(t, "latency=10s") // a trial hangs until its 1s timeout, or its replica dies
	time.Sleep(open)
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 500 && !stop.Load(); i++ {
			r2.Get("/trial")
			time.Sleep(10 * time.Millisecond)
		}
	}()
	if !waitFor(5*time.Second, 2*time.Millisecond, func() bool { return f.Backend.Stats(t).InFlight > 0 }) {
		stop.Store(true)
		wg.Wait()
		t.Fatalf("r2 sent no trial to the backend within 5s")
	}
	ctx := context.Background()
	leaseKey := f.Cfgs[0].Prefix + ":{" + upstream + "}:leases"
	leases, err := f.Redis.Client().ZRangeWithScores(ctx, leaseKey, 0, -1).Result()
	if err != nil || len(leases) != 1 || !strings.HasPrefix(fmt.Sprint(leases[0].Member), "r2:") {
		stop.Store(true)
		wg.Wait()
		t.Fatalf("trial leases in Redis: %v %v, want one, r2's", leases, err)
	}
	expires := time.UnixMilli(int64(leases[0].Score))
	r2.Kill()
	killed2 := time.Now()
	stop.Store(true)
	wg.Wait()
	f.Backend.Set(t, "latency=0")

	// r1 is refused trials until the dead replica's lease expires, then closes.
	var halfOpen int
	var ok response
	for i := 0; i < 1000 && time.Since(killed2) < lease+5*time.Second; i++ {
		r := r1.Get("/after-kill")
		if r.OK() {
			ok = r
			break
		}
		if r.Rejected() && r.Circuit == "half_open" {
			halfOpen++
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !ok.OK() {
		t.Fatalf("r1 still not closed %v after r2 died holding the trial lease (expiring %v after the kill)",
			time.Since(killed2).Round(time.Millisecond), expires.Sub(killed2).Round(time.Millisecond))
	}
	recovered := ok.At.Sub(killed2)
	t.Logf("r2 killed holding the lease (expiring %v later); r1 answered 200 %v after the kill, after %d half_open rejections",
		expires.Sub(killed2).Round(time.Millisecond), recovered.Round(time.Millisecond), halfOpen)
	if ok.Sent.Before(expires.Add(-50 * time.Millisecond)) {
		t.Errorf("r1 closed %v before the dead replica's lease expired: trials were not bounded fleet-wide", expires.Sub(ok.Sent))
	}
	if ok.At.After(expires.Add(2 * time.Second)) {
		t.Errorf("r1 closed %v after the dead replica's lease expired, want within 2s", ok.At.Sub(expires))
	}
	if halfOpen == 0 {
		t.Errorf("r1 was never refused a trial while r2's lease was held")
	}
	faultFigures{Sent: total.Sent + threshold, ProxyFailed: survivorsFailed, Recover: recovered, Extra: map[string]any{
		"survivor_requests": survivorsSent, "killed_replica_refused": per["r3"].ProxyFailed,
		"lease_ms":                    lease.Milliseconds(),
		"lease_expired_after_kill_ms": ms(expires.Sub(killed2)), "half_open_rejections_meanwhile": halfOpen,
	}}.record(t, "replica_sigkill")
}

// faultSubscribe subscribes to a store's events channel on srv; the returned func
// returns every message so far.
func faultSubscribe(t *testing.T, srv *redistest.Server, channel string) func() []stateMessage {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ps := srv.Client().Subscribe(ctx, channel)
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatalf("subscribe %s: %v", channel, err)
	}
	var mu sync.Mutex
	var msgs []stateMessage
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m := range ps.Channel() {
			sm := parseStateMessage(m.Payload)
			sm.At = time.Now()
			mu.Lock()
			if len(msgs) < 10000 {
				msgs = append(msgs, sm)
			}
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		ps.Close()
		<-done
	})
	return func() []stateMessage {
		mu.Lock()
		defer mu.Unlock()
		return append([]stateMessage(nil), msgs...)
	}
}

func faultOpens(msgs []stateMessage) []stateMessage {
	var out []stateMessage
	for _, m := range msgs {
		if m.Upstream == upstream && m.State == "open" {
			out = append(out, m)
		}
	}
	return out
}

// faultRedisWindow sums the shared window's buckets and lists the replicas that reported
// failures (the quorum's "r:<replica>" fields).
func faultRedisWindow(t *testing.T, c *redis.Client, key string) (requests, failures int, reporters []string) {
	t.Helper()
	h, err := c.HGetAll(context.Background(), key).Result()
	if err != nil {
		t.Fatalf("HGETALL %s: %v", key, err)
	}
	for k, v := range h {
		switch {
		case strings.HasPrefix(k, "b:"):
			f := strings.Fields(v)
			if len(f) == 3 {
				a, _ := strconv.Atoi(f[0])
				b, _ := strconv.Atoi(f[1])
				requests, failures = requests+a, failures+b
			}
		case strings.HasPrefix(k, "r:"):
			reporters = append(reporters, k[2:])
		}
	}
	return requests, failures, reporters
}

// TestFaultQuorumNoPoisoning: one replica with a broken network path must not open the
// circuit for the whole fleet. Three replicas share Redis with min_replicas_reporting 2
// and a failure_rate rule (20% of at least 10 calls in 5s); each replica reaches the
// backend and Redis through its own faultproxies. The assertions, phase by phase:
//
//  1. r1's path to the backend resets every connection (r1's clients get the proxy's
//     502s: expected, that path is broken). r1's failures reach Redis (its "r:r1"
//     report, and a shared window above 20% failures of >= 10 calls, which would trip
//     without a quorum) but one reporter is below the quorum: no "open" is published,
//     no replica opens, r2 and r3 answer every request 200.
//  2. r1's Redis connection is cut as well: r1 degrades and its local breaker opens on
//     its own failures (failure_rate), protecting its clients from the broken path; the
//     fleet's state stays closed (no "open" published) and r2 and r3 stay closed,
//     answering every request 200.
//  3. r1's Redis connection returns: r1 resyncs to the shared state (closed), which its
//     local trip never reached; still no "open" for the fleet.
//  4. Control: r2's path breaks too. Two reporters meet the quorum, so the fleet opens
//     for everyone, r3 included although its own path is healthy: that is what the
//     quorum allows, and only that.
func TestFaultQuorumNoPoisoning(t *testing.T) {
	t.Parallel()
	ups := make([]*faultproxy.Proxy, 3)
	f := startFaultFleet(t, 3, true, func(i int, c *faultConfig) {
		c.FlushInterval = 50 * time.Millisecond
		ups[i] = faultproxy.Start(t, strings.TrimPrefix(c.Upstreams[0].Target, "http://"))
		c.Upstreams[0] = faultUpstream{Name: upstream, Target: "http://" + ups[i].Addr(), Timeout: 2 * time.Second,
			FailureRate: 20, MinimumRequests: 10, Window: 5 * time.Second, OpenDuration: 5 * time.Second,
			MinReplicasReporting: 2}
	})
	r1, r2, r3 := f.Replicas[0], f.Replicas[1], f.Replicas[2]
	events := faultSubscribe(t, f.Redis, f.Cfgs[0].Prefix+":events")
	rc := f.Redis.Client()
	breakPath := func(fp *faultproxy.Proxy) { fp.Set(faultproxy.Faults{Drop: true}); fp.Reset() }
	rr := &roundRobin{proxies: f.Replicas}
	healthy := func(phase string, per map[string]faultStats) {
		t.Helper()
		for _, p := range []*Proxy{r2, r3} {
			if s := per[p.ID]; s.OK != s.Sent || s.Sent == 0 {
				t.Errorf("phase %s: %s (healthy path): %v, want every request answered 200", phase, p.ID, s)
			}
			if n := p.CountTransitionsTo(upstream, "open"); n != 0 {
				t.Errorf("phase %s: %s opened %d times, want never (poisoned by r1)", phase, p.ID, n)
			}
		}
		if o := faultOpens(events()); len(o) > 0 {
			t.Errorf("phase %s: the fleet's circuit opened: %v", phase, o[0].Raw)
		}
	}

	// 1. r1's upstream path broken.
	breakPath(ups[0])
	load := faultLoad(t, 3, 10*time.Millisecond, "/load", rr.Next)
	time.Sleep(2 * time.Second)
	per1, total1 := load.Stop()
	req, fails, reporters := faultRedisWindow(t, rc, f.key())
	t.Logf("phase 1: r1 %v | r2 %v | r3 %v; Redis window %d calls, %d failures, reporters %v",
		per1["r1"], per1["r2"], per1["r3"], req, fails, reporters)
	healthy("1", per1)
	if s := per1["r1"]; s.ProxyFailed != s.Sent {
		t.Errorf("phase 1: r1 (broken path): %v, want every request the proxy's 502", s)
	}
	if req < 10 || fails*100 < 20*req || len(reporters) != 1 || reporters[0] != "r1" {
		t.Errorf("phase 1: Redis window %d calls %d failures, reporters %v; want >= 10 calls, >= 20%% failures, reported by r1 only (a trip held back by the quorum alone)",
			req, fails, reporters)
	}
	if n := r1.CountTransitionsTo(upstream, "open"); n != 0 {
		t.Errorf("phase 1: r1 opened %d times while sharing state, want 0 (decisions are the fleet's)", n)
	}

	// 2. r1's Redis connection cut too: it protects itself, alone.
	cut := time.Now()
	faultCutRedis(f.RedisFP[0])
	load = faultLoad(t, 3, 10*time.Millisecond, "/load", rr.Next) // an idle replica need not notice
	faultWaitLog(t, r1, 5*time.Second, `"redis store degraded"`, cut, msgPrefix("redis store degraded"))
	ok := waitFor(5*time.Second, 5*time.Millisecond, func() bool { return r1.CountTransitionsTo(upstream, "open") > 0 })
	time.Sleep(500 * time.Millisecond)
	per2, total2 := load.Stop()
	t.Logf("phase 2: r1 %v | r2 %v | r3 %v", per2["r1"], per2["r2"], per2["r3"])
	if !ok {
		t.Errorf("phase 2: r1, degraded, did not open on its own failures")
	} else if tr := transitions(r1, upstream); tr[len(tr)-1].Reason != "failure_rate" {
		t.Errorf("phase 2: r1's local trip %v, want reason failure_rate", tr[len(tr)-1])
	}
	if per2["r1"].Rejected == 0 {
		t.Errorf("phase 2: r1 %v, want rejections once its local breaker opened", per2["r1"])
	}
	healthy("2", per2)

	// 3. r1 back on Redis: it resyncs to the shared (closed) state.
	back := time.Now()
	faultHealRedis(f.RedisFP[0])
	faultWaitLog(t, r1, 5*time.Second, `"redis store recovered"`, back, msgPrefix("redis store recovered"))
	ups[0].Set(faultproxy.Faults{})
	var r1back response
	if r1back = pollUntil(r1, 3*time.Second, 20*time.Millisecond, response.OK); !r1back.OK() {
		t.Errorf("phase 3: r1 after rejoining with its path healed: %v, want 200 (the shared state is closed)", r1back)
	}
	healthy("3", map[string]faultStats{"r2": {Sent: 1, OK: 1}, "r3": {Sent: 1, OK: 1}})

	// 4. Control: a second replica's path breaks; the quorum is met and all open.
	breakPath(ups[0])
	breakPath(ups[1])
	load = faultLoad(t, 3, 10*time.Millisecond, "/load", rr.Next)
	opened := waitFor(5*time.Second, 5*time.Millisecond, func() bool { return len(faultOpens(events())) > 0 })
	time.Sleep(300 * time.Millisecond)
	_, total4 := load.Stop()
	if !opened {
		_, _, rep := faultRedisWindow(t, rc, f.key())
		t.Fatalf("phase 4: two replicas failing (reporters %v) did not open the fleet's circuit", rep)
	}
	if m := faultOpens(events())[0]; m.Reason != "failure_rate" {
		t.Errorf("phase 4: open message %q, want reason failure_rate", m.Raw)
	}
	r3.WaitTransitions(t, 3*time.Second, upstream, "open", 1)
	faultFigures{Sent: total1.Sent + total2.Sent + total4.Sent + 1,
		ProxyFailed: per1["r2"].Sent - per1["r2"].OK + per1["r3"].Sent - per1["r3"].OK + per2["r2"].Sent - per2["r2"].OK + per2["r3"].Sent - per2["r3"].OK,
		Recover:     r1back.At.Sub(back),
		Extra: map[string]any{"r1_502_expected_phase1": per1["r1"].ProxyFailed, "redis_window_calls": req,
			"redis_window_failures": fails, "reporters": reporters, "r1_local_rejections_phase2": per2["r1"].Rejected,
			"fleet_opened_with_two_reporters": opened}}.record(t, "quorum_no_poisoning")
}
