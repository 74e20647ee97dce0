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
	// GatewayFailure is a closed-state request that failed with a gateway error, and
	// TrialGatewayFailure finishes the oldest trial in flight with one.
	GatewayFailure
	TrialGatewayFailure
	// Wait lets Step.For pass on a closed circuit whose window is empty (as after a
	// close): what it may change is the trip count's decay (TripDecay).
	Wait
	// Configure replaces the thresholds with Step.Settings, as a config reload does. Rows
	// that need other settings than Settings() start with it.
	Configure
	// Pause is a closed-state request that succeeded with an answer asking for a pause
	// of Step.For (the upstream's Retry-After: breaker.DonePause); TrialPause finishes the
	// oldest trial in flight with a failure asking for one.
	Pause
	TrialPause
)

func (k Kind) String() string {
	return [...]string{"?", "success", "slow", "failure", "elapse", "admit", "trial-success",
		"trial-failure", "open", "close", "reset", "mode", "gateway-failure",
		"trial-gateway-failure", "wait", "configure", "pause", "trial-pause"}[k]
}

// Step is one thing that happens to a circuit.
type Step struct {
	Kind     Kind
	Mode     breaker.Mode      // for Mode
	For      time.Duration     // for Wait and Pause
	Settings *breaker.Settings // for Configure
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
	// Closed only: the window's totals, the run of consecutive failures and the run of
	// consecutive gateway failures.
	Counts      breaker.Counts
	Consecutive int
	GatewayRun  int
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
		switch s.Kind {
		case Mode:
			b = append(b, fmt.Sprintf("mode(%v)", s.Mode))
		case Wait:
			b = append(b, fmt.Sprintf("wait(%v)", s.For))
		default:
			b = append(b, s.Kind.String())
		}
	}
	return "[" + strings.Join(b, " ") + "]"
}

// history turns "SFWG" into steps: S success, F failure, W slow success, G gateway failure.
func history(h string) []Step {
	var ss []Step
	for _, c := range h {
		ss = append(ss, Step{Kind: map[rune]Kind{'S': Success, 'F': Failure, 'W': Slow, 'G': GatewayFailure}[c]})
	}
	return ss
}

// configure starts a row with Settings() changed by tune.
func configure(tune func(s *breaker.Settings)) []Step {
	s := Settings()
	tune(&s)
	return []Step{{Kind: Configure, Settings: &s}}
}

