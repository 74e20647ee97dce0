package breaker_test

import (
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// Benchmarks use the production clock: reading it is part of the cost of Done and of a
// rejection.

func benchSettings() breaker.Settings {
	return breaker.Settings{
		ConsecutiveFailures: 5,
		FailureRate:         50,
		SlowCallRate:        80,
		SlowCallDuration:    time.Second,
		MinimumRequests:     20,
		OpenDuration:        time.Hour,
	}
}

func BenchmarkAllowDone(b *testing.B) {
	b.Run("serial", func(b *testing.B) {
		br := breaker.New("bench", benchSettings(), breaker.Options{})
		b.ReportAllocs()
		for b.Loop() {
			tk, err := br.Allow()
			if err != nil {
				b.Fatal(err)
			}
			br.Done(tk, breaker.Success, time.Millisecond)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		br := breaker.New("bench", benchSettings(), breaker.Options{})
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				tk, err := br.Allow()
				if err != nil {
					b.Error(err)
					return
				}
				br.Done(tk, breaker.Success, time.Millisecond)
			}
		})
	})
}

func BenchmarkRejectOpen(b *testing.B) {
	br := breaker.New("bench", benchSettings(), breaker.Options{})
	br.Trip()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := br.Allow(); err == nil {
			b.Fatal("admitted while open")
		}
	}
}

// Rejections are lock-free: they should scale with cores.
func BenchmarkRejectOpenParallel(b *testing.B) {
	br := breaker.New("bench", benchSettings(), breaker.Options{})
	br.Trip()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := br.Allow(); err == nil {
				b.Error("admitted while open")
				return
			}
		}
	})
}

// The clock read that Done and a rejection pay for, for scale.
func BenchmarkSystemClock(b *testing.B) {
	c := breaker.SystemClock()
	b.ReportAllocs()
	for b.Loop() {
		_ = c.Now()
	}
}
