package breaker

import "time"

// Delta is what a shared breaker counted in the closed state since the store last took
// it. Tail is the number of failures after the last success in the batch; a batch with a
// success ends the fleet's run of consecutive failures before adding its Tail.
// GatewayTail and GatewayEnded are the same for the run of gateway failures
// (ConsecutiveGatewayFailures): the gateway failures after the batch's last other outcome
// (a success or a plain failure), and whether the batch had one, which ends the fleet's
// gateway run before GatewayTail is added.
type Delta struct {
	Generation uint64
	Counts
	Tail         uint32
	HadSuccess   bool
	GatewayTail  uint32
	GatewayEnded bool
	// Pause is the longest pause an upstream asked for in the batch (DonePause): the
	// store opens the circuit for it.
	Pause time.Duration
}

func (d *Delta) add(gen uint64, failure, slow bool) {
	d.Generation = gen
	d.Requests++
	if slow {
		d.Slow++
	}
	if failure {
		d.Failures++
		d.Tail++
	} else {
		d.HadSuccess = true
		d.Tail = 0
	}
}

// addGateway counts a request (already counted by add) in the batch's gateway run.
func (d *Delta) addGateway(gateway bool) {
	if gateway {
		d.GatewayTail++
	} else {
		d.GatewayEnded = true
		d.GatewayTail = 0
	}
}

// lateFailure takes back a success of generation gen as a failure (see
// Breaker.LateFailure). inDelta tells whether the success was counted into this delta;
// latest, whether no success was counted after it, and then cleared is the Tail it ended.
// The gateway run is not touched: the success ended it at its headers (see LateFailure).
func (d *Delta) lateFailure(gen uint64, inDelta, latest bool, cleared uint32) {
	if !inDelta || d.Requests <= d.Failures {
		d.add(gen, true, false) // the store has the success: add a failed request
		return
	}
	d.Failures++
	switch {
	case d.Failures == d.Requests: // no success left: the batch continues the fleet's run
		d.HadSuccess, d.Tail = false, d.Failures
	case latest: // the failures before it join those after it
		d.Tail += cleared + 1
	default:
		d.Tail++
	}
}

// TrialReport is what a shared breaker's finished trials said since the store last took
// it. Released counts trials whose client cancelled: their permits go back unused.
type TrialReport struct {
	Generation                    uint64
	Successes, Failures, Released int
	// Pause is the longest pause a trial's response asked for (DonePause): the store
	// opens the circuit for it rather than closing or backing off.
	Pause time.Duration
}

func (r *TrialReport) add(o Outcome) {
	switch o {
	case Success:
		r.Successes++
	case Failure, GatewayFailure:
		r.Failures++
	default:
		r.Released++
	}
}

func (r TrialReport) empty() bool { return r.Successes+r.Failures+r.Released == 0 }

// SharedState is a circuit's state as a shared store holds it.
type SharedState struct {
	State      State
	Mode       Mode
	Generation uint64
	// OpenRemaining is how long the open period still runs, measured on the store's clock;
	// the breaker turns it into a deadline on its own monotonic clock.
	OpenRemaining time.Duration
	OpenFor       time.Duration
	Trips         int
	// ClosedFor is, when State is Closed, how long ago the circuit closed, measured on the
	// store's clock: with TripDecay, Trips drop by one for each TripDecay closed at the
	// next trip, which the breaker decides itself when the store is unreachable.
	ClosedFor time.Duration
	// Reason is why the shared state last changed, as the store recorded it; the
	// Transition reported when it is applied carries it (ReasonShared when empty).
	Reason string
}

// SetShared hands decisions to a shared store (true) or takes them back (false), for
// example while the store is unreachable: the breaker then trips, half-opens and closes
// on its own counts, starting from the last shared state it applied.
func (b *Breaker) SetShared(shared bool) {
	b.mu.Lock()
	b.shared = shared
	b.permits = 0
	b.delta = Delta{}
	b.deltaFrom = b.successes
	b.trials = TrialReport{}
	b.mu.Unlock()
}

