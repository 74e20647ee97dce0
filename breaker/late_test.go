package breaker_test

import (
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// Timelines for LateFailure: a request whose success Done counted (at its response
// headers) fails after all (its body broke off).

// succeedLater sends one request, reports it a success and returns its receipt.
func (f *fixture) succeedLater() breaker.Receipt {
	f.t.Helper()
	r := f.b.Done(f.allow(), breaker.Success, 0)
	if r == (breaker.Receipt{}) {
		f.t.Fatalf("Done(Success) in %v returned no receipt", f.b.State())
	}
	return r
}

func (f *fixture) wantConsecutive(want int) {
	f.t.Helper()
	if got := f.snap().Consecutive; got != want {
		f.t.Fatalf("at %v: consecutive %d, want %d", f.clock.Now(), got, want)
	}
}

// An upstream whose every body breaks off after the headers opens the circuit: each
// late failure restores the run of failures its own success had ended.
func TestLateFailuresTripConsecutiveFailures(t *testing.T) {
	f := newFixture(t, baseSettings()) // 3 in a row trip
	for i := 1; i <= 3; i++ {
		r := f.succeedLater()
		f.wantConsecutive(0)
		f.wantState(breaker.Closed)
		f.clock.Advance(10 * time.Millisecond)
		f.b.LateFailure(r)
		f.wantConsecutive(i % 3) // the third trips, which starts a new generation
	}
	f.wantState(breaker.Open)
	f.wantReasons(breaker.ReasonConsecutiveFailures)
	if tr := f.lastTransition(); tr.Consecutive != 3 || tr.Counts != (breaker.Counts{Requests: 3, Failures: 3}) {
		t.Fatalf("transition consecutive %d counts %+v, want 3 and {3 3 0}: three requests, each counted once, as a failure",
			tr.Consecutive, tr.Counts)
	}
}

// The run of consecutive failures, by the order in which outcomes became final.
func TestLateFailureConsecutiveRun(t *testing.T) {
	s := baseSettings()
	s.ConsecutiveFailures = 10
	for _, tc := range []struct {
		name string
		run  func(f *fixture)
		want int
	}{
		{"failures, the success, failures, its late failure: one run", func(f *fixture) {
			f.fail(2)
			r := f.succeedLater()
			f.fail(1)
			f.b.LateFailure(r)
		}, 4},
		{"a success counted after it: the run it ended stays ended", func(f *fixture) {
			f.fail(2)
			r := f.succeedLater()
			f.fail(1)
			f.succeed(1) // a real success after it ends the run again
			f.b.LateFailure(r)
		}, 1},
		{"two successes taken back, the later one first", func(f *fixture) {
			f.fail(1)
			r1 := f.succeedLater()
			r2 := f.succeedLater()
			f.b.LateFailure(r2) // restores the 0 that r2 ended, then +1
			f.b.LateFailure(r1) // r1 is no longer the latest: +1 (never more than the truth, 3)
		}, 2},
		{"two successes taken back in order", func(f *fixture) {
			r1 := f.succeedLater()
			r2 := f.succeedLater()
			f.b.LateFailure(r1)
			f.b.LateFailure(r2)
		}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, s)
			tc.run(f)
			f.wantConsecutive(tc.want)
			f.wantState(breaker.Closed)
		})
	}
}

// The request stays counted once in the window: its success turns into a failure while
// its bucket is in the window; later, the failure is a request of its own.
func TestLateFailureWindow(t *testing.T) {
	s := rateSettings() // 50% of at least 10 requests, 10 s window of 1 s buckets
	s.SlowCallDuration = time.Second
	f := newFixture(t, s)
	var rs []breaker.Receipt
	for range 8 {
		rs = append(rs, f.b.Done(f.allow(), breaker.Success, 2*time.Second)) // slow
	}
	f.succeed(2)
	f.wantCounts(breaker.Counts{Requests: 10, Slow: 8})

	f.clock.Advance(3 * time.Second)
	for _, r := range rs[:4] {
		f.b.LateFailure(r)
	}
	f.wantCounts(breaker.Counts{Requests: 10, Failures: 4, Slow: 8}) // slowness was judged at the headers
	f.wantState(breaker.Closed)
	f.b.LateFailure(rs[4]) // 5 of 10
	f.wantState(breaker.Open)
	f.wantReasons(breaker.ReasonFailureRate)
	if tr := f.lastTransition(); tr.Counts != (breaker.Counts{Requests: 10, Failures: 5, Slow: 8}) {
		t.Fatalf("transition counts %+v, want {10 5 8}", tr.Counts)
	}

	// A success whose bucket has left the window: the failure is counted now, alone.
	f = newFixture(t, s)
	old := f.succeedLater()
	f.clock.Advance(5 * time.Second)
	f.succeed(1)
	f.clock.Advance(5 * time.Second) // the first success has left the window
	f.wantCounts(breaker.Counts{Requests: 1})
	f.b.LateFailure(old)
	f.wantCounts(breaker.Counts{Requests: 2, Failures: 1})
}

