package breaker_test

import (
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// The request path allocates nothing: Allow+Done while closed, a rejection while open,
// and a half-open trial.
func TestRequestPathDoesNotAllocate(t *testing.T) {
	s := baseSettings()
	s.FailureRate = 50
	s.SlowCallRate = 50
	s.SlowCallDuration = time.Second
	s.ConsecutiveGatewayFailures = 2
	s.TripDecay = time.Minute
	s.MinimumRequests = 1 << 30 // evaluate the rate rules, never trip on them
	s.SuccessThreshold = 1 << 30
	s.HalfOpenMaxRequests = 1

	// Failures inside the measured functions use t.Fatal: it runs on this goroutine.
	for _, tc := range []struct {
		name  string
		setup func(b *breaker.Breaker, c *fakeClock)
		run   func(t *testing.T, b *breaker.Breaker, c *fakeClock)
	}{
		{"closed Allow+Done", func(*breaker.Breaker, *fakeClock) {}, func(t *testing.T, b *breaker.Breaker, c *fakeClock) {
			c.Advance(time.Millisecond)
			tk, _ := b.Allow()
			b.Done(tk, breaker.Success, 2*time.Second)
		}},
		{"closed gateway failures", func(*breaker.Breaker, *fakeClock) {}, func(t *testing.T, b *breaker.Breaker, c *fakeClock) {
			c.Advance(time.Millisecond)
			tk, _ := b.Allow()
			b.Done(tk, breaker.GatewayFailure, 0) // a gateway run of 1
			tk, _ = b.Allow()
			b.Done(tk, breaker.Success, 0) // ends it
		}},
		{"closed Allow+Done+LateFailure", func(*breaker.Breaker, *fakeClock) {}, func(t *testing.T, b *breaker.Breaker, c *fakeClock) {
			c.Advance(time.Millisecond)
			tk, _ := b.Allow()
			b.LateFailure(b.Done(tk, breaker.Success, 0)) // a run of 1
			tk, _ = b.Allow()
			b.Done(tk, breaker.Success, 0) // ends it
		}},
		{"open rejection", func(b *breaker.Breaker, c *fakeClock) { b.Trip() }, func(t *testing.T, b *breaker.Breaker, c *fakeClock) {
			if _, err := b.Allow(); err == nil {
				t.Fatal("admitted")
			}
			_ = b.RetryAfter()
		}},
		{"forced open rejection", func(b *breaker.Breaker, c *fakeClock) { b.SetMode(breaker.ForcedOpen) },
			func(t *testing.T, b *breaker.Breaker, c *fakeClock) {
				if _, err := b.Allow(); err == nil {
					t.Fatal("admitted")
				}
			}},
		{"metrics-only would-reject", func(b *breaker.Breaker, c *fakeClock) {
			b.SetMode(breaker.MetricsOnly)
			b.Trip()
		}, func(t *testing.T, b *breaker.Breaker, c *fakeClock) {
			tk, err := b.Allow()
			if err != nil || !tk.WouldReject() {
				t.Fatal("not a would-reject ticket")
			}
			b.Done(tk, breaker.Failure, 0)
		}},
		{"half-open trial", func(b *breaker.Breaker, c *fakeClock) {
			b.Trip()
			c.Advance(time.Minute)
		}, func(t *testing.T, b *breaker.Breaker, c *fakeClock) {
			tk, err := b.Allow()
			if err != nil || !tk.Trial() {
				t.Fatal("no trial")
			}
			if _, err := b.Allow(); err == nil {
				t.Fatal("a second trial admitted")
			}
			b.Done(tk, breaker.Success, 0)
		}},
		{"half-open trial, late failure", func(b *breaker.Breaker, c *fakeClock) {
			b.Trip()
		}, func(t *testing.T, b *breaker.Breaker, c *fakeClock) {
			c.Advance(time.Hour) // past any open period
			tk, err := b.Allow()
			if err != nil || !tk.Trial() {
				t.Fatal("no trial")
			}
			b.LateFailure(b.Done(tk, breaker.Success, 0)) // reopens
		}},
		{"half-open cancelled trial", func(b *breaker.Breaker, c *fakeClock) {
			b.Trip()
			c.Advance(time.Minute)
		}, func(t *testing.T, b *breaker.Breaker, c *fakeClock) {
			tk, err := b.Allow()
			if err != nil || !tk.Trial() {
				t.Fatal("no trial")
			}
			b.Done(tk, breaker.Ignored, 0)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &fakeClock{}
			b := breaker.New("x", s, breaker.Options{Clock: c, Rand: func() float64 { return 0.5 }})
			tc.setup(b, c)
			if n := testing.AllocsPerRun(1000, func() { tc.run(t, b, c) }); n != 0 {
				t.Fatalf("%v allocations per run, want 0", n)
			}
		})
	}
}

// The same with the production clock and an observer attached.
func TestRequestPathDoesNotAllocateSystemClock(t *testing.T) {
	b := breaker.New("x", breaker.Settings{ConsecutiveFailures: 5, FailureRate: 50, MinimumRequests: 1 << 30},
		breaker.Options{Observer: &recorder{}})
	if n := testing.AllocsPerRun(1000, func() {
		tk, _ := b.Allow()
		b.Done(tk, breaker.Failure, time.Millisecond)
		tk, _ = b.Allow()
		b.Done(tk, breaker.Success, time.Millisecond)
	}); n != 0 {
		t.Fatalf("%v allocations per run, want 0", n)
	}
}
