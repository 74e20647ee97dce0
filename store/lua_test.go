package store

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// These tests call the Lua scripts directly, one call per step, and check the state each
// reply carries and what the scripts left in Redis. Time in the scripts is Redis's clock,
// so open periods and leases are short and the tests poll.

// luaEnv is one circuit on a script backend: its keys on a redis-server (srv, rdb and the
// keys are set only then), or its rows on a PostgreSQL (see script_env_test.go).
type luaEnv struct {
	t                    testing.TB
	be                   scriptBackend
	srv                  *redistest.Server
	rdb                  *redis.Client
	name, key, leaseKey  string
	channel, settingsArg string
	onset                string        // the onset channel
	hash                 string        // settings hash sent with flushes
	grace                time.Duration // how long the rate rules wait after a failure onset
	// keyed: the circuit is one key's (member) of upstream, run by the keyed scripts
	// (keyed.lua; registry is its Redis key); name is then "upstream#member".
	upstream, member, registry string
}

func newLuaEnv(t testing.TB, s breaker.Settings, minReplicas int) *luaEnv {
	t.Helper()
	srv := redistest.Start(t)
	return luaEnvOn(t, srv, "api", s, minReplicas)
}

func luaEnvOn(t testing.TB, srv *redistest.Server, name string, s breaker.Settings, minReplicas int) *luaEnv {
	// The store passes the breaker's normalized settings; so do the tests.
	s = breaker.New(name, s, breaker.Options{}).Settings()
	key, leaseKey := keys("fuse", name)
	return &luaEnv{t: t, be: redisScripts{srv: srv}, srv: srv, rdb: srv.Client(), name: name, key: key,
		leaseKey: leaseKey, channel: "fuse:events", onset: "fuse:onset", settingsArg: settingsArg(s, minReplicas),
		hash: "h1"}
}

// keyedMax and keyedTTL are the registry bounds a keyed luaEnv's calls carry: more keys
// than any test makes, and a day.
const (
	keyedMax = 1000
	keyedTTL = 24 * time.Hour
)

// keyedScripts are the keyed versions of the circuit scripts.
var keyedScripts = map[*redis.Script]*redis.Script{flushScript: keyFlushScript, acquireScript: keyAcquireScript,
	trialScript: keyTrialScript, controlScript: keyControlScript}

func (e *luaEnv) run(script *redis.Script, args ...any) reply {
	e.t.Helper()
	keys, name := []string{e.key, e.leaseKey}, e.name
	if e.member != "" {
		script = keyedScripts[script]
		keys, name = append(keys, e.registry), e.upstream
		args = append([]any{keyedMax, keyedTTL.Milliseconds(), e.member}, args...)
	}
	res, err := e.be.call(script, keys, name, args)
	if err != nil {
		e.t.Fatalf("script on %s: %v", e.be.name(), err)
	}
	rep, err := decodeReply(res)
	if err != nil {
		e.t.Fatalf("decode reply %v: %v", res, err)
	}
	return rep
}

// batch is one replica's counts since its last flush.
type batch struct {
	req, fail, slow, tail int
	hadSuccess            bool
	gatewayTail           int  // gateway failures after the last other outcome
	gatewayEnded          bool // the batch had an outcome other than a gateway failure
	pause                 int  // ms: the longest pause an upstream asked for (Retry-After)
}

func failures(n int) batch        { return batch{req: n, fail: n, tail: n, gatewayEnded: true} }
func gatewayFailures(n int) batch { return batch{req: n, fail: n, tail: n, gatewayTail: n} }
func successes(n int) batch       { return batch{req: n, hadSuccess: true, gatewayEnded: true} }

func (e *luaEnv) flush(replica string, gen uint64, b batch) reply {
	e.t.Helper()
	return e.run(flushScript, replica, gen, b.req, b.fail, b.slow, b.tail, boolArg(b.hadSuccess),
		e.settingsArg, e.hash, 0.5, e.channel, e.name, e.onset, e.grace.Milliseconds(),
		b.gatewayTail, boolArg(b.gatewayEnded), b.pause)
}

func (e *luaEnv) poll() reply { e.t.Helper(); return e.flush("poller", 0, batch{}) }

func (e *luaEnv) acquire(replica string, lease time.Duration) reply {
	e.t.Helper()
	return e.run(acquireScript, replica, 1, lease.Milliseconds(), e.settingsArg, replica+":1",
		e.channel, e.name)
}

// leaseID is the id acquire gave the permit it granted in rep.
func leaseID(replica string, rep reply) string {
	return replica + ":1:" + strconv.FormatUint(rep.state.Generation, 10) + ":1"
}

func (e *luaEnv) trial(replica string, gen uint64, succ, fails int, leases ...string) reply {
	e.t.Helper()
	return e.trialPause(replica, gen, succ, fails, 0, leases...)
}

