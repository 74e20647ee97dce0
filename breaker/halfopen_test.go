package breaker_test

import (
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

func halfOpenSettings() breaker.Settings {
	s := baseSettings()
	s.ConsecutiveFailures = 1
	s.HalfOpenMaxRequests = 2
	s.SuccessThreshold = 3
	return s
}

func (f *fixture) wantTrials(inFlight int) {
	f.t.Helper()
	if got := f.snap().TrialsInFlight; got != inFlight {
		f.t.Fatalf("trials in flight = %d, want %d", got, inFlight)
	}
}

func TestHalfOpenTrialLimitAndThreshold(t *testing.T) {
	f := newFixture(t, halfOpenSettings())
	f.fail(1)
	f.clock.Advance(10 * time.Second)

	t1 := f.trial() // open → half-open
	t2 := f.trial()
	f.wantTrials(2)
	f.reject(breaker.ErrTooManyTrials) // the third concurrent request
	f.reject(breaker.ErrTooManyTrials)

	f.clock.Advance(100 * time.Millisecond)
	f.b.Done(t1, breaker.Success, 100*time.Millisecond) // 1 of 3; frees a slot
	f.wantState(breaker.HalfOpen)
	f.wantTrials(1)
	t3 := f.trial()
	f.reject(breaker.ErrTooManyTrials)

	f.b.Done(t2, breaker.Success, 0) // 2 of 3
	f.wantState(breaker.HalfOpen)

	f.b.Done(t3, breaker.Ignored, 0) // the client gave up: slot freed, not counted
	f.wantState(breaker.HalfOpen)
	f.wantTrials(0)

	t4, t5 := f.trial(), f.trial()
	f.wantReasons(breaker.ReasonConsecutiveFailures + "," + breaker.ReasonOpenTimeout)
	f.b.Done(t4, breaker.Success, 0) // 3 of 3
	f.wantState(breaker.Closed)
	f.wantReasons(breaker.ReasonConsecutiveFailures + "," + breaker.ReasonOpenTimeout + "," + breaker.ReasonTrialsSucceeded)
	if tr := f.lastTransition(); tr.From != breaker.HalfOpen || tr.To != breaker.Closed {
		t.Fatalf("last transition %v → %v", tr.From, tr.To)
	}

	f.b.Done(t5, breaker.Failure, 0) // finished after the circuit closed: dropped
	f.wantState(breaker.Closed)
	f.wantCounts(breaker.Counts{})
	if got := f.snap().Consecutive; got != 0 {
		t.Fatalf("a stale trial failure counted: consecutive %d", got)
	}
}

func TestHalfOpenTrialFailureReopensWithNextBackoff(t *testing.T) {
	f := newFixture(t, halfOpenSettings())
	f.fail(1)
	f.clock.Advance(10 * time.Second)
	t1, t2 := f.trial(), f.trial()
	f.b.Done(t1, breaker.Success, 0)

	f.clock.Advance(time.Second)
	f.b.Done(t2, breaker.Failure, 0) // the first failure reopens, whatever succeeded before
	f.wantState(breaker.Open)
	tr := f.lastTransition()
	if tr.Reason != breaker.ReasonTrialFailed || tr.From != breaker.HalfOpen || tr.OpenFor != 20*time.Second {
		t.Fatalf("transition %+v, want half-open → open, trial_failed, 20s", tr)
	}
	if got := f.b.RetryAfter(); got != 20*time.Second {
		t.Fatalf("RetryAfter %v, want 20s", got)
	}
	if got := f.snap().Trips; got != 2 {
		t.Fatalf("trips %d, want 2", got)
	}

	// The next half-open period starts from zero successes.
	f.clock.Advance(20 * time.Second)
	for range 2 {
		f.b.Done(f.trial(), breaker.Success, 0)
	}
	f.wantState(breaker.HalfOpen)
	f.b.Done(f.trial(), breaker.Success, 0)
	f.wantState(breaker.Closed)
}

func TestHalfOpenIgnoredTrialFreesSlotWithoutCounting(t *testing.T) {
	s := halfOpenSettings()
	s.HalfOpenMaxRequests = 1
	s.SuccessThreshold = 1
	f := newFixture(t, s)
	f.fail(1)
	f.clock.Advance(10 * time.Second)

	for range 5 {
		tk := f.trial()
		f.reject(breaker.ErrTooManyTrials)
		f.b.Done(tk, breaker.Ignored, time.Hour) // cancelled, however long it took
		f.wantState(breaker.HalfOpen)
		f.wantTrials(0)
	}
	f.b.Done(f.trial(), breaker.Success, 0) // one success is enough: no cancelled one counted
	f.wantState(breaker.Closed)
}

func TestHalfOpenSlowTrialIsStillASuccess(t *testing.T) {
	s := halfOpenSettings()
	s.SuccessThreshold = 1
	s.SlowCallDuration = time.Second
	s.SlowCallRate = 1
	f := newFixture(t, s)
	f.fail(1)
	f.clock.Advance(10 * time.Second)
	f.b.Done(f.trial(), breaker.Success, time.Minute)
	f.wantState(breaker.Closed)
}
