package telemetry

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/proxy"
)

// The per-upstream series (requests by outcome, the latency histogram, transitions) are
// kept as plain atomic counters in one small struct per upstream and turned into
// Prometheus metrics by upstreamCollector when /metrics is scraped. The exposition is
// the same as with client_golang's CounterVec and HistogramVec, which this replaces:
// those cost about 9 KiB of heap per upstream (14 series, each with its own labels,
// hashes and histogram halves), 85 MiB with 10,000 upstreams; this costs about 0.4 KiB
// once the upstream has been counted, 16 bytes and its map entry before (upstreamEntry).

// durationBounds are the upper bounds of fuseproxy_upstream_request_duration_seconds'
// buckets: prometheus.DefBuckets with 0.5, 1 and 2.5 ms in front, as a proxy hop to a
// nearby upstream takes about a millisecond (a test keeps them equal to those).
var durationBounds = [...]time.Duration{
	500 * time.Microsecond, time.Millisecond, 2500 * time.Microsecond,
	5 * time.Millisecond, 10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second,
}

// statusClasses are the values of fuseproxy_responses_total's code label: the status
// class of the answer the client got.
var statusClasses = [...]string{"1xx", "2xx", "3xx", "4xx", "5xx"}

const numBuckets = len(durationBounds)

// numRetryReasons is len(proxy.RetryReasons()) (a test keeps them equal).
const numRetryReasons = 4

// upstreamMetrics are one upstream's counts. Every field is updated atomically, so the
// request path neither locks nor allocates.
type upstreamMetrics struct {
	requests    [proxy.NumOutcomes]atomic.Uint64
	wouldReject atomic.Uint64
	bodyBroken  atomic.Uint64
	// attempts: requests sent to a target, retries included; retries by reason;
	// retryDenied: retries the budget refused; fallbackServed: rejected requests the
	// fallback upstream served.
	attempts       atomic.Uint64
	retries        [numRetryReasons]atomic.Uint64
	retryDenied    atomic.Uint64
	fallbackServed atomic.Uint64
	responses      [len(statusClasses)]atomic.Uint64 // by status class, 1xx first
	// buckets[i] counts the observations in (durationBounds[i-1], durationBounds[i]];
	// buckets[numBuckets] those above the last bound. Not cumulative: the collector
	// adds them up, and the count is their total, so a scrape always sees a count equal
	// to the +Inf bucket.
	buckets     [numBuckets + 1]atomic.Uint64
	sumNanos    atomic.Int64
	transitions [numStates][numStates]atomic.Uint64 // [from][to]; the diagonal stays 0
}

// upstreamEntry is a counted upstream: its counts are allocated at the first one (most
// upstreams of a large config are idle; an idle upstream's series are exposed at 0 all
// the same).
type upstreamEntry struct {
	hasBreaker atomic.Bool // transition series are exposed
	counts     atomic.Pointer[upstreamMetrics]
}

// get returns the upstream's counts, allocating them at the first call.
func (ue *upstreamEntry) get() *upstreamMetrics {
	if um := ue.counts.Load(); um != nil {
		return um
	}
	um := new(upstreamMetrics)
	if ue.counts.CompareAndSwap(nil, um) {
		return um
	}
	return ue.counts.Load()
}

// noCounts stands for the counts of an upstream that has none yet.
var noCounts upstreamMetrics

func (um *upstreamMetrics) observe(d time.Duration) {
	i := 0
	for i < numBuckets && d > durationBounds[i] {
		i++
	}
	um.buckets[i].Add(1)
	um.sumNanos.Add(int64(d))
}

// upstreamCollector exposes every upstream's counts from Metrics.upstreams at scrape
// time: the series of every listed upstream exist, at 0 until counted; those of an
// upstream no longer listed are gone.
type upstreamCollector struct {
	m           *Metrics
	requests    *prometheus.Desc
	wouldReject *prometheus.Desc
	bodyBroken  *prometheus.Desc
	responses   *prometheus.Desc
	duration    *prometheus.Desc
	transitions *prometheus.Desc
	attempts    *prometheus.Desc
	retries     *prometheus.Desc
	retryDenied *prometheus.Desc
	fallback    *prometheus.Desc
	outcomes    [proxy.NumOutcomes]string
	upperBounds [numBuckets]float64
}

