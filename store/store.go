// Package store is where breaker state lives: the seam between the breakers the proxy
// consults and the place they agree. The memory store keeps each replica's breakers to
// itself (one replica; Fuse's array store). The redis store makes a fleet of replicas act
// as one breaker (Fuse's cache store) without putting Redis on the request path: breakers
// decide from local state, and a background loop exchanges counts and state with Redis.
package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// Circuit is one upstream's breaker as a store keeps it.
type Circuit struct {
	// Breaker is the circuit's breaker, as a store sees it: a Redis store sets its
	// wake-up (SetWake) when it takes the circuit.
	Breaker breaker.Sync
	// MinReplicasReporting is the quorum: a trip needs failures reported by at least this
	// many distinct replicas within the window (shared stores only; 0 or 1: no quorum).
	MinReplicasReporting int
	// SettingsHash identifies the breaker settings, so replicas that disagree are noticed.
	SettingsHash string
	// TrialLease is how long a half-open trial permit is held before it expires unused
	// (a replica that dies holding one does not block recovery). The Redis store has no
	// default for it: Attach panics on a circuit without one.
	TrialLease time.Duration
}

// Op is an operator's command on a circuit.
type Op uint8

// Operator commands. They start at 1, so the zero Command is invalid.
const (
	OpOpen  Op = iota + 1 // open now
	OpClose               // close now
	OpReset               // close, clear counts and backoff, mode normal
	OpMode                // set Command.Mode
)

// Command is an operator's command; Mode is used by OpMode.
type Command struct {
	Op   Op
	Mode breaker.Mode
}

func (c Command) validate() error {
	if c.Op < OpOpen || c.Op > OpMode || c.Mode > breaker.MetricsOnly {
		return fmt.Errorf("invalid command: op %d, mode %d", c.Op, c.Mode)
	}
	return nil
}

// ErrUnknownCircuit is returned for a name no circuit has.
var ErrUnknownCircuit = errors.New("unknown circuit")

// Status is a store's health as the admin API and /readyz show it.
type Status struct {
	Driver    string    `json:"driver"`
	ReplicaID string    `json:"replica_id"`
	Degraded  bool      `json:"degraded"`
	Since     time.Time `json:"since,omitzero"` // when Degraded last changed
	LastError string    `json:"last_error,omitempty"`
}

// Store keeps breaker state. Attach, Control, Resync, Status and Inspect are safe to call
// concurrently with Run.
type Store interface {
	// Attach hands the store the whole set of circuits, at start and on every reload.
	// Circuits not in the set are forgotten.
	Attach(circuits map[string]Circuit)
	// Resync drops this replica's local view and re-reads every circuit from the store
	// (Fuse::flush()). fuseproxy calls it before serving, so a replica that starts while a
	// circuit is open rejects from its first request.
	Resync(ctx context.Context) error
	// Run does the store's background work until ctx ends, then flushes what is left.
	Run(ctx context.Context) error
	// Control applies an operator's command; shared stores apply it fleet-wide.
	Control(ctx context.Context, name string, c Command) error
	// Status reports the store's health.
	Status() Status
	// Inspect returns what the store holds for a circuit, for operators.
	Inspect(ctx context.Context, name string) (map[string]string, error)
	// Close releases connections. Call it after Run has returned.
	Close() error
	// Share hands the store the whole set of tallies to share with the fleet (a retry
	// budget's counts), by name, at start and on every reload. A shared store sends the
	// active ones with its exchanges and hands each the fleet's sums; the memory store
	// keeps nothing (each replica is its own fleet).
	Share(tallies map[string]Tally)
	// Claim takes or renews this replica's lease on key for ttl, and reports whether it
	// holds it: background work that one replica of a fleet should do at a time (active
	// health checks) calls it before each turn. The holder keeps the lease by claiming
	// again within ttl; when it stops, another replica gets it once ttl has passed since
	// its last claim. The memory store always grants it (each replica alone). An error
	// says the shared store could not be asked (ErrDegraded without I/O when it is
	// degraded); the caller decides whether to do the work on its own.
	Claim(ctx context.Context, key string, ttl time.Duration) (bool, error)
	// History returns a circuit's recorded transitions (see Transition), newest first, at
	// most limit of them (limit <= 0: all that are kept). ErrUnknownCircuit for a name no
	// circuit has; ErrHistoryDisabled when the history is off.
	History(ctx context.Context, name string, limit int) ([]Transition, error)
}

// ErrDegraded is returned by a shared store's Claim while it is degraded.
var ErrDegraded = errors.New("shared store degraded")

func unknown(name string) error { return fmt.Errorf("%w %q", ErrUnknownCircuit, name) }