// trialPause reports trials, one of which asked for a pause of pause ms.
func (e *luaEnv) trialPause(replica string, gen uint64, succ, fails, pause int, leases ...string) reply {
	e.t.Helper()
	args := []any{replica, gen, succ, fails, e.settingsArg, 0.5, e.channel, e.name, pause}
	for _, l := range leases {
		args = append(args, l)
	}
	return e.run(trialScript, args...)
}

func (e *luaEnv) control(op string, m breaker.Mode) reply {
	e.t.Helper()
	return e.run(controlScript, op, int(m), e.settingsArg, 0.5, e.channel, e.name, "operator")
}

func (e *luaEnv) hgetall() map[string]string {
	e.t.Helper()
	h, err := e.be.fields(e)
	if err != nil {
		e.t.Fatal(err)
	}
	return h
}

// windowTotals sums the "b:<k>" bucket fields of the hash.
func (e *luaEnv) windowTotals() (req, fail, slow int) {
	e.t.Helper()
	for f, v := range e.hgetall() {
		if strings.HasPrefix(f, "b:") {
			var a, b, c int
			if _, err := fmt.Sscanf(v, "%d %d %d", &a, &b, &c); err != nil {
				e.t.Fatalf("bucket %s = %q: %v", f, v, err)
			}
			req, fail, slow = req+a, fail+b, slow+c
		}
	}
	return
}

// trip opens the circuit with enough consecutive failures (ConsecutiveFailures must be set).
func (e *luaEnv) trip(gen uint64, n int) reply {
	e.t.Helper()
	rep := e.flush("r1", gen, failures(n))
	if rep.state.State != breaker.Open {
		e.t.Fatalf("after %d failures: state %v, want open", n, rep.state.State)
	}
	return rep
}

// halfOpen polls acquire for replica until the open period has ended on Redis's clock and
// the circuit is half-open; it returns that reply (which may or may not grant).
func (e *luaEnv) halfOpen(replica string, lease time.Duration) reply {
	e.t.Helper()
	var rep reply
	eventually(e.t, waitFor, "half-open", func() bool {
		rep = e.acquire(replica, lease)
		return rep.state.State == breaker.HalfOpen
	})
	return rep
}

func wantState(t testing.TB, rep reply, st breaker.State, gen uint64) {
	t.Helper()
	if rep.state.State != st || rep.state.Generation != gen {
		t.Fatalf("state %v gen %d, want %v gen %d (reply %+v)", rep.state.State, rep.state.Generation, st, gen, rep)
	}
}

func TestLuaFlushAddsCountsToWindow(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b scriptBackend) {
		s := baseSettings()
		s.ConsecutiveFailures = 0
		s.FailureRate, s.SlowCallRate, s.MinimumRequests = 90, 90, 1000 // never reached
		e := env(t, b, "api", s, 1)

		rep := e.flush("r1", 0, batch{req: 5, fail: 2, slow: 1, tail: 1, hadSuccess: true})
		wantState(t, rep, breaker.Closed, 0)
		rep = e.flush("r2", 0, batch{req: 3, fail: 3, slow: 2, tail: 3})
		wantState(t, rep, breaker.Closed, 0)
		if req, fail, slow := e.windowTotals(); req != 8 || fail != 5 || slow != 3 {
			t.Errorf("window = %d/%d/%d, want 8/5/3", req, fail, slow)
		}
		h := e.hgetall()
		if h["cf"] != "4" {
			t.Errorf("cf = %q, want 4 (tail 1 after a success, then 3 more)", h["cf"])
		}
		if h["r:r1"] == "" || h["r:r2"] == "" {
			t.Errorf("failure reports missing: %v", h)
		}
		if rep.epoch == 0 || h["ep"] != strconv.FormatInt(rep.epoch, 10) {
			t.Errorf("epoch %d, hash ep %q", rep.epoch, h["ep"])
		}
		// An empty flush is a poll: it changes nothing.
		if rep := e.poll(); rep.state.Generation != 0 || rep.epoch != e.poll().epoch {
			t.Errorf("poll changed the state: %+v", rep)
		}
		if req, _, _ := e.windowTotals(); req != 8 {
			t.Errorf("after polls the window holds %d requests, want 8", req)
		}
	})
}

func TestLuaConsecutiveFailuresFleetWide(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b scriptBackend) {
		s := baseSettings()
		s.ConsecutiveFailures = 5
		e := env(t, b, "api", s, 1)

		wantState(t, e.flush("r1", 0, failures(3)), breaker.Closed, 0)
		// r2's batch had a success, then 2 failures: the fleet's run restarts at 2.
		wantState(t, e.flush("r2", 0, batch{req: 4, fail: 3, tail: 2, hadSuccess: true}), breaker.Closed, 0)
		if cf := e.hgetall()["cf"]; cf != "2" {
			t.Fatalf("cf = %s, want 2", cf)
		}
		wantState(t, e.flush("r1", 0, failures(2)), breaker.Closed, 0)
		rep := e.flush("r3", 0, failures(1)) // 5 in a row across three replicas
		wantState(t, rep, breaker.Open, 1)
		if rep.state.Trips != 1 || rep.state.OpenFor != 100*time.Millisecond ||
			rep.state.OpenRemaining <= 0 || rep.state.OpenRemaining > 100*time.Millisecond {
			t.Errorf("open state = %+v, want trips 1, open for 100ms", rep.state)
		}
		h := e.hgetall()
		if h["rs"] != breaker.ReasonConsecutiveFailures || h["cf"] != "0" {
			t.Errorf("hash after trip: %v", h)
		}
		if req, _, _ := e.windowTotals(); req != 0 {
			t.Errorf("the window survived the transition: %d requests", req)
		}
	})
}

