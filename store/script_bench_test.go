package store

import (
	"testing"
	"time"
)

// BenchmarkScriptFlush is one flush of one circuit, one round trip per call on loopback,
// on each backend: a poll (nothing to add: the common case of a quiet fleet, which the
// store sends once per circuit per window) and a batch of counts.
//
//	go test -run - -bench BenchmarkScriptFlush -benchtime 2000x ./store/
func BenchmarkScriptFlush(b *testing.B) {
	for _, name := range []string{"redis", "postgres"} {
		be := newScriptBackend(b, name)
		s := baseSettings()
		s.ConsecutiveFailures = 0
		s.FailureRate, s.MinimumRequests, s.Window = 50, 1000000, time.Minute
		e := env(b, be, "bench", s, 1)
		b.Run(name+"/poll", func(b *testing.B) {
			for b.Loop() {
				e.poll()
			}
		})
		b.Run(name+"/counts", func(b *testing.B) {
			for b.Loop() {
				e.flush("r1", 0, batch{req: 10, fail: 1, tail: 0, hadSuccess: true, gatewayEnded: true})
			}
		})
	}
}
