package breaker_test

import (
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// A ticket admitted in one generation and reported in a later one changes nothing: not
// the counts, not the run of failures, not the state, and no transition is reported.
func TestGenerationFenceClosedTicket(t *testing.T) {
	for _, tc := range []struct {
		name    string
		between func(f *fixture) // what happens while the request is in flight
	}{
		{"the circuit opened", func(f *fixture) { f.fail(3) }},
		{"the circuit opened and recovered", func(f *fixture) {
			f.fail(3)
			f.b.Done(f.openToHalfOpen(), breaker.Success, 0)
		}},
		{"Trip()", func(f *fixture) { f.b.Trip() }},
		{"Trip() and Close()", func(f *fixture) { f.b.Trip(); f.b.Close() }},
		{"Reset()", func(f *fixture) { f.b.Reset() }},
		{"SetMode(MetricsOnly)", func(f *fixture) { f.b.SetMode(breaker.MetricsOnly) }},
		{"SetMode(ForcedClosed) and back", func(f *fixture) {
			f.b.SetMode(breaker.ForcedClosed)
			f.b.SetMode(breaker.Normal)
		}},
		{"Apply(newer closed state)", func(f *fixture) {
			f.b.Apply(breaker.SharedState{State: breaker.Closed, Generation: 7}, false)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, baseSettings()) // 3 failures in a row trip
			old := f.allow()
			if old.Generation() != 0 || old.Trial() || old.WouldReject() {
				t.Fatalf("first ticket %+v", old)
			}
			tc.between(f)
			f.wantStaleIgnored(func() {
				f.b.Done(old, breaker.Failure, time.Hour) // would be the 3rd failure in a row
				f.b.Done(old, breaker.Success, 0)         // would end the run
			})
		})
	}
}

// A trial admitted in one half-open period and reported in the next is dropped.
func TestGenerationFenceTrialTicket(t *testing.T) {
	s := baseSettings()
	s.ConsecutiveFailures = 1
	s.HalfOpenMaxRequests = 2
	f := newFixture(t, s)
	f.fail(1)
	f.clock.Advance(10 * time.Second)
	old, failing := f.trial(), f.trial()
	f.b.Done(failing, breaker.Failure, 0) // reopen for 20 s
	f.clock.Advance(20 * time.Second)
	current := f.trial() // the next half-open period
	f.obs.reset()
	before := f.snap()

	f.b.Done(old, breaker.Success, 0) // would close (threshold 1)
	f.b.Done(old, breaker.Failure, 0) // would reopen
	f.b.Done(old, breaker.Ignored, 0) // would free a slot

	if after := f.snap(); after != before {
		t.Fatalf("stale trial changed the breaker:\nbefore %+v\nafter  %+v", before, after)
	}
	f.wantReasons("")
	f.wantTrials(1)
	f.b.Done(current, breaker.Success, 0)
	f.wantState(breaker.Closed)
}

func TestTicketGeneration(t *testing.T) {
	f := newFixture(t, baseSettings())
	f.b.Trip()
	f.clock.Advance(10 * time.Second)
	tk := f.trial()
	if got, want := tk.Generation(), f.snap().Generation; got != want || want != 2 {
		t.Fatalf("trial ticket generation %d, snapshot %d, want 2", got, want)
	}
	f.b.Done(tk, breaker.Success, 0)
	if got := f.allow().Generation(); got != 3 {
		t.Fatalf("closed ticket generation %d, want 3", got)
	}
}