func TestLuaFailureRateNeedsMinimumRequests(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b scriptBackend) {
		s := baseSettings()
		s.ConsecutiveFailures = 0
		s.FailureRate, s.MinimumRequests = 50, 10
		e := env(t, b, "api", s, 1)

		wantState(t, e.flush("r1", 0, failures(4)), breaker.Closed, 0)  // 100 % of 4: too few
		wantState(t, e.flush("r2", 0, successes(5)), breaker.Closed, 0) // 4/9
		wantState(t, e.flush("r1", 0, successes(1)), breaker.Closed, 0) // 4/10 = 40 %
		rep := e.flush("r2", 0, failures(2))                            // 6/12 = 50 %
		wantState(t, rep, breaker.Open, 1)
		if rs := e.hgetall()["rs"]; rs != breaker.ReasonFailureRate {
			t.Errorf("reason %q, want %q", rs, breaker.ReasonFailureRate)
		}
	})
}

func TestLuaSlowCallRate(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b scriptBackend) {
		s := baseSettings()
		s.ConsecutiveFailures = 0
		s.SlowCallRate, s.MinimumRequests = 50, 4
		e := env(t, b, "api", s, 1)

		wantState(t, e.flush("r1", 0, batch{req: 3, slow: 3, hadSuccess: true}), breaker.Closed, 0) // too few
		wantState(t, e.flush("r2", 0, batch{req: 4, slow: 0, hadSuccess: true}), breaker.Closed, 0) // 3/7
		rep := e.flush("r1", 0, batch{req: 1, slow: 1, hadSuccess: true})                           // 4/8
		wantState(t, rep, breaker.Open, 1)
		if rs := e.hgetall()["rs"]; rs != breaker.ReasonSlowCallRate {
			t.Errorf("reason %q, want %q", rs, breaker.ReasonSlowCallRate)
		}
	})
}

func TestLuaQuorum(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b scriptBackend) {
		t.Run("consecutive", func(t *testing.T) {
			t.Parallel()
			s := baseSettings()
			s.ConsecutiveFailures = 3
			e := env(t, b, "consecutive", s, 2)
			for range 3 {
				wantState(t, e.flush("lonely", 0, failures(5)), breaker.Closed, 0)
			}
			// Successes from another replica are not failure reports.
			wantState(t, e.flush("healthy", 0, batch{req: 2, fail: 1, tail: 1, hadSuccess: true}), breaker.Closed, 0)
			if cf := e.hgetall()["cf"]; cf != "1" {
				t.Fatalf("cf = %s, want 1", cf)
			}
			wantState(t, e.flush("lonely", 0, failures(2)), breaker.Open, 1) // 3 in a row, 2 reporters
		})
		t.Run("failure rate", func(t *testing.T) {
			t.Parallel()
			s := baseSettings()
			s.ConsecutiveFailures = 0
			s.FailureRate, s.MinimumRequests = 50, 4
			e := env(t, b, "rate", s, 2)
			wantState(t, e.flush("a", 0, failures(10)), breaker.Closed, 0)
			wantState(t, e.flush("b", 0, successes(10)), breaker.Closed, 0)
			wantState(t, e.flush("b", 0, failures(1)), breaker.Open, 1)
		})
	})
}

func TestLuaStaleGenerationIgnored(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b scriptBackend) {
		e := env(t, b, "api", baseSettings(), 1)
		e.trip(0, 3)                                                    // gen 1, open
		wantState(t, e.flush("r2", 0, failures(3)), breaker.Open, 1)    // counts of gen 0 while open
		wantState(t, e.control("close", 0), breaker.Closed, 2)          // gen 2
		wantState(t, e.flush("r2", 1, failures(10)), breaker.Closed, 2) // from the open generation
		wantState(t, e.flush("r2", 0, failures(10)), breaker.Closed, 2) // from before the trip
		if req, _, _ := e.windowTotals(); req != 0 {
			t.Fatalf("stale counts reached the window: %d requests", req)
		}
		wantState(t, e.flush("r2", 2, failures(2)), breaker.Closed, 2)
		if req, _, _ := e.windowTotals(); req != 2 {
			t.Fatalf("current counts missing: %d requests, want 2", req)
		}
	})
}

