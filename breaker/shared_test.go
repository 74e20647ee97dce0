package breaker_test

import (
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// sharedSettings would trip locally on almost anything, so any trip is a local decision.
func sharedSettings() breaker.Settings {
	s := baseSettings()
	s.ConsecutiveFailures = 2
	s.FailureRate = 50
	s.MinimumRequests = 1
	s.SlowCallDuration = time.Second
	s.HalfOpenMaxRequests = 5
	return s
}

func (f *fixture) wantDelta(want breaker.Delta) {
	f.t.Helper()
	if want != (breaker.Delta{}) && !f.b.HasNews() {
		f.t.Fatalf("HasNews = false with a delta waiting (%+v): a store would skip it", want)
	}
	got, ok := f.b.TakeDelta()
	if got != want || ok != (want.Requests > 0) {
		f.t.Fatalf("TakeDelta = %+v, %v; want %+v", got, ok, want)
	}
}

func (f *fixture) wantWakes(n int64) {
	f.t.Helper()
	if got := f.wakes.Load(); got != n {
		f.t.Fatalf("Wake called %d times, want %d", got, n)
	}
}

func TestSharedDeltaDoesNotTripLocally(t *testing.T) {
	f := newFixture(t, sharedSettings())
	f.b.SetShared(true)
	if !f.b.Shared() || !f.snap().Shared {
		t.Fatal("not shared")
	}
	gen := f.snap().Generation

	f.succeed(1)
	f.fail(1)
	f.b.Done(f.allow(), breaker.Failure, 2*time.Second) // slow
	f.succeed(1)
	f.fail(2) // tail of 2
	f.b.Done(f.allow(), breaker.Ignored, 0)
	f.wantState(breaker.Closed)
	f.wantReasons("")
	f.wantDelta(breaker.Delta{Generation: gen, Counts: breaker.Counts{Requests: 6, Failures: 4, Slow: 1},
		Tail: 2, HadSuccess: true, GatewayEnded: true})
	f.wantDelta(breaker.Delta{})                                    // taken
	f.wantCounts(breaker.Counts{Requests: 6, Failures: 4, Slow: 1}) // the local window still counts

	f.fail(3)
	f.wantDelta(breaker.Delta{Generation: gen, Counts: breaker.Counts{Requests: 3, Failures: 3}, Tail: 3, GatewayEnded: true})
	f.wantState(breaker.Closed)
	f.wantWakes(0) // closed-state outcomes wait for the flush
}

// TestSharedHasNews: HasNews is true whenever TakeDelta or TakeTrials has something, and
// false once both were taken.
func TestSharedHasNews(t *testing.T) {
	f := newFixture(t, sharedSettings())
	f.b.SetShared(true)
	wantNews := func(want bool, when string) {
		t.Helper()
		if got := f.b.HasNews(); got != want {
			t.Fatalf("%s: HasNews = %v, want %v", when, got, want)
		}
	}
	wantNews(false, "new")
	f.succeed(1)
	wantNews(true, "after a success")
	f.b.TakeTrials()
	wantNews(true, "after TakeTrials alone: the delta waits")
	f.b.TakeDelta()
	wantNews(false, "after TakeDelta")

	r := f.succeedLater()
	f.b.TakeDelta()
	wantNews(false, "success taken")
	f.b.LateFailure(r)
	wantNews(true, "after a late failure of a success already taken")
	f.b.TakeDelta()

	// Half-open with permits: a trial's outcome is news too.
	f.b.Apply(breaker.SharedState{State: breaker.HalfOpen, Generation: f.snap().Generation + 1, Trips: 1}, false)
	if !f.b.GrantPermits(f.snap().Generation, 1, time.Minute) {
		t.Fatal("permits refused")
	}
	f.b.TakeDelta()
	f.b.TakeTrials()
	wantNews(false, "half-open, nothing done yet")
	f.b.Done(f.trial(), breaker.Success, 0)
	wantNews(true, "after a trial")
	f.b.TakeDelta()
	wantNews(true, "after TakeDelta alone: the trial waits")
	if tr, ok := f.b.TakeTrials(); !ok || tr.Successes != 1 {
		t.Fatalf("TakeTrials = %+v, %v; want 1 success", tr, ok)
	}
	wantNews(false, "after TakeTrials")
}

func TestSharedApply(t *testing.T) {
	f := newFixture(t, sharedSettings())
	f.b.SetShared(true)
	f.fail(1) // in the delta, about to be dropped
	f.clock.Set(time.Hour)

	ok := f.b.Apply(breaker.SharedState{State: breaker.Open, Generation: 5, OpenRemaining: 7 * time.Second,
		OpenFor: 10 * time.Second, Trips: 2}, false)
	if !ok {
		t.Fatal("newer generation not adopted")
	}
	f.wantState(breaker.Open)
	f.wantReasons(breaker.ReasonShared)
	f.wantDelta(breaker.Delta{})
	sn := f.snap()
	if sn.Generation != 5 || sn.Trips != 2 || sn.OpenFor != 10*time.Second ||
		sn.OpenRemaining != 7*time.Second || sn.OpenedAgo != 3*time.Second || sn.Counts != (breaker.Counts{}) {
		t.Fatalf("snapshot %+v", sn)
	}
	if got := f.b.RetryAfter(); got != 7*time.Second {
		t.Fatalf("RetryAfter %v, want 7s", got)
	}
	f.clock.Advance(2 * time.Second)
	if got := f.b.RetryAfter(); got != 5*time.Second {
		t.Fatalf("RetryAfter %v, want 5s", got)
	}

	// Only newer generations, unless forced.
	for _, gen := range []uint64{4, 5} {
		if f.b.Apply(breaker.SharedState{State: breaker.Closed, Generation: gen}, false) {
			t.Fatalf("generation %d adopted over 5", gen)
		}
	}
	f.wantState(breaker.Open)
	if f.b.Apply(breaker.SharedState{State: breaker.Open, Generation: 5, OpenRemaining: 5 * time.Second,
		OpenFor: 10 * time.Second, Trips: 2}, true) {
		t.Fatal("force: the same state was adopted again")
	}
	if !f.b.Apply(breaker.SharedState{State: breaker.Closed, Generation: 3}, true) {
		t.Fatal("force: an older generation was not adopted")
	}
	f.wantState(breaker.Closed)
	if sn := f.snap(); sn.Generation != 3 || sn.Trips != 0 {
		t.Fatalf("after forced apply: %+v", sn)
	}
	f.wantReasons(breaker.ReasonShared + "," + breaker.ReasonShared)
}

func TestSharedPermits(t *testing.T) {
	f := newFixture(t, sharedSettings()) // up to 5 trials in flight
	f.b.SetShared(true)
	f.b.Apply(breaker.SharedState{State: breaker.Open, Generation: 5, OpenRemaining: 10 * time.Second,
		OpenFor: 10 * time.Second, Trips: 1}, false)

	f.clock.Advance(10*time.Second - 1)
	f.reject(breaker.ErrOpen)
	if n := f.b.NeedsPermits(); n != 0 {
		t.Fatalf("NeedsPermits = %d before the open period ended, want 0", n)
	}
	f.wantWakes(0)

	f.clock.Advance(1)
	if n := f.b.NeedsPermits(); n != 0 {
		t.Fatalf("NeedsPermits = %d with no request waiting (an idle replica), want 0", n)
	}
	f.reject(breaker.ErrOpen) // the store moves the fleet to half-open, not the breaker
	f.wantState(breaker.Open)
	f.wantWakes(1)
	if n := f.b.NeedsPermits(); n != 5 {
		t.Fatalf("open period over, a request waiting: NeedsPermits = %d, want 5", n)
	}
	if f.b.GrantPermits(5, 1, time.Minute) {
		t.Fatal("permits granted while open")
	}

	f.b.Apply(breaker.SharedState{State: breaker.HalfOpen, Generation: 6, Trips: 1}, false)
	f.wantState(breaker.HalfOpen)
	f.reject(breaker.ErrTooManyTrials) // no permit yet: wake the store
	f.wantWakes(2)
	if n := f.b.NeedsPermits(); n != 5 {
		t.Fatalf("half-open without permits: NeedsPermits = %d, want 5", n)
	}
	if f.b.GrantPermits(5, 2, time.Minute) {
		t.Fatal("permits of a stale generation accepted")
	}
	if !f.b.GrantPermits(6, 2, time.Minute) {
		t.Fatal("permits refused")
	}
	if n := f.b.NeedsPermits(); n != 0 || f.snap().Permits != 2 {
		t.Fatalf("after GrantPermits: NeedsPermits %d, snapshot %+v", n, f.snap())
	}

	wakes := f.wakes.Load()
	t1, t2 := f.trial(), f.trial()     // exactly 2 trials
	f.reject(breaker.ErrTooManyTrials) // slots free but no permit: ask for more
	f.wantWakes(wakes + 1)
	f.b.Done(t1, breaker.Success, 0)
	f.wantWakes(wakes + 2) // report at once
	f.reject(breaker.ErrTooManyTrials)
	f.wantWakes(wakes + 3)
	f.wantState(breaker.HalfOpen) // the store decides, even with success_threshold 1
	f.b.Done(t2, breaker.Ignored, 0)
	f.wantWakes(wakes + 4)

	r, ok := f.b.TakeTrials()
	if !ok || r != (breaker.TrialReport{Generation: 6, Successes: 1, Released: 1}) {
		t.Fatalf("TakeTrials = %+v, %v", r, ok)
	}
	if r, ok := f.b.TakeTrials(); ok || r.Successes+r.Failures+r.Released != 0 {
		t.Fatalf("second TakeTrials = %+v, %v", r, ok)
	}
	if n := f.b.NeedsPermits(); n != 5 {
		t.Fatalf("no permit and no trial left: NeedsPermits = %d, want 5", n)
	}

	// A failed trial is reported, not acted on.
	f.b.GrantPermits(6, 1, time.Minute)
	f.b.Done(f.trial(), breaker.Failure, 0)
	f.wantState(breaker.HalfOpen)
	if r, _ := f.b.TakeTrials(); r != (breaker.TrialReport{Generation: 6, Failures: 1}) {
		t.Fatalf("TakeTrials = %+v", r)
	}

	// Permits expire with their leases: another replica may hold them by then.
	f.b.GrantPermits(6, 2, time.Second)
	f.clock.Advance(time.Second)
	f.reject(breaker.ErrTooManyTrials)
	if n := f.b.NeedsPermits(); n != 5 {
		t.Fatalf("permits past their lease: NeedsPermits = %d, want 5", n)
	}

	// Permits die with a change of authority...
	f.b.GrantPermits(6, 3, time.Minute)
	f.b.SetShared(false)
	f.b.SetShared(true)
	if sn := f.snap(); sn.Permits != 0 {
		t.Fatalf("permits survived SetShared: %+v", sn)
	}
	f.reject(breaker.ErrTooManyTrials)

	// ...and with their generation.
	f.b.GrantPermits(6, 3, time.Minute)
	f.b.Apply(breaker.SharedState{State: breaker.HalfOpen, Generation: 8, Trips: 1}, false)
	if sn := f.snap(); sn.Permits != 0 {
		t.Fatalf("permits survived a new generation: %+v", sn)
	}
	f.reject(breaker.ErrTooManyTrials)
}

func TestSharedForcedModesNeedNoPermits(t *testing.T) {
	f := newFixture(t, sharedSettings())
	f.b.SetShared(true)
	for _, m := range []breaker.Mode{breaker.ForcedOpen, breaker.ForcedClosed} {
		f.b.Apply(breaker.SharedState{State: breaker.HalfOpen, Mode: m, Generation: f.snap().Generation + 1}, false)
		_, _ = f.b.Allow() // whatever the mode answers, it wants no permit
		if n := f.b.NeedsPermits(); n != 0 {
			t.Errorf("%v: NeedsPermits = %d, want 0", m, n)
		}
	}
}

// Degraded: the store is unreachable, the breaker decides locally again from the last
// shared state it applied.
func TestSharedDegradedTripsLocally(t *testing.T) {
	f := newFixture(t, sharedSettings())
	f.b.SetShared(true)
	f.fail(10)
	f.wantState(breaker.Closed)

	f.b.SetShared(false)
	f.wantDelta(breaker.Delta{}) // dropped
	f.fail(1)
	f.wantState(breaker.Open)
	f.wantReasons(breaker.ReasonConsecutiveFailures)

	// From a shared open state past its deadline: half-opens and closes on its own.
	f = newFixture(t, sharedSettings())
	f.b.SetShared(true)
	f.b.Apply(breaker.SharedState{State: breaker.Open, Generation: 3, OpenRemaining: time.Second,
		OpenFor: 20 * time.Second, Trips: 2}, false)
	f.clock.Advance(time.Second)
	f.reject(breaker.ErrOpen)
	f.b.SetShared(false)
	f.b.Done(f.trial(), breaker.Success, 0)
	f.wantState(breaker.Closed)

	// From shared half-open with granted permits: permits no longer matter.
	f = newFixture(t, sharedSettings())
	f.b.SetShared(true)
	f.b.Apply(breaker.SharedState{State: breaker.HalfOpen, Generation: 3, Trips: 2}, false)
	f.b.GrantPermits(3, 1, time.Minute)
	tk := f.trial()
	f.b.SetShared(false)
	f.b.Done(tk, breaker.Failure, 0)
	f.wantState(breaker.Open)
	if got := f.snap().OpenFor; got != 40*time.Second {
		t.Fatalf("local reopen after 2 shared trips: open for %v, want 40s", got)
	}
}

// A new epoch (the store lost its state) is adopted with force and may carry a
// generation the breaker already used. Tickets admitted before it must stay fenced off.
func TestApplyForceKeepsTicketsFenced(t *testing.T) {
	t.Run("same generation, other state", func(t *testing.T) {
		f := newFixture(t, sharedSettings())
		f.b.SetShared(true)
		f.b.Apply(breaker.SharedState{State: breaker.HalfOpen, Generation: 4, Trips: 1}, false)
		f.b.GrantPermits(4, 1, time.Minute)
		tk := f.trial()
		if !f.b.Apply(breaker.SharedState{State: breaker.Closed, Generation: 4}, true) {
			t.Fatal("not adopted")
		}
		f.obs.reset()

		f.b.Done(tk, breaker.Failure, 0)

		if sn := f.snap(); sn.TrialsInFlight != 0 {
			t.Errorf("trials in flight %d after a stale trial finished, want 0", sn.TrialsInFlight)
		}
		if r, ok := f.b.TakeTrials(); ok {
			t.Errorf("a stale trial was reported to the store: %+v", r)
		}
	})
	t.Run("same generation, other state, degraded", func(t *testing.T) {
		f := newFixture(t, sharedSettings())
		f.b.SetShared(true)
		f.b.Apply(breaker.SharedState{State: breaker.HalfOpen, Generation: 4, Trips: 1}, false)
		f.b.GrantPermits(4, 1, time.Minute)
		tk := f.trial()
		f.b.Apply(breaker.SharedState{State: breaker.Closed, Generation: 4}, true)
		f.b.SetShared(false)
		f.obs.reset()

		f.b.Done(tk, breaker.Failure, 0) // a trial of a half-open period that is gone

		f.wantReasons("")
		f.wantState(breaker.Closed)
	})
	t.Run("generation reused by a new epoch", func(t *testing.T) {
		f := newFixture(t, sharedSettings())
		f.b.SetShared(true)
		f.b.Apply(breaker.SharedState{State: breaker.Closed, Generation: 3}, false)
		old := f.allow() // generation 3 of the old epoch
		// Redis lost the state: a fresh epoch from generation 0, then the fleet trips and
		// recovers, which brings it to generation 3 again.
		f.b.Apply(breaker.SharedState{State: breaker.Closed, Generation: 0}, true)
		f.b.Apply(breaker.SharedState{State: breaker.Open, Generation: 1, OpenRemaining: time.Second, OpenFor: time.Second}, false)
		f.b.Apply(breaker.SharedState{State: breaker.HalfOpen, Generation: 2}, false)
		f.b.Apply(breaker.SharedState{State: breaker.Closed, Generation: 3}, false)

		f.b.Done(old, breaker.Failure, 0)

		if d, ok := f.b.TakeDelta(); ok {
			t.Errorf("an outcome admitted before the new epoch was counted: %+v", d)
		}
	})
}

// Snapshot.OpenedAgo is the time since the circuit last opened, however it opened.
func TestApplyOpenSetsOpenedAgo(t *testing.T) {
	f := newFixture(t, sharedSettings())
	f.b.Trip() // opened at 0
	f.clock.Advance(10 * time.Second)
	f.trial() // half-open
	f.clock.Advance(5 * time.Second)

	f.b.Apply(breaker.SharedState{State: breaker.Open, Generation: 10, OpenRemaining: 18 * time.Second,
		OpenFor: 20 * time.Second, Trips: 2}, false) // the fleet reopened it 2 s ago

	if got := f.snap().OpenedAgo; got != 2*time.Second {
		t.Errorf("OpenedAgo %v, want 2s (the shared open period started 2 s ago)", got)
	}
}

// An adopted transition reports the open period only when it opens the circuit, as a
// local one does: open -> half_open from the store carries 0, not the period that ended
// (README: "open_for_seconds: the open period when to is open, else 0").
func TestApplyReportsOpenForOnlyWhenOpening(t *testing.T) {
	f := newFixture(t, sharedSettings())
	f.b.SetShared(true)
	f.b.Apply(breaker.SharedState{State: breaker.Open, Generation: 1, OpenRemaining: 9 * time.Second,
		OpenFor: 10 * time.Second, Trips: 1, Reason: breaker.ReasonConsecutiveFailures}, false)
	f.b.Apply(breaker.SharedState{State: breaker.HalfOpen, Generation: 2, OpenFor: 10 * time.Second,
		Trips: 1, Reason: breaker.ReasonOpenTimeout}, false)
	f.b.Apply(breaker.SharedState{State: breaker.Closed, Generation: 3, Reason: breaker.ReasonTrialsSucceeded}, false)
	trs := f.obs.all()
	if len(trs) != 3 {
		t.Fatalf("%d transitions, want 3", len(trs))
	}
	for i, want := range []time.Duration{10 * time.Second, 0, 0} {
		if trs[i].OpenFor != want {
			t.Errorf("%s -> %s: OpenFor %v, want %v", trs[i].From, trs[i].To, trs[i].OpenFor, want)
		}
	}
}
