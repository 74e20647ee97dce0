package breaker_test

import (
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// fakeClock is a breaker.Clock that moves only when a test says so. It is safe for
// concurrent use, so the race test can advance it while workers read it.
type fakeClock struct{ ns atomic.Int64 }

var _ breaker.Clock = (*fakeClock)(nil)

func (c *fakeClock) Now() time.Duration      { return time.Duration(c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }
func (c *fakeClock) Set(t time.Duration)     { c.ns.Store(int64(t)) }

// recorder is an Observer that keeps every Transition it is told about. hook, when set,
// runs inside OnTransition (to prove the breaker's lock is not held there).
type recorder struct {
	mu   sync.Mutex
	trs  []breaker.Transition
	hook func(breaker.Transition)
}

func (r *recorder) OnTransition(tr breaker.Transition) {
	if r.hook != nil {
		r.hook(tr)
	}
	r.mu.Lock()
	r.trs = append(r.trs, tr)
	r.mu.Unlock()
}

func (r *recorder) all() []breaker.Transition {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]breaker.Transition(nil), r.trs...)
}

func (r *recorder) reset() {
	r.mu.Lock()
	r.trs = nil
	r.mu.Unlock()
}

// reasons joins the recorded reasons with commas: "" for none, "a" for exactly one.
func (r *recorder) reasons() string {
	var rs []string
	for _, tr := range r.all() {
		rs = append(rs, tr.Reason)
	}
	return strings.Join(rs, ",")
}

// fixture is one breaker on a fake clock with a recording observer.
type fixture struct {
	t     testing.TB
	b     *breaker.Breaker
	clock *fakeClock
	obs   *recorder
	wakes atomic.Int64
	rnd   float64 // what Options.Rand returns

	// Tickets some tests and table rows keep for later.
	staleClosed       breaker.Ticket  // a closed-state ticket of an older generation
	staleTrial        breaker.Ticket  // a trial ticket of an older half-open period
	staleReceipt      breaker.Receipt // a closed-state success of an older generation
	staleTrialReceipt breaker.Receipt // a trial success of an older half-open period
	held              []breaker.Ticket
}

func newFixture(t testing.TB, s breaker.Settings) *fixture {
	t.Helper()
	f := &fixture{t: t, clock: &fakeClock{}, obs: &recorder{}, rnd: 0.5}
	f.b = breaker.New("payments", s, breaker.Options{
		Clock:    f.clock,
		Observer: f.obs,
		Rand:     func() float64 { return f.rnd },
	})
	f.b.SetWake(func() { f.wakes.Add(1) })
	return f
}

// baseSettings: 3 failures in a row trip; open 10 s, doubling up to 60 s; one trial closes.
func baseSettings() breaker.Settings {
	return breaker.Settings{
		ConsecutiveFailures: 3,
		OpenDuration:        10 * time.Second,
		BackoffMultiplier:   2,
		MaxOpenDuration:     60 * time.Second,
		HalfOpenMaxRequests: 1,
		SuccessThreshold:    1,
	}
}

// allow admits a request or fails the test.
func (f *fixture) allow() breaker.Ticket {
	f.t.Helper()
	tk, err := f.b.Allow()
	if err != nil {
		f.t.Fatalf("Allow at %v in %v: %v", f.clock.Now(), f.b.State(), err)
	}
	return tk
}

// trial admits a half-open trial or fails the test.
func (f *fixture) trial() breaker.Ticket {
	f.t.Helper()
	tk := f.allow()
	if !tk.Trial() {
		f.t.Fatalf("Allow in %v gave a non-trial ticket", f.b.State())
	}
	return tk
}

// reject expects Allow to fail with want.
func (f *fixture) reject(want error) {
	f.t.Helper()
	if tk, err := f.b.Allow(); !errors.Is(err, want) {
		f.t.Fatalf("Allow in %v = (%+v, %v), want %v", f.b.State(), tk, err, want)
	}
}

// request sends one request if it is admitted and reports o after elapsed; it returns
// Allow's error (a rejected request reports nothing).
func (f *fixture) request(o breaker.Outcome, elapsed time.Duration) error {
	tk, err := f.b.Allow()
	if err == nil {
		f.b.Done(tk, o, elapsed)
	}
	return err
}

func (f *fixture) fail(n int) {
	f.t.Helper()
	for range n {
		if err := f.request(breaker.Failure, 0); err != nil {
			f.t.Fatalf("failure %d rejected: %v", n, err)
		}
	}
}

func (f *fixture) succeed(n int) {
	f.t.Helper()
	for range n {
		if err := f.request(breaker.Success, 0); err != nil {
			f.t.Fatalf("success rejected: %v", err)
		}
	}
}

func (f *fixture) snap() breaker.Snapshot { return f.b.Snapshot() }

func (f *fixture) wantState(want breaker.State) {
	f.t.Helper()
	if got := f.b.State(); got != want {
		f.t.Fatalf("at %v: state %v, want %v", f.clock.Now(), got, want)
	}
}

func (f *fixture) wantCounts(want breaker.Counts) {
	f.t.Helper()
	if got := f.snap().Counts; got != want {
		f.t.Fatalf("at %v: window %+v, want %+v", f.clock.Now(), got, want)
	}
}

func (f *fixture) wantReasons(want string) {
	f.t.Helper()
	if got := f.obs.reasons(); got != want {
		f.t.Fatalf("at %v: transitions %q, want %q", f.clock.Now(), got, want)
	}
}

// lastTransition returns the most recent transition or fails the test.
func (f *fixture) lastTransition() breaker.Transition {
	f.t.Helper()
	trs := f.obs.all()
	if len(trs) == 0 {
		f.t.Fatalf("no transition recorded")
	}
	return trs[len(trs)-1]
}

// openToHalfOpen waits out the current open period and admits the first trial, which
// moves the circuit to half-open. The trial ticket is returned unfinished.
func (f *fixture) openToHalfOpen() breaker.Ticket {
	f.t.Helper()
	f.wantState(breaker.Open)
	f.clock.Advance(f.snap().OpenRemaining)
	tk := f.trial()
	f.wantState(breaker.HalfOpen)
	return tk
}

// wantStaleIgnored runs two failures in the current generation (with baseSettings, a
// third would trip), then stale, which reports outcomes of an earlier generation, and
// checks that the breaker did not change and reported no transition.
func (f *fixture) wantStaleIgnored(stale func()) {
	f.t.Helper()
	_ = f.request(breaker.Failure, 0)
	_ = f.request(breaker.Failure, 0)
	f.clock.Advance(time.Second)
	before := f.snap()
	f.obs.reset()
	stale()
	if after := f.snap(); after != before {
		f.t.Fatalf("stale outcome changed the breaker:\nbefore %+v\nafter  %+v", before, after)
	}
	f.wantReasons("")
}
