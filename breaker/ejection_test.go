package breaker_test

import (
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// The rules per-target ejection needs (issue #14): the run of gateway failures, linear
// backoff and trip decay. breaker/conformance holds their rows for Go and Lua alike;
// these are the finer points.

// gatewaySettings: 2 gateway failures in a row trip, 5 failures of any kind.
func gatewaySettings() breaker.Settings {
	s := baseSettings()
	s.ConsecutiveFailures = 5
	s.ConsecutiveGatewayFailures = 2
	return s
}

func (f *fixture) gateway(n int) {
	f.t.Helper()
	for range n {
		if err := f.request(breaker.GatewayFailure, 0); err != nil {
			f.t.Fatalf("gateway failure rejected: %v", err)
		}
	}
}

func (f *fixture) wantGatewayRun(want int) {
	f.t.Helper()
	if got := f.snap().GatewayRun; got != want {
		f.t.Fatalf("at %v: gateway run %d, want %d", f.clock.Now(), got, want)
	}
}

func TestGatewayRunTrips(t *testing.T) {
	f := newFixture(t, gatewaySettings())
	f.gateway(1)
	f.wantGatewayRun(1)
	f.wantConsecutive(1) // a gateway failure is a failure
	f.wantCounts(breaker.Counts{Requests: 1, Failures: 1})
	f.gateway(1)
	f.wantState(breaker.Open)
	f.wantReasons(breaker.ReasonConsecutiveGateway)
	if tr := f.lastTransition(); tr.Consecutive != 2 || tr.OpenFor != 10*time.Second {
		t.Errorf("transition %+v, want 2 consecutive failures and 10 s open", tr)
	}
}

// Any outcome Done counts other than a gateway failure ends the run; a cancelled request
// (Ignored) is not counted, so it ends neither run.
func TestGatewayRunEnds(t *testing.T) {
	for _, tc := range []struct {
		name        string
		o           breaker.Outcome
		elapsed     time.Duration
		run, consec int
	}{
		{"success", breaker.Success, 0, 0, 0},
		{"slow success", breaker.Success, time.Hour, 0, 0},
		{"plain failure", breaker.Failure, 0, 0, 2},
		{"cancelled", breaker.Ignored, 0, 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, gatewaySettings())
			f.gateway(1)
			f.b.Done(f.allow(), tc.o, tc.elapsed)
			f.wantGatewayRun(tc.run)
			f.wantConsecutive(tc.consec)
			f.gateway(1)
			if tc.run == 0 {
				f.wantState(breaker.Closed)
				f.wantGatewayRun(1)
			} else {
				f.wantState(breaker.Open)
			}
		})
	}
}

// A late failure (a body broken after success headers) counts towards the ordinary run
// only: the target answered, so it was no gateway error, and the success ended the
// gateway run at its headers.
func TestGatewayRunLateFailure(t *testing.T) {
	f := newFixture(t, gatewaySettings())
	f.gateway(1)
	r := f.succeedLater()
	f.wantGatewayRun(0)
	f.b.LateFailure(r)
	f.wantConsecutive(2) // the run the success ended, restored, and the late failure
	f.wantGatewayRun(0)  // not restored
	f.gateway(1)
	f.wantState(breaker.Closed) // a gateway run of 1
	f.wantGatewayRun(1)
	f.wantConsecutive(3)

	// Nor does a late failure end a gateway run built after its success.
	f = newFixture(t, gatewaySettings())
	r = f.succeedLater()
	f.gateway(1)
	f.b.LateFailure(r)
	f.wantGatewayRun(1)
	f.gateway(1)
	f.wantState(breaker.Open)
	f.wantReasons(breaker.ReasonConsecutiveGateway)
}

// A new generation starts the gateway run over, like the other counts.
func TestGatewayRunClearedByNewGeneration(t *testing.T) {
	f := newFixture(t, gatewaySettings())
	f.gateway(1)
	f.b.SetMode(breaker.MetricsOnly)
	f.wantGatewayRun(0)
	f.gateway(1)
	f.wantState(breaker.Closed)
}

// A gateway failure is a failed trial: locally the circuit reopens, shared it is a
// failure in the TrialReport.
func TestGatewayFailureFailsTrial(t *testing.T) {
	f := newFixture(t, gatewaySettings())
	f.gateway(2)
	f.b.Done(f.openToHalfOpen(), breaker.GatewayFailure, 0)
	f.wantState(breaker.Open)
	if tr := f.lastTransition(); tr.Reason != breaker.ReasonTrialFailed || tr.OpenFor != 20*time.Second {
		t.Errorf("transition %+v, want trial_failed for 20 s", tr)
	}

	f = newFixture(t, gatewaySettings())
	f.b.SetShared(true)
	f.b.Apply(breaker.SharedState{State: breaker.HalfOpen, Generation: 6, Trips: 1}, false)
	f.b.GrantPermits(6, 1, time.Minute)
	f.b.Done(f.trial(), breaker.GatewayFailure, 0)
	if r, ok := f.b.TakeTrials(); !ok || r != (breaker.TrialReport{Generation: 6, Failures: 1}) {
		t.Errorf("TakeTrials = %+v, %v; want one failure", r, ok)
	}
}

