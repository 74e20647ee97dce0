// Package telemetry is fuseproxy's Prometheus instrumentation. One Metrics value per
// replica owns a private prometheus.Registry (nothing is registered globally) holding:
//
//   - per-request counters and latency histograms, fed by the proxy through the
//     proxy.Recorder interface into atomic counters kept per upstream and exposed at
//     scrape time (upstreams.go), so the request path costs one atomic load, one map
//     lookup and the increments;
//   - circuit state, mode and half-open trials, read from breaker snapshots by a custom
//     Collector at scrape time (no cost on the request path);
//   - transition counts, store health (flush latency and errors, degradation,
//     propagation lag), config reloads, dropped events and webhook deliveries;
//   - fuseproxy_build_info and the standard Go and process collectors.
//
// Label values are upstream names from the config and fixed enums only, so the number
// of series is bounded by the config; an upstream removed by a reload has its series
// deleted.
package telemetry

import (
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/proxy"
	"github.com/fuseproxy/fuseproxy/store"
)

// Namespace prefixes every fuseproxy metric.
const Namespace = "fuseproxy"

// Options configure Metrics.
type Options struct {
	// Version is the build's version, for fuseproxy_build_info.
	Version string
	// Circuits returns the breakers in effect; the collector calls it on every scrape.
	// Nil means no circuit metrics.
	Circuits func() map[string]*breaker.Breaker
	// NoRuntimeCollectors leaves out the Go and process collectors (benchmarks).
	NoRuntimeCollectors bool
	// AccessLogDropped returns the access log lines dropped because its queue was full,
	// for fuseproxy_access_log_dropped_total; nil means no such series.
	AccessLogDropped func() uint64
}

// Metrics is one replica's instrumentation. It implements proxy.Recorder. All methods
// are safe for concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	flushDuration     prometheus.Histogram
	flushErrors       prometheus.Counter
	degraded          prometheus.Gauge
	propagation       prometheus.Histogram
	reloads           *prometheus.CounterVec
	eventsDropped     prometheus.Counter
	webhookDeliveries *prometheus.CounterVec
	connsOpen         prometheus.Gauge   // client connections of the proxy listener
	connsRejected     prometheus.Counter // refused past server.max_connections

	// upstreams holds each counted upstream's counts (upstreams.go); replaced whole by
	// SetUpstreams.
	upstreams atomic.Pointer[map[string]*upstreamEntry]
	mu        sync.Mutex // serialises SetUpstreams

	healthProbes *prometheus.CounterVec // active health check probes (targets.go)
	// healthTargets are the circuits of the targets whose probes are counted
	// (SetHealthTargets; nil: every target), under targetMu.
	healthTargets map[string]bool

	// targetEjections counts each target circuit's ejections (targets.go).
	targetEjections sync.Map
	targetMu        sync.Mutex
}

const numStates = 3 // closed, open, half_open

// Webhook delivery results, the values of fuseproxy_webhook_deliveries_total's label.
const (
	DeliverySuccess = "success"
	DeliveryFailure = "failure"
)

var _ proxy.Recorder = (*Metrics)(nil)

