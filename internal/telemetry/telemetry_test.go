package telemetry

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/proxy"
)

// clock is a manual breaker.Clock.
type clock struct {
	mu  sync.Mutex
	now time.Duration
}

func (c *clock) Now() time.Duration  { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.now += d; c.mu.Unlock() }

func TestOutcomesMatchArray(t *testing.T) {
	if n := len(proxy.Outcomes()); n != proxy.NumOutcomes {
		t.Fatalf("proxy.Outcomes() has %d values, NumOutcomes is %d", n, proxy.NumOutcomes)
	}
	for _, r := range proxy.Outcomes() {
		if int(r) >= proxy.NumOutcomes {
			t.Fatalf("outcome %v = %d does not fit the counters' array", r, r)
		}
	}
}

// scrape returns the registry's text exposition, as /metrics serves it.
func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(m.Registry(), promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", rec.Code, rec.Body)
	}
	return rec.Body.String()
}

// PromtoolCheck runs `promtool check metrics` on an exposition and fails t on problems.
// promtool missing is a failure, not a skip: CI installs it.
func PromtoolCheck(t *testing.T, exposition string) {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool not found: apt-get install -y prometheus")
	}
	cmd := exec.Command(path, "check", "metrics")
	cmd.Stdin = strings.NewReader(exposition)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out.String())
	}
	if s := strings.TrimSpace(out.String()); s != "" {
		t.Fatalf("promtool check metrics reported problems:\n%s", s)
	}
}

func newTestMetrics(circuits map[string]*breaker.Breaker) *Metrics {
	return New(Options{Version: "v1.2.3", Circuits: func() map[string]*breaker.Breaker { return circuits }})
}

func TestExpositionPassesPromtool(t *testing.T) {
	b := breaker.New("api", breaker.Settings{ConsecutiveFailures: 1}, breaker.Options{Clock: &clock{}})
	m := newTestMetrics(map[string]*breaker.Breaker{"api": b})
	m.SetUpstreams(map[string]bool{"api": true, "legacy": false})
	m.Request("api", proxy.Success, 200, 12*time.Millisecond)
	m.Request("api", proxy.FailureStatus, 503, 30*time.Millisecond)
	m.WouldReject("api")
	m.BodyBroken("api", 40*time.Millisecond)
	m.Transition(breaker.Transition{Upstream: "api", From: breaker.Closed, To: breaker.Open})
	h := m.StoreHooks()
	h.Flush(time.Millisecond, nil)
	h.Flush(time.Millisecond, errors.New("timeout"))
	h.Degraded(true)
	h.Propagation("api", 3*time.Millisecond)
	m.Reloaded(nil)
	m.EventDropped()
	m.WebhookDelivered(true)
	text := scrape(t, m)
	PromtoolCheck(t, text)
	for _, want := range []string{
		`fuseproxy_build_info{goversion="go`,
		`fuseproxy_requests_total{outcome="success",upstream="api"} 1`,
		`fuseproxy_requests_total{outcome="rejected_concurrency",upstream="legacy"} 0`,
		`fuseproxy_requests_would_reject_total{upstream="api"} 1`,
		`fuseproxy_response_body_failures_total{upstream="api"} 1`,
		`fuseproxy_responses_total{code="2xx",upstream="api"} 1`,
		`fuseproxy_responses_total{code="5xx",upstream="api"} 1`,
		`fuseproxy_responses_total{code="4xx",upstream="legacy"} 0`,
		`fuseproxy_circuit_failure_rate{upstream="api"} 0`,
		`fuseproxy_upstream_request_duration_seconds_count{upstream="api"} 2`,
		`fuseproxy_circuit_transitions_total{from="closed",to="open",upstream="api"} 1`,
		`fuseproxy_circuit_state{state="closed",upstream="api"} 1`,
		`fuseproxy_circuit_mode{mode="normal",upstream="api"} 1`,
		`fuseproxy_circuit_half_open_trials{upstream="api"} 0`,
		`fuseproxy_store_flush_duration_seconds_count 2`,
		`fuseproxy_store_flush_errors_total 1`,
		`fuseproxy_store_degraded 1`,
		`fuseproxy_store_propagation_lag_seconds_count 1`,
		`fuseproxy_config_reloads_total{result="success"} 1`,
		`fuseproxy_config_reloads_total{result="failure"} 0`,
		`fuseproxy_events_dropped_total 1`,
		`fuseproxy_webhook_deliveries_total{result="success"} 1`,
		`fuseproxy_webhook_deliveries_total{result="failure"} 0`,
		"go_goroutines ",
		"process_open_fds ",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("exposition lacks %q", want)
		}
	}
	// An upstream without a breaker has no circuit and no transition series.
	for _, unwanted := range []string{`fuseproxy_circuit_transitions_total{from="closed",to="open",upstream="legacy"}`,
		`fuseproxy_circuit_state{state="closed",upstream="legacy"}`, `from="closed",to="closed"`} {
		if strings.Contains(text, unwanted) {
			t.Errorf("exposition has %q", unwanted)
		}
	}
}

