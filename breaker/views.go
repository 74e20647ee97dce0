package breaker

import "time"

// A Breaker serves three audiences. Each takes the view it needs, so that what one may do
// to a breaker is written in its signatures: the proxy cannot reset a circuit, an operator
// cannot take a store's counts.

// Gate is the request path's view: admit a request, report its outcome, take back a
// success whose body broke off. A rejection carries its retry hint (Ticket.RetryAfter).
type Gate interface {
	Allow() (Ticket, error)
	Done(t Ticket, o Outcome, elapsed time.Duration) Receipt
	DonePause(t Ticket, o Outcome, elapsed, pause time.Duration) Receipt
	LateFailure(r Receipt)
	Passing() bool
	Mode() Mode
}

// Control is operators' view: read the state and settings, and command the circuit.
type Control interface {
	Name() string
	Snapshot() Snapshot
	State() State
	Mode() Mode
	Settings() Settings
	SetSettings(s Settings)
	SetMode(m Mode)
	Trip()
	Close()
	Reset()
}

// Sync is a store's view: it hands decisions to the fleet (SetShared), takes what the
// breaker counted and reports, applies the fleet's state and grants trial permits; a
// store applies operators' commands through Control. SetWake gives the breaker the
// store's wake-up (see Breaker.SetWake).
type Sync interface {
	Control
	SetShared(shared bool)
	Shared() bool
	Apply(s SharedState, force bool) bool
	TakeDelta() (d Delta, ok bool)
	TakeTrials() (r TrialReport, ok bool)
	HasNews() bool
	NeedsPermits() int
	GrantPermits(gen uint64, n int, ttl time.Duration) bool
	NeedsAdvance(lead time.Duration) bool
	OpenLeft() time.Duration
	GrantAdvance(gen uint64, n int, ttl time.Duration) bool
	DropAdvance(after time.Duration) (gen uint64, n int)
	SetWake(wake func())
}

var (
	_ Gate    = (*Breaker)(nil)
	_ Control = (*Breaker)(nil)
	_ Sync    = (*Breaker)(nil)
)

// SetWake sets what the breaker calls, without blocking and without its lock held, when
// its store should run now: its open period ended and it waits for trial permits, or a
// trial finished and its outcome should be reported at once. A store sets it when it
// takes the breaker (Attach); nil clears it.
func (b *Breaker) SetWake(wake func()) {
	if wake == nil {
		b.wake.Store(nil)
		return
	}
	b.wake.Store(&wake)
}