func TestLuaOpenToHalfOpenOnlyInAcquireAfterOpenUntil(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b scriptBackend) {
		e := env(t, b, "api", baseSettings(), 1) // open 100 ms
		tripped := e.trip(0, 3)
		openUntil := tripped.now + tripped.state.OpenFor.Milliseconds()

		rep := e.acquire("r1", time.Second)
		if rep.now < openUntil {
			wantState(t, rep, breaker.Open, 1)
			if rep.granted != 0 {
				t.Fatalf("granted %d permits while open", rep.granted)
			}
		}
		// Polls (flushes) never leave the open state, even after open-until.
		eventually(t, waitFor, "open-until on Redis's clock", func() bool {
			rep := e.poll()
			if rep.state.State != breaker.Open {
				t.Fatalf("a flush moved the circuit to %v", rep.state.State)
			}
			return rep.now >= openUntil && rep.state.OpenRemaining == 0
		})
		rep = e.acquire("r1", time.Second)
		wantState(t, rep, breaker.HalfOpen, 2)
		if rep.granted != 1 {
			t.Fatalf("granted %d, want 1", rep.granted)
		}
		if rs := e.hgetall()["rs"]; rs != breaker.ReasonOpenTimeout {
			t.Errorf("reason %q, want %q", rs, breaker.ReasonOpenTimeout)
		}
	})
}

func TestLuaAcquireLimitAndLeaseExpiry(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b scriptBackend) {
		s := baseSettings()
		s.HalfOpenMaxRequests = 2
		e := env(t, b, "api", s, 1)
		e.trip(0, 3)
		const lease = 100 * time.Millisecond

		first := e.halfOpen("r1", lease)
		if first.granted != 1 {
			t.Fatalf("r1 granted %d, want 1", first.granted)
		}
		gen := first.state.Generation
		granted := first.granted
		for _, r := range []string{"r2", "r3", "r4", "r1"} {
			rep := e.acquire(r, lease)
			wantState(t, rep, breaker.HalfOpen, gen)
			granted += rep.granted
		}
		if granted != 2 {
			t.Fatalf("%d permits granted across replicas, want half_open_max_requests = 2", granted)
		}
		if n := len(e.leases()); n != 2 {
			t.Fatalf("%d leases held, want 2", n)
		}
		if e.rdb != nil {
			if ttl := e.rdb.PTTL(context.Background(), e.leaseKey).Val(); ttl <= 0 {
				t.Fatalf("lease key PTTL %v, want > 0", ttl)
			}
		}
		// Nobody reports; the leases expire and their permits go to others.
		var rep reply
		eventually(t, waitFor, "expired leases to be reclaimed", func() bool {
			rep = e.acquire("r5", lease)
			return rep.granted == 1
		})
		if rep.now < first.now+lease.Milliseconds() {
			t.Fatalf("a lease was reclaimed %d ms after it was granted, before its %v expiry",
				rep.now-first.now, lease)
		}
		wantState(t, rep, breaker.HalfOpen, gen)
	})
}

func TestLuaTrialFailureReopensWithBackoff(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b scriptBackend) {
		s := baseSettings()
		s.OpenDuration, s.BackoffMultiplier, s.MaxOpenDuration = 50*time.Millisecond, 2, 150*time.Millisecond
		s.SuccessThreshold = 2
		e := env(t, b, "api", s, 1)
		e.trip(0, 3)

		ho := e.halfOpen("r1", time.Second)
		id := leaseID("r1", ho)
		rep := e.trial("r1", ho.state.Generation, 0, 1, id)
		wantState(t, rep, breaker.Open, ho.state.Generation+1)
		if rep.state.Trips != 2 || rep.state.OpenFor != 100*time.Millisecond {
			t.Fatalf("after a failed trial: trips %d open for %v, want 2 and 100ms", rep.state.Trips, rep.state.OpenFor)
		}
		if ls := e.leases(); len(ls) != 0 {
			t.Fatalf("leases %v survived the transition", ls)
		}
		// A late report from the old half-open period changes nothing.
		wantState(t, e.trial("r2", ho.state.Generation, 5, 0), breaker.Open, ho.state.Generation+1)

		ho = e.halfOpen("r1", time.Second)
		rep = e.trial("r1", ho.state.Generation, 0, 1, leaseID("r1", ho))
		if rep.state.Trips != 3 || rep.state.OpenFor != 150*time.Millisecond {
			t.Fatalf("third trip: trips %d open for %v, want 3 and 150ms (capped)", rep.state.Trips, rep.state.OpenFor)
		}

		ho = e.halfOpen("r1", time.Second)
		gen := ho.state.Generation
		rep = e.trial("r1", gen, 1, 0, leaseID("r1", ho))
		wantState(t, rep, breaker.HalfOpen, gen) // 1 of 2 successes
		if sc := e.hgetall()["sc"]; sc != "1" {
			t.Fatalf("sc = %s, want 1", sc)
		}
		again := e.acquire("r2", time.Second) // the released lease is free again
		if again.granted != 1 {
			t.Fatalf("after a released lease: granted %d, want 1", again.granted)
		}
		rep = e.trial("r2", gen, 1, 0, leaseID("r2", again))
		wantState(t, rep, breaker.Closed, gen+1)
		if rep.state.Trips != 0 || rep.state.OpenFor != 0 {
			t.Fatalf("closed with trips %d open for %v, want the backoff reset", rep.state.Trips, rep.state.OpenFor)
		}
		if rs := e.hgetall()["rs"]; rs != breaker.ReasonTrialsSucceeded {
			t.Errorf("reason %q", rs)
		}
		// The next trip starts the backoff over.
		rep = e.trip(gen+1, 3)
		if rep.state.Trips != 1 || rep.state.OpenFor != 50*time.Millisecond {
			t.Fatalf("after recovery: trips %d open for %v, want 1 and 50ms", rep.state.Trips, rep.state.OpenFor)
		}
	})
}

