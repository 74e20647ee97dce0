package store

import (
	"errors"
	"time"
)

// Transition is one fleet transition of a circuit as the store recorded it, appended by
// the code that made the transition, atomically with it (the Redis script, the
// PostgreSQL function, the memory store's breaker callback), so that each transition is
// recorded exactly once whichever replica made it.
type Transition struct {
	Upstream string `json:"upstream"`
	// Key is the per-key circuit's key; empty for an upstream's (or a target's) circuit.
	Key  string `json:"key"`
	From string `json:"from"` // closed, open or half_open
	To   string `json:"to"`
	// Reason is why: the trip reason (consecutive_failures, failure_rate, ...),
	// open_timeout, trial_success, an operator's command, ...
	Reason string `json:"reason"`
	// Requests, Failures and Slow are the window's counts at the transition; Consecutive
	// the consecutive failures.
	Requests    int64 `json:"requests"`
	Failures    int64 `json:"failures"`
	Slow        int64 `json:"slow"`
	Consecutive int64 `json:"consecutive"`
	// Generation is the circuit's generation after the transition.
	Generation uint64 `json:"generation"`
	// Replica is the replica whose call made the transition; empty when the store's clock
	// made it (an open period that ended with no replica asking).
	Replica string `json:"replica"`
	// At is when, on the store's clock (Redis's, PostgreSQL's, or the replica's for the
	// memory store).
	At time.Time `json:"at"`
}

// HistoryOptions bound what a store keeps of each circuit's transitions
// (store.history in the config, whose defaults live in config.Default()).
type HistoryOptions struct {
	// Retention is how long a transition is kept; 0 disables the history (nothing is
	// recorded, History returns ErrHistoryDisabled).
	Retention time.Duration
	// MaxEntries is how many transitions are kept per circuit at most.
	MaxEntries int
}

// Enabled reports whether transitions are recorded.
func (o HistoryOptions) Enabled() bool { return o.Retention > 0 && o.MaxEntries > 0 }

// ErrHistoryDisabled is returned by History when store.history.retention is 0.
var ErrHistoryDisabled = errors.New("transition history disabled (store.history.retention is 0)")
