package breaker_test

import (
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

func TestForcedOpen(t *testing.T) {
	s := baseSettings()
	s.Mode = breaker.ForcedOpen // as the initial mode
	f := newFixture(t, s)
	if f.b.Mode() != breaker.ForcedOpen {
		t.Fatalf("mode %v", f.b.Mode())
	}
	for range 3 {
		f.reject(breaker.ErrOpen)
		if got := f.b.RetryAfter(); got != 10*time.Second {
			t.Fatalf("at %v: RetryAfter %v, want open_duration 10s", f.clock.Now(), got)
		}
		f.clock.Advance(time.Minute) // there is no open period to wait out
	}
	f.wantState(breaker.Closed) // the machine underneath is untouched
	f.wantReasons("")

	// Set on an open circuit half-way through its period: RetryAfter is still the first
	// open period, not what is left of the current one.
	f = newFixture(t, baseSettings())
	f.b.Trip()
	f.b.Trip() // 20 s
	f.clock.Advance(15 * time.Second)
	f.b.SetMode(breaker.ForcedOpen)
	f.reject(breaker.ErrOpen)
	if got := f.b.RetryAfter(); got != 10*time.Second {
		t.Fatalf("RetryAfter %v, want 10s", got)
	}
	f.clock.Advance(time.Hour)
	f.reject(breaker.ErrOpen) // never half-opens while forced
	f.wantState(breaker.Open)
}

func TestForcedClosed(t *testing.T) {
	s := baseSettings()
	s.FailureRate = 1
	s.MinimumRequests = 1
	s.SlowCallRate = 1
	s.SlowCallDuration = time.Millisecond
	f := newFixture(t, s)
	f.b.SetMode(breaker.ForcedClosed)
	for i := range 1000 {
		f.clock.Advance(time.Millisecond)
		tk := f.allow()
		if tk.Trial() || tk.WouldReject() {
			t.Fatalf("request %d: ticket %+v", i, tk)
		}
		f.b.Done(tk, breaker.Failure, time.Second) // 100% slow failures
	}
	f.wantState(breaker.Closed)
	f.wantReasons("")

	// Forced closed over an open circuit admits too, and the circuit stays open underneath.
	f = newFixture(t, s)
	f.b.Trip()
	f.b.SetMode(breaker.ForcedClosed)
	for range 10 {
		f.b.Done(f.allow(), breaker.Failure, 0)
	}
	f.clock.Advance(time.Hour)
	f.b.Done(f.allow(), breaker.Success, 0)
	f.wantState(breaker.Open)
	f.wantCounts(breaker.Counts{}) // outcomes count only while closed
	if got := f.snap().Consecutive; got != 0 {
		t.Fatalf("consecutive %d while open", got)
	}
	if got := f.b.RetryAfter(); got != 0 {
		t.Fatalf("RetryAfter %v", got)
	}
}

func TestMetricsOnly(t *testing.T) {
	s := baseSettings() // 3 failures in a row trip
	s.HalfOpenMaxRequests = 1
	f := newFixture(t, s)
	f.b.SetMode(breaker.MetricsOnly)

	f.fail(3)
	f.wantState(breaker.Open) // the machine tripped...
	tr := f.lastTransition()  // ...and the observer was told
	if tr.From != breaker.Closed || tr.To != breaker.Open || tr.Mode != breaker.MetricsOnly ||
		tr.Reason != breaker.ReasonConsecutiveFailures {
		t.Fatalf("transition %+v", tr)
	}

	// ...but nobody is rejected, and what the would-be-rejected requests say is not counted.
	before := f.snap()
	for range 10 {
		tk, err := f.b.Allow()
		if err != nil || !tk.WouldReject() || tk.Trial() {
			t.Fatalf("open, metrics only: Allow = (%+v, %v), want a would-reject ticket", tk, err)
		}
		f.b.Done(tk, breaker.Success, 0)
		f.b.Done(tk, breaker.Failure, time.Hour)
	}
	if after := f.snap(); after != before {
		t.Fatalf("would-reject outcomes counted:\nbefore %+v\nafter  %+v", before, after)
	}

	// Half-open: the trial is real, requests beyond the limit would be rejected.
	f.clock.Advance(10 * time.Second)
	trial := f.trial()
	if trial.WouldReject() {
		t.Fatalf("trial ticket %+v marked would-reject", trial)
	}
	extra, err := f.b.Allow()
	if err != nil || !extra.WouldReject() {
		t.Fatalf("half-open, no slot, metrics only: Allow = (%+v, %v)", extra, err)
	}
	f.b.Done(extra, breaker.Failure, 0) // not a trial: does not reopen
	f.wantState(breaker.HalfOpen)
	f.b.Done(trial, breaker.Success, 0)
	f.wantState(breaker.Closed)
	if tk := f.allow(); tk.WouldReject() {
		t.Fatalf("closed again: ticket %+v", tk)
	}
	f.wantReasons(breaker.ReasonConsecutiveFailures + "," + breaker.ReasonOpenTimeout + "," + breaker.ReasonTrialsSucceeded)
}

func TestSetModeSameModeIsNoop(t *testing.T) {
	f := newFixture(t, baseSettings())
	f.fail(2)
	tk := f.allow()
	gen := f.snap().Generation
	f.b.SetMode(breaker.Normal)
	if got := f.snap(); got.Generation != gen || got.Consecutive != 2 {
		t.Fatalf("SetMode(current mode) changed the generation or counts: %+v", got)
	}
	f.b.Done(tk, breaker.Failure, 0) // still current
	f.wantState(breaker.Open)
}

func TestResetRestoresNormalMode(t *testing.T) {
	f := newFixture(t, baseSettings())
	f.b.SetMode(breaker.ForcedOpen)
	f.b.Trip()
	f.b.Reset()
	if f.b.Mode() != breaker.Normal || f.b.State() != breaker.Closed || f.snap().Trips != 0 {
		t.Fatalf("after Reset: %+v", f.snap())
	}
	f.allow()
}

func TestStringsAndParse(t *testing.T) {
	for _, st := range []breaker.State{breaker.Closed, breaker.Open, breaker.HalfOpen} {
		got, err := breaker.ParseState(st.String())
		if err != nil || got != st {
			t.Errorf("ParseState(%q) = %v, %v", st.String(), got, err)
		}
	}
	for _, m := range []breaker.Mode{breaker.Normal, breaker.ForcedOpen, breaker.ForcedClosed, breaker.MetricsOnly} {
		got, err := breaker.ParseMode(m.String())
		if err != nil || got != m {
			t.Errorf("ParseMode(%q) = %v, %v", m.String(), got, err)
		}
	}
	if s := breaker.HalfOpen.String(); s != "half_open" {
		t.Errorf("HalfOpen = %q", s)
	}
	if s := breaker.State(7).String(); s != "state(7)" {
		t.Errorf("State(7) = %q", s)
	}
	if s := breaker.Mode(9).String(); s != "mode(9)" {
		t.Errorf("Mode(9) = %q", s)
	}
	if _, err := breaker.ParseState("half-open"); err == nil {
		t.Error("ParseState(half-open) accepted")
	}
	if _, err := breaker.ParseMode("FORCED_OPEN"); err == nil {
		t.Error("ParseMode(FORCED_OPEN) accepted")
	}
}

func TestCountsRates(t *testing.T) {
	c := breaker.Counts{Requests: 8, Failures: 2, Slow: 6}
	if c.FailureRate() != 25 || c.SlowRate() != 75 {
		t.Errorf("rates %v %v", c.FailureRate(), c.SlowRate())
	}
	if (breaker.Counts{}).FailureRate() != 0 || (breaker.Counts{}).SlowRate() != 0 {
		t.Error("rates of no requests are not 0")
	}
}
