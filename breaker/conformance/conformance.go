// Package conformance is the table every implementation of the circuit state machine is
// held to. The rules exist twice: in Go (breaker.Breaker, which decides alone with the
// memory store) and in the Redis store's Lua scripts (which decide for a fleet). A new
// store that decides anything itself (a SQL function, say) runs the same rows.
//
// A row drives a fresh circuit with its Setup steps, checks it reached From, applies its
// Event steps and compares what an implementation shows with Want. Each implementation
// supplies a Driver that turns steps into its own calls; the table and Run are shared, so
// a rule changed in one implementation only fails its row there.
package conformance

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// Settings are the thresholds every row runs with: 3 failures in a row trip; 50 % of
// failures or of slow calls (over 1 s) trip once the window holds 10 requests; open 10 s,
// doubling up to 30 s, no jitter; 2 trials in flight, 2 successes close.
func Settings() breaker.Settings {
	return breaker.Settings{
		ConsecutiveFailures: 3,
		FailureRate:         50,
		SlowCallRate:        50,
		SlowCallDuration:    time.Second,
		MinimumRequests:     10,
		Window:              10 * time.Second,
		Buckets:             10,
		OpenDuration:        10 * time.Second,
		BackoffMultiplier:   2,
		MaxOpenDuration:     30 * time.Second,
		HalfOpenMaxRequests: 2,
		SuccessThreshold:    2,
	}
}

// Kind is what a step does.
type Kind int

const (
	// Success, Slow and Failure are one closed-state request and its outcome, counted
	// where the implementation counts (Slow is a success slower than SlowCallDuration).
	// While the circuit is not closed they change nothing.
	Success Kind = iota + 1
	Slow
	Failure
	// Elapse lets the open period end (and nothing else happen).
	Elapse
	// Admit asks for a request to be admitted: an open circuit whose period ended goes
	// half-open, and a half-open circuit with a free slot admits a trial, which stays in
	// flight until TrialSuccess or TrialFailure finishes the oldest one in flight.
	Admit
	TrialSuccess
	TrialFailure
	// Operator commands: Open (trip now), Close, Reset, and Mode (set Step.Mode).
	Open
	Close
	Reset
	Mode
)

func (k Kind) String() string {
	return [...]string{"?", "success", "slow", "failure", "elapse", "admit", "trial-success",
		"trial-failure", "open", "close", "reset", "mode"}[k]
}

// Step is one thing that happens to a circuit.
type Step struct {
	Kind Kind
	Mode breaker.Mode // for Mode
}

// Observed is what an implementation shows after a row's event.
type Observed struct {
	State breaker.State
	Mode  breaker.Mode
	// Reasons are the reasons of the transitions the event caused, in order, joined by
	// commas: a change of state, or a new open period (a trip while open).
	Reasons string
	Trips   int
	OpenFor time.Duration // the open period, when open
	// Closed only: the window's totals and the run of consecutive failures.
	Counts      breaker.Counts
	Consecutive int
	// Half-open only: trials in flight.
	InFlight int
}

// Row is one rule.
type Row struct {
	Name  string
	Setup []Step
	From  breaker.State
	Event []Step
	Want  Observed
}

// Driver is one implementation, fresh for every row.
type Driver interface {
	// Do applies a step.
	Do(t testing.TB, s Step)
	// Observe reports the implementation's state, with the reasons of the transitions
	// since the last call to Observe (or since the start).
	Observe(t testing.TB) Observed
}

// Run runs every row against a fresh driver from newDriver, each as a subtest.
func Run(t *testing.T, newDriver func(t testing.TB) Driver) {
	for _, row := range Rows() {
		t.Run(row.Name, func(t *testing.T) {
			t.Parallel()
			d := newDriver(t)
			for _, s := range row.Setup {
				d.Do(t, s)
			}
			if got := d.Observe(t); got.State != row.From {
				t.Fatalf("after the setup %s: %v, want %v (%+v)", Steps(row.Setup), got.State, row.From, got)
			}
			for _, s := range row.Event {
				d.Do(t, s)
			}
			if got := d.Observe(t); got != row.Want {
				t.Errorf("%s, then %s:\n got %+v\nwant %+v", Steps(row.Setup), Steps(row.Event), got, row.Want)
			}
		})
	}
}

