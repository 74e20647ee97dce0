package breaker_test

import (
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// Every state change is reported exactly once, with everything the decision saw.
func TestObserverTransitions(t *testing.T) {
	f := newFixture(t, baseSettings()) // 3 failures in a row trip, open 10 s

	f.succeed(1)
	f.fail(3) // generation 1
	f.clock.Advance(10 * time.Second)
	f.b.Done(f.trial(), breaker.Success, 0) // 2: half-open, 3: closed
	f.fail(1)
	f.b.Trip() // 4
	f.clock.Advance(4 * time.Second)
	f.b.Reset()                      // 5
	f.b.SetMode(breaker.MetricsOnly) // 6, no state change
	f.b.Apply(breaker.SharedState{State: breaker.Open, Mode: breaker.MetricsOnly, Generation: 9,
		OpenRemaining: 3 * time.Second, OpenFor: 40 * time.Second, Trips: 3}, false)
	f.b.Apply(breaker.SharedState{State: breaker.Open, Mode: breaker.MetricsOnly, Generation: 10,
		OpenRemaining: 3 * time.Second, OpenFor: 40 * time.Second, Trips: 3}, false) // no state change
	f.b.Close() // 11

	want := []breaker.Transition{
		{Upstream: "payments", From: breaker.Closed, To: breaker.Open, Reason: breaker.ReasonConsecutiveFailures,
			Generation: 1, Counts: breaker.Counts{Requests: 4, Failures: 3}, Consecutive: 3, OpenFor: 10 * time.Second},
		{Upstream: "payments", From: breaker.Open, To: breaker.HalfOpen, Reason: breaker.ReasonOpenTimeout,
			Generation: 2},
		{Upstream: "payments", From: breaker.HalfOpen, To: breaker.Closed, Reason: breaker.ReasonTrialsSucceeded,
			Generation: 3},
		{Upstream: "payments", From: breaker.Closed, To: breaker.Open, Reason: breaker.ReasonMode,
			Generation: 4, Counts: breaker.Counts{Requests: 1, Failures: 1}, Consecutive: 1, OpenFor: 10 * time.Second},
		{Upstream: "payments", From: breaker.Open, To: breaker.Closed, Reason: breaker.ReasonReset,
			Generation: 5},
		{Upstream: "payments", From: breaker.Closed, To: breaker.Open, Mode: breaker.MetricsOnly,
			Reason: breaker.ReasonShared, Generation: 9, OpenFor: 40 * time.Second},
		{Upstream: "payments", From: breaker.Open, To: breaker.Closed, Mode: breaker.MetricsOnly,
			Reason: breaker.ReasonMode, Generation: 11},
	}
	got := f.obs.all()
	if len(got) != len(want) {
		t.Fatalf("%d transitions, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("transition %d:\n got %+v\nwant %+v", i, got[i], want[i])
		}
	}
}

// The observer runs after the lock is released: one that reads the breaker back from
// inside OnTransition does not deadlock, and sees the state it is told about.
func TestObserverCalledWithoutLock(t *testing.T) {
	f := newFixture(t, baseSettings())
	f.b.SetShared(false)
	calls := 0
	f.obs.hook = func(tr breaker.Transition) {
		calls++
		sn := f.b.Snapshot()
		if sn.State != tr.To || sn.Generation != tr.Generation {
			t.Errorf("inside OnTransition(%v → %v, gen %d): snapshot %v gen %d",
				tr.From, tr.To, tr.Generation, sn.State, sn.Generation)
		}
		_ = f.b.RetryAfter()
		_ = f.b.Settings()
		_ = f.b.Shared()
		_ = f.b.NeedsPermits()
		_, _ = f.b.TakeDelta()
		_, _ = f.b.TakeTrials()
		f.b.SetSettings(f.b.Settings())
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		f.fail(3)                         // Done path
		f.clock.Advance(10 * time.Second) //
		tk := f.trial()                   // Allow path (open timeout)
		f.b.Done(tk, breaker.Failure, 0)  // trial path
		f.b.Trip()                        // operator paths
		f.b.Close()                       //
		f.b.Trip()                        //
		f.b.Reset()                       //
		f.b.Apply(breaker.SharedState{State: breaker.Open, Generation: 100, OpenRemaining: time.Second}, false)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("deadlock: the observer was called with the breaker's lock held")
	}
	if calls != 8 {
		t.Fatalf("observer called %d times, want 8", calls)
	}
}

// A nil Observer is fine.
func TestNoObserver(t *testing.T) {
	c := &fakeClock{}
	b := breaker.New("x", baseSettings(), breaker.Options{Clock: c})
	for range 3 {
		tk, _ := b.Allow()
		b.Done(tk, breaker.Failure, 0)
	}
	c.Advance(time.Minute)
	tk, err := b.Allow()
	if err != nil || !tk.Trial() {
		t.Fatalf("Allow = %+v, %v", tk, err)
	}
	b.Done(tk, breaker.Success, 0)
	b.Trip()
	b.Reset()
	if b.Name() != "x" || b.State() != breaker.Closed {
		t.Fatalf("%s %v", b.Name(), b.State())
	}
}