func TestLuaControl(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b scriptBackend) {
		s := baseSettings()
		s.OpenDuration = time.Minute
		e := env(t, b, "api", s, 1)

		rep := e.control("open", 0)
		wantState(t, rep, breaker.Open, 1)
		if rep.state.Trips != 1 || rep.state.OpenFor != time.Minute {
			t.Fatalf("open: %+v", rep.state)
		}
		wantState(t, e.control("open", 0), breaker.Open, 2) // again: backoff grows
		rep = e.control("close", 0)
		wantState(t, rep, breaker.Closed, 3)
		if rep.state.Trips != 0 {
			t.Fatalf("close kept trips %d", rep.state.Trips)
		}
		rep = e.control("mode", breaker.ForcedOpen)
		wantState(t, rep, breaker.Closed, 4)
		if rep.state.Mode != breaker.ForcedOpen {
			t.Fatalf("mode %v", rep.state.Mode)
		}
		// A forced-open circuit is not tripped by counts, and never half-opens.
		wantState(t, e.flush("r1", 4, failures(10)), breaker.Closed, 4)
		e.control("open", 0)
		rep = e.acquire("r1", time.Second)
		if rep.granted != 0 || rep.state.State != breaker.Open {
			t.Fatalf("forced open circuit: %+v granted %d", rep.state, rep.granted)
		}
		rep = e.control("mode", breaker.MetricsOnly)
		if rep.state.Mode != breaker.MetricsOnly || rep.state.State != breaker.Open {
			t.Fatalf("mode metrics_only: %+v", rep.state)
		}
		rep = e.control("reset", 0)
		if rep.state.State != breaker.Closed || rep.state.Mode != breaker.Normal || rep.state.Trips != 0 {
			t.Fatalf("reset: %+v", rep.state)
		}
		if h := e.hgetall(); h["rs"] != breaker.ReasonReset || h["md"] != "0" {
			t.Fatalf("hash after reset: %v", h)
		}
	})
}

func TestLuaPublishesTransitions(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b scriptBackend) {
		s := baseSettings()
		s.OpenDuration = 50 * time.Millisecond
		e := env(t, b, "api", s, 1)
		ps := b.subscribe(t, e.channel)
		next := func(wantReason string, want breaker.State) (string, reply) {
			t.Helper()
			payload, ok := ps.next(10 * time.Second)
			if !ok {
				t.Fatalf("waiting for %s: no message", wantReason)
			}
			m := struct{ Payload string }{payload}
			f := strings.Split(m.Payload, " ")
			if len(f) != 10 {
				t.Fatalf("message %q: %d space-separated fields, want 10", m.Payload, len(f))
			}
			name, rep, err := decodeMessage(m.Payload)
			if err != nil {
				t.Fatalf("message %q: %v", m.Payload, err)
			}
			if name != e.name || rep.state.Reason != wantReason || rep.state.State != want {
				t.Fatalf("message %q: got %s %v %q, want %s %v %q", m.Payload, name, rep.state.State,
					rep.state.Reason, e.name, want, wantReason)
			}
			return m.Payload, rep
		}

		e.flush("r1", 0, failures(2)) // no transition, no message
		tripped := e.flush("r1", 0, failures(1))
		_, m := next(breaker.ReasonConsecutiveFailures, breaker.Open)
		if m.state != tripped.state || m.epoch != tripped.epoch || m.now != tripped.now {
			t.Fatalf("message %+v does not match the reply %+v", m, tripped)
		}
		ho := e.halfOpen("r1", time.Second)
		_, m = next(breaker.ReasonOpenTimeout, breaker.HalfOpen)
		if m.state.Generation != ho.state.Generation {
			t.Fatalf("half-open message gen %d, reply gen %d", m.state.Generation, ho.state.Generation)
		}
		e.trial("r1", ho.state.Generation, 1, 0, leaseID("r1", ho))
		next(breaker.ReasonTrialsSucceeded, breaker.Closed)
		e.control("open", 0)
		payload, m := next(breaker.ReasonMode, breaker.Open)
		want := fmt.Sprintf("%s 1 0 %d %d %d 1 %d %d mode", e.name, m.state.Generation,
			m.state.OpenRemaining.Milliseconds(), m.state.OpenFor.Milliseconds(), m.now, m.epoch)
		if payload != want {
			t.Fatalf("payload %q, want %q", payload, want)
		}
		e.control("mode", breaker.ForcedClosed)
		if _, m = next(breaker.ReasonMode, breaker.Open); m.state.Mode != breaker.ForcedClosed {
			t.Fatalf("mode message: %+v", m.state)
		}
		e.control("reset", 0)
		next(breaker.ReasonReset, breaker.Closed)
	})
}

