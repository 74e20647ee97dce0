package breaker_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// Timelines, one per trip rule: advance the fake clock, act, assert.

func TestTripConsecutiveFailures(t *testing.T) {
	s := baseSettings()
	s.ConsecutiveFailures = 5
	f := newFixture(t, s)

	f.fail(4) // N-1 in a row
	f.wantState(breaker.Closed)
	if got := f.snap().Consecutive; got != 4 {
		t.Fatalf("consecutive = %d, want 4", got)
	}

	f.clock.Advance(time.Second)
	f.succeed(1) // a success ends the run
	if got := f.snap().Consecutive; got != 0 {
		t.Fatalf("consecutive after a success = %d, want 0", got)
	}

	f.clock.Advance(time.Second)
	f.fail(4) // 4 more: 8 failures in the window, but only 4 in a row
	f.wantState(breaker.Closed)
	f.wantReasons("")

	f.clock.Advance(time.Second)
	f.fail(1) // the 5th in a row trips
	f.wantState(breaker.Open)
	f.wantReasons(breaker.ReasonConsecutiveFailures)
	if tr := f.lastTransition(); tr.Consecutive != 5 || tr.Counts != (breaker.Counts{Requests: 10, Failures: 9}) {
		t.Fatalf("transition consecutive %d counts %+v, want 5 and {10 9 0}", tr.Consecutive, tr.Counts)
	}
}

func TestConsecutiveFailuresDisabled(t *testing.T) {
	s := baseSettings()
	s.ConsecutiveFailures = 0
	f := newFixture(t, s)
	f.fail(1000)
	f.wantState(breaker.Closed)
	f.wantReasons("")
}

func rateSettings() breaker.Settings {
	return breaker.Settings{
		FailureRate:     50,
		MinimumRequests: 10,
		Window:          10 * time.Second,
		Buckets:         10,
		OpenDuration:    10 * time.Second,
	}
}

func TestTripFailureRateNeedsMinimumRequests(t *testing.T) {
	f := newFixture(t, rateSettings())

	f.fail(9) // 100% failures, but 9 < minimum_requests
	f.wantState(breaker.Closed)
	f.wantCounts(breaker.Counts{Requests: 9, Failures: 9})

	f.clock.Advance(500 * time.Millisecond)
	f.fail(1) // 10 requests, 100%
	f.wantState(breaker.Open)
	f.wantReasons(breaker.ReasonFailureRate)
	if tr := f.lastTransition(); tr.Counts != (breaker.Counts{Requests: 10, Failures: 10}) {
		t.Fatalf("transition counts %+v", tr.Counts)
	}
}

func TestTripFailureRateThreshold(t *testing.T) {
	f := newFixture(t, rateSettings())

	f.succeed(6)
	f.fail(3) // 9 requests
	f.clock.Advance(time.Second)
	f.fail(1) // 4/10 = 40%
	f.wantState(breaker.Closed)
	f.clock.Advance(time.Second)
	f.fail(1) // 5/11 = 45.4%
	f.wantState(breaker.Closed)
	f.clock.Advance(time.Second)
	f.fail(1) // 6/12 = 50% ≥ 50%
	f.wantState(breaker.Open)
	f.wantReasons(breaker.ReasonFailureRate)
	if tr := f.lastTransition(); tr.Counts != (breaker.Counts{Requests: 12, Failures: 6}) {
		t.Fatalf("transition counts %+v, want {12 6 0}", tr.Counts)
	}
}

// The window is 10 buckets of 1 s; bucket k holds [k s, k+1 s). A bucket counts while it
// is one of the 10 most recent, so an outcome counts for between 9 and 10 seconds.
func TestFailureRateWindowSlides(t *testing.T) {
	t.Run("failures 9 s ago still count", func(t *testing.T) {
		f := newFixture(t, rateSettings())
		f.clock.Set(500 * time.Millisecond)
		f.fail(9)
		f.clock.Set(9500 * time.Millisecond) // bucket 9: bucket 0 still in
		f.fail(1)
		f.wantState(breaker.Open)
		f.wantReasons(breaker.ReasonFailureRate)
	})
	t.Run("failures 11 s ago no longer count", func(t *testing.T) {
		f := newFixture(t, rateSettings())
		f.clock.Set(500 * time.Millisecond)
		f.fail(9)
		f.clock.Set(11500 * time.Millisecond)
		f.wantCounts(breaker.Counts{})
		f.fail(1)
		f.wantState(breaker.Closed)
		f.wantCounts(breaker.Counts{Requests: 1, Failures: 1})
	})
	t.Run("exact bucket boundary", func(t *testing.T) {
		f := newFixture(t, rateSettings())
		f.fail(4) // t = 0: the first instant of bucket 0
		f.clock.Set(time.Second - time.Nanosecond)
		f.fail(5) // the last instant of bucket 0
		f.wantCounts(breaker.Counts{Requests: 9, Failures: 9})

		f.clock.Set(10*time.Second - time.Nanosecond) // last instant of bucket 9
		f.wantCounts(breaker.Counts{Requests: 9, Failures: 9})

		f.clock.Set(10 * time.Second) // bucket 10 pushes bucket 0 out, all of it at once
		f.wantCounts(breaker.Counts{})
		f.fail(1)
		f.wantState(breaker.Closed)
	})
	t.Run("a reused slot does not add to its old bucket", func(t *testing.T) {
		f := newFixture(t, rateSettings())
		f.fail(5) // bucket 0, slot 0
		f.clock.Set(10500 * time.Millisecond)
		f.fail(5) // bucket 10, slot 0 again
		f.wantCounts(breaker.Counts{Requests: 5, Failures: 5})
		f.wantState(breaker.Closed)
	})
	t.Run("buckets in between accumulate", func(t *testing.T) {
		f := newFixture(t, rateSettings())
		for i := range 10 { // one failure in each of buckets 0..9
			f.clock.Set(time.Duration(i)*time.Second + 999*time.Millisecond)
			f.wantState(breaker.Closed)
			f.wantCounts(breaker.Counts{Requests: uint32(i), Failures: uint32(i)})
			f.fail(1)
		}
		f.wantState(breaker.Open)
	})
	t.Run("idle longer than the window", func(t *testing.T) {
		f := newFixture(t, rateSettings())
		f.fail(9)
		f.clock.Advance(25 * time.Second)
		f.wantCounts(breaker.Counts{})
		f.clock.Advance(time.Hour)
		f.fail(9)
		f.wantCounts(breaker.Counts{Requests: 9, Failures: 9})
		f.wantState(breaker.Closed)
	})
}

