package breaker

import (
	"errors"
	"fmt"
	"time"
)

// State is a circuit's state.
type State uint8

// The three states of a circuit.
const (
	Closed State = iota
	Open
	HalfOpen
)

var stateNames = [...]string{Closed: "closed", Open: "open", HalfOpen: "half_open"}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// ParseState parses a State's String form.
func ParseState(s string) (State, error) {
	for i, n := range stateNames {
		if n == s {
			return State(i), nil
		}
	}
	return 0, fmt.Errorf("unknown state %q", s)
}

// Mode is an operator's override of the state machine.
type Mode uint8

// Modes an operator can set.
const (
	Normal       Mode = iota // the state machine decides
	ForcedOpen               // reject every request
	ForcedClosed             // admit every request, never trip (breaker disabled)
	MetricsOnly              // run the machine, report would-be rejections, admit everything
)

var modeNames = [...]string{Normal: "normal", ForcedOpen: "forced_open", ForcedClosed: "forced_closed", MetricsOnly: "metrics_only"}

func (m Mode) String() string {
	if int(m) < len(modeNames) {
		return modeNames[m]
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// ParseMode parses a Mode's String form.
func ParseMode(s string) (Mode, error) {
	for i, n := range modeNames {
		if n == s {
			return Mode(i), nil
		}
	}
	return 0, fmt.Errorf("unknown mode %q (want normal, forced_open, forced_closed or metrics_only)", s)
}

// Outcome is what the proxy learned about an admitted request.
type Outcome uint8

// Outcomes reported to Done.
const (
	Success Outcome = iota
	Failure
	Ignored // neither success nor failure: the client cancelled its own request
	// GatewayFailure is a Failure that is also a gateway error (the target refused or
	// reset the connection, timed out, or answered 502, 503 or 504). It counts as a
	// Failure for every rule, and also for ConsecutiveGatewayFailures.
	GatewayFailure
)

// Errors returned by Allow. Both are sentinels: compare with errors.Is.
var (
	ErrOpen          = errors.New("circuit open")
	ErrTooManyTrials = errors.New("circuit half-open: trial limit reached")
)

// Reasons a transition happened, as reported to the Observer.
const (
	ReasonConsecutiveFailures = "consecutive_failures"
	ReasonConsecutiveGateway  = "consecutive_gateway_failures"
	ReasonFailureRate         = "failure_rate"
	ReasonSlowCallRate        = "slow_call_rate"
	ReasonOpenTimeout         = "open_timeout"
	ReasonTrialFailed         = "trial_failed"
	ReasonRetryAfter          = "retry_after" // the upstream asked for a pause (DonePause)
	ReasonTrialsSucceeded     = "trials_succeeded"
	ReasonMode                = "mode"
	ReasonReset               = "reset"
	ReasonShared              = "shared"
)

// Settings are one breaker's thresholds. The zero value of a threshold disables its rule;
// config.DefaultUpstream holds the defaults fuseproxy ships.
type Settings struct {
	// ConsecutiveFailures trips the circuit after this many failures in a row; 0 disables.
	ConsecutiveFailures int
	// ConsecutiveGatewayFailures trips the circuit after this many gateway failures
	// (outcome GatewayFailure) in a row: any other outcome Done counts ends the run (a
	// LateFailure neither counts towards it nor ends it); 0 disables. It is judged after
	// ConsecutiveFailures and before the rates.
	ConsecutiveGatewayFailures int
	// FailureRate trips the circuit when failures/requests in the window reach this
	// percentage (0-100]; 0 disables.
	FailureRate float64
	// SlowCallRate trips the circuit when slow calls/requests in the window reach this
	// percentage; 0 disables.
	SlowCallRate float64
	// SlowCallDuration is the latency above which a call counts as slow.
	SlowCallDuration time.Duration
	// MinimumRequests is the window volume below which the rate rules stay quiet.
	MinimumRequests int
	// Window is the sliding window's span, split into Buckets buckets. Zero values
	// mean 10 s and 10 buckets.
	Window  time.Duration
	Buckets int
	// OpenDuration is the first open period; each further trip without a full recovery
	// multiplies it by BackoffMultiplier (≥ 1), capped at MaxOpenDuration (0: no cap).
	OpenDuration      time.Duration
	BackoffMultiplier float64
	MaxOpenDuration   time.Duration
	// LinearBackoff makes the open period OpenDuration × trips (capped at
	// MaxOpenDuration) instead of the multiplier's geometric growth: Envoy's ejection
	// time. BackoffMultiplier is then unused.
	LinearBackoff bool
	// TripDecay: 0 means the trip count (which sets the backoff) resets when the circuit
	// closes. Otherwise the count is kept when the circuit closes and drops by one for
	// each full TripDecay it then stays closed, counted when it next trips (from the close
	// to that trip; not below 0) before the trip adds one: a target that stays healthy
	// earns back its ejection count one step at a time, and one that keeps failing keeps
	// its long ejections. Reset clears the count.
	TripDecay time.Duration
	// Jitter spreads each open period uniformly over ±Jitter of its length (0-1).
	Jitter float64
	// HalfOpenMaxRequests is how many trials may be in flight while half-open (0 means 1).
	HalfOpenMaxRequests int
	// SuccessThreshold is how many successful trials close the circuit (0 means 1).
	SuccessThreshold int
	// Mode is the initial operator mode; SetMode, Reset and a shared store change the
	// mode in effect (Mode()), not this field.
	Mode Mode
}

// Counts are the window's totals.
type Counts struct {
	Requests uint32 `json:"requests"`
	Failures uint32 `json:"failures"`
	Slow     uint32 `json:"slow"`
}

// FailureRate is Failures/Requests as a percentage (0 when there were no requests).
func (c Counts) FailureRate() float64 { return pct(c.Failures, c.Requests) }

// SlowRate is Slow/Requests as a percentage.
func (c Counts) SlowRate() float64 { return pct(c.Slow, c.Requests) }

func pct(n, d uint32) float64 {
	if d == 0 {
		return 0
	}
	return 100 * float64(n) / float64(d)
}

// Transition is one change of state, reported to the Observer after it happened.
type Transition struct {
	Upstream    string
	From, To    State
	Mode        Mode
	Reason      string
	Generation  uint64
	Counts      Counts        // the window when the decision was taken
	Consecutive int           // consecutive failures when the decision was taken
	OpenFor     time.Duration // the open period when To is Open
}

// Observer is told about every transition, after the breaker's lock is released.
// It must not block: fuseproxy's observers log, count and enqueue.
type Observer interface {
	OnTransition(Transition)
}

// Clock is a monotonic clock: only differences between readings matter.
type Clock interface {
	Now() time.Duration
}

type systemClock struct{ start time.Time }

func (c systemClock) Now() time.Duration { return time.Since(c.start) }

// SystemClock returns the process's monotonic clock.
func SystemClock() Clock { return systemClock{start: time.Now()} }