func wait(d time.Duration) []Step { return []Step{{Kind: Wait, For: d}} }

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

	// Per-target ejection's rules (config.Outlier.Settings). gateway: 2 gateway failures
	// in a row trip, 4 failures of any kind in a row. linear: open 10 s × trips up to 35 s
	// (doubling would give 10, 20, 35). decay: the trip count survives a close and drops by
	// one per minute closed.
	gateway := configure(func(s *breaker.Settings) { s.ConsecutiveGatewayFailures, s.ConsecutiveFailures = 2, 4 })
	linear := configure(func(s *breaker.Settings) { s.LinearBackoff, s.MaxOpenDuration = true, 35*time.Second })
	decay := configure(func(s *breaker.Settings) { s.TripDecay = time.Minute })
	recover := steps(Elapse, Admit, Admit, TrialSuccess, TrialSuccess)
	decayed2 := join(decay, tripped, steps(Open), recover) // closed, 2 trips kept
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

		// An upstream's pause (Retry-After): open for the pause, capped at the max open
		// duration, the trip count unchanged; only in modes normal and metrics only.
		{"a pause opens the circuit for its length", nil, closed, []Step{{Kind: Pause, For: 7 * time.Second}},
			Observed{State: open, Reasons: breaker.ReasonRetryAfter, OpenFor: 7 * time.Second}},
		{"a pause is capped at the max open duration", nil, closed, []Step{{Kind: Pause, For: time.Hour}},
			Observed{State: open, Reasons: breaker.ReasonRetryAfter, OpenFor: Settings().MaxOpenDuration}},
		{"a pause keeps the backoff: the next trip is the first", []Step{{Kind: Pause, For: 7 * time.Second}}, open, steps(Elapse, Admit, TrialFailure),
			Observed{State: open, Reasons: breaker.ReasonOpenTimeout + "," + breaker.ReasonTrialFailed, Trips: 1, OpenFor: 10 * time.Second}},
		{"a pause while forced closed is ignored", mode(breaker.ForcedClosed), closed, []Step{{Kind: Pause, For: 7 * time.Second}},
			Observed{State: closed, Mode: breaker.ForcedClosed, Counts: counts(1, 0, 0)}},
		{"a trial's pause reopens for the pause, not the backoff", join(history("FFF"), steps(Elapse, Admit)), halfOpen, []Step{{Kind: TrialPause, For: 7 * time.Second}},
			Observed{State: open, Reasons: breaker.ReasonRetryAfter, Trips: 1, OpenFor: 7 * time.Second}},

		// Gateway failures: a run of their own, and failures for every other rule.
		{"consecutive gateway failures trip", join(gateway, history("G")), closed, history("G"),
			Observed{State: open, Reasons: breaker.ReasonConsecutiveGateway, Trips: 1, OpenFor: s10}},
		{"a plain failure ends the gateway run", join(gateway, history("G")), closed, history("FG"),
			Observed{State: closed, Counts: counts(3, 3, 0), Consecutive: 3, GatewayRun: 1}},
		{"a success ends the gateway run", join(gateway, history("G")), closed, history("SG"),
			Observed{State: closed, Counts: counts(3, 2, 0), Consecutive: 1, GatewayRun: 1}},
		{"the gateway run is judged before consecutive failures", join(gateway, history("FFG")), closed, history("G"),
			Observed{State: open, Reasons: breaker.ReasonConsecutiveGateway, Trips: 1, OpenFor: s10}},
		{"consecutive failures trip past a broken gateway run", join(gateway, history("GFF")), closed, history("F"),
			Observed{State: open, Reasons: breaker.ReasonConsecutiveFailures, Trips: 1, OpenFor: s10}},
		{"gateway failures count towards the failure rate", join(gateway, history("SGSGSGSGS")), closed, history("G"),
			Observed{State: open, Reasons: breaker.ReasonFailureRate, Trips: 1, OpenFor: s10}},
		{"gateway failures are consecutive failures", history("GF"), closed, history("G"),
			Observed{State: open, Reasons: breaker.ReasonConsecutiveFailures, Trips: 1, OpenFor: s10}},
		{"a gateway failure fails a trial", join(gateway, history("GG"), steps(Elapse, Admit)), halfOpen, steps(TrialGatewayFailure),
			Observed{State: open, Reasons: breaker.ReasonTrialFailed, Trips: 2, OpenFor: s20}},
		{"without the gateway rule a gateway run does not trip", history("G"), closed, history("SGG"),
			Observed{State: closed, Counts: counts(4, 3, 0), Consecutive: 2, GatewayRun: 2}},

		// Linear backoff: OpenDuration × trips, capped.
		{"linear backoff: the first period", linear, closed, history("FFF"),
			Observed{State: open, Reasons: breaker.ReasonConsecutiveFailures, Trips: 1, OpenFor: s10}},
		{"linear backoff: the second period is twice the first", join(linear, tripped), open, steps(Open),
			Observed{State: open, Reasons: breaker.ReasonMode, Trips: 2, OpenFor: s20}},
		{"linear backoff: the third period is three times the first", join(linear, tripped, steps(Open)), open, steps(Open),
			Observed{State: open, Reasons: breaker.ReasonMode, Trips: 3, OpenFor: s30}},
		{"linear backoff is capped", join(linear, tripped, steps(Open, Open)), open, steps(Open),
			Observed{State: open, Reasons: breaker.ReasonMode, Trips: 4, OpenFor: 35 * time.Second}},
		{"linear backoff after a failed trial", join(linear, halfOpen1), halfOpen, steps(TrialFailure),
			Observed{State: open, Reasons: breaker.ReasonTrialFailed, Trips: 2, OpenFor: s20}},

		// Trip decay: the count survives a close and decays with the time closed.
		{"trip decay keeps the trips when trials close", join(decay, tripped, steps(Elapse, Admit, Admit)), halfOpen,
			steps(TrialSuccess, TrialSuccess),
			Observed{State: closed, Reasons: breaker.ReasonTrialsSucceeded, Trips: 1}},
		{"trip decay: the next trip soon after counts on", decayed2, closed, join(wait(59*time.Second), history("FFF")),
			Observed{State: open, Reasons: breaker.ReasonConsecutiveFailures, Trips: 3, OpenFor: s30}},
		{"trip decay: one period closed takes one trip back", decayed2, closed, join(wait(time.Minute), history("FFF")),
			Observed{State: open, Reasons: breaker.ReasonConsecutiveFailures, Trips: 2, OpenFor: s20}},
		{"trip decay: two periods closed take two trips back", decayed2, closed, join(wait(2*time.Minute), history("FFF")),
			Observed{State: open, Reasons: breaker.ReasonConsecutiveFailures, Trips: 1, OpenFor: s10}},
		{"trip decay does not go below zero", decayed2, closed, join(wait(10*time.Minute), history("FFF")),
			Observed{State: open, Reasons: breaker.ReasonConsecutiveFailures, Trips: 1, OpenFor: s10}},
		{"trip decay: an operator's open counts the time closed too", decayed2, closed, join(wait(time.Minute), steps(Open)),
			Observed{State: open, Reasons: breaker.ReasonMode, Trips: 2, OpenFor: s20}},
		{"trip decay: an operator's close keeps the trips", join(decay, tripped), open, steps(Close),
			Observed{State: closed, Reasons: breaker.ReasonMode, Trips: 1}},
		{"trip decay: reset clears the trips", decayed2, closed, steps(Reset),
			Observed{State: closed}},
		{"trip decay: after a reset the backoff starts over", decayed2, closed, join(steps(Reset), history("FFF")),
			Observed{State: open, Reasons: breaker.ReasonConsecutiveFailures, Trips: 1, OpenFor: s10}},
		{"trip decay: a failed trial does not decay", join(decayed2, wait(5*time.Minute), history("FFF"), steps(Elapse, Admit)), halfOpen,
			steps(TrialFailure),
			Observed{State: open, Reasons: breaker.ReasonTrialFailed, Trips: 2, OpenFor: s20}},
	}
}
