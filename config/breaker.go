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

// Settings translates an upstream's outlier_detection section into the settings of each
// target's circuit: the consecutive-5xx run is the circuit's run of failures, the
// interval its window (and the time a target must stay healthy to earn back one
// ejection), the ejection time its open period, growing linearly with the ejections.
// A returning target is half-open: one trial request at a time, fleet-wide, and one
// success brings it back.
func (o Outlier) Settings() breaker.Settings {
	return breaker.Settings{
		ConsecutiveFailures:        o.Consecutive5xx,
		ConsecutiveGatewayFailures: o.ConsecutiveGatewayErrors,
		FailureRate:                o.FailurePercentage,
		SlowCallRate:               o.SlowCallRate,
		SlowCallDuration:           o.SlowCallDuration,
		MinimumRequests:            o.MinimumRequests,
		Window:                     o.Interval,
		Buckets:                    10,
		OpenDuration:               o.BaseEjectionTime,
		BackoffMultiplier:          1,
		LinearBackoff:              true,
		MaxOpenDuration:            o.MaxEjectionTime,
		Jitter:                     o.Jitter,
		TripDecay:                  o.Interval,
		HalfOpenMaxRequests:        1,
		SuccessThreshold:           1,
	}
}
