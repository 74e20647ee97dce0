package breaker_test

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

func TestOpenPeriod(t *testing.T) {
	s := baseSettings() // 10 s × 2, capped at 60 s
	for _, tc := range []struct {
		trips int
		want  time.Duration
	}{
		{0, 10 * time.Second}, {1, 10 * time.Second}, {2, 20 * time.Second},
		{3, 40 * time.Second}, {4, 60 * time.Second}, {5, 60 * time.Second}, {1000, 60 * time.Second},
	} {
		if got := s.OpenPeriod(tc.trips); got != tc.want {
			t.Errorf("OpenPeriod(%d) = %v, want %v", tc.trips, got, tc.want)
		}
	}

	uncapped := s
	uncapped.MaxOpenDuration = 0
	for _, trips := range []int{40, 64, 1000, math.MaxInt32} {
		// clamped to MaxInt64/2 (as a float64: 2^62, one more than MaxInt64/2)
		if got := uncapped.OpenPeriod(trips); got < 1<<61 || got > 1<<62 {
			t.Errorf("uncapped OpenPeriod(%d) = %v, want clamped near MaxInt64/2", trips, got)
		}
	}

	if got := (breaker.Settings{}).OpenPeriod(5); got != 30*time.Second {
		t.Errorf("zero settings: OpenPeriod(5) = %v, want the 30 s default with no backoff", got)
	}
	if got := (breaker.Settings{OpenDuration: time.Second, BackoffMultiplier: 0.5}).OpenPeriod(3); got != time.Second {
		t.Errorf("multiplier < 1: OpenPeriod(3) = %v, want 1 s", got)
	}
}

// Open periods grow 10 s, 20 s, 40 s, then stay at the 60 s cap; a full recovery starts
// over at 10 s. Each period ends exactly on its deadline.
func TestBackoffTimeline(t *testing.T) {
	s := baseSettings()
	s.ConsecutiveFailures = 1
	f := newFixture(t, s)

	f.fail(1)
	for i, want := range []time.Duration{10, 20, 40, 60, 60} {
		want *= time.Second
		tr := f.lastTransition()
		if tr.To != breaker.Open || tr.OpenFor != want || f.snap().OpenFor != want || f.b.RetryAfter() != want {
			t.Fatalf("open period %d: transition %+v, snapshot %v, retry after %v; want %v",
				i+1, tr, f.snap().OpenFor, f.b.RetryAfter(), want)
		}
		if got := f.snap().Trips; got != i+1 {
			t.Fatalf("trips = %d, want %d", got, i+1)
		}
		f.clock.Advance(want - time.Nanosecond)
		f.reject(breaker.ErrOpen)
		f.clock.Advance(time.Nanosecond)
		f.b.Done(f.trial(), breaker.Failure, 0) // the trial fails: next period
	}

	f.clock.Advance(60 * time.Second)
	f.b.Done(f.trial(), breaker.Success, 0)
	f.wantState(breaker.Closed)
	if got := f.snap().Trips; got != 0 {
		t.Fatalf("trips after recovery = %d, want 0", got)
	}

	f.clock.Advance(time.Minute)
	f.fail(1)
	if tr := f.lastTransition(); tr.OpenFor != 10*time.Second {
		t.Fatalf("first period after a recovery: %v, want 10 s", tr.OpenFor)
	}
}

// The longest open period, jittered up, still ends in the future: no overflow.
func TestHugeBackoffDoesNotOverflow(t *testing.T) {
	s := baseSettings()
	s.MaxOpenDuration = 0
	s.Jitter = 0.9
	f := newFixture(t, s)
	f.rnd = math.Nextafter(1, 0)
	f.clock.Set(365 * 24 * time.Hour)
	for range 100 {
		f.b.Trip()
	}
	f.reject(breaker.ErrOpen)
	if got := f.b.RetryAfter(); got < 100*365*24*time.Hour {
		t.Fatalf("RetryAfter %v, want centuries", got)
	}
}