func TestRequestCountsAndDuration(t *testing.T) {
	m := newTestMetrics(nil)
	m.SetUpstreams(map[string]bool{"api": true})
	for _, r := range proxy.Outcomes() {
		m.Request("api", r, 200, time.Second)
	}
	m.Request("api", proxy.FailureBody, 200, time.Second) // not an outcome: not counted
	m.Request("unknown", proxy.Success, 200, time.Second) // not counted, no new series
	text := scrape(t, m)
	for _, r := range proxy.Outcomes() {
		if want := `fuseproxy_requests_total{outcome="` + r.String() + `",upstream="api"} 1`; !strings.Contains(text, want) {
			t.Errorf("exposition lacks %s", want)
		}
	}
	// Only the four results that reached the upstream and counted are timed.
	if !strings.Contains(text, `fuseproxy_upstream_request_duration_seconds_count{upstream="api"} 4`) {
		t.Errorf("want 4 timed requests:\n%s", text)
	}
	if want := `fuseproxy_responses_total{code="2xx",upstream="api"} 7`; !strings.Contains(text, want) {
		t.Errorf("exposition lacks %s", want)
	}
	if strings.Contains(text, `outcome="failure_body"`) || strings.Contains(text, `outcome="would_reject"`) {
		t.Errorf("facts besides the outcome are labelled as outcomes:\n%s", text)
	}
	if strings.Contains(text, `upstream="unknown"`) {
		t.Errorf("an unknown upstream got a series")
	}
}

func TestSetUpstreamsDeletesRemovedSeries(t *testing.T) {
	m := newTestMetrics(nil)
	m.SetUpstreams(map[string]bool{"api": true, "old": true})
	m.Request("old", proxy.Success, 200, time.Millisecond)
	m.Transition(breaker.Transition{Upstream: "old", From: breaker.Closed, To: breaker.Open})
	m.SetUpstreams(map[string]bool{"api": true, "new": false})
	// Late reports for the removed upstream (requests in flight during the reload) must
	// not bring its series back.
	m.Request("old", proxy.Success, 200, time.Millisecond)
	m.Transition(breaker.Transition{Upstream: "old", From: breaker.Open, To: breaker.HalfOpen})
	text := scrape(t, m)
	if strings.Contains(text, `upstream="old"`) {
		t.Errorf("series of the removed upstream remain:\n%s", text)
	}
	if !strings.Contains(text, `fuseproxy_requests_total{outcome="success",upstream="new"} 0`) {
		t.Errorf("the new upstream has no series")
	}
	if got := m.Upstreams(); strings.Join(got, ",") != "api,new" {
		t.Errorf("Upstreams() = %v", got)
	}
	// A breaker switched off drops the transition series, switched on adds them.
	m.SetUpstreams(map[string]bool{"api": false, "new": true})
	text = scrape(t, m)
	if strings.Contains(text, `transitions_total{from="closed",to="open",upstream="api"}`) ||
		!strings.Contains(text, `transitions_total{from="closed",to="open",upstream="new"} 0`) {
		t.Errorf("transition series do not follow the breakers:\n%s", text)
	}
}