// Shared: the Delta carries the batch's gateway run like its run of failures: the
// gateway failures after the last other outcome, and whether there was one.
func TestSharedDeltaGatewayRun(t *testing.T) {
	for _, tc := range []struct {
		history string // G gateway failure, F plain failure, S success
		want    breaker.Delta
	}{
		{"GG", breaker.Delta{Counts: breaker.Counts{Requests: 2, Failures: 2}, Tail: 2, GatewayTail: 2}},
		{"GSG", breaker.Delta{Counts: breaker.Counts{Requests: 3, Failures: 2}, Tail: 1, HadSuccess: true,
			GatewayTail: 1, GatewayEnded: true}},
		{"GFG", breaker.Delta{Counts: breaker.Counts{Requests: 3, Failures: 3}, Tail: 3,
			GatewayTail: 1, GatewayEnded: true}},
		{"GGF", breaker.Delta{Counts: breaker.Counts{Requests: 3, Failures: 3}, Tail: 3, GatewayEnded: true}},
		{"S", breaker.Delta{Counts: breaker.Counts{Requests: 1}, HadSuccess: true, GatewayEnded: true}},
	} {
		t.Run(tc.history, func(t *testing.T) {
			f := newFixture(t, gatewaySettings())
			f.b.SetShared(true)
			for _, c := range tc.history {
				f.b.Done(f.allow(), map[rune]breaker.Outcome{'G': breaker.GatewayFailure, 'F': breaker.Failure,
					'S': breaker.Success}[c], 0)
			}
			f.wantState(breaker.Closed) // the store decides
			tc.want.Generation = f.snap().Generation
			f.wantDelta(tc.want)
			f.wantGatewayRun(int(tc.want.GatewayTail)) // counted locally too, for a fall back
		})
	}

	// A late failure leaves the Delta's gateway run alone, whether its success is in the
	// Delta or the store took it already.
	f := newFixture(t, gatewaySettings())
	f.b.SetShared(true)
	r := f.succeedLater()
	f.gateway(1)
	f.b.LateFailure(r)
	f.wantDelta(breaker.Delta{Counts: breaker.Counts{Requests: 2, Failures: 2}, Tail: 2, GatewayTail: 1, GatewayEnded: true})
	r = f.succeedLater()
	f.wantDelta(breaker.Delta{Counts: breaker.Counts{Requests: 1}, HadSuccess: true, GatewayEnded: true})
	f.gateway(1)
	f.b.LateFailure(r)
	f.wantDelta(breaker.Delta{Counts: breaker.Counts{Requests: 2, Failures: 2}, Tail: 2, GatewayTail: 1})
}

func TestLinearOpenPeriod(t *testing.T) {
	s := baseSettings() // 10 s, capped at 60 s
	s.LinearBackoff = true
	s.BackoffMultiplier = 3 // unused
	for _, tc := range []struct {
		trips int
		want  time.Duration
	}{
		{0, 10 * time.Second}, {1, 10 * time.Second}, {2, 20 * time.Second}, {3, 30 * time.Second},
		{6, 60 * time.Second}, {7, 60 * time.Second}, {1 << 40, 60 * time.Second},
	} {
		if got := s.OpenPeriod(tc.trips); got != tc.want {
			t.Errorf("OpenPeriod(%d) = %v, want %v", tc.trips, got, tc.want)
		}
	}
	s.MaxOpenDuration = 0
	if got := s.OpenPeriod(1 << 62); got < 1<<61 || got > 1<<62 {
		t.Errorf("uncapped OpenPeriod(2^62) = %v, want clamped near MaxInt64/2", got)
	}
}

// Linear backoff through the machine: failed trials lengthen the period by one
// OpenDuration each, jitter spreads it as usual.
func TestLinearBackoffTimeline(t *testing.T) {
	s := baseSettings()
	s.LinearBackoff = true
	s.MaxOpenDuration = 25 * time.Second
	s.Jitter = 0.5
	f := newFixture(t, s)
	f.rnd = 0.75 // +25 %
	f.fail(3)
	want := []time.Duration{12500 * time.Millisecond, 25 * time.Second, 31250 * time.Millisecond, 31250 * time.Millisecond}
	for i, w := range want {
		if got := f.snap().OpenFor; got != w {
			t.Fatalf("open period %d: %v, want %v", i+1, got, w)
		}
		f.b.Done(f.openToHalfOpen(), breaker.Failure, 0)
	}
}

