package breaker_test

import (
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

func TestNewNormalizesSettings(t *testing.T) {
	b := breaker.New("x", breaker.Settings{BackoffMultiplier: 0.3}, breaker.Options{Clock: &fakeClock{}})
	got := b.Settings()
	want := breaker.Settings{Window: 10 * time.Second, Buckets: 10, HalfOpenMaxRequests: 1,
		SuccessThreshold: 1, BackoffMultiplier: 1, OpenDuration: 30 * time.Second}
	if got != want {
		t.Fatalf("Settings() = %+v\nwant %+v", got, want)
	}
}

// A reload keeps an open circuit open, on its deadline, in its generation.
func TestSetSettingsKeepsOpenCircuit(t *testing.T) {
	f := newFixture(t, baseSettings())
	f.fail(3)
	f.clock.Advance(3 * time.Second)
	before := f.snap()

	s := baseSettings()
	s.OpenDuration = time.Minute
	s.MaxOpenDuration = time.Hour
	s.ConsecutiveFailures = 10
	s.Window, s.Buckets = 30*time.Second, 3
	f.b.SetSettings(s)

	after := f.snap()
	if after.State != breaker.Open || after.Generation != before.Generation ||
		after.OpenRemaining != 7*time.Second || after.Trips != 1 {
		t.Fatalf("after reload: %+v\nbefore: %+v", after, before)
	}
	f.wantReasons(breaker.ReasonConsecutiveFailures)
	f.reject(breaker.ErrOpen)

	// The new thresholds apply from the next decision on.
	f.b.Done(f.openToHalfOpen(), breaker.Failure, 0)
	if got := f.snap().OpenFor; got != 2*time.Minute {
		t.Fatalf("next open period %v, want 2m (new open_duration × 2)", got)
	}
}

// A reload keeps the window counts and the run of failures, even when the window's shape
// changes (the totals move into the current bucket of the new window).
func TestSetSettingsCarriesCounts(t *testing.T) {
	s := rateSettings() // 50 % of ≥ 10 requests, 10 s in 10 buckets
	s.ConsecutiveFailures = 6
	f := newFixture(t, s)
	f.succeed(2)
	f.clock.Advance(3 * time.Second)
	f.fail(2)
	f.clock.Advance(3 * time.Second)
	f.fail(3)
	f.wantCounts(breaker.Counts{Requests: 7, Failures: 5})

	t.Run("same shape", func(t *testing.T) {
		f.b.SetSettings(s)
		f.wantCounts(breaker.Counts{Requests: 7, Failures: 5})
	})
	t.Run("new shape", func(t *testing.T) {
		s2 := s
		s2.Window, s2.Buckets = 4*time.Second, 4
		f.b.SetSettings(s2)
		f.wantCounts(breaker.Counts{Requests: 7, Failures: 5})
		if got := f.snap().Consecutive; got != 5 {
			t.Fatalf("consecutive %d, want 5", got)
		}
		f.clock.Advance(3 * time.Second) // still within the new 4 s window
		f.wantCounts(breaker.Counts{Requests: 7, Failures: 5})
		f.clock.Advance(time.Second) // the bucket they moved into slides out
		f.wantCounts(breaker.Counts{})
	})
	t.Run("thresholds apply to carried counts", func(t *testing.T) {
		f := newFixture(t, s)
		f.succeed(4)
		f.fail(4) // 8 requests, 50 %, below the minimum of 10
		s2 := s
		s2.Window, s2.Buckets = time.Minute, 6
		s2.MinimumRequests = 9
		f.b.SetSettings(s2)
		f.wantState(breaker.Closed)
		f.fail(1) // 5/9 with the new minimum
		f.wantState(breaker.Open)
		f.wantReasons(breaker.ReasonFailureRate)
	})
}

// The mode belongs to the operator: a reload does not change it.
func TestSetSettingsKeepsMode(t *testing.T) {
	f := newFixture(t, baseSettings())
	f.b.SetMode(breaker.ForcedOpen)
	s := baseSettings()
	s.Mode = breaker.ForcedClosed
	f.b.SetSettings(s)
	if f.b.Mode() != breaker.ForcedOpen {
		t.Fatalf("mode %v after reload, want forced_open", f.b.Mode())
	}
	f.reject(breaker.ErrOpen)
	if got := f.b.Settings(); got.ConsecutiveFailures != s.ConsecutiveFailures || got.Window != 10*time.Second {
		t.Fatalf("Settings() = %+v", got)
	}
}
