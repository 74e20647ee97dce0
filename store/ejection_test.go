package store

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// The rules per-target ejection needs (issue #14) in the scripts, where the table
// (breaker/conformance) cannot reach: several replicas, the clock on the wire, and the
// settings string.

// The fleet's run of gateway failures works as its run of failures: each batch adds its
// gateway tail, and a batch with any other outcome restarts the run at its tail.
func TestLuaGatewayRunFleetWide(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b scriptBackend) {
		s := baseSettings()
		s.ConsecutiveFailures = 0
		s.ConsecutiveGatewayFailures = 4
		e := env(t, b, "api", s, 1)
		gf := func() string { return e.hgetall()["gf"] }

		wantState(t, e.flush("r1", 0, gatewayFailures(2)), breaker.Closed, 0)
		// r2: a gateway failure, a plain failure (ends the run), a gateway failure.
		wantState(t, e.flush("r2", 0, batch{req: 3, fail: 3, tail: 3, gatewayTail: 1, gatewayEnded: true}), breaker.Closed, 0)
		if got := gf(); got != "1" {
			t.Fatalf("gf = %s after a batch with a plain failure, want its tail 1", got)
		}
		wantState(t, e.flush("r3", 0, gatewayFailures(2)), breaker.Closed, 0) // 3 across r2 and r3
		wantState(t, e.flush("r1", 0, successes(1)), breaker.Closed, 0)
		if got := gf(); got != "0" {
			t.Fatalf("gf = %s after a success, want 0", got)
		}
		wantState(t, e.flush("r1", 0, gatewayFailures(3)), breaker.Closed, 0)
		rep := e.flush("r2", 0, gatewayFailures(1)) // 4 in a row across two replicas
		wantState(t, rep, breaker.Open, 1)
		if rep.state.Reason != breaker.ReasonConsecutiveGateway {
			t.Errorf("reason %q, want %q", rep.state.Reason, breaker.ReasonConsecutiveGateway)
		}
		if h := e.hgetall(); h["gf"] != "0" || h["cf"] != "0" {
			t.Errorf("runs survived the transition: %v", h)
		}
	})
}

// The same through the store: two replicas, each with one gateway failure, eject the
// target for both; a plain failure in between on another replica prevents it.
func TestRedisGatewayRunAcrossReplicas(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := longOpen()
	s.ConsecutiveFailures = 0
	s.ConsecutiveGatewayFailures = 2
	fleet := startFleet(t, srv, 2, replicaConfig{settings: s, noRun: true})
	a, b := fleet[0], fleet[1]

	do(t, a.b, breaker.GatewayFailure)
	a.flushNow(t)
	do(t, b.b, breaker.Failure) // ends the fleet's gateway run
	b.flushNow(t)
	do(t, a.b, breaker.GatewayFailure)
	a.flushNow(t)
	if st := a.b.State(); st != breaker.Closed {
		t.Fatalf("a gateway run broken by a plain failure tripped: %v", st)
	}

	do(t, b.b, breaker.GatewayFailure) // 2 in a row: a's, then b's
	b.flushNow(t)
	a.flushNow(t)
	for _, r := range fleet {
		if sn := r.b.Snapshot(); sn.State != breaker.Open || sn.Trips != 1 {
			t.Errorf("%s: %v with %d trips, want open with 1", r.id, sn.State, sn.Trips)
		}
	}
	if rs := srv.Client().HGet(t.Context(), "fuse:{"+circuitName+"}:state", "rs").Val(); rs != breaker.ReasonConsecutiveGateway {
		t.Errorf("reason %q, want %q", rs, breaker.ReasonConsecutiveGateway)
	}
}

