package breaker

import (
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Options are a Breaker's collaborators. The zero value is usable: the system clock, no
// observer, math/rand/v2 for jitter and no store to wake.
type Options struct {
	Clock    Clock
	Observer Observer
	// Rand returns a uniform number in [0, 1) for jitter.
	Rand func() float64
}

// Breaker is one upstream's circuit breaker. It is safe for concurrent use; Allow in the
// closed state and Allow while open are lock-free, Done takes a short uncontended lock.
// Neither allocates.
//
// Its methods serve three audiences, each with a view of its own (views.go): the request
// path (Gate), operators (Control) and a shared store (Sync).
type Breaker struct {
	name  string
	clock Clock
	obs   Observer
	rand  func() float64
	wake  atomic.Pointer[func()] // set by a shared store (SetWake)

	// word packs generation<<12 | epoch<<4 | mode<<2 | state so Allow reads them in one
	// load. The epoch (8 bits) counts forced Applies: a resync may adopt a generation the
	// breaker has already used, and the epoch keeps tickets of the old one fenced.
	word atomic.Uint64
	// openUntil is the clock reading (ns) at which the open period ends.
	openUntil atomic.Int64
	// openDuration mirrors s.OpenDuration for RetryAfter while forced open (lock-free).
	openDuration atomic.Int64
	// news is set (under mu) when a shared breaker's delta or trial report gains
	// something, and cleared when they are taken: see HasNews.
	news atomic.Bool
	// demand is set when a request is rejected during an open period, and cleared with
	// each new generation: a shared breaker asks its store for a trial permit in advance
	// only if its replica has traffic for the circuit (see NeedsAdvance).
	demand atomic.Bool

	mu             sync.Mutex // guards everything below and every write to word/openUntil
	s              Settings
	win            window
	consecutive    int
	gatewayRun     int           // consecutive gateway failures (ConsecutiveGatewayFailures)
	trips          int           // trips since the circuit last closed after trials (see TripDecay)
	closedAt       time.Duration // clock reading when the circuit last closed (TripDecay)
	openedAt       time.Duration // clock reading when the circuit last opened
	openFor        time.Duration // length of the current open period
	trialsInFlight int
	trialSuccesses int
	permits        int           // shared: trial permits granted by the store and not yet used
	permitsUntil   time.Duration // shared: the permits' leases expire then
	permitGen      uint64        // shared: the generation the permits are for (gen+1 when granted in advance)
	delta          Delta
	trials         TrialReport
	epoch          uint64 // see word

	// Bookkeeping for LateFailure, which takes back a closed-state success.
	successes    uint64 // closed-state successes counted so far, never reset: Receipt.seq
	lastSuccess  uint64 // seq of the latest success; 0 once a late failure took it back
	cleared      int    // the run of consecutive failures the latest success ended
	deltaCleared uint32 // shared: the delta's Tail the latest success ended
	// The flags sit here, beside deltaCleared, where they fill its padding: the struct
	// stays within 512 bytes (a size class: one breaker per circuit, thousands of them).
	shared        bool   // decisions belong to a shared store
	unusedAdvance bool   // shared: the permits were granted in advance and no trial used one yet
	wanted        bool   // shared: a request was rejected for want of a permit
	deltaFrom     uint64 // shared: successes up to this seq are not in delta (taken or never put)
}

// New returns a closed breaker for the named upstream.
func New(name string, s Settings, o Options) *Breaker {
	if o.Clock == nil {
		o.Clock = SystemClock()
	}
	if o.Rand == nil {
		o.Rand = rand.Float64
	}
	b := &Breaker{name: name, clock: o.Clock, obs: o.Observer, rand: o.Rand}
	b.s = normalize(s)
	b.openDuration.Store(int64(b.s.OpenDuration))
	b.win = newWindow(b.s.Window, b.s.Buckets)
	b.store(Closed, b.s.Mode, 0)
	return b
}

func normalize(s Settings) Settings {
	if s.Window <= 0 {
		s.Window = 10 * time.Second
	}
	if s.Buckets <= 0 {
		s.Buckets = 10
	}
	if s.HalfOpenMaxRequests <= 0 {
		s.HalfOpenMaxRequests = 1
	}
	if s.SuccessThreshold <= 0 {
		s.SuccessThreshold = 1
	}
	if s.BackoffMultiplier < 1 {
		s.BackoffMultiplier = 1
	}
	if s.OpenDuration <= 0 {
		s.OpenDuration = 30 * time.Second
	}
	return s
}

// Name is the upstream's name.
func (b *Breaker) Name() string { return b.name }

func (b *Breaker) store(st State, m Mode, gen uint64) {
	b.word.Store(gen<<12 | (b.epoch&0xff)<<4 | uint64(m)<<2 | uint64(st))
}

// load returns the state, the mode and the stamp (generation<<8 | epoch) tickets carry.
func (b *Breaker) load() (State, Mode, uint64) {
	w := b.word.Load()
	return State(w & 3), Mode(w >> 2 & 3), w >> 4
}

// generation returns the generation alone.
func (b *Breaker) generation() uint64 { return b.word.Load() >> 12 }

// Ticket is an admission: hand it back to Done with the outcome.
type Ticket struct {
	gen   uint64        // stamp: generation<<8 | epoch
	retry time.Duration // a rejection's retry hint
	flags uint8
}

const (
	ticketTrial uint8 = 1 << iota
	ticketWouldReject
)

// Trial reports whether the request was admitted as a half-open trial.
func (t Ticket) Trial() bool { return t.flags&ticketTrial != 0 }

// WouldReject reports whether a metrics-only breaker admitted a request it would have
// rejected.
func (t Ticket) WouldReject() bool { return t.flags&ticketWouldReject != 0 }

// Generation is the generation the ticket was issued in.
func (t Ticket) Generation() uint64 { return t.gen >> 8 }

// RetryAfter is, for a request Allow rejected, how long its client should wait, as
// Breaker.RetryAfter tells at the moment of the rejection; 0 for an admitted request. The
// rejection carries it, so whoever answers the client need not ask the breaker again.
func (t Ticket) RetryAfter() time.Duration { return t.retry }

// Allow admits a request or rejects it with ErrOpen or ErrTooManyTrials.
func (b *Breaker) Allow() (Ticket, error) {
	st, m, gen := b.load()
	switch {
	case m == ForcedClosed || (st == Closed && m != ForcedOpen):
		return Ticket{gen: gen}, nil
	case m == ForcedOpen:
		return Ticket{retry: time.Duration(b.openDuration.Load())}, ErrOpen
	case st == Open:
		if left := b.openUntil.Load() - int64(b.clock.Now()); left > 0 {
			if !b.demand.Load() {
				b.demand.Store(true)
			}
			return b.reject(m, gen, ErrOpen, time.Duration(left))
		}
	}
	return b.allowSlow()
}

// reject rejects a request with err and a retry hint; a metrics-only breaker admits it,
// marked.
func (b *Breaker) reject(m Mode, gen uint64, err error, retry time.Duration) (Ticket, error) {
	if m == MetricsOnly {
		return Ticket{gen: gen, flags: ticketWouldReject}, nil
	}
	return Ticket{retry: retry}, err
}

func (b *Breaker) allowSlow() (Ticket, error) {
	var tr Transition
	b.mu.Lock()
	t, err, wake := b.allowLocked(&tr)
	b.mu.Unlock()
	b.after(tr, wake)
	return t, err
}

func (b *Breaker) allowLocked(tr *Transition) (Ticket, error, bool) {
	st, m, gen := b.load()
	if m == ForcedClosed || st == Closed && m != ForcedOpen {
		return Ticket{gen: gen}, nil, false
	}
	if m == ForcedOpen {
		return Ticket{retry: time.Duration(b.openDuration.Load())}, ErrOpen, false
	}
	now := b.clock.Now()
	if st == Open {
		if left := b.openUntil.Load() - int64(now); left > 0 {
			t, err := b.reject(m, gen, ErrOpen, time.Duration(left))
			return t, err, false
		}
		// Shared: the store moves the fleet to half-open and grants permits, unless it
		// granted one in advance for the half-open period that follows this open one
		// (GrantAdvance): then the breaker moves itself, as the store will when it next
		// hears from a replica, and admits this request as a trial at once.
		if b.shared && (b.permits == 0 || b.permitGen != b.generation()+1 || now >= b.permitsUntil) {
			b.permits = 0
			b.wanted = true
			t, err := b.reject(m, gen, ErrOpen, TrialRetryAfter)
			return t, err, true
		}
		*tr = b.transitionLocked(now, HalfOpen, ReasonOpenTimeout)
		_, _, gen = b.load()
		if b.shared { // the store tells the fleet of the half-open period at once
			t, err, _ := b.allowLocked(tr)
			return t, err, true
		}
	}
	if b.shared && b.permits > 0 && now >= b.permitsUntil {
		b.permits = 0 // their leases expired: another replica may hold them now
	}
	if b.trialsInFlight < b.s.HalfOpenMaxRequests && (!b.shared || b.permits > 0) {
		if b.shared {
			b.permits--
			b.unusedAdvance = false
		}
		b.trialsInFlight++
		return Ticket{gen: gen, flags: ticketTrial}, nil, false
	}
	t, err := b.reject(m, gen, ErrTooManyTrials, TrialRetryAfter)
	if b.shared && b.permits == 0 && b.trialsInFlight < b.s.HalfOpenMaxRequests {
		b.wanted = true
		return t, err, true
	}
	return t, err, false
}

// Done reports the outcome of an admitted request and how long it took. Outcomes of
// tickets from an older generation, and of requests a metrics-only breaker would have
// rejected, change nothing.
//
// When it counted a success, Done returns a Receipt for it: should the request fail
// after all (its response body broke off after the headers), hand the receipt to
// LateFailure. Otherwise it returns the zero Receipt, which LateFailure ignores.
func (b *Breaker) Done(t Ticket, o Outcome, elapsed time.Duration) Receipt {
	return b.DonePause(t, o, elapsed, 0)
}

// DonePause is Done for a response that asked clients to wait pause before they try
// again (the upstream's Retry-After on a 429 or 503). The outcome is counted as by Done;
// then, if the request was admitted closed or as a trial in the circuit's current
// generation (and the mode is normal or metrics only), the circuit opens for pause,
// capped by MaxOpenDuration and jittered, with reason ReasonRetryAfter: the trip count
// (the backoff) does not change. A shared breaker hands the pause to its store with the
// counts, and wakes it: the store opens the circuit fleet-wide. A pause of 0 is Done.
func (b *Breaker) DonePause(t Ticket, o Outcome, elapsed, pause time.Duration) Receipt {
	if t.flags&ticketWouldReject != 0 || (o == Ignored && t.flags&ticketTrial == 0) {
		return Receipt{}
	}
	if _, _, gen := b.load(); gen != t.gen {
		return Receipt{}
	}
	var tr Transition
	b.mu.Lock()
	r, wake := b.doneLocked(t, o, elapsed, pause, &tr)
	b.mu.Unlock()
	b.after(tr, wake)
	return r
}

// PausePeriod is the open period a pause asked for by the upstream gets, before
// jitter: the pause, capped at MaxOpenDuration (when set).
func (s Settings) PausePeriod(pause time.Duration) time.Duration {
	if s.MaxOpenDuration > 0 && pause > s.MaxOpenDuration {
		return s.MaxOpenDuration
	}
	return pause
}

// pauseLocked opens the circuit for an upstream's pause (see DonePause).
func (b *Breaker) pauseLocked(now, pause time.Duration) Transition {
	d := b.s.PausePeriod(pause)
	if j := b.s.Jitter; j > 0 {
		d += time.Duration(float64(d) * j * (2*b.rand() - 1))
	}
	b.openedAt, b.openFor = now, d
	b.openUntil.Store(int64(now + d))
	return b.transitionLocked(now, Open, ReasonRetryAfter)
}

func (b *Breaker) doneLocked(t Ticket, o Outcome, elapsed, pause time.Duration, tr *Transition) (Receipt, bool) {
	st, m, gen := b.load()
	if gen != t.gen {
		return Receipt{}, false
	}
	now := b.clock.Now()
	if t.Trial() {
		return b.trialDoneLocked(t, now, o, pause, tr)
	}
	if st != Closed {
		return Receipt{}, false
	}
	failure, gateway := o == Failure || o == GatewayFailure, o == GatewayFailure
	slow := b.s.SlowCallDuration > 0 && elapsed > b.s.SlowCallDuration
	b.win.add(now, failure, slow)
	var r Receipt
	if gateway {
		b.gatewayRun++
	} else {
		b.gatewayRun = 0 // any other outcome ends the run of gateway failures
	}
	if failure {
		b.consecutive++
	} else {
		b.successes++
		b.lastSuccess, b.cleared = b.successes, b.consecutive
		b.consecutive = 0
		r = Receipt{gen: t.gen, at: now, seq: b.successes, flags: receiptSuccess}
	}
	if b.shared {
		if !failure {
			b.deltaCleared = b.delta.Tail
		}
		b.delta.add(gen>>8, failure, slow)
		b.delta.addGateway(gateway)
		if pause > 0 && (m == Normal || m == MetricsOnly) {
			b.delta.Pause = max(b.delta.Pause, pause)
			b.noteNews()
			return r, true // the fleet opens now, not at the next flush
		}
		b.noteNews()
		return r, false
	}
	if m == ForcedClosed {
		return r, false
	}
	if pause > 0 && m != ForcedOpen {
		*tr = b.pauseLocked(now, pause)
		return r, false
	}
	if reason := b.tripReasonLocked(now); reason != "" {
		*tr = b.openLocked(now, reason)
	}
	return r, false
}

func (b *Breaker) trialDoneLocked(t Ticket, now time.Duration, o Outcome, pause time.Duration, tr *Transition) (Receipt, bool) {
	b.trialsInFlight--
	var r Receipt
	if o == Success {
		r = Receipt{gen: t.gen, at: now, flags: receiptSuccess | receiptTrial}
	}
	_, m, _ := b.load()
	pause = max(pause, 0)
	if m != Normal && m != MetricsOnly {
		pause = 0
	}
	if b.shared {
		b.trials.add(o)
		b.trials.Pause = max(b.trials.Pause, pause)
		b.noteNews()
		return r, true
	}
	if pause > 0 {
		*tr = b.pauseLocked(now, pause)
		return Receipt{}, false
	}
	switch o {
	case Success:
		b.trialSuccesses++
		if b.trialSuccesses >= b.s.SuccessThreshold {
			*tr = b.transitionLocked(now, Closed, ReasonTrialsSucceeded)
		}
	case Failure, GatewayFailure:
		*tr = b.openLocked(now, ReasonTrialFailed)
	}
	return r, false
}

// Receipt is Done's record of a success it counted, for LateFailure. The zero Receipt
// stands for no success.
type Receipt struct {
	gen   uint64        // the ticket's stamp: generation<<8 | epoch
	at    time.Duration // clock reading when the success was counted
	seq   uint64        // closed state: the success's number (Breaker.successes)
	flags uint8
}

const (
	receiptSuccess uint8 = 1 << iota
	receiptTrial
)

// LateFailure reports that a request whose success Done counted (the receipt Done
// returned) failed after all: for the proxy, the upstream broke its response body off
// after the headers, which is when Done was told. Done reports at the headers so that a
// trial or a long stream does not hold the outcome back; LateFailure corrects it. Call
// it at most once per receipt. It does not allocate.
//
// It is fenced like Done: a receipt from an older generation (the circuit changed
// state, or was reset, forced or resynced since) changes nothing, and neither does the
// zero Receipt. Otherwise:
//
//   - Closed: the success becomes a failure, so the request still counts once in the
//     window: while the bucket it was counted in is still in the window, that bucket's
//     success turns into a failure; after that, the failure is counted now, as a request
//     of its own (the success has left the window). For the run of consecutive failures
//     the failure happens now; if no success was counted after the one taken back, the
//     run that success had ended is restored (so alternating headers and broken bodies
//     build a run). The slow count does not change: slowness is judged at the headers.
//     Nor does the run of gateway failures (ConsecutiveGatewayFailures): the target
//     answered with headers, so the request was no gateway error, and it ended that run
//     when Done counted it; a broken body only counts towards the ordinary run.
//     The trip rules then run as for Done (not while forced closed).
//   - Closed, shared: the same locally, and the store learns it through the Delta. If
//     the success is still in the Delta the store has not taken, it turns into a failure
//     there (Requests unchanged; Tail and HadSuccess as if the success had never been
//     counted and the failure came last). If the store took it already, the Delta gets a
//     failed request of its own (Requests+1, Failures+1): the shared window can only be
//     added to, so it then holds this request twice, once as a success and once as a
//     failure, until the success leaves the window. The Delta's gateway run (GatewayTail,
//     GatewayEnded) is not touched, as locally.
//   - Half-open, a trial's receipt: a failed trial. Local: the circuit opens again
//     (ReasonTrialFailed) with the next backoff. Shared: the failure is added to the
//     TrialReport, taking back a success not yet taken by the store, and the store is
//     woken to report it at once; the store reopens the circuit if it is still in that
//     half-open period. A trial whose success closed the circuit is of an older
//     generation by then: its late failure is dropped, like any other from before the
//     close.
func (b *Breaker) LateFailure(r Receipt) {
	if r.flags&receiptSuccess == 0 {
		return
	}
	if _, _, gen := b.load(); gen != r.gen {
		return
	}
	var tr Transition
	b.mu.Lock()
	wake := b.lateFailureLocked(r, &tr)
	b.mu.Unlock()
	b.after(tr, wake)
}

func (b *Breaker) lateFailureLocked(r Receipt, tr *Transition) bool {
	st, m, gen := b.load()
	if gen != r.gen {
		return false
	}
	now := b.clock.Now()
	if r.flags&receiptTrial != 0 {
		if b.shared {
			if b.trials.Successes > 0 {
				b.trials.Successes--
			}
			b.trials.Failures++
			b.noteNews()
			return true
		}
		*tr = b.openLocked(now, ReasonTrialFailed)
		return false
	}
	if st != Closed {
		return false
	}
	if !b.win.fail(now, r.at) {
		b.win.add(now, true, false)
	}
	latest := r.seq == b.lastSuccess
	if latest {
		b.consecutive += b.cleared + 1
		b.lastSuccess = 0
	} else {
		b.consecutive++
	}
	if b.shared {
		b.delta.lateFailure(gen>>8, r.seq > b.deltaFrom, latest, b.deltaCleared)
		b.noteNews()
		return false
	}
	if m == ForcedClosed {
		return false
	}
	if reason := b.tripReasonLocked(now); reason != "" {
		*tr = b.openLocked(now, reason)
	}
	return false
}

// tripReasonLocked evaluates the trip rules in a fixed order and names the first that fires.
// The Redis store's scripts hold the same rules: breaker/conformance holds both to one table.
func (b *Breaker) tripReasonLocked(now time.Duration) string {
	s := &b.s
	// The gateway run first: when one batch of failures meets both run rules, the more
	// specific reason (a target refusing, resetting or timing out) is the one reported.
	if s.ConsecutiveGatewayFailures > 0 && b.gatewayRun >= s.ConsecutiveGatewayFailures {
		return ReasonConsecutiveGateway
	}
	if s.ConsecutiveFailures > 0 && b.consecutive >= s.ConsecutiveFailures {
		return ReasonConsecutiveFailures
	}
	if s.FailureRate <= 0 && s.SlowCallRate <= 0 {
		return ""
	}
	c := b.win.sum(now)
	if c.Requests == 0 || int(c.Requests) < s.MinimumRequests {
		return ""
	}
	if s.FailureRate > 0 && c.FailureRate() >= s.FailureRate {
		return ReasonFailureRate
	}
	if s.SlowCallRate > 0 && c.SlowRate() >= s.SlowCallRate {
		return ReasonSlowCallRate
	}
	return ""
}

// OpenPeriod is the open period after the given number of trips without a recovery,
// before jitter: OpenDuration × BackoffMultiplier^(trips-1), or OpenDuration × trips with
// LinearBackoff, capped at MaxOpenDuration. The Redis store's trip (lua/prelude.lua)
// computes the same.
func (s Settings) OpenPeriod(trips int) time.Duration {
	s = normalize(s)
	var d float64
	if s.LinearBackoff {
		d = float64(s.OpenDuration) * float64(max(trips, 1))
	} else {
		d = float64(s.OpenDuration) * math.Pow(s.BackoffMultiplier, float64(max(trips-1, 0)))
	}
	if s.MaxOpenDuration > 0 && d > float64(s.MaxOpenDuration) {
		d = float64(s.MaxOpenDuration)
	}
	if d > math.MaxInt64/2 {
		d = math.MaxInt64 / 2
	}
	return time.Duration(d)
}

// openLocked opens the circuit (or starts a new open period) for the backoff of one more
// trip. With TripDecay, a trip from the closed state first takes back one trip for each
// full TripDecay the circuit was closed (not below 0).
func (b *Breaker) openLocked(now time.Duration, reason string) Transition {
	if st, _, _ := b.load(); st == Closed && b.s.TripDecay > 0 {
		b.trips = max(b.trips-int((now-b.closedAt)/b.s.TripDecay), 0)
	}
	b.trips++
	d := b.s.OpenPeriod(b.trips)
	if j := b.s.Jitter; j > 0 {
		d += time.Duration(float64(d) * j * (2*b.rand() - 1))
	}
	b.openedAt, b.openFor = now, d
	b.openUntil.Store(int64(now + d))
	return b.transitionLocked(now, Open, reason)
}

// transitionLocked moves to state `to` in a new generation and resets what belongs to the
// old one. The Transition it returns is reported by after, once the lock is released.
func (b *Breaker) transitionLocked(now time.Duration, to State, reason string) Transition {
	from, m, _ := b.load()
	gen := b.generation()
	tr := Transition{
		Upstream: b.name, From: from, To: to, Mode: m, Reason: reason, Generation: gen + 1,
		Counts: b.win.sum(now), Consecutive: b.consecutive,
	}
	if to == Open {
		tr.OpenFor = b.openFor
	}
	if to == Closed {
		if b.s.TripDecay <= 0 {
			b.trips = 0
		}
		b.closedAt = now
	}
	n, until := b.advanceFor(to, gen+1)
	b.resetGenerationLocked()
	b.permits, b.permitsUntil = n, until
	b.store(to, m, gen+1)
	return tr
}

// resetGenerationLocked clears everything that is only valid within one generation.
func (b *Breaker) resetGenerationLocked() {
	b.win.reset()
	b.consecutive, b.gatewayRun = 0, 0
	b.trialsInFlight, b.trialSuccesses, b.wanted = 0, 0, false
	b.permits = 0
	b.demand.Store(false)
	b.delta = Delta{}
	b.trials = TrialReport{}
	b.lastSuccess, b.deltaFrom = 0, b.successes
}

// advanceFor returns the permits (and their expiry) that survive a move to state to in
// generation gen, which resetGenerationLocked would drop: those granted in advance
// (GrantAdvance) for that very half-open period, and nothing else.
func (b *Breaker) advanceFor(to State, gen uint64) (int, time.Duration) {
	if to != HalfOpen || b.permitGen != gen || b.permits == 0 {
		b.unusedAdvance = false
		return 0, 0
	}
	return b.permits, b.permitsUntil
}

func (b *Breaker) after(tr Transition, wake bool) {
	if tr.Reason != "" && b.obs != nil {
		b.obs.OnTransition(tr)
	}
	if wake {
		if f := b.wake.Load(); f != nil {
			(*f)()
		}
	}
}