func TestTripSlowCallRate(t *testing.T) {
	s := breaker.Settings{
		SlowCallRate:     50,
		SlowCallDuration: time.Second,
		MinimumRequests:  4,
		OpenDuration:     10 * time.Second,
	}
	f := newFixture(t, s)
	call := func(elapsed time.Duration) {
		t.Helper()
		f.b.Done(f.allow(), breaker.Success, elapsed)
	}

	for range 4 {
		call(time.Second) // exactly slow_call_duration: not slow
	}
	f.wantCounts(breaker.Counts{Requests: 4})

	f.clock.Advance(time.Second)
	for range 3 {
		call(time.Second + time.Nanosecond) // slow successes
	}
	f.wantCounts(breaker.Counts{Requests: 7, Slow: 3}) // 42.9%
	f.wantState(breaker.Closed)

	f.clock.Advance(time.Second)
	call(5 * time.Second) // 4/8 = 50%
	f.wantState(breaker.Open)
	f.wantReasons(breaker.ReasonSlowCallRate)
	if tr := f.lastTransition(); tr.Counts != (breaker.Counts{Requests: 8, Slow: 4}) {
		t.Fatalf("transition counts %+v, want {8 0 4}", tr.Counts)
	}
}

func TestSlowCallCounting(t *testing.T) {
	for _, tc := range []struct {
		duration time.Duration // SlowCallDuration
		elapsed  time.Duration
		outcome  breaker.Outcome
		want     breaker.Counts
	}{
		{time.Second, time.Second, breaker.Success, breaker.Counts{Requests: 1}},
		{time.Second, time.Second + 1, breaker.Success, breaker.Counts{Requests: 1, Slow: 1}},
		{time.Second, time.Second, breaker.Failure, breaker.Counts{Requests: 1, Failures: 1}},
		{time.Second, 2 * time.Second, breaker.Failure, breaker.Counts{Requests: 1, Failures: 1, Slow: 1}},
		{0, time.Hour, breaker.Success, breaker.Counts{Requests: 1}}, // no duration: nothing is slow
		{time.Second, time.Hour, breaker.Ignored, breaker.Counts{}},  // a cancelled request is not counted
	} {
		t.Run(fmt.Sprintf("%v/%v/%v", tc.duration, tc.elapsed, tc.outcome), func(t *testing.T) {
			f := newFixture(t, breaker.Settings{SlowCallDuration: tc.duration})
			f.b.Done(f.allow(), tc.outcome, tc.elapsed)
			f.wantCounts(tc.want)
		})
	}
}

// When both rate rules fire on the same outcome the failure rate is named.
func TestTripRuleOrder(t *testing.T) {
	s := rateSettings()
	s.SlowCallRate = 50
	s.SlowCallDuration = time.Second
	s.ConsecutiveFailures = 10
	f := newFixture(t, s)
	for range 10 {
		f.b.Done(f.allow(), breaker.Failure, 2*time.Second)
	}
	f.wantReasons(breaker.ReasonConsecutiveFailures)

	f = newFixture(t, s)
	f.succeed(1)
	for range 9 {
		f.b.Done(f.allow(), breaker.Failure, 2*time.Second)
	}
	f.wantReasons(breaker.ReasonFailureRate)
}

// Clock says only differences between readings matter, so a clock may read negative.
func TestClockReadingsMayBeNegative(t *testing.T) {
	f := newFixture(t, rateSettings())
	f.clock.Set(-90 * time.Second)
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("negative clock reading: panic %v", r)
		}
	}()
	f.fail(5)
	f.wantCounts(breaker.Counts{Requests: 5, Failures: 5})
	f.clock.Advance(500 * time.Millisecond)
	f.fail(5)
	f.wantState(breaker.Open)
}