func TestCollectorFollowsBreaker(t *testing.T) {
	clk := &clock{}
	b := breaker.New("api", breaker.Settings{ConsecutiveFailures: 2, OpenDuration: time.Second, HalfOpenMaxRequests: 2},
		breaker.Options{Clock: clk, Rand: func() float64 { return 0.5 }})
	m := newTestMetrics(map[string]*breaker.Breaker{"api": b})
	state := func() string {
		text := scrape(t, m)
		for _, st := range []string{"closed", "open", "half_open"} {
			if strings.Contains(text, `fuseproxy_circuit_state{state="`+st+`",upstream="api"} 1`) {
				return st
			}
		}
		return "none"
	}
	if s := state(); s != "closed" {
		t.Fatalf("state %s, want closed", s)
	}
	for range 2 {
		tk, _ := b.Allow()
		b.Done(tk, breaker.Failure, 0)
	}
	if s := state(); s != "open" {
		t.Fatalf("state %s, want open", s)
	}
	clk.Add(2 * time.Second)
	if _, err := b.Allow(); err != nil { // becomes a half-open trial
		t.Fatal(err)
	}
	if s := state(); s != "half_open" {
		t.Fatalf("state %s, want half_open", s)
	}
	if text := scrape(t, m); !strings.Contains(text, `fuseproxy_circuit_half_open_trials{upstream="api"} 1`) {
		t.Errorf("want one trial in flight:\n%s", text)
	}
	b.SetMode(breaker.MetricsOnly)
	if text := scrape(t, m); !strings.Contains(text, `fuseproxy_circuit_mode{mode="metrics_only",upstream="api"} 1`) ||
		!strings.Contains(text, `fuseproxy_circuit_mode{mode="normal",upstream="api"} 0`) {
		t.Errorf("mode gauges wrong:\n%s", text)
	}
}

func TestRequestDoesNotAllocate(t *testing.T) {
	m := New(Options{NoRuntimeCollectors: true})
	m.SetUpstreams(map[string]bool{"api": true})
	allocs := testing.AllocsPerRun(1000, func() {
		m.Request("api", proxy.Success, 200, time.Millisecond)
		m.Request("api", proxy.Rejected, 503, 0)
	})
	if allocs != 0 {
		t.Errorf("Request allocates %v times per call", allocs)
	}
}

func BenchmarkRequest(b *testing.B) {
	m := New(Options{NoRuntimeCollectors: true})
	names := map[string]bool{}
	for _, n := range []string{"a", "b", "c", "api", "payments", "search"} {
		names[n] = true
	}
	m.SetUpstreams(names)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Request("api", proxy.Success, 200, time.Millisecond)
		}
	})
}

// The failure-rate gauge is the breaker's window read at scrape time: 1 failure in 4
// requests is 0.25.
func TestCircuitFailureRate(t *testing.T) {
	b := breaker.New("api", breaker.Settings{FailureRate: 90, MinimumRequests: 100}, breaker.Options{Clock: &clock{}})
	m := newTestMetrics(map[string]*breaker.Breaker{"api": b})
	m.SetUpstreams(map[string]bool{"api": true})
	for i := range 4 {
		tk, err := b.Allow()
		if err != nil {
			t.Fatal(err)
		}
		o := breaker.Success
		if i == 0 {
			o = breaker.Failure
		}
		b.Done(tk, o, time.Millisecond)
	}
	if want := `fuseproxy_circuit_failure_rate{upstream="api"} 0.25`; !strings.Contains(scrape(t, m), want) {
		t.Errorf("exposition lacks %s:\n%s", want, scrape(t, m))
	}
}

// SeriesPerUpstream is the number of series one upstream adds to /metrics, with and
// without a breaker; README's metrics section quotes them (TestSeriesPerUpstream
// counts them).
const (
	SeriesPerUpstreamWithBreaker    = 53
	SeriesPerUpstreamWithoutBreaker = 38
)