// New returns Metrics with every collector registered in a new registry.
func New(o Options) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.flushDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "store_flush_duration_seconds",
		Help:    "Duration of one exchange (pipeline of scripts) with the shared store.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
	})
	m.flushErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "store_flush_errors_total",
		Help: "Exchanges with the shared store that failed.",
	})
	m.degraded = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "store_degraded",
		Help: "1 while the shared store is unreachable and breakers decide locally, else 0.",
	})
	m.propagation = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "store_propagation_lag_seconds",
		Help:    "Delay between a shared state change in the store and this replica adopting it (estimated against the store's clock).",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	})
	m.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "config_reloads_total",
		Help: "Config reloads (SIGHUP or POST /reload), by result.",
	}, []string{"result"})
	m.eventsDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "events_dropped_total",
		Help: "Transition events not delivered to webhooks because the event queue was full.",
	})
	m.webhookDeliveries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "webhook_deliveries_total",
		Help: "Event deliveries to webhooks, by result (failure: every attempt failed).",
	}, []string{"result"})
	m.connsOpen = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "connections_open",
		Help: "Client connections open on the proxy listener (idle keep-alive, in use and upgraded ones).",
	})
	m.connsRejected = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "connections_rejected_total",
		Help: "Client connections closed at once because server.max_connections were open.",
	})
	m.healthProbes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "health_check_probes_total",
		Help: "Active health check probes this replica sent to a target, by outcome (ok, bad_status, timeout, error). With a shared store one replica probes each target at a time.",
	}, []string{"upstream", "target", "outcome"})
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "build_info",
		Help:        "Always 1; the labels name the build.",
		ConstLabels: prometheus.Labels{"version": o.Version, "goversion": runtime.Version()},
	})
	buildInfo.Set(1)
	for _, r := range []string{"success", "failure"} {
		m.reloads.WithLabelValues(r)
	}
	for _, r := range []string{DeliverySuccess, DeliveryFailure} {
		m.webhookDeliveries.WithLabelValues(r)
	}
	m.reg.MustRegister(newUpstreamCollector(m), m.flushDuration, m.flushErrors,
		m.degraded, m.propagation, m.reloads, m.eventsDropped, m.webhookDeliveries,
		m.connsOpen, m.connsRejected, m.healthProbes, buildInfo)
	if o.Circuits != nil {
		m.reg.MustRegister(newCircuitCollector(o.Circuits), newTargetCollector(o.Circuits, m))
	}
	if f := o.AccessLogDropped; f != nil {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: Namespace, Name: "access_log_dropped_total",
			Help: "Access log lines dropped because the writer's queue (access_log.buffer_size) was full.",
		}, func() float64 { return float64(f()) }))
	}
	if !o.NoRuntimeCollectors {
		m.reg.MustRegister(collectors.NewGoCollector(),
			collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	empty := map[string]*upstreamEntry{}
	m.upstreams.Store(&empty)
	return m
}

// Registry is the registry holding every fuseproxy metric, for /metrics.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// SetUpstreams sets the upstreams whose requests and transitions are counted, by name,
// true for those with a breaker: new names get their series, at 0 (transition series
// only for upstreams with a breaker), and the series of names no longer listed are
// deleted. An upstream that stays keeps its counts; one whose breaker is switched on or
// off gains or loses its transition series (gained ones start at 0). Call it at start and
// on every reload.
func (m *Metrics) SetUpstreams(upstreams map[string]bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	old := *m.upstreams.Load()
	next := make(map[string]*upstreamEntry, len(upstreams))
	for name, hasBreaker := range upstreams {
		ue, ok := old[name]
		if !ok {
			ue = new(upstreamEntry)
		}
		if ue.hasBreaker.Load() != hasBreaker {
			if um := ue.counts.Load(); um != nil {
				for from := range um.transitions {
					for to := range um.transitions[from] {
						um.transitions[from][to].Store(0)
					}
				}
			}
			ue.hasBreaker.Store(hasBreaker)
		}
		next[name] = ue
	}
	m.upstreams.Store(&next)
}

// Upstreams returns the names SetUpstreams set, sorted.
func (m *Metrics) Upstreams() []string {
	ups := *m.upstreams.Load()
	names := make([]string, 0, len(ups))
	for name := range ups {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// Request implements proxy.Recorder: it counts the request under its outcome and the
// status class of its answer (a status outside 100-599, a request that got no answer,
// has no class), and observes the latency of those that reached the upstream and
// counted as success or failure. Requests for an upstream SetUpstreams did not list
// (one removed by a reload while the request was in flight) are not counted.
func (m *Metrics) Request(upstream string, r proxy.Result, status int, elapsed time.Duration) {
	ue := (*m.upstreams.Load())[upstream]
	if ue == nil || int(r) >= proxy.NumOutcomes {
		return
	}
	um := ue.get()
	um.requests[r].Add(1)
	if r != proxy.Rejected && r != proxy.RejectedConcurrency {
		um.attempts.Add(1)
	}
	if class := status/100 - 1; class >= 0 && class < len(statusClasses) {
		um.responses[class].Add(1)
	}
	switch r {
	case proxy.Success, proxy.FailureStatus, proxy.FailureTransport, proxy.FailureTimeout:
		um.observe(elapsed)
	}
}

// WouldReject implements proxy.Recorder.
func (m *Metrics) WouldReject(upstream string) {
	if ue := (*m.upstreams.Load())[upstream]; ue != nil {
		ue.get().wouldReject.Add(1)
	}
}

// BodyBroken implements proxy.Recorder.
func (m *Metrics) BodyBroken(upstream string, _ time.Duration) {
	if ue := (*m.upstreams.Load())[upstream]; ue != nil {
		ue.get().bodyBroken.Add(1)
	}
}

// Retry implements proxy.Recorder.
func (m *Metrics) Retry(upstream string, reason proxy.RetryReason) {
	if ue := (*m.upstreams.Load())[upstream]; ue != nil && int(reason) < numRetryReasons {
		um := ue.get()
		um.retries[reason].Add(1)
		um.attempts.Add(1)
	}
}

// RetryDenied implements proxy.Recorder.
func (m *Metrics) RetryDenied(upstream string) {
	if ue := (*m.upstreams.Load())[upstream]; ue != nil {
		ue.get().retryDenied.Add(1)
	}
}

// FallbackServed implements proxy.Recorder.
func (m *Metrics) FallbackServed(upstream, _ string) {
	if ue := (*m.upstreams.Load())[upstream]; ue != nil {
		ue.get().fallbackServed.Add(1)
	}
}

// Transition counts one circuit transition.
func (m *Metrics) Transition(t breaker.Transition) {
	if m.targetTransition(t) {
		return
	}
	ue := (*m.upstreams.Load())[t.Upstream]
	if ue == nil || t.From >= numStates || t.To >= numStates || t.From == t.To || !ue.hasBreaker.Load() {
		return
	}
	ue.get().transitions[t.From][t.To].Add(1)
}

// ConnectionsOpened adds delta (1 or -1) to the client connections open.
func (m *Metrics) ConnectionsOpened(delta int) { m.connsOpen.Add(float64(delta)) }

// ConnectionRejected counts a client connection refused past server.max_connections.
func (m *Metrics) ConnectionRejected() { m.connsRejected.Inc() }

// EventDropped counts a transition event dropped because the event queue was full.
func (m *Metrics) EventDropped() { m.eventsDropped.Inc() }

// WebhookDelivered counts one event delivery to one webhook: ok after a 2xx answer,
// not ok once every attempt failed.
func (m *Metrics) WebhookDelivered(ok bool) {
	if ok {
		m.webhookDeliveries.WithLabelValues(DeliverySuccess).Inc()
		return
	}
	m.webhookDeliveries.WithLabelValues(DeliveryFailure).Inc()
}

// Reloaded counts a config reload that succeeded (err nil) or failed.
func (m *Metrics) Reloaded(err error) {
	if err == nil {
		m.reloads.WithLabelValues("success").Inc()
		return
	}
	m.reloads.WithLabelValues("failure").Inc()
}

// StoreHooks returns the hooks a Redis store reports its exchanges, degradation and
// propagation lag through.
func (m *Metrics) StoreHooks() store.Hooks {
	return store.Hooks{
		Flush: func(d time.Duration, err error) {
			m.flushDuration.Observe(d.Seconds())
			if err != nil {
				m.flushErrors.Inc()
			}
		},
		Degraded: func(d bool) {
			if d {
				m.degraded.Set(1)
			} else {
				m.degraded.Set(0)
			}
		},
		Propagation: func(_ string, lag time.Duration) { m.propagation.Observe(lag.Seconds()) },
	}
}