// An operator's Close() also starts the backoff over; Trip() counts as a trip.
func TestBackoffOperator(t *testing.T) {
	f := newFixture(t, baseSettings())
	f.b.Trip()
	f.b.Trip()
	if got := f.snap().OpenFor; got != 20*time.Second {
		t.Fatalf("second Trip: open for %v, want 20 s", got)
	}
	f.b.Close()
	f.b.Trip()
	if got := f.snap().OpenFor; got != 10*time.Second {
		t.Fatalf("Trip after Close: open for %v, want 10 s", got)
	}
}

func TestJitterBounds(t *testing.T) {
	const d = 10 * time.Second
	for _, tc := range []struct {
		rand     float64
		min, max time.Duration // inclusive
	}{
		{0, 9 * time.Second, 9 * time.Second}, // d·(1-j)
		{0.5, d, d},                           // d
		{0.25, 9500 * time.Millisecond, 9500 * time.Millisecond},                      // d·(1-j/2)
		{math.Nextafter(1, 0), 11*time.Second - time.Microsecond, 11*time.Second - 1}, // just under d·(1+j)
	} {
		t.Run(fmt.Sprint(tc.rand), func(t *testing.T) {
			s := baseSettings()
			s.Jitter = 0.1
			f := newFixture(t, s)
			f.rnd = tc.rand
			f.b.Trip()
			got := f.snap().OpenFor
			if got < tc.min || got > tc.max {
				t.Fatalf("open for %v, want in [%v, %v]", got, tc.min, tc.max)
			}
			if rt := f.b.RetryAfter(); rt != got {
				t.Fatalf("RetryAfter %v, want the jittered period %v", rt, got)
			}
			if tr := f.lastTransition(); tr.OpenFor != got {
				t.Fatalf("transition OpenFor %v, want %v", tr.OpenFor, got)
			}
		})
	}
}

// Property: whatever Rand returns in [0, 1), the jittered period of every backoff level
// stays within [d·(1-j), d·(1+j)).
func TestJitterProperty(t *testing.T) {
	src := rand.New(rand.NewPCG(1, 2))
	for _, j := range []float64{0.05, 0.1, 0.5, 1} {
		s := baseSettings()
		s.Jitter = j
		f := newFixture(t, s)
		for i := range 500 {
			f.rnd = src.Float64()
			level := i%5 + 1 // Trip() while open is the next trip
			for range level {
				f.b.Trip()
			}
			d := s.OpenPeriod(level)
			spread := time.Duration(float64(d) * j)
			if got := f.snap().OpenFor; got < d-spread || got >= d+spread || got < 0 {
				t.Fatalf("jitter %v, rand %v, level %d: open for %v, want in [%v, %v)",
					j, f.rnd, level, got, d-spread, d+spread)
			}
			f.b.Close()
		}
	}
}

// The default Rand (math/rand/v2) also stays in bounds.
func TestJitterDefaultRand(t *testing.T) {
	s := baseSettings()
	s.Jitter = 0.2
	b := breaker.New("x", s, breaker.Options{Clock: &fakeClock{}})
	for range 500 {
		b.Trip()
		if got := b.Snapshot().OpenFor; got < 8*time.Second || got >= 12*time.Second {
			t.Fatalf("open for %v, want in [8 s, 12 s)", got)
		}
		b.Close()
	}
}

// RetryAfter is the real time left in the open period as the clock moves.
func TestRetryAfterCountsDown(t *testing.T) {
	f := newFixture(t, baseSettings())
	if got := f.b.RetryAfter(); got != 0 {
		t.Fatalf("closed: RetryAfter %v, want 0", got)
	}
	f.b.Trip()
	for _, step := range []struct{ advance, want time.Duration }{
		{0, 10 * time.Second},
		{3 * time.Second, 7 * time.Second},
		{6500 * time.Millisecond, 500 * time.Millisecond},
		{500*time.Millisecond - 1, 1},
		{1, 0},
		{time.Hour, 0},
	} {
		f.clock.Advance(step.advance)
		if got := f.b.RetryAfter(); got != step.want {
			t.Fatalf("at %v: RetryAfter %v, want %v", f.clock.Now(), got, step.want)
		}
		if got := f.snap().OpenRemaining; got != step.want {
			t.Fatalf("at %v: OpenRemaining %v, want %v", f.clock.Now(), got, step.want)
		}
	}
	f.trial()
}