// Only a success gets a receipt, and a receipt only counts in its own generation.
func TestLateFailureFenced(t *testing.T) {
	t.Run("no receipt", func(t *testing.T) {
		f := newFixture(t, baseSettings())
		f.b.SetMode(breaker.MetricsOnly)
		f.b.Trip()
		wouldReject, _ := f.b.Allow()
		f.clock.Advance(10 * time.Second)
		trial := f.trial()
		f.b.SetMode(breaker.Normal)
		f.b.Close()
		stale := f.allow()
		f.b.Trip()
		f.b.Close()
		for name, r := range map[string]breaker.Receipt{
			"failure":             f.b.Done(f.allow(), breaker.Failure, 0),
			"ignored":             f.b.Done(f.allow(), breaker.Ignored, 0),
			"would-reject":        f.b.Done(wouldReject, breaker.Success, 0),
			"stale trial":         f.b.Done(trial, breaker.Success, 0),
			"stale closed ticket": f.b.Done(stale, breaker.Success, 0),
			"the zero Receipt":    {},
		} {
			if r != (breaker.Receipt{}) {
				t.Errorf("%s: Done returned receipt %+v, want none", name, r)
			}
		}
	})
	for _, tc := range []struct {
		name    string
		between func(f *fixture) // what happens after the success, before its late failure
	}{
		{"the circuit opened", func(f *fixture) { f.fail(3) }},
		{"the circuit opened and recovered", func(f *fixture) {
			f.fail(3)
			f.b.Done(f.openToHalfOpen(), breaker.Success, 0)
		}},
		{"Trip()", func(f *fixture) { f.b.Trip() }},
		{"Reset()", func(f *fixture) { f.b.Reset() }},
		{"SetMode(ForcedClosed)", func(f *fixture) { f.b.SetMode(breaker.ForcedClosed) }},
		{"Apply(newer closed state)", func(f *fixture) {
			f.b.Apply(breaker.SharedState{State: breaker.Closed, Generation: 7}, false)
		}},
		{"Apply(force, same generation)", func(f *fixture) {
			f.b.Apply(breaker.SharedState{State: breaker.Closed, Generation: 0}, true)
			f.b.Apply(breaker.SharedState{State: breaker.Closed, Generation: 0, Mode: breaker.MetricsOnly}, true)
			f.b.Apply(breaker.SharedState{State: breaker.Closed, Generation: 0}, true)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, baseSettings()) // 3 failures in a row trip
			r := f.succeedLater()
			tc.between(f)
			f.wantStaleIgnored(func() { f.b.LateFailure(r) }) // would be the 3rd failure in a row
		})
	}
}

// Forced closed counts a late failure but never trips on it.
func TestLateFailureForcedClosed(t *testing.T) {
	f := newFixture(t, baseSettings())
	f.b.SetMode(breaker.ForcedClosed)
	for range 5 {
		f.b.LateFailure(f.succeedLater())
	}
	f.wantState(breaker.Closed)
	f.wantReasons("")
	f.wantCounts(breaker.Counts{Requests: 5, Failures: 5})
	f.wantConsecutive(5)
}

func TestLateFailureOfTrial(t *testing.T) {
	t.Run("reopens with the next backoff", func(t *testing.T) {
		f := newFixture(t, halfOpenSettings()) // 2 trials at once, 3 successes close
		f.fail(1)
		f.clock.Advance(10 * time.Second)
		t1, t2 := f.trial(), f.trial()
		r1 := f.b.Done(t1, breaker.Success, 0)
		f.b.Done(t2, breaker.Success, 0)
		f.wantState(breaker.HalfOpen)
		f.wantTrials(0) // the slot was freed at the headers

		f.clock.Advance(time.Minute) // a long stream
		f.b.LateFailure(r1)
		f.wantState(breaker.Open)
		tr := f.lastTransition()
		if tr.Reason != breaker.ReasonTrialFailed || tr.From != breaker.HalfOpen || tr.OpenFor != 20*time.Second {
			t.Fatalf("transition %+v, want half-open → open, trial_failed, 20s", tr)
		}
	})
	t.Run("dropped once its success closed the circuit", func(t *testing.T) {
		s := halfOpenSettings()
		s.SuccessThreshold = 1
		f := newFixture(t, s)
		f.fail(1)
		f.clock.Advance(10 * time.Second)
		r := f.b.Done(f.trial(), breaker.Success, 0)
		f.wantState(breaker.Closed)
		f.obs.reset()
		f.b.LateFailure(r)
		f.wantState(breaker.Closed)
		f.wantReasons("")
		f.wantCounts(breaker.Counts{})
		f.wantConsecutive(0)
	})
}