// Shared reports whether decisions belong to a shared store.
func (b *Breaker) Shared() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.shared
}

// Apply adopts a state read from the shared store if its generation is newer than the
// breaker's, or unconditionally when force is set (a resync). It reports whether the
// state was adopted. Local counts of the old generation are dropped.
func (b *Breaker) Apply(s SharedState, force bool) bool {
	b.mu.Lock()
	from, m, _ := b.load()
	gen := b.generation()
	if !force && s.Generation <= gen {
		b.mu.Unlock()
		return false
	}
	if force && s.Generation == gen && s.State == from && s.Mode == m {
		b.mu.Unlock()
		return false
	}
	now := b.clock.Now()
	reason := s.Reason
	if reason == "" {
		reason = ReasonShared
	}
	tr := Transition{Upstream: b.name, From: from, To: s.State, Mode: s.Mode, Reason: reason,
		Generation: s.Generation, Counts: b.win.sum(now), Consecutive: b.consecutive}
	if s.State == Open { // as a local transition reports it: the open period, only when opening
		tr.OpenFor = s.OpenFor
	}
	b.trips = s.Trips
	if s.State == Closed {
		b.closedAt = now - s.ClosedFor
	}
	if s.State == Open || (s.State == HalfOpen && from == Closed) {
		b.openedAt = now - (s.OpenFor - s.OpenRemaining)
	}
	if s.State == Open {
		b.openFor = s.OpenFor
		b.openUntil.Store(int64(now + s.OpenRemaining))
	}
	n, until := b.advanceFor(s.State, s.Generation)
	b.resetGenerationLocked()
	b.permits, b.permitsUntil = n, until
	if force {
		b.epoch++ // tickets of the generation number being reused stay fenced
	}
	b.store(s.State, s.Mode, s.Generation)
	b.mu.Unlock()
	if from != s.State {
		b.after(tr, false)
	}
	return true
}

// TakeDelta returns and clears the closed-state counts gathered since the last call; ok is
// false when there are none.
func (b *Breaker) TakeDelta() (d Delta, ok bool) {
	b.mu.Lock()
	d, b.delta = b.delta, Delta{}
	b.deltaFrom = b.successes
	if b.trials.empty() {
		b.news.Store(false)
	}
	b.mu.Unlock()
	return d, d.Requests > 0
}

// TakeTrials returns and clears the trial outcomes gathered since the last call.
func (b *Breaker) TakeTrials() (r TrialReport, ok bool) {
	b.mu.Lock()
	r, b.trials = b.trials, TrialReport{}
	r.Generation = b.generation()
	if b.delta == (Delta{}) {
		b.news.Store(false)
	}
	b.mu.Unlock()
	return r, !r.empty()
}

// HasNews reports, without taking the lock, whether a shared breaker has counts or trial
// outcomes for TakeDelta or TakeTrials. It never reports false while either has
// something; it may report true when both are empty (after SetShared, Apply or a new
// generation emptied them, until the next TakeDelta and TakeTrials), which costs the
// store one locked look. A store can skip a breaker without news (and with nothing else
// to do) without contending for its lock.
func (b *Breaker) HasNews() bool { return b.news.Load() }

// noteNews records that the delta or the trial report gained something. b.mu is held.
func (b *Breaker) noteNews() {
	if !b.news.Load() {
		b.news.Store(true)
	}
}

// NeedsPermits returns how many trial permits a shared breaker should ask its store for:
// requests were rejected for want of one since the last grant, and its open period has
// ended or it is half-open with free trial slots. An idle replica asks for none, so it
// never holds permits another replica's traffic could use.
func (b *Breaker) NeedsPermits() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	st, m, _ := b.load()
	if !b.shared || !b.wanted || m == ForcedOpen || m == ForcedClosed {
		return 0
	}
	switch st {
	case Open:
		if int64(b.clock.Now()) >= b.openUntil.Load() {
			return b.s.HalfOpenMaxRequests
		}
	case HalfOpen:
		if b.permits == 0 || b.clock.Now() >= b.permitsUntil {
			return b.s.HalfOpenMaxRequests - b.trialsInFlight
		}
	}
	return 0
}

