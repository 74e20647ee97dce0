package config

import "github.com/fuseproxy/fuseproxy/breaker"

// Settings translates an upstream's breaker section into the state machine's settings.
// It is the only translation: the app, the tests and every store use it. Mode must have
// been validated (Validate does); an unknown mode reads as normal.
func (b Breaker) Settings() breaker.Settings {
	mode, _ := breaker.ParseMode(b.Mode)
	return breaker.Settings{
		ConsecutiveFailures: b.ConsecutiveFailures, FailureRate: b.FailureRate,
		SlowCallRate: b.SlowCallRate, SlowCallDuration: b.SlowCallDuration,
		MinimumRequests: b.MinimumRequests, Window: b.Window, Buckets: b.Buckets,
		OpenDuration: b.OpenDuration, BackoffMultiplier: b.BackoffMultiplier,
		MaxOpenDuration: b.MaxOpenDuration, Jitter: b.Jitter,
		HalfOpenMaxRequests: b.HalfOpenMaxRequests, SuccessThreshold: b.SuccessThreshold,
		Mode: mode,
	}
}