// Shared: the store learns a late failure through the Delta (closed) or the TrialReport
// (half-open); the breaker decides nothing itself.
func TestSharedLateFailureDelta(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(f *fixture)
		want breaker.Delta // without Generation
	}{
		{"the only success of the batch", func(f *fixture) {
			r := f.succeedLater()
			f.fail(2)
			f.b.LateFailure(r)
		}, breaker.Delta{Counts: breaker.Counts{Requests: 3, Failures: 3}, Tail: 3, GatewayEnded: true}},
		{"the latest success, another before it", func(f *fixture) {
			f.fail(1)
			f.succeed(1)
			f.fail(2)
			r := f.succeedLater()
			f.fail(1)
			f.b.LateFailure(r) // f s f f [f] f f: 4 failures after the last success
		}, breaker.Delta{Counts: breaker.Counts{Requests: 6, Failures: 5}, Tail: 4, HadSuccess: true, GatewayEnded: true}},
		{"an earlier success, another after it", func(f *fixture) {
			f.fail(1)
			r := f.succeedLater()
			f.fail(1)
			f.succeed(1)
			f.fail(1)
			f.b.LateFailure(r) // f [f] f s f f: 2 failures after the last success
		}, breaker.Delta{Counts: breaker.Counts{Requests: 5, Failures: 4}, Tail: 2, HadSuccess: true, GatewayEnded: true}},
		{"a success the store already took: a failed request of its own", func(f *fixture) {
			r := f.succeedLater()
			f.fail(1)
			f.wantDelta(breaker.Delta{Generation: f.snap().Generation, Counts: breaker.Counts{Requests: 2, Failures: 1},
				Tail: 1, HadSuccess: true, GatewayEnded: true})
			f.fail(1)
			f.b.LateFailure(r)
		}, breaker.Delta{Counts: breaker.Counts{Requests: 2, Failures: 2}, Tail: 2, GatewayEnded: true}},
		{"a success counted before the store took over", func(f *fixture) {
			f.b.SetShared(false)
			r := f.succeedLater()
			f.b.SetShared(true)
			f.b.LateFailure(r)
		}, breaker.Delta{Counts: breaker.Counts{Requests: 1, Failures: 1}, Tail: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := sharedSettings() // would trip locally on anything
			s.SlowCallDuration = 0
			f := newFixture(t, s)
			f.b.SetShared(true)
			tc.run(f)
			tc.want.Generation = f.snap().Generation
			f.wantDelta(tc.want)
			f.wantState(breaker.Closed)
			f.wantReasons("")
			f.wantWakes(0) // closed-state outcomes wait for the flush
		})
	}

	// The local window, kept for a fall back to local decisions, converts as well.
	f := newFixture(t, sharedSettings())
	f.b.SetShared(true)
	r := f.succeedLater()
	f.b.LateFailure(r)
	f.wantCounts(breaker.Counts{Requests: 1, Failures: 1})
	f.wantConsecutive(1)
}

func TestSharedLateFailureOfTrial(t *testing.T) {
	f := newFixture(t, sharedSettings())
	f.b.SetShared(true)
	f.b.Apply(breaker.SharedState{State: breaker.HalfOpen, Generation: 6, Trips: 1}, false)
	f.b.GrantPermits(6, 3, time.Minute)
	wakes := f.wakes.Load()

	// The success is still waiting for the store: the late failure takes it back.
	r := f.b.Done(f.trial(), breaker.Success, 0)
	f.wantWakes(wakes + 1)
	f.b.LateFailure(r)
	f.wantWakes(wakes + 2) // report at once
	f.wantState(breaker.HalfOpen)
	if tr, ok := f.b.TakeTrials(); !ok || tr != (breaker.TrialReport{Generation: 6, Failures: 1}) {
		t.Fatalf("TakeTrials = %+v, %v; want one failure, no success", tr, ok)
	}

	// The store has the success already: the failure follows it.
	r = f.b.Done(f.trial(), breaker.Success, 0)
	if tr, _ := f.b.TakeTrials(); tr != (breaker.TrialReport{Generation: 6, Successes: 1}) {
		t.Fatalf("TakeTrials = %+v", tr)
	}
	f.b.LateFailure(r)
	f.wantWakes(wakes + 4)
	if tr, ok := f.b.TakeTrials(); !ok || tr != (breaker.TrialReport{Generation: 6, Failures: 1}) {
		t.Fatalf("TakeTrials = %+v, %v; want the late failure", tr, ok)
	}
	f.wantState(breaker.HalfOpen) // the store decides
	f.wantTrials(0)

	// The store closed the circuit meanwhile (the success reached the threshold): the
	// late failure belongs to a half-open period that is over, and is dropped.
	r = f.b.Done(f.trial(), breaker.Success, 0)
	_, _ = f.b.TakeTrials()
	f.b.Apply(breaker.SharedState{State: breaker.Closed, Generation: 7}, false)
	f.b.LateFailure(r)
	if tr, ok := f.b.TakeTrials(); ok {
		t.Fatalf("TakeTrials = %+v after the circuit closed, want nothing", tr)
	}
	if d, ok := f.b.TakeDelta(); ok {
		t.Fatalf("TakeDelta = %+v after the circuit closed, want nothing", d)
	}
}
