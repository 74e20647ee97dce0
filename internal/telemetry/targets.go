package telemetry

import (
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// splitTarget splits a target circuit's name (config.TargetName, UPSTREAM@HOST:PORT)
// into its upstream and target; ok is false for an upstream's own circuit.
func splitTarget(name string) (upstream, target string, ok bool) {
	return strings.Cut(name, "@")
}

// targetCollector reports each target circuit (outlier detection) from a breaker snapshot
// taken at scrape time: whether the target is ejected, its ejection count (the backoff
// step, which a healthy target earns back), the time left in its ejection, and the
// ejections this replica saw. Targets of upstreams without outlier detection have no
// circuit and no series.
type targetCollector struct {
	circuits  func() map[string]*breaker.Breaker
	ejections *sync.Map // target circuit name -> *uint64 count, under ejectionsMu
	mu        *sync.Mutex

	ejected, count, remaining, total *prometheus.Desc
}

func newTargetCollector(circuits func() map[string]*breaker.Breaker, m *Metrics) *targetCollector {
	labels := []string{"upstream", "target"}
	return &targetCollector{
		circuits: circuits, ejections: &m.targetEjections, mu: &m.targetMu,
		ejected: prometheus.NewDesc(Namespace+"_target_ejected",
			"1 while the target is ejected (its circuit open, half-open or forced open), else 0.", labels, nil),
		count: prometheus.NewDesc(Namespace+"_target_ejection_count",
			"The target's ejections in a row: the next ejection lasts base_ejection_time times this plus one. It drops by one per outlier_detection.interval the target stays healthy.", labels, nil),
		remaining: prometheus.NewDesc(Namespace+"_target_ejection_remaining_seconds",
			"Time left in the target's current ejection (0 when not ejected or returning).", labels, nil),
		total: prometheus.NewDesc(Namespace+"_target_ejections_total",
			"Ejections of the target this replica saw (its circuit's transitions to open).", labels, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *targetCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.ejected
	ch <- c.count
	ch <- c.remaining
	ch <- c.total
}

// Collect implements prometheus.Collector.
func (c *targetCollector) Collect(ch chan<- prometheus.Metric) {
	for name, b := range c.circuits() {
		up, tg, ok := splitTarget(name)
		if !ok {
			continue
		}
		s := b.Snapshot()
		ch <- prometheus.MustNewConstMetric(c.ejected, prometheus.GaugeValue, one(!b.Passing()), up, tg)
		ch <- prometheus.MustNewConstMetric(c.count, prometheus.GaugeValue, float64(s.Trips), up, tg)
		ch <- prometheus.MustNewConstMetric(c.remaining, prometheus.GaugeValue, s.OpenRemaining.Seconds(), up, tg)
		var n uint64
		c.mu.Lock()
		if v, ok := c.ejections.Load(name); ok {
			n = *v.(*uint64)
		}
		c.mu.Unlock()
		ch <- prometheus.MustNewConstMetric(c.total, prometheus.CounterValue, float64(n), up, tg)
	}
}

// targetTransition counts a target circuit's ejection; it reports whether t was a
// target's transition.
func (m *Metrics) targetTransition(t breaker.Transition) bool {
	if _, _, ok := splitTarget(t.Upstream); !ok {
		return false
	}
	if t.To == breaker.Open && t.From != breaker.Open {
		m.targetMu.Lock()
		v, _ := m.targetEjections.LoadOrStore(t.Upstream, new(uint64))
		*v.(*uint64)++
		m.targetMu.Unlock()
	}
	return true
}

// HealthProbe counts one active health check probe of a target by its outcome (ok,
// bad_status, timeout, error). Once SetHealthTargets was called, a probe of a target it
// did not list (one a reload removed, whose last probe was still out) is not counted.
func (m *Metrics) HealthProbe(upstream, target, outcome string) {
	m.targetMu.Lock()
	defer m.targetMu.Unlock()
	if m.healthTargets != nil && !m.healthTargets[upstream+"@"+target] {
		return
	}
	m.healthProbes.WithLabelValues(upstream, target, outcome).Inc()
}

// ForgetTargets drops the ejection totals of target circuits no longer configured (names
// as config.TargetName), so a target added back starts from 0. The scrape-time gauges
// follow the circuits by themselves; SetHealthTargets drops the probe series.
func (m *Metrics) ForgetTargets(names []string) {
	m.targetMu.Lock()
	defer m.targetMu.Unlock()
	for _, name := range names {
		m.targetEjections.Delete(name)
	}
}

// SetHealthTargets sets the targets whose probes are counted, by circuit name
// (UPSTREAM@HOST:PORT): the series of targets no longer listed are deleted, those of the
// targets that remain keep their counts. Call it at start and on every reload.
func (m *Metrics) SetHealthTargets(circuits []string) {
	m.targetMu.Lock()
	defer m.targetMu.Unlock()
	next := make(map[string]bool, len(circuits))
	for _, c := range circuits {
		next[c] = true
	}
	for c := range m.healthTargets {
		if next[c] {
			continue
		}
		if up, tg, ok := splitTarget(c); ok {
			m.healthProbes.DeletePartialMatch(prometheus.Labels{"upstream": up, "target": tg})
		}
	}
	m.healthTargets = next
}
