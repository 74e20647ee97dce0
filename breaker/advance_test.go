package breaker_test

import (
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// openShared returns a shared breaker the store opened in generation 5 for 10 s.
func openShared(t *testing.T) *fixture {
	t.Helper()
	f := newFixture(t, baseSettings())
	f.b.SetShared(true)
	if !f.b.Apply(breaker.SharedState{State: breaker.Open, Generation: 5, OpenRemaining: 10 * time.Second,
		OpenFor: 10 * time.Second, Trips: 1}, false) {
		t.Fatal("open state not adopted")
	}
	return f
}

// A permit granted in advance admits the first request after the open period as a trial,
// with the breaker moving itself to half-open in the generation the store will use, and
// waking the store to say so.
func TestAdvancePermitAdmitsTheFirstRequest(t *testing.T) {
	f := openShared(t)
	if f.b.NeedsAdvance(time.Hour) {
		t.Fatal("NeedsAdvance with no request rejected in this open period")
	}
	f.reject(breaker.ErrOpen) // traffic
	if f.b.NeedsAdvance(9 * time.Second) {
		t.Fatal("NeedsAdvance 10s before the end with a lead of 9s")
	}
	f.clock.Advance(2 * time.Second)
	if !f.b.NeedsAdvance(9 * time.Second) {
		t.Fatal("NeedsAdvance false 8s before the end with a lead of 9s")
	}
	if f.b.GrantAdvance(4, 1, time.Minute) {
		t.Fatal("GrantAdvance for another generation accepted")
	}
	if !f.b.GrantAdvance(5, 1, time.Minute) {
		t.Fatal("GrantAdvance refused")
	}
	if f.b.NeedsAdvance(time.Hour) {
		t.Fatal("NeedsAdvance while holding a permit in advance")
	}
	f.reject(breaker.ErrOpen) // the permit does not shorten the open period
	f.clock.Advance(8 * time.Second)
	wakes := f.wakes.Load()
	tk := f.trial()
	if sn := f.snap(); sn.State != breaker.HalfOpen || sn.Generation != 6 || sn.Permits != 0 || sn.TrialsInFlight != 1 {
		t.Fatalf("after the first request: %+v", sn)
	}
	if f.wakes.Load() == wakes {
		t.Fatal("the store was not woken by the move to half-open")
	}
	f.wantReasons("shared,open_timeout") // adopting the open state, then the timeout
	f.reject(breaker.ErrTooManyTrials)
	f.b.Done(tk, breaker.Success, time.Millisecond)
	if r, ok := f.b.TakeTrials(); !ok || r.Generation != 6 || r.Successes != 1 {
		t.Fatalf("TakeTrials = %+v, %v", r, ok)
	}
}

// Without a permit in advance the first request after the open period is rejected and
// waits for the store, as before.
func TestNoAdvancePermitWaitsForTheStore(t *testing.T) {
	f := openShared(t)
	f.clock.Advance(10 * time.Second)
	f.reject(breaker.ErrOpen)
	if f.b.NeedsPermits() != 1 {
		t.Fatal("NeedsPermits after a rejection past the open period")
	}
}

// The permit survives the store's own move to half-open (another replica's acquire, by
// pub/sub) in that generation, and nothing else; one past its lease admits nothing.
func TestAdvancePermitAcrossApply(t *testing.T) {
	f := openShared(t)
	f.reject(breaker.ErrOpen)
	f.b.GrantAdvance(5, 1, time.Minute)
	f.clock.Advance(10 * time.Second)
	f.b.Apply(breaker.SharedState{State: breaker.HalfOpen, Generation: 6, Trips: 1}, false)
	if sn := f.snap(); sn.Permits != 1 {
		t.Fatalf("permits after the store's half-open of their generation: %d", sn.Permits)
	}
	f.trial()

	g := openShared(t)
	g.reject(breaker.ErrOpen)
	g.b.GrantAdvance(5, 1, time.Minute)
	// an operator's mode change: a new generation, still open
	g.b.Apply(breaker.SharedState{State: breaker.Open, Mode: breaker.MetricsOnly, Generation: 6, OpenRemaining: time.Second}, false)
	if sn := g.snap(); sn.Permits != 0 {
		t.Fatalf("permits after a new open generation: %d", sn.Permits)
	}

	h := openShared(t)
	h.reject(breaker.ErrOpen)
	h.b.GrantAdvance(5, 1, time.Second)
	h.clock.Advance(11 * time.Second) // the lease ran out a second after the open period
	h.reject(breaker.ErrOpen)
}

// A permit in advance that no request used goes back once the open period ended more
// than the given time ago, open or adopted half-open; a used one does not.
func TestDropAdvance(t *testing.T) {
	f := openShared(t)
	f.reject(breaker.ErrOpen)
	f.b.GrantAdvance(5, 1, time.Minute)
	if _, n := f.b.DropAdvance(time.Second); n != 0 {
		t.Fatal("dropped before the end of the open period")
	}
	f.clock.Advance(10*time.Second + 500*time.Millisecond)
	if _, n := f.b.DropAdvance(time.Second); n != 0 {
		t.Fatal("dropped half a second after the end, want a second")
	}
	f.b.Apply(breaker.SharedState{State: breaker.HalfOpen, Generation: 6, Trips: 1}, false)
	f.clock.Advance(time.Second)
	if gen, n := f.b.DropAdvance(time.Second); gen != 6 || n != 1 {
		t.Fatalf("DropAdvance = %d, %d; want generation 6, 1 permit", gen, n)
	}
	f.reject(breaker.ErrTooManyTrials)

	g := openShared(t)
	g.reject(breaker.ErrOpen)
	g.b.GrantAdvance(5, 1, time.Minute)
	g.clock.Advance(10 * time.Second)
	g.trial()
	g.clock.Advance(time.Minute)
	if _, n := g.b.DropAdvance(0); n != 0 {
		t.Fatal("dropped a used permit")
	}
}

// OpenLeft counts down the open period a store adopted, and is 0 once it has ended, in
// half-open and closed, and when forced open (which has no end of its own).
func TestOpenLeft(t *testing.T) {
	f := openShared(t)
	if got := f.b.OpenLeft(); got != 10*time.Second {
		t.Fatalf("OpenLeft just after the trip = %v, want 10s", got)
	}
	f.clock.Advance(7 * time.Second)
	if got := f.b.OpenLeft(); got != 3*time.Second {
		t.Fatalf("OpenLeft 7s in = %v, want 3s", got)
	}
	f.b.SetMode(breaker.MetricsOnly)
	if got := f.b.OpenLeft(); got != 3*time.Second {
		t.Fatalf("OpenLeft in metrics-only mode = %v, want 3s (the state is kept)", got)
	}
	f.b.SetMode(breaker.ForcedOpen)
	if got := f.b.OpenLeft(); got != 0 {
		t.Fatalf("OpenLeft forced open = %v, want 0", got)
	}
	f.b.SetMode(breaker.Normal)
	f.clock.Advance(4 * time.Second)
	if got := f.b.OpenLeft(); got != 0 {
		t.Fatalf("OpenLeft after the open period = %v, want 0", got)
	}
	f.request(breaker.Success, time.Millisecond)
	if got := f.b.OpenLeft(); got != 0 {
		t.Fatalf("OpenLeft in state %v = %v, want 0", f.b.State(), got)
	}
}