func TestLuaCorruptStateStartsFresh(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := context.Background()
	cases := []struct {
		name    string
		corrupt func(e *luaEnv)
		want    string // in the corrupt reason
		gen     uint64 // of the fresh state
	}{
		{"string key", func(e *luaEnv) { e.rdb.Set(ctx, e.key, "hello", 0) }, "not a hash", 0},
		{"st banana", func(e *luaEnv) { e.rdb.HSet(ctx, e.key, "st", "banana") }, `field st is "banana"`, 8},
		{"negative gen", func(e *luaEnv) { e.rdb.HSet(ctx, e.key, "gen", "-3") }, "field gen", 1},
		{"fractional trips", func(e *luaEnv) { e.rdb.HSet(ctx, e.key, "tr", "1.5") }, "field tr", 8},
		{"mode out of range", func(e *luaEnv) { e.rdb.HSet(ctx, e.key, "md", "9") }, "out of range", 8},
		{"state out of range", func(e *luaEnv) { e.rdb.HSet(ctx, e.key, "st", "3") }, "out of range", 8},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := luaEnvOn(t, srv, tc.name, baseSettings(), 1)
			for range 7 { // gen 7, open
				e.control("open", 0)
			}
			before := e.poll()
			wantState(t, before, breaker.Open, 7)
			// The fresh state's epoch is Redis's clock in ms: let it move on from the
			// old one, as it has in any real corruption.
			eventually(t, waitFor, "the next millisecond", func() bool { return e.poll().now > before.epoch })
			for i, step := range []func() reply{
				e.poll,
				func() reply { return e.acquire("r1", time.Second) },
				func() reply { return e.trial("r1", 7, 1, 0) },
				func() reply { return e.control("mode", breaker.Normal) },
			} {
				tc.corrupt(e)
				rep := step()
				if !strings.Contains(rep.corrupt, tc.want) {
					t.Fatalf("corrupt = %q, want it to mention %q", rep.corrupt, tc.want)
				}
				if i == 0 && rep.state.Generation != tc.gen {
					t.Fatalf("fresh state gen %d, want %d", rep.state.Generation, tc.gen)
				}
				if rep.state.State != breaker.Closed || rep.state.Trips != 0 {
					t.Fatalf("state after corruption: %+v, want fresh closed", rep.state)
				}
				if rep.epoch == before.epoch && rep.state.Generation <= before.state.Generation {
					t.Fatalf("fresh state gen %d epoch %d: replicas at gen %d epoch %d would not adopt it",
						rep.state.Generation, rep.epoch, before.state.Generation, before.epoch)
				}
			}
			// Once replaced, the state is readable again.
			if rep := e.poll(); rep.corrupt != "" {
				t.Fatalf("still corrupt: %q", rep.corrupt)
			}
			if typ := e.rdb.Type(ctx, e.key).Val(); typ != "hash" {
				t.Fatalf("key type %s after repair", typ)
			}
		})
	}
	t.Run("malformed bucket is dropped", func(t *testing.T) {
		s := baseSettings()
		s.ConsecutiveFailures = 0
		s.FailureRate, s.MinimumRequests = 50, 1
		e := luaEnvOn(t, srv, "bucket", s, 1)
		e.flush("r1", 0, successes(1))
		e.rdb.HSet(ctx, e.key, "b:x", "1 1 1", "b:5", "lots")
		rep := e.flush("r1", 0, successes(1))
		if rep.corrupt != "" || rep.state.State != breaker.Closed {
			t.Fatalf("reply %+v", rep)
		}
		h := e.hgetall()
		if _, ok := h["b:x"]; ok {
			t.Error("b:x kept")
		}
		if _, ok := h["b:5"]; ok {
			t.Error("b:5 kept")
		}
	})
}

func TestLuaSettingsHashReported(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b scriptBackend) {
		e := env(t, b, "api", baseSettings(), 1)
		e.hash = "aaa"
		if rep := e.flush("r1", 0, successes(1)); rep.cfg != "" {
			t.Fatalf("first flush saw hash %q", rep.cfg)
		}
		e.hash = "bbb"
		rep := e.flush("r2", 0, successes(1))
		if rep.cfg != "aaa" || rep.cfgr != "r1" {
			t.Fatalf("cfg %q by %q, want aaa by r1", rep.cfg, rep.cfgr)
		}
		e.hash = "aaa"
		if rep := e.flush("r1", 0, successes(1)); rep.cfg != "bbb" || rep.cfgr != "r2" {
			t.Fatalf("cfg %q by %q, want bbb by r2", rep.cfg, rep.cfgr)
		}
	})
}