// RetryAfter is documented as "the first open period when the circuit is forced open or
// half-open with no trial slot". A rejected client must not be told to retry at once.
func TestRetryAfterWhenTrialsRejected(t *testing.T) {
	t.Run("half-open with no trial slot", func(t *testing.T) {
		f := newFixture(t, baseSettings())
		f.b.Trip()
		f.openToHalfOpen() // the only slot is taken
		f.reject(breaker.ErrTooManyTrials)
		if got := f.b.RetryAfter(); got != breaker.TrialRetryAfter {
			t.Errorf("RetryAfter %v, want %v", got, breaker.TrialRetryAfter)
		}
	})
	t.Run("shared, open period over, no permit yet", func(t *testing.T) {
		f := newFixture(t, baseSettings())
		f.b.SetShared(true)
		f.b.Apply(breaker.SharedState{State: breaker.Open, Generation: 1, OpenRemaining: time.Second,
			OpenFor: 10 * time.Second, Trips: 1}, false)
		f.clock.Advance(time.Second)
		f.reject(breaker.ErrOpen)
		if got := f.b.RetryAfter(); got != breaker.TrialRetryAfter {
			t.Errorf("RetryAfter %v, want %v", got, breaker.TrialRetryAfter)
		}
	})
}

// Every rejection carries the retry hint RetryAfter gives at that moment, so the proxy's
// fallback need not ask the breaker again; an admitted request carries none.
func TestRejectionCarriesRetryAfter(t *testing.T) {
	for _, tc := range []struct {
		name    string
		prepare func(f *fixture)
		err     error
		want    time.Duration
	}{
		{"open", func(f *fixture) { f.b.Trip(); f.clock.Advance(3 * time.Second) }, breaker.ErrOpen, 7 * time.Second},
		{"forced open", func(f *fixture) { f.b.SetMode(breaker.ForcedOpen) }, breaker.ErrOpen, 10 * time.Second},
		{"half-open with no trial slot", func(f *fixture) { f.b.Trip(); f.openToHalfOpen() },
			breaker.ErrTooManyTrials, breaker.TrialRetryAfter},
		{"shared, open period over, no permit yet", func(f *fixture) {
			f.b.SetShared(true)
			f.b.Apply(breaker.SharedState{State: breaker.Open, Generation: 1, OpenRemaining: time.Second,
				OpenFor: 10 * time.Second, Trips: 1}, false)
			f.clock.Advance(time.Second)
		}, breaker.ErrOpen, breaker.TrialRetryAfter},
		{"shared, open", func(f *fixture) {
			f.b.SetShared(true)
			f.b.Apply(breaker.SharedState{State: breaker.Open, Generation: 1, OpenRemaining: 4 * time.Second,
				OpenFor: 10 * time.Second, Trips: 1}, false)
		}, breaker.ErrOpen, 4 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, baseSettings())
			tc.prepare(f)
			tk, err := f.b.Allow()
			if !errors.Is(err, tc.err) {
				t.Fatalf("Allow: %v, want %v", err, tc.err)
			}
			if got := tk.RetryAfter(); got != tc.want || got != f.b.RetryAfter() {
				t.Errorf("ticket's RetryAfter %v, want %v (the breaker says %v)", got, tc.want, f.b.RetryAfter())
			}
		})
	}
	f := newFixture(t, baseSettings())
	if tk := f.allow(); tk.RetryAfter() != 0 {
		t.Errorf("an admitted ticket carries RetryAfter %v", tk.RetryAfter())
	}
}