// Steps names steps for messages.
func Steps(ss []Step) string {
	var b []string
	for _, s := range ss {
		if s.Kind == Mode {
			b = append(b, fmt.Sprintf("mode(%v)", s.Mode))
		} else {
			b = append(b, s.Kind.String())
		}
	}
	return "[" + strings.Join(b, " ") + "]"
}

// history turns "SFW" into steps: S success, F failure, W slow success.
func history(h string) []Step {
	var ss []Step
	for _, c := range h {
		ss = append(ss, Step{Kind: map[rune]Kind{'S': Success, 'F': Failure, 'W': Slow}[c]})
	}
	return ss
}

func steps(ks ...Kind) []Step {
	var ss []Step
	for _, k := range ks {
		ss = append(ss, Step{Kind: k})
	}
	return ss
}

func join(parts ...[]Step) []Step {
	var ss []Step
	for _, p := range parts {
		ss = append(ss, p...)
	}
	return ss
}

func mode(m breaker.Mode) []Step { return []Step{{Kind: Mode, Mode: m}} }

// Rows is the table.
func Rows() []Row {
	const (
		closed   = breaker.Closed
		open     = breaker.Open
		halfOpen = breaker.HalfOpen
	)
	s10, s20, s30 := 10*time.Second, 20*time.Second, 30*time.Second
	tripped := history("FFF")                        // open, 1 trip, 10 s
	halfOpen1 := join(tripped, steps(Elapse, Admit)) // half-open, 1 trial in flight
	halfOpen2 := join(halfOpen1, steps(Admit))       // 2 in flight: no free slot
	counts := func(r, f, s uint32) breaker.Counts { return breaker.Counts{Requests: r, Failures: f, Slow: s} }
	return []Row{
		// Closed: the trip rules, in their order.
		{"consecutive failures trip", history("FF"), closed, history("F"),
			Observed{State: open, Reasons: breaker.ReasonConsecutiveFailures, Trips: 1, OpenFor: s10}},
		{"a success ends the run", history("FF"), closed, history("S"),
			Observed{State: closed, Counts: counts(3, 2, 0)}},
		{"a broken run does not trip", history("FFSF"), closed, history("F"),
			Observed{State: closed, Counts: counts(5, 4, 0), Consecutive: 2}},
		{"the failure rate trips at the minimum volume", history("FSFSFSFSF"), closed, history("S"),
			Observed{State: open, Reasons: breaker.ReasonFailureRate, Trips: 1, OpenFor: s10}},
		{"the failure rate waits for the minimum volume", history("SFSFSFSF"), closed, history("F"),
			Observed{State: closed, Counts: counts(9, 5, 0), Consecutive: 2}},
		{"a failure rate under the threshold does not trip", history("SFSSFSSFS"), closed, history("S"),
			Observed{State: closed, Counts: counts(10, 3, 0)}},
		{"the slow call rate trips", history("WWWWSSSSS"), closed, history("W"),
			Observed{State: open, Reasons: breaker.ReasonSlowCallRate, Trips: 1, OpenFor: s10}},
		{"the failure rate is judged before the slow call rate", history("WFWFWFWFW"), closed, history("F"),
			Observed{State: open, Reasons: breaker.ReasonFailureRate, Trips: 1, OpenFor: s10}},
		{"consecutive failures are judged before the failure rate", history("SFSFSFSFF"), closed, history("F"),
			Observed{State: open, Reasons: breaker.ReasonConsecutiveFailures, Trips: 1, OpenFor: s10}},

		// Open.
		{"an open circuit counts nothing", tripped, open, history("FFFS"),
			Observed{State: open, Trips: 1, OpenFor: s10}},
		{"an open circuit admits nothing before its period ends", tripped, open, steps(Admit),
			Observed{State: open, Trips: 1, OpenFor: s10}},
		{"the end of the open period moves to half-open on admission", tripped, open, steps(Elapse, Admit),
			Observed{State: halfOpen, Reasons: breaker.ReasonOpenTimeout, Trips: 1, InFlight: 1}},
		{"an operator's open on an open circuit starts the next period", tripped, open, steps(Open),
			Observed{State: open, Reasons: breaker.ReasonMode, Trips: 2, OpenFor: s20}},
		{"the backoff is capped", join(tripped, steps(Open, Open)), open, steps(Open),
			Observed{State: open, Reasons: breaker.ReasonMode, Trips: 4, OpenFor: s30}},
		{"an operator's close on an open circuit", tripped, open, steps(Close),
			Observed{State: closed, Reasons: breaker.ReasonMode}},
		{"reset on an open circuit", tripped, open, steps(Reset),
			Observed{State: closed, Reasons: breaker.ReasonReset}},
		{"a mode change keeps the state", tripped, open, mode(breaker.ForcedClosed),
			Observed{State: open, Mode: breaker.ForcedClosed, Trips: 1, OpenFor: s10}},

		// Half-open.
		{"one trial success of two", halfOpen1, halfOpen, steps(TrialSuccess),
			Observed{State: halfOpen, Trips: 1}},
		{"enough trial successes close", halfOpen2, halfOpen, steps(TrialSuccess, TrialSuccess),
			Observed{State: closed, Reasons: breaker.ReasonTrialsSucceeded}},
		{"a trial failure reopens for longer", halfOpen1, halfOpen, steps(TrialFailure),
			Observed{State: open, Reasons: breaker.ReasonTrialFailed, Trips: 2, OpenFor: s20}},
		{"a failure after a trial success still reopens", halfOpen2, halfOpen, steps(TrialSuccess, TrialFailure),
			Observed{State: open, Reasons: breaker.ReasonTrialFailed, Trips: 2, OpenFor: s20}},
		{"no trial beyond the limit", halfOpen2, halfOpen, steps(Admit),
			Observed{State: halfOpen, Trips: 1, InFlight: 2}},
		{"a finished trial frees its slot", halfOpen2, halfOpen, steps(TrialSuccess, Admit),
			Observed{State: halfOpen, Trips: 1, InFlight: 2}},
		{"an operator's close on a half-open circuit", halfOpen1, halfOpen, steps(Close),
			Observed{State: closed, Reasons: breaker.ReasonMode}},
		{"an operator's open on a half-open circuit", halfOpen1, halfOpen, steps(Open),
			Observed{State: open, Reasons: breaker.ReasonMode, Trips: 2, OpenFor: s20}},
		{"a recovery starts the backoff over", halfOpen2, halfOpen, join(steps(TrialSuccess, TrialSuccess), history("FFF")),
			Observed{State: open, Reasons: breaker.ReasonTrialsSucceeded + "," + breaker.ReasonConsecutiveFailures, Trips: 1, OpenFor: s10}},

		// Operators on a closed circuit.
		{"close on a closed circuit changes nothing", history("FF"), closed, steps(Close),
			Observed{State: closed, Counts: counts(2, 2, 0), Consecutive: 2}},
		{"reset on a closed circuit clears the counts", history("FF"), closed, steps(Reset),
			Observed{State: closed}},
		{"a mode change clears the counts", history("FF"), closed, join(mode(breaker.MetricsOnly), history("F")),
			Observed{State: closed, Mode: breaker.MetricsOnly, Counts: counts(1, 1, 0), Consecutive: 1}},
		{"metrics only still trips", mode(breaker.MetricsOnly), closed, history("FFF"),
			Observed{State: open, Mode: breaker.MetricsOnly, Reasons: breaker.ReasonConsecutiveFailures, Trips: 1, OpenFor: s10}},
		{"forced closed counts but does not trip", mode(breaker.ForcedClosed), closed, history("FFFFFFFFFF"),
			Observed{State: closed, Mode: breaker.ForcedClosed, Counts: counts(10, 10, 0), Consecutive: 10}},
		{"reset returns to normal mode", mode(breaker.ForcedOpen), closed, steps(Reset),
			Observed{State: closed}},
		{"an operator's open on a closed circuit", history("F"), closed, steps(Open),
			Observed{State: open, Reasons: breaker.ReasonMode, Trips: 1, OpenFor: s10}},
	}
}