// TestLuaKeysExpireAndStayBounded flushes into hundreds of buckets, from many replicas,
// for many circuits, and checks that neither the number of keys nor the size of a
// circuit's hash grows with them, and that every key has an expiry.
func TestLuaKeysExpireAndStayBounded(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := context.Background()
	rdb := srv.Client()
	for _, tc := range []struct {
		name   string
		mutate func(*breaker.Settings)
		mode   breaker.Mode
	}{
		{"consecutive only", func(s *breaker.Settings) {}, breaker.Normal},
		{"rates", func(s *breaker.Settings) { s.FailureRate, s.MinimumRequests = 99, 1 }, breaker.Normal},
		{"forced closed", func(s *breaker.Settings) { s.FailureRate = 99 }, breaker.ForcedClosed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := baseSettings()
			s.ConsecutiveFailures = 1000
			s.Window, s.Buckets = 10*time.Millisecond, 10 // 1 ms buckets
			tc.mutate(&s)
			const circuits = 20
			envs := make([]*luaEnv, circuits)
			for i := range envs {
				envs[i] = luaEnvOn(t, srv, fmt.Sprintf("%s-%d", tc.name, i), s, 1)
				if tc.mode != breaker.Normal {
					envs[i].control("mode", tc.mode)
				}
			}
			gen := envs[0].poll().state.Generation
			first := envs[0].poll().now
			var rep reply
			for i := 0; ; i++ {
				e := envs[i%circuits]
				// One failure and one success from a new replica each time: failure
				// reports from 1000s of replica ids, and a run that never trips.
				rep = e.flush(fmt.Sprintf("replica-%d", i), gen, batch{req: 2, fail: 1, hadSuccess: true})
				if rep.state.State != breaker.Closed {
					t.Fatalf("tripped: %+v", rep)
				}
				if i >= 2000 && rep.now-first >= 200 { // ≥ 200 buckets' worth of time
					break
				}
			}
			for _, e := range envs {
				if n := rdb.HLen(ctx, e.key).Val(); n > 30 {
					h := e.hgetall()
					t.Fatalf("%s holds %d fields after many flushes (10 buckets, ~12 core fields): e.g. %v",
						e.key, n, sample(h, 8))
				}
				if ttl := rdb.PTTL(ctx, e.key).Val(); ttl <= 0 {
					t.Fatalf("%s PTTL %v, want an expiry", e.key, ttl)
				}
			}
		})
	}
	var n int
	iter := rdb.Scan(ctx, 0, "*", 1000).Iterator()
	for iter.Next(ctx) {
		n++
		if ttl := rdb.PTTL(ctx, iter.Val()).Val(); ttl <= 0 {
			t.Errorf("key %s has PTTL %v", iter.Val(), ttl)
		}
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	if size := rdb.DBSize(ctx).Val(); n != 60 || size != 60 {
		t.Fatalf("SCAN found %d keys, DBSIZE %d; want 60 (one state hash per circuit)", n, size)
	}
}

func sample(h map[string]string, n int) map[string]string {
	out := map[string]string{}
	for k, v := range h {
		if len(out) == n {
			break
		}
		out[k] = v
	}
	return out
}

// rateEnv is a circuit with only the failure-rate rule (50 % of at least 4 requests in a
// minute) and a grace of 300 ms after a failure onset.
func rateEnv(t *testing.T, b scriptBackend) *luaEnv {
	s := baseSettings()
	s.ConsecutiveFailures = 0
	s.FailureRate, s.MinimumRequests, s.Window = 50, 4, time.Minute
	e := env(t, b, "api", s, 1)
	e.grace = 300 * time.Millisecond
	return e
}

// TestLuaQuietAndOnset: a window with nothing bad in it is quiet; the first failure or slow
// call to reach it is the onset, published once on the onset channel; the rate rules then
// wait the grace (the flush replies say so, so the sender polls), while the consecutive
// rule does not wait.
func TestLuaQuietAndOnset(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b scriptBackend) {
		e := rateEnv(t, b)
		onsets := b.subscribe(t, e.onset)

		if rep := e.poll(); !rep.quiet || rep.deciding {
			t.Fatalf("a fresh circuit: quiet %t deciding %t, want quiet", rep.quiet, rep.deciding)
		}
		if rep := e.flush("r1", 0, successes(100)); !rep.quiet {
			t.Fatal("successes only: not quiet")
		}
		rep := e.flush("r2", 0, failures(150)) // 150 of 250: the rate rule would trip
		wantState(t, rep, breaker.Closed, 0)
		if rep.quiet || !rep.deciding {
			t.Fatalf("after the onset: quiet %t deciding %t, want deciding", rep.quiet, rep.deciding)
		}
		if m, ok := onsets.next(5 * time.Second); !ok {
			t.Fatal("no onset message")
		} else if m != e.name {
			t.Fatalf("onset payload %q, want %q", m, e.name)
		}
		onset := e.hgetall()["fo"]
		// More failures within the grace: no second onset, no decision yet.
		wantState(t, e.flush("r3", 0, failures(10)), breaker.Closed, 0)
		if fo := e.hgetall()["fo"]; fo != onset {
			t.Errorf("fo moved from %s to %s: not quiet any more, so no new onset", onset, fo)
		}
		var last reply
		eventually(t, waitFor, "the rate rule to decide after the grace", func() bool {
			last = e.poll() // a poll decides too
			return last.state.State == breaker.Open
		})
		if last.state.Reason != breaker.ReasonFailureRate {
			t.Errorf("reason %q, want %q", last.state.Reason, breaker.ReasonFailureRate)
		}
		if elapsed := time.Duration(last.now-mustInt(t, onset)) * time.Millisecond; elapsed < e.grace {
			t.Errorf("decided %v after the onset, before the grace of %v ended", elapsed, e.grace)
		}
		if m, ok := onsets.next(20 * time.Millisecond); ok {
			t.Errorf("a second onset message %q", m)
		}

		// The consecutive rule does not wait for the grace.
		s2 := baseSettings() // 3 consecutive failures
		e2 := env(t, b, "other", s2, 1)
		e2.grace = time.Minute
		wantState(t, e2.flush("r1", 0, failures(3)), breaker.Open, 1)
	})
}

