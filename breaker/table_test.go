package breaker_test

import (
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// The (state, event) → next state table. Every row is run by the same loop body: drive a
// fresh breaker to the start state with the fake clock, clear the observer, apply the
// event, and compare the state and the reasons of the transitions it caused ("" for none;
// a single reason means exactly one transition).

func tableSettings() breaker.Settings {
	s := baseSettings() // 3 consecutive failures trip, open 10 s ×2 up to 60 s
	s.HalfOpenMaxRequests = 2
	s.SuccessThreshold = 2
	return s
}

// start is a state a row starts from, and how to get there.
type start struct {
	name  string
	state breaker.State
	drive func(f *fixture)
}

// prelude gives every start state a stale closed-state ticket and a stale trial ticket,
// and receipts of a stale success of each kind, then leaves the breaker closed with no
// backoff.
func prelude(f *fixture) {
	f.staleClosed = f.allow() // generation 0, closed
	f.staleReceipt = f.b.Done(f.allow(), breaker.Success, 0)
	f.b.Trip() // 1: open
	f.staleTrial = f.openToHalfOpen()
	f.staleTrialReceipt = f.b.Done(f.trial(), breaker.Success, 0) // 1 of 2
	f.b.Reset()                                                   // 3: closed, trips 0
}

var (
	closed = start{"closed", breaker.Closed, func(f *fixture) {
		prelude(f)
	}}
	closedOneShort = start{"closed with 2 of 3 failures", breaker.Closed, func(f *fixture) {
		prelude(f)
		f.fail(2)
	}}
	open = start{"open", breaker.Open, func(f *fixture) {
		prelude(f)
		f.fail(3)
	}}
	halfOpen = start{"half-open", breaker.HalfOpen, func(f *fixture) {
		open.drive(f)
		f.b.Done(f.openToHalfOpen(), breaker.Ignored, 0) // first trial cancelled: slot free
	}}
	halfOpenOneShort = start{"half-open with 1 of 2 successes", breaker.HalfOpen, func(f *fixture) {
		halfOpen.drive(f)
		f.b.Done(f.trial(), breaker.Success, 0)
	}}
	halfOpenFull = start{"half-open with 2 of 2 trials in flight", breaker.HalfOpen, func(f *fixture) {
		halfOpen.drive(f)
		f.held = []breaker.Ticket{f.trial(), f.trial()}
	}}
)

// event is something that happens to a breaker.
type event struct {
	name string
	do   func(f *fixture)
}

func outcomeEvent(name string, o breaker.Outcome) event {
	return event{name, func(f *fixture) { _ = f.request(o, 0) }}
}

var (
	failure      = outcomeEvent("failure", breaker.Failure)
	success      = outcomeEvent("success", breaker.Success)
	trialSuccess = outcomeEvent("trial success", breaker.Success)
	trialFailure = outcomeEvent("trial failure", breaker.Failure)
	trialIgnored = outcomeEvent("trial cancelled by its client", breaker.Ignored)
	rejected     = outcomeEvent("request beyond the trial limit", breaker.Failure)

	openTimeout = event{"open timeout elapses, a request comes", func(f *fixture) {
		f.clock.Advance(f.snap().OpenRemaining)
		_ = f.request(breaker.Ignored, 0)
	}}
	openAlmost = event{"1ns before the open timeout, a request comes", func(f *fixture) {
		f.clock.Advance(f.snap().OpenRemaining - time.Nanosecond)
		_ = f.request(breaker.Ignored, 0)
	}}
	longPause = event{"an hour passes, a request comes", func(f *fixture) {
		f.clock.Advance(time.Hour)
		_ = f.request(breaker.Ignored, 0)
	}}

	tripOp  = event{"Trip()", func(f *fixture) { f.b.Trip() }}
	closeOp = event{"Close()", func(f *fixture) { f.b.Close() }}
	resetOp = event{"Reset()", func(f *fixture) { f.b.Reset() }}

	forcedOpen   = event{"SetMode(ForcedOpen)", func(f *fixture) { f.b.SetMode(breaker.ForcedOpen) }}
	forcedClosed = event{"SetMode(ForcedClosed)", func(f *fixture) { f.b.SetMode(breaker.ForcedClosed) }}
	metricsOnly  = event{"SetMode(MetricsOnly)", func(f *fixture) { f.b.SetMode(breaker.MetricsOnly) }}
	normalMode   = event{"SetMode(Normal)", func(f *fixture) { f.b.SetMode(breaker.Normal) }}

	forcedClosedFailure = event{"SetMode(ForcedClosed), then a failure", func(f *fixture) {
		f.b.SetMode(breaker.ForcedClosed)
		_ = f.request(breaker.Failure, 0)
	}}

	staleFailure      = event{"stale ticket outcome (failure)", func(f *fixture) { f.b.Done(f.staleClosed, breaker.Failure, 0) }}
	staleSuccess      = event{"stale ticket outcome (success)", func(f *fixture) { f.b.Done(f.staleClosed, breaker.Success, 0) }}
	staleTrialFailure = event{"stale trial outcome (failure)", func(f *fixture) { f.b.Done(f.staleTrial, breaker.Failure, 0) }}
	staleTrialSuccess = event{"stale trial outcome (success)", func(f *fixture) { f.b.Done(f.staleTrial, breaker.Success, 0) }}

	// A success whose body then breaks off (LateFailure), in the state the row starts in.
	lateFailure = event{"a success, then its late failure", func(f *fixture) {
		tk, err := f.b.Allow()
		if err == nil {
			f.b.LateFailure(f.b.Done(tk, breaker.Success, 0))
		}
	}}
	heldTrialLateFailure = event{"a trial in flight succeeds, then fails late", func(f *fixture) {
		f.b.LateFailure(f.b.Done(f.held[0], breaker.Success, 0))
	}}
	heldTrialsPassOneLate = event{"both trials in flight succeed, then one fails late", func(f *fixture) {
		r := f.b.Done(f.held[0], breaker.Success, 0)
		f.b.Done(f.held[1], breaker.Success, 0)
		f.b.LateFailure(r)
	}}
	staleLateFailure      = event{"stale receipt late failure", func(f *fixture) { f.b.LateFailure(f.staleReceipt) }}
	staleTrialLateFailure = event{"stale trial receipt late failure", func(f *fixture) { f.b.LateFailure(f.staleTrialReceipt) }}

	heldTrialFails = event{"a trial in flight fails", func(f *fixture) { f.b.Done(f.held[0], breaker.Failure, 0) }}
	heldTrialsPass = event{"both trials in flight succeed", func(f *fixture) {
		f.b.Done(f.held[0], breaker.Success, 0)
		f.b.Done(f.held[1], breaker.Success, 0)
	}}

	applyNewerOpen = event{"Apply(open, newer generation)", func(f *fixture) {
		f.b.Apply(breaker.SharedState{State: breaker.Open, Generation: f.snap().Generation + 1,
			OpenRemaining: 5 * time.Second, OpenFor: 10 * time.Second, Trips: 1}, false)
	}}
	applyNewerClosed = event{"Apply(closed, newer generation)", func(f *fixture) {
		f.b.Apply(breaker.SharedState{State: breaker.Closed, Generation: f.snap().Generation + 1}, false)
	}}
	applyOlderClosed = event{"Apply(closed, older generation)", func(f *fixture) {
		f.b.Apply(breaker.SharedState{State: breaker.Closed, Generation: f.snap().Generation - 1}, false)
	}}
)

var transitionTable = []struct {
	start  start
	event  event
	want   breaker.State
	reason string // "" = no transition
}{
	{closed, failure, breaker.Closed, ""},
	{closed, success, breaker.Closed, ""},
	{closed, longPause, breaker.Closed, ""},
	{closed, tripOp, breaker.Open, breaker.ReasonMode},
	{closed, closeOp, breaker.Closed, ""}, // nothing to close: no transition, counts kept
	{closed, resetOp, breaker.Closed, ""},
	{closed, forcedOpen, breaker.Closed, ""},
	{closed, metricsOnly, breaker.Closed, ""},
	{closed, staleFailure, breaker.Closed, ""},
	{closed, staleTrialFailure, breaker.Closed, ""},
	{closed, applyNewerOpen, breaker.Open, breaker.ReasonShared},
	{closed, applyOlderClosed, breaker.Closed, ""},
	{closed, lateFailure, breaker.Closed, ""},
	{closed, staleLateFailure, breaker.Closed, ""},
	{closed, staleTrialLateFailure, breaker.Closed, ""},

	{closedOneShort, failure, breaker.Open, breaker.ReasonConsecutiveFailures},
	{closedOneShort, success, breaker.Closed, ""},
	{closedOneShort, staleFailure, breaker.Closed, ""},
	{closedOneShort, staleTrialFailure, breaker.Closed, ""},
	{closedOneShort, forcedClosedFailure, breaker.Closed, ""},
	{closedOneShort, longPause, breaker.Closed, ""},
	// The success ended the run of 2; its late failure restores it and makes it 3.
	{closedOneShort, lateFailure, breaker.Open, breaker.ReasonConsecutiveFailures},
	{closedOneShort, staleLateFailure, breaker.Closed, ""},

	{open, failure, breaker.Open, ""},
	{open, openAlmost, breaker.Open, ""},
	{open, openTimeout, breaker.HalfOpen, breaker.ReasonOpenTimeout},
	// Trip() on an open circuit starts the next, longer open period.
	{open, tripOp, breaker.Open, breaker.ReasonMode},
	{open, closeOp, breaker.Closed, breaker.ReasonMode},
	{open, resetOp, breaker.Closed, breaker.ReasonReset},
	{open, forcedClosed, breaker.Open, ""},
	{open, normalMode, breaker.Open, ""},
	{open, staleFailure, breaker.Open, ""},
	{open, staleSuccess, breaker.Open, ""},
	{open, staleTrialSuccess, breaker.Open, ""},
	{open, applyNewerClosed, breaker.Closed, breaker.ReasonShared},
	{open, applyOlderClosed, breaker.Open, ""},
	{open, staleLateFailure, breaker.Open, ""},
	{open, staleTrialLateFailure, breaker.Open, ""},

	{halfOpen, trialSuccess, breaker.HalfOpen, ""}, // 1 of 2
	{halfOpen, trialFailure, breaker.Open, breaker.ReasonTrialFailed},
	{halfOpen, trialIgnored, breaker.HalfOpen, ""},
	{halfOpen, longPause, breaker.HalfOpen, ""},
	{halfOpen, tripOp, breaker.Open, breaker.ReasonMode},
	{halfOpen, closeOp, breaker.Closed, breaker.ReasonMode},
	{halfOpen, resetOp, breaker.Closed, breaker.ReasonReset},
	{halfOpen, forcedOpen, breaker.HalfOpen, ""},
	{halfOpen, staleFailure, breaker.HalfOpen, ""},
	{halfOpen, staleTrialFailure, breaker.HalfOpen, ""},
	{halfOpen, staleTrialSuccess, breaker.HalfOpen, ""},
	{halfOpen, applyNewerOpen, breaker.Open, breaker.ReasonShared},
	{halfOpen, lateFailure, breaker.Open, breaker.ReasonTrialFailed},
	{halfOpen, staleLateFailure, breaker.HalfOpen, ""},
	{halfOpen, staleTrialLateFailure, breaker.HalfOpen, ""},

	{halfOpenOneShort, trialSuccess, breaker.Closed, breaker.ReasonTrialsSucceeded},
	{halfOpenOneShort, trialFailure, breaker.Open, breaker.ReasonTrialFailed},
	{halfOpenOneShort, trialIgnored, breaker.HalfOpen, ""},
	{halfOpenOneShort, staleTrialSuccess, breaker.HalfOpen, ""},
	{halfOpenOneShort, metricsOnly, breaker.HalfOpen, ""},
	// The trial's success closes the circuit: its late failure is of the old generation.
	{halfOpenOneShort, lateFailure, breaker.Closed, breaker.ReasonTrialsSucceeded},

	{halfOpenFull, rejected, breaker.HalfOpen, ""},
	{halfOpenFull, heldTrialFails, breaker.Open, breaker.ReasonTrialFailed},
	{halfOpenFull, heldTrialsPass, breaker.Closed, breaker.ReasonTrialsSucceeded},
	{halfOpenFull, heldTrialLateFailure, breaker.Open, breaker.ReasonTrialFailed},
	{halfOpenFull, heldTrialsPassOneLate, breaker.Closed, breaker.ReasonTrialsSucceeded},
}

func TestTransitionTable(t *testing.T) {
	for _, tc := range transitionTable {
		t.Run(tc.start.name+"/"+tc.event.name, func(t *testing.T) {
			f := newFixture(t, tableSettings())
			tc.start.drive(f)
			f.wantState(tc.start.state)
			f.obs.reset()

			tc.event.do(f)

			if got := f.b.State(); got != tc.want {
				t.Errorf("state %v, want %v", got, tc.want)
			}
			if got := f.obs.reasons(); got != tc.reason {
				t.Errorf("transitions %q, want %q", got, tc.reason)
			}
			for _, tr := range f.obs.all() {
				if tr.From != tc.start.state || tr.To != tc.want {
					t.Errorf("transition %v → %v, want %v → %v", tr.From, tr.To, tc.start.state, tc.want)
				}
			}
		})
	}
}