// TestSeriesPerUpstream counts the series one upstream adds: the exposition with one
// upstream minus the exposition with none.
func TestSeriesPerUpstream(t *testing.T) {
	count := func(ups map[string]bool, circuits map[string]*breaker.Breaker) int {
		m := New(Options{NoRuntimeCollectors: true, Circuits: func() map[string]*breaker.Breaker { return circuits }})
		m.SetUpstreams(ups)
		n := 0
		for line := range strings.Lines(scrape(t, m)) {
			if !strings.HasPrefix(line, "#") && strings.TrimSpace(line) != "" {
				n++
			}
		}
		return n
	}
	base := count(nil, nil)
	b := breaker.New("api", breaker.Settings{ConsecutiveFailures: 1}, breaker.Options{Clock: &clock{}})
	with := count(map[string]bool{"api": true}, map[string]*breaker.Breaker{"api": b}) - base
	without := count(map[string]bool{"api": false}, nil) - base
	if with != SeriesPerUpstreamWithBreaker || without != SeriesPerUpstreamWithoutBreaker {
		t.Errorf("series per upstream: %d with a breaker, %d without; the constants say %d and %d",
			with, without, SeriesPerUpstreamWithBreaker, SeriesPerUpstreamWithoutBreaker)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("Each upstream adds **%d series** with a breaker and **%d** without one", with, without)
	if !strings.Contains(strings.Join(strings.Fields(string(readme)), " "), want) {
		t.Errorf("README.md does not say %q", want)
	}
}

// A target's circuit (UPSTREAM@HOST:PORT) is reported as the target's ejection, not as a
// circuit of its own.
func TestTargetMetricsFollowTargetCircuit(t *testing.T) {
	clk := &clock{}
	b := breaker.New("api@10.0.0.6:8080", breaker.Settings{ConsecutiveFailures: 1, OpenDuration: 30 * time.Second, LinearBackoff: true},
		breaker.Options{Clock: clk, Rand: func() float64 { return 0.5 }})
	m := newTestMetrics(map[string]*breaker.Breaker{"api@10.0.0.6:8080": b})
	labels := `{target="10.0.0.6:8080",upstream="api"}`
	if text := scrape(t, m); !strings.Contains(text, "fuseproxy_target_ejected"+labels+" 0") ||
		strings.Contains(text, `fuseproxy_circuit_state{state="closed",upstream="api@10.0.0.6:8080"}`) {
		t.Fatalf("a healthy target:\n%s", text)
	}
	tk, _ := b.Allow()
	b.Done(tk, breaker.GatewayFailure, 0)
	m.Transition(breaker.Transition{Upstream: "api@10.0.0.6:8080", From: breaker.Closed, To: breaker.Open})
	clk.Add(10 * time.Second)
	text := scrape(t, m)
	for _, want := range []string{
		"fuseproxy_target_ejected" + labels + " 1",
		"fuseproxy_target_ejection_count" + labels + " 1",
		"fuseproxy_target_ejection_remaining_seconds" + labels + " 20",
		"fuseproxy_target_ejections_total" + labels + " 1",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("missing %s in:\n%s", want, text)
		}
	}
	m.HealthProbe("api", "10.0.0.6:8080", "timeout")
	if text := scrape(t, m); !strings.Contains(text, `fuseproxy_health_check_probes_total{outcome="timeout",target="10.0.0.6:8080",upstream="api"} 1`) {
		t.Errorf("probe not counted:\n%s", text)
	}
}

func TestForgetTargets(t *testing.T) {
	m := newTestMetrics(map[string]*breaker.Breaker{})
	m.targetTransition(breaker.Transition{Upstream: "api@10.0.0.6:8080", From: breaker.Closed, To: breaker.Open})
	m.targetTransition(breaker.Transition{Upstream: "api@10.0.0.7:8080", From: breaker.Closed, To: breaker.Open})
	m.ForgetTargets([]string{"api@10.0.0.6:8080", "api"})
	if _, ok := m.targetEjections.Load("api@10.0.0.7:8080"); !ok {
		t.Error("a target still configured lost its ejection count")
	}
	if _, ok := m.targetEjections.Load("api@10.0.0.6:8080"); ok {
		t.Error("the forgotten target's ejection count is still kept")
	}
}

// Retries: attempts are the requests forwarded plus the retries; each retry is counted
// by reason, a refused one as budget exhausted; a fallback upstream's service under the
// rejecting upstream. The reasons are proxy.RetryReasons, in order.
func TestRetryMetrics(t *testing.T) {
	if n := len(proxy.RetryReasons()); n != numRetryReasons {
		t.Fatalf("numRetryReasons is %d, proxy has %d reasons", numRetryReasons, n)
	}
	for i, r := range proxy.RetryReasons() {
		if int(r) != i {
			t.Fatalf("RetryReasons()[%d] = %d: not in order", i, r)
		}
	}
	m := New(Options{NoRuntimeCollectors: true})
	m.SetUpstreams(map[string]bool{"api": true})
	m.Request("api", proxy.Success, 200, time.Millisecond)
	m.Retry("api", proxy.RetryConnect)
	m.Retry("api", proxy.RetryStatus)
	m.Request("api", proxy.FailureStatus, 503, time.Millisecond)
	m.RetryDenied("api")
	m.Request("api", proxy.Rejected, 0, 0) // served by the fallback upstream: no attempt here
	m.FallbackServed("api", "cache")
	text := scrape(t, m)
	PromtoolCheck(t, text)
	for _, want := range []string{
		`fuseproxy_upstream_attempts_total{upstream="api"} 4`,
		`fuseproxy_retries_total{reason="connect_failure",upstream="api"} 1`,
		`fuseproxy_retries_total{reason="status",upstream="api"} 1`,
		`fuseproxy_retries_total{reason="timeout",upstream="api"} 0`,
		`fuseproxy_retry_budget_exhausted_total{upstream="api"} 1`,
		`fuseproxy_fallback_upstream_served_total{upstream="api"} 1`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("exposition lacks %q", want)
		}
	}
}
