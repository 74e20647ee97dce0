package breaker

import "time"

// SetMode sets the operator mode. A change starts a new generation, so outcomes of
// requests admitted under the old mode are dropped. The state is kept.
func (b *Breaker) SetMode(m Mode) {
	b.mu.Lock()
	st, old, _ := b.load()
	if m != old {
		b.resetGenerationLocked()
		b.store(st, m, b.generation()+1)
	}
	b.mu.Unlock()
}

// Trip opens the circuit now (an operator's "open"), for the open period the backoff
// gives; on an open circuit it starts the next, longer period.
func (b *Breaker) Trip() {
	b.mu.Lock()
	tr := b.openLocked(b.clock.Now(), ReasonMode)
	b.mu.Unlock()
	b.after(tr, false)
}

// Close closes the circuit now (an operator's "close"); the backoff starts over, unless
// TripDecay keeps the trip count as any close does (Reset clears it). On a closed circuit
// it does nothing (Reset also clears the counts).
func (b *Breaker) Close() {
	b.mu.Lock()
	var tr Transition
	if b.State() != Closed {
		tr = b.transitionLocked(b.clock.Now(), Closed, ReasonMode)
	}
	b.mu.Unlock()
	b.after(tr, false)
}

// Reset returns the breaker to closed, normal mode, with empty counts and no backoff
// (the trip count is cleared whatever TripDecay says).
func (b *Breaker) Reset() {
	b.mu.Lock()
	st, _, _ := b.load()
	gen := b.generation()
	now := b.clock.Now()
	tr := Transition{Upstream: b.name, From: st, To: Closed, Mode: Normal, Reason: ReasonReset,
		Generation: gen + 1, Counts: b.win.sum(now), Consecutive: b.consecutive}
	b.trips, b.closedAt = 0, now
	b.resetGenerationLocked()
	b.store(Closed, Normal, gen+1)
	b.mu.Unlock()
	if st != Closed {
		b.after(tr, false)
	}
}

// Settings returns the settings in effect.
func (b *Breaker) Settings() Settings {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.s
}

// SetSettings applies new thresholds to the existing circuit without losing its state or
// counts (a config reload). If the window's shape changes, its totals move into the
// current bucket of the new window. The mode is not changed: it belongs to the operator.
func (b *Breaker) SetSettings(s Settings) {
	s = normalize(s)
	b.mu.Lock()
	defer b.mu.Unlock()
	s.Mode = b.s.Mode
	if !b.win.sameShape(s.Window, s.Buckets) {
		now := b.clock.Now()
		c := b.win.sum(now)
		b.win = newWindow(s.Window, s.Buckets)
		b.win.addCounts(now, c)
	}
	b.s = s
	b.openDuration.Store(int64(s.OpenDuration))
}

// Snapshot is a breaker's state as the admin API shows it.
type Snapshot struct {
	Name           string
	State          State
	Mode           Mode
	Generation     uint64
	Counts         Counts // the current window
	Consecutive    int
	GatewayRun     int // consecutive gateway failures (ConsecutiveGatewayFailures)
	Trips          int
	OpenedAgo      time.Duration // time since the circuit last opened (when not closed)
	OpenRemaining  time.Duration // time left in the open period (when open)
	OpenFor        time.Duration // length of the current open period (when open)
	TrialsInFlight int
	Permits        int
	Shared         bool // decisions come from the shared store
}

// Snapshot returns the breaker's current state.
func (b *Breaker) Snapshot() Snapshot {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.clock.Now()
	st, m, _ := b.load()
	sn := Snapshot{
		Name: b.name, State: st, Mode: m, Generation: b.generation(), Counts: b.win.sum(now),
		Consecutive: b.consecutive, GatewayRun: b.gatewayRun, Trips: b.trips, TrialsInFlight: b.trialsInFlight,
		Permits: b.permits, Shared: b.shared,
	}
	if st != Closed {
		sn.OpenedAgo = now - b.openedAt
	}
	if st == Open {
		sn.OpenFor = b.openFor
		sn.OpenRemaining = max(time.Duration(b.openUntil.Load())-now, 0)
	}
	return sn
}

// State returns the current state.
func (b *Breaker) State() State {
	st, _, _ := b.load()
	return st
}

// Passing reports whether the circuit lets every request through: closed and not forced
// open, or forced closed, or metrics only. It is false while the circuit is open, half-
// open (only trials pass) or forced open. Lock-free, with no side effect (unlike Allow,
// it never takes a trial slot): the proxy uses it to tell an ejected target.
func (b *Breaker) Passing() bool {
	st, m, _ := b.load()
	return m == ForcedClosed || m == MetricsOnly || (st == Closed && m != ForcedOpen)
}

// Mode returns the current operator mode.
func (b *Breaker) Mode() Mode {
	_, m, _ := b.load()
	return m
}

// TrialRetryAfter is what RetryAfter answers once the open period is over but requests
// are still rejected: the trials in flight decide within about a request's time.
const TrialRetryAfter = time.Second

// RetryAfter is how long a rejected client should wait: the rest of the open period;
// TrialRetryAfter once it is over but requests are still rejected (half-open with every
// trial slot taken, or waiting for the shared store's permits); the first open period
// while the circuit is forced open. It is 0 when requests are admitted.
func (b *Breaker) RetryAfter() time.Duration {
	st, m, _ := b.load()
	switch {
	case m == ForcedClosed || (st == Closed && m != ForcedOpen):
		return 0
	case m == ForcedOpen:
		return time.Duration(b.openDuration.Load())
	case st == Open:
		if d := time.Duration(b.openUntil.Load()) - b.clock.Now(); d > 0 {
			return d
		}
		if !b.Shared() {
			return 0 // the next request starts the half-open period
		}
	}
	return TrialRetryAfter
}