// GrantPermits adds n trial permits granted by the store for generation gen, valid for
// ttl (their leases' lifetime); permits for another generation are refused (the store's
// leases then expire unused).
func (b *Breaker) GrantPermits(gen uint64, n int, ttl time.Duration) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.generation() != gen || b.State() != HalfOpen {
		return false
	}
	now := b.clock.Now()
	if b.permits > 0 && now >= b.permitsUntil {
		b.permits = 0
	}
	b.permits += n
	b.permitsUntil = now + ttl
	b.permitGen = b.generation()
	b.wanted, b.unusedAdvance = false, false
	return true
}

// OpenLeft returns, without taking the lock, how long the open period has left by the
// breaker's clock: 0 unless the circuit is open in normal or metrics-only mode (forced
// open has no end of its own). Until then a shared breaker needs nothing from its store
// (no permit, no count), so a store may leave it unpolled until shortly before.
func (b *Breaker) OpenLeft() time.Duration {
	st, m, _ := b.load()
	if st != Open || (m != Normal && m != MetricsOnly) {
		return 0
	}
	return max(time.Duration(b.openUntil.Load())-b.clock.Now(), 0)
}

// NeedsAdvance reports whether a shared breaker should ask its store now for a trial
// permit in advance (GrantAdvance): it is open in normal or metrics-only mode, it
// rejected a request during this open period (its replica has traffic for the
// circuit), it holds no permit for the half-open period that follows, and the open
// period ends within lead. An idle replica asks for none, so it never holds a trial slot
// another replica's traffic could use.
func (b *Breaker) NeedsAdvance(lead time.Duration) bool {
	if !b.demand.Load() {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	st, m, _ := b.load()
	if !b.shared || st != Open || (m != Normal && m != MetricsOnly) {
		return false
	}
	now := b.clock.Now()
	if b.permits > 0 && b.permitGen == b.generation()+1 && now < b.permitsUntil {
		return false
	}
	return time.Duration(b.openUntil.Load())-now <= lead
}

// GrantAdvance adds n trial permits the store granted in advance, while the circuit is
// open in generation gen, for the half-open period that follows (generation gen+1). They
// are valid until ttl (their leases' lifetime) after the open period ends. The first
// request after the open period then moves the breaker to half-open itself (as the store
// does when a replica next calls it) and is admitted as a trial on one of them, without
// waiting for the store. It refuses (false) unless the breaker is shared and open in
// generation gen, or already half-open in gen+1: the store then gives the leases back.
func (b *Breaker) GrantAdvance(gen uint64, n int, ttl time.Duration) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	st, cur := b.State(), b.generation()
	// The breaker may have adopted that half-open period (another replica started it)
	// while the grant was on its way: the permits are for it all the same.
	if !b.shared || n <= 0 || !(st == Open && cur == gen || st == HalfOpen && cur == gen+1) {
		return false
	}
	if b.permits > 0 && (b.permitGen != gen+1 || b.clock.Now() >= b.permitsUntil) {
		b.permits = 0
	}
	b.permits += n
	b.permitGen = gen + 1
	b.permitsUntil = time.Duration(b.openUntil.Load()) + ttl
	b.unusedAdvance = true
	return true
}

// DropAdvance takes back the permits granted in advance (GrantAdvance) that no request
// of this replica used when the open period ended more than after ago (its traffic went
// elsewhere), whether the breaker is still open or has adopted the half-open period
// from the store. It returns their generation and number, so that the store releases
// their leases for the other replicas' trials.
func (b *Breaker) DropAdvance(after time.Duration) (gen uint64, n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	st, _, _ := b.load()
	cur := b.generation()
	if !b.unusedAdvance || b.permits == 0 ||
		!(st == Open && b.permitGen == cur+1 || st == HalfOpen && b.permitGen == cur) ||
		b.clock.Now() < time.Duration(b.openUntil.Load())+after {
		return 0, 0
	}
	gen, n = b.permitGen, b.permits
	b.permits, b.unusedAdvance = 0, false
	return gen, n
}