func newUpstreamCollector(m *Metrics) *upstreamCollector {
	c := &upstreamCollector{
		m: m,
		requests: prometheus.NewDesc(Namespace+"_requests_total",
			"Requests routed to an upstream, by outcome; each request has exactly one outcome, so the sum over outcomes is the requests routed. rejected_concurrency is a request the upstream's bulkhead (max_concurrent_requests) refused.",
			[]string{"upstream", "outcome"}, nil),
		wouldReject: prometheus.NewDesc(Namespace+"_requests_would_reject_total",
			"Requests a metrics_only breaker admitted but would have rejected (each also counted under its outcome in fuseproxy_requests_total).",
			[]string{"upstream"}, nil),
		bodyBroken: prometheus.NewDesc(Namespace+"_response_body_failures_total",
			"Responses counted as outcome success whose body the upstream then broke off, or whose gRPC trailers carried a failing grpc-status; the breaker counts each as a failure instead.",
			[]string{"upstream"}, nil),
		responses: prometheus.NewDesc(Namespace+"_responses_total",
			"Requests routed to an upstream, by the status class of the answer the client got (the upstream's, the proxy's own 502/504, the fallback's, 499 for a client that went away).",
			[]string{"upstream", "code"}, nil),
		duration: prometheus.NewDesc(Namespace+"_upstream_request_duration_seconds",
			"Time from admission to the upstream's response headers (or the error) for requests that reached the upstream and counted as success or failure.",
			[]string{"upstream"}, nil),
		transitions: prometheus.NewDesc(Namespace+"_circuit_transitions_total",
			"Circuit state transitions seen by this replica.", []string{"upstream", "from", "to"}, nil),
		attempts: prometheus.NewDesc(Namespace+"_upstream_attempts_total",
			"Requests sent to the upstream's targets, retries included: the requests routed that were not rejected, plus fuseproxy_retries_total.",
			[]string{"upstream"}, nil),
		retries: prometheus.NewDesc(Namespace+"_retries_total",
			"Failed attempts tried again (retries), by the failure: connect_failure, reset, timeout, status.",
			[]string{"upstream", "reason"}, nil),
		retryDenied: prometheus.NewDesc(Namespace+"_retry_budget_exhausted_total",
			"Retries that were due but the retry budget had no room for: the failure went to the client.",
			[]string{"upstream"}, nil),
		fallback: prometheus.NewDesc(Namespace+"_fallback_upstream_served_total",
			"Requests the upstream's circuit rejected that its fallback upstream (fallback.upstream) served; they are counted again under the fallback upstream's name.",
			[]string{"upstream"}, nil),
	}
	for _, r := range proxy.Outcomes() {
		c.outcomes[r] = r.String()
	}
	for i, b := range durationBounds {
		c.upperBounds[i] = b.Seconds()
	}
	return c
}

// Describe implements prometheus.Collector.
func (c *upstreamCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.requests
	ch <- c.wouldReject
	ch <- c.bodyBroken
	ch <- c.responses
	ch <- c.duration
	ch <- c.transitions
	ch <- c.attempts
	ch <- c.retries
	ch <- c.retryDenied
	ch <- c.fallback
}

// Collect implements prometheus.Collector.
func (c *upstreamCollector) Collect(ch chan<- prometheus.Metric) {
	for name, ue := range *c.m.upstreams.Load() {
		um := ue.counts.Load()
		if um == nil {
			um = &noCounts
		}
		for r := range um.requests {
			ch <- prometheus.MustNewConstMetric(c.requests, prometheus.CounterValue,
				float64(um.requests[r].Load()), name, c.outcomes[r])
		}
		ch <- prometheus.MustNewConstMetric(c.wouldReject, prometheus.CounterValue, float64(um.wouldReject.Load()), name)
		ch <- prometheus.MustNewConstMetric(c.bodyBroken, prometheus.CounterValue, float64(um.bodyBroken.Load()), name)
		ch <- prometheus.MustNewConstMetric(c.attempts, prometheus.CounterValue, float64(um.attempts.Load()), name)
		for _, rr := range proxy.RetryReasons() {
			ch <- prometheus.MustNewConstMetric(c.retries, prometheus.CounterValue, float64(um.retries[rr].Load()), name, rr.String())
		}
		ch <- prometheus.MustNewConstMetric(c.retryDenied, prometheus.CounterValue, float64(um.retryDenied.Load()), name)
		ch <- prometheus.MustNewConstMetric(c.fallback, prometheus.CounterValue, float64(um.fallbackServed.Load()), name)
		for i, class := range statusClasses {
			ch <- prometheus.MustNewConstMetric(c.responses, prometheus.CounterValue, float64(um.responses[i].Load()), name, class)
		}
		buckets := make(map[float64]uint64, numBuckets)
		var count uint64
		for i, ub := range c.upperBounds {
			count += um.buckets[i].Load()
			buckets[ub] = count
		}
		count += um.buckets[numBuckets].Load()
		ch <- prometheus.MustNewConstHistogram(c.duration, count, float64(um.sumNanos.Load())/1e9, buckets, name)
		if !ue.hasBreaker.Load() {
			continue
		}
		for from := range breaker.State(numStates) {
			for to := range breaker.State(numStates) {
				if from != to {
					ch <- prometheus.MustNewConstMetric(c.transitions, prometheus.CounterValue,
						float64(um.transitions[from][to].Load()), name, from.String(), to.String())
				}
			}
		}
	}
}