// TestLuaOnsetGraceLetsHeldSuccessesIn: the successes a quiet replica held, sent after
// the onset but within the grace, count before the rate rule decides.
func TestLuaOnsetGraceLetsHeldSuccessesIn(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b scriptBackend) {
		e := rateEnv(t, b)
		wantState(t, e.flush("sick", 0, failures(30)), breaker.Closed, 0) // 100 %, but within the grace
		wantState(t, e.flush("healthy", 0, successes(1000)), breaker.Closed, 0)
		var rep reply
		eventually(t, waitFor, "the grace to end", func() bool { rep = e.poll(); return !rep.deciding })
		wantState(t, rep, breaker.Closed, 0) // 30 of 1030
		if rep.deciding || rep.quiet {
			t.Errorf("after the grace with failures in the window: quiet %t deciding %t, want neither", rep.quiet, rep.deciding)
		}
	})
}

func mustInt(t testing.TB, s string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestLuaFlushRefreshKeepsTheKeyAlive: a flush with the refresh flag writes an unchanged
// state when its key (row) would expire within 14 hours, and only then (a resync of a
// fleet that just wrote its keys stays a read).
func TestLuaFlushRefreshKeepsTheKeyAlive(t *testing.T) {
	eachBackend(t, func(t *testing.T, b scriptBackend) {
		e := env(t, b, "api", baseSettings(), 1)
		e.poll() // creates the key, for a day
		refresh := func() {
			e.run(flushScript, "r1", 0, 0, 0, 0, 0, 0, e.settingsArg, e.hash, 0.5, e.channel, e.name, e.onset,
				e.grace.Milliseconds(), 0, 0, 0, 0, 1)
		}
		ttl, setTTL := storedTTL(t, b, e)
		setTTL(15 * time.Hour)
		refresh()
		if d := ttl(); d > 15*time.Hour {
			t.Errorf("a key with 15 h to live was written (now %v): a refresh need not", d)
		}
		e.poll()
		setTTL(13 * time.Hour)
		e.poll() // a poll without the flag writes nothing
		if d := ttl(); d > 13*time.Hour {
			t.Fatalf("a poll renewed the key (%v)", d)
		}
		refresh()
		if d := ttl(); d < 23*time.Hour {
			t.Errorf("a key with 13 h to live lives %v after a refresh, want a day", d)
		}
	})
}

// storedTTL reads and sets how long e's stored state has to live: the Redis key's PTTL,
// the PostgreSQL row's expires_at (on the database's clock).
func storedTTL(t *testing.T, b scriptBackend, e *luaEnv) (ttl func() time.Duration, set func(time.Duration)) {
	t.Helper()
	switch b := b.(type) {
	case redisScripts:
		rdb := b.srv.Client()
		return func() time.Duration { return rdb.PTTL(t.Context(), e.key).Val() },
			func(d time.Duration) {
				if err := rdb.PExpire(t.Context(), e.key, d).Err(); err != nil {
					t.Fatal(err)
				}
			}
	case *pgScripts:
		where := " WHERE upstream = $1 AND key = $2"
		return func() time.Duration {
				var ms int64
				if err := b.pool.QueryRow(t.Context(), "SELECT expires_at - "+b.prefix+"now_ms() FROM "+b.prefix+"circuits"+where,
					e.upstream, e.member).Scan(&ms); err != nil {
					t.Fatal(err)
				}
				return time.Duration(ms) * time.Millisecond
			}, func(d time.Duration) {
				if _, err := b.pool.Exec(t.Context(), "UPDATE "+b.prefix+"circuits SET expires_at = "+b.prefix+"now_ms() + $3"+where,
					e.upstream, e.member, d.Milliseconds()); err != nil {
					t.Fatal(err)
				}
			}
	}
	t.Fatalf("no stored TTL for backend %s", b.name())
	return nil, nil
}