// Trip decay fleet-wide: a close keeps the trip count in Redis, so the next trip, on
// any replica, opens for the next linear period; a replica that adopts the closed state
// learns how long ago it closed, on Redis's clock.
func TestRedisTripDecayAcrossReplicas(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := baseSettings() // open 100 ms
	s.LinearBackoff = true
	s.TripDecay = time.Hour
	fleet := startFleet(t, srv, 2, replicaConfig{settings: s, noRun: true})
	a, b := fleet[0], fleet[1]

	for range 3 {
		do(t, a.b, breaker.Failure)
	}
	a.flushNow(t)
	if sn := a.b.Snapshot(); sn.State != breaker.Open || sn.OpenFor != 100*time.Millisecond {
		t.Fatalf("first trip: %+v", sn)
	}
	// Only a permit the store granted (in advance, or once the open period ended) admits
	// a trial.
	var trial breaker.Ticket
	eventually(t, waitFor, "a trial", func() bool {
		permitted := a.b.Snapshot().Permits > 0
		tk, err := a.b.Allow()
		if err != nil {
			a.flushNow(t)
			return false
		}
		if !tk.Trial() || !permitted {
			t.Fatalf("admitted %+v before the store granted a permit", tk)
		}
		trial = tk
		return true
	})
	a.b.Done(trial, breaker.Success, time.Millisecond) // the trial closes the circuit
	a.flushNow(t)
	resync(t, b) // these replicas do not subscribe: b reads the state
	for _, r := range fleet {
		if sn := r.b.Snapshot(); sn.State != breaker.Closed || sn.Trips != 1 {
			t.Fatalf("%s after the close: %v with %d trips, want closed with 1 kept", r.id, sn.State, sn.Trips)
		}
	}
	// Move the close a minute back on Redis's clock (the decay is an hour): a poll says
	// how long ago it closed.
	e := luaEnvOn(t, srv, circuitName, s, 1)
	if err := e.rdb.HIncrBy(t.Context(), e.key, "at", -time.Minute.Milliseconds()).Err(); err != nil {
		t.Fatal(err)
	}
	if got := e.poll().state.ClosedFor; got < time.Minute || got > time.Minute+5*time.Second {
		t.Errorf("ClosedFor = %v, want about a minute", got)
	}

	for range 3 {
		do(t, b.b, breaker.Failure)
	}
	b.flushNow(t)
	resync(t, a)
	for _, r := range fleet {
		if sn := r.b.Snapshot(); sn.State != breaker.Open || sn.Trips != 2 || sn.OpenFor != 200*time.Millisecond {
			t.Errorf("%s after the second trip: %v, %d trips, open %v; want open, 2 trips, 200ms", r.id,
				sn.State, sn.Trips, sn.OpenFor)
		}
	}
}

func resync(t *testing.T, r *replica) {
	t.Helper()
	if err := r.st.Resync(t.Context()); err != nil {
		t.Fatalf("%s: Resync: %v", r.id, err)
	}
}

// A message of a closed circuit carries how long ago it closed in its time field, so a
// replica adopting a mode change keeps the fleet's close time.
func TestLuaClosedMessageCarriesTheCloseTime(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b scriptBackend) {
		s := baseSettings()
		s.TripDecay = time.Hour
		e := env(t, b, "api", s, 1)
		e.control("open", 0)
		e.control("close", 0) // trip decay keeps the trip
		at, err := strconv.ParseInt(e.hgetall()["at"], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.be.setField(e, "at", at-time.Minute.Milliseconds()); err != nil {
			t.Fatal(err)
		}
		ps := b.subscribe(t, e.channel)
		rep := e.control("mode", breaker.MetricsOnly)
		payload, ok := ps.next(10 * time.Second)
		if !ok {
			t.Fatal("no message")
		}
		_, msg, err := decodeMessage(payload)
		if err != nil {
			t.Fatal(err)
		}
		for what, st := range map[string]breaker.SharedState{"reply": rep.state, "message": msg.state} {
			if st.State != breaker.Closed || st.Trips != 1 || st.ClosedFor < time.Minute || st.ClosedFor > time.Minute+5*time.Second {
				t.Errorf("%s: %+v, want closed, 1 trip, closed for a minute", what, st)
			}
		}
	})
}

// The three settings go at the end of the settings string; a string without them (an
// older replica's) reads as they are off, which is what older scripts did.
func TestSettingsArgEjectionFields(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b scriptBackend) {
		s := baseSettings()
		s.ConsecutiveFailures = 0
		s.ConsecutiveGatewayFailures = 1
		s.LinearBackoff = true
		s.TripDecay = 90 * time.Second
		arg := settingsArg(s, 1)
		if !strings.HasSuffix(arg, ",1,1,90000") || strings.Count(arg, ",") != 16 {
			t.Fatalf("settingsArg = %q, want 17 fields ending in 1,1,90000", arg)
		}
		e := env(t, b, "api", s, 1)
		e.settingsArg = strings.Join(strings.Split(arg, ",")[:14], ",")
		wantState(t, e.flush("r1", 0, gatewayFailures(1)), breaker.Closed, 0)
		e.settingsArg = arg
		rep := e.flush("r1", 0, gatewayFailures(1))
		wantState(t, rep, breaker.Open, 1)
		if rep.state.Reason != breaker.ReasonConsecutiveGateway {
			t.Errorf("reason %q", rep.state.Reason)
		}
	})
}
