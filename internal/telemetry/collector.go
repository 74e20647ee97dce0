package telemetry

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// circuitCollector reports each circuit's state, mode and half-open trials from a
// breaker snapshot taken at scrape time, so the request path pays nothing for them.
// Upstreams whose breaker is disabled have no circuit and no series.
type circuitCollector struct {
	circuits func() map[string]*breaker.Breaker
	state    *prometheus.Desc
	mode     *prometheus.Desc
	trials   *prometheus.Desc
	rate     *prometheus.Desc
}

func newCircuitCollector(circuits func() map[string]*breaker.Breaker) *circuitCollector {
	return &circuitCollector{
		circuits: circuits,
		state: prometheus.NewDesc(Namespace+"_circuit_state",
			"1 for the circuit's current state, 0 for the others.", []string{"upstream", "state"}, nil),
		mode: prometheus.NewDesc(Namespace+"_circuit_mode",
			"1 for the circuit's current operator mode, 0 for the others.", []string{"upstream", "mode"}, nil),
		trials: prometheus.NewDesc(Namespace+"_circuit_half_open_trials",
			"Half-open trial requests in flight on this replica.", []string{"upstream"}, nil),
		rate: prometheus.NewDesc(Namespace+"_circuit_failure_rate",
			"Failures over requests (0 to 1) in the circuit's current window, as counted by this replica's breaker (0 with no requests).",
			[]string{"upstream"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *circuitCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.state
	ch <- c.mode
	ch <- c.trials
	ch <- c.rate
}

// Collect implements prometheus.Collector.
func (c *circuitCollector) Collect(ch chan<- prometheus.Metric) {
	for name, b := range c.circuits() {
		if _, _, target := splitTarget(name); target {
			continue // targetCollector's
		}
		s := b.Snapshot()
		for _, st := range [...]breaker.State{breaker.Closed, breaker.Open, breaker.HalfOpen} {
			ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, one(s.State == st), name, st.String())
		}
		for _, m := range [...]breaker.Mode{breaker.Normal, breaker.ForcedOpen, breaker.ForcedClosed, breaker.MetricsOnly} {
			ch <- prometheus.MustNewConstMetric(c.mode, prometheus.GaugeValue, one(s.Mode == m), name, m.String())
		}
		ch <- prometheus.MustNewConstMetric(c.trials, prometheus.GaugeValue, float64(s.TrialsInFlight), name)
		ch <- prometheus.MustNewConstMetric(c.rate, prometheus.GaugeValue, s.Counts.FailureRate()/100, name)
	}
}

func one(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