// decaySettings: 10 s doubling up to 60 s; trips decay by one per minute closed.
func decaySettings() breaker.Settings {
	s := baseSettings()
	s.TripDecay = time.Minute
	return s
}

// recover waits out the open period and closes the circuit with a successful trial.
func (f *fixture) recover() {
	f.t.Helper()
	f.b.Done(f.openToHalfOpen(), breaker.Success, 0)
	f.wantState(breaker.Closed)
}

func TestTripDecay(t *testing.T) {
	for _, tc := range []struct {
		closed time.Duration
		trips  int // at the next trip, after 2 kept
	}{
		{0, 3}, {time.Minute - time.Nanosecond, 3}, {time.Minute, 2}, {2*time.Minute - 1, 2},
		{2 * time.Minute, 1}, {3 * time.Minute, 1}, {time.Hour, 1},
	} {
		t.Run(tc.closed.String(), func(t *testing.T) {
			f := newFixture(t, decaySettings())
			f.fail(3)
			f.b.Done(f.openToHalfOpen(), breaker.Failure, 0) // 2 trips
			f.recover()
			if sn := f.snap(); sn.Trips != 2 {
				t.Fatalf("after the close: %d trips, want 2 kept", sn.Trips)
			}
			f.clock.Advance(tc.closed)
			f.fail(3)
			if sn := f.snap(); sn.Trips != tc.trips || sn.OpenFor != baseSettings().OpenPeriod(tc.trips) {
				t.Fatalf("closed %v: %d trips, open %v; want %d trips, open %v", tc.closed, sn.Trips, sn.OpenFor,
					tc.trips, baseSettings().OpenPeriod(tc.trips))
			}
		})
	}
}

// The time closed counts from the close, not from the last trip nor from a mode change;
// an operator's Close keeps the count, Reset clears it; without TripDecay a close clears it.
func TestTripDecayCloses(t *testing.T) {
	f := newFixture(t, decaySettings())
	f.fail(3)
	f.clock.Advance(10 * time.Minute) // open (then half-open) time does not decay
	f.recover()
	f.b.SetMode(breaker.MetricsOnly) // a mode change keeps the close time
	f.clock.Advance(59 * time.Second)
	f.fail(3)
	if sn := f.snap(); sn.Trips != 2 {
		t.Fatalf("%d trips, want 2", sn.Trips)
	}

	f.b.Close() // an operator's close keeps them too
	if sn := f.snap(); sn.Trips != 2 {
		t.Fatalf("after Close: %d trips, want 2", sn.Trips)
	}
	f.b.Reset()
	if sn := f.snap(); sn.Trips != 0 {
		t.Fatalf("after Reset: %d trips, want 0", sn.Trips)
	}

	f = newFixture(t, baseSettings()) // TripDecay 0
	f.fail(3)
	f.recover()
	if sn := f.snap(); sn.Trips != 0 {
		t.Fatalf("without TripDecay: %d trips after a close, want 0", sn.Trips)
	}
}

// Shared: a replica adopts the fleet's trip count and close time (ClosedFor, on the
// store's clock), so that when it decides alone (the store degraded) it decays as the
// fleet would; every closed state it adopts carries the close time (a mode change too).
func TestTripDecayShared(t *testing.T) {
	f := newFixture(t, decaySettings())
	f.b.SetShared(true)
	f.b.Apply(breaker.SharedState{State: breaker.Open, Generation: 4, Trips: 3, OpenFor: time.Minute,
		OpenRemaining: time.Minute}, false)
	f.b.Apply(breaker.SharedState{State: breaker.Closed, Generation: 6, Trips: 3, ClosedFor: 90 * time.Second}, false)
	f.clock.Advance(20 * time.Second)
	f.b.Apply(breaker.SharedState{State: breaker.Closed, Mode: breaker.MetricsOnly, Generation: 7, Trips: 3,
		ClosedFor: 110 * time.Second}, false)
	f.b.SetShared(false) // degraded: local decisions
	f.clock.Advance(10 * time.Second)
	f.fail(3) // closed 2 min on the fleet's clock: 3 - 2 + 1
	if sn := f.snap(); sn.Trips != 2 {
		t.Fatalf("degraded trip: %d trips, want 2", sn.Trips)
	}

	// A replica that adopts the closed state long after the close (it started, or
	// resynced) counts from the fleet's close, not from its own adoption.
	f = newFixture(t, decaySettings())
	f.b.Apply(breaker.SharedState{State: breaker.Closed, Generation: 5, Trips: 3, ClosedFor: 2 * time.Minute}, true)
	f.fail(3)
	if sn := f.snap(); sn.Trips != 2 {
		t.Fatalf("after adopting a state closed 2 min ago: %d trips, want 2", sn.Trips)
	}
}
