package events

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeMetrics counts what the Dispatcher reports.
type fakeMetrics struct {
	transitions, dropped, delivered, failed atomic.Int64
}

func (f *fakeMetrics) Transition(breaker.Transition) { f.transitions.Add(1) }
func (f *fakeMetrics) EventDropped()                 { f.dropped.Add(1) }
func (f *fakeMetrics) WebhookDelivered(ok bool) {
	if ok {
		f.delivered.Add(1)
	} else {
		f.failed.Add(1)
	}
}

// clock is a manual breaker.Clock.
type clock struct {
	mu  sync.Mutex
	now time.Duration
}

func (c *clock) Now() time.Duration  { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.now += d; c.mu.Unlock() }

// receiver is a webhook endpoint that records every request.
type receiver struct {
	srv    *httptest.Server
	mu     sync.Mutex
	bodies [][]byte
	hdrs   []http.Header
	status func(n int) int // status of the n-th request (from 1); nil: 204
	got    chan struct{}
}

func newReceiver(t *testing.T, status func(n int) int) *receiver {
	r := &receiver{status: status, got: make(chan struct{}, 1000)}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.bodies = append(r.bodies, body)
		r.hdrs = append(r.hdrs, req.Header.Clone())
		n := len(r.bodies)
		r.mu.Unlock()
		code := http.StatusNoContent
		if r.status != nil {
			code = r.status(n)
		}
		w.WriteHeader(code)
		r.got <- struct{}{}
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) wait(t *testing.T, n int) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for range n {
		select {
		case <-r.got:
		case <-deadline:
			t.Fatalf("webhook received %d requests within 5s, want %d", r.count(), n)
		}
	}
}

func (r *receiver) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.bodies)
}

func hook(url string) config.Webhook {
	return config.Webhook{URL: url, Timeout: 2 * time.Second, Retries: 3, Headers: map[string]string{"Authorization": "Bearer hook-secret"}}
}

func closeDispatcher(t *testing.T, d *Dispatcher) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := d.Close(ctx); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// TestWebhookOneEventPerTransition walks a breaker closed → open → half_open → closed and
// checks the receiver gets exactly one event per transition, with the documented JSON.
func TestWebhookOneEventPerTransition(t *testing.T) {
	rcv := newReceiver(t, nil)
	fm := &fakeMetrics{}
	core, logs := observer.New(zap.InfoLevel)
	now := time.Date(2025, 3, 4, 5, 6, 7, 890, time.UTC)
	d := New(config.Events{Enabled: true, QueueSize: 16, Webhooks: []config.Webhook{hook(rcv.srv.URL)}},
		Options{Logger: zap.New(core), Replica: "r1", Version: "v9", Metrics: fm, Now: func() time.Time { return now }})
	d.Start()
	defer closeDispatcher(t, d)

	clk := &clock{}
	b := breaker.New("payments", breaker.Settings{ConsecutiveFailures: 3, OpenDuration: 10 * time.Second},
		breaker.Options{Clock: clk, Observer: d, Rand: func() float64 { return 0.5 }})
	for range 3 {
		tk, err := b.Allow()
		if err != nil {
			t.Fatal(err)
		}
		b.Done(tk, breaker.Failure, time.Millisecond)
	}
	clk.Add(11 * time.Second)
	tk, err := b.Allow() // open → half_open; the trial
	if err != nil {
		t.Fatal(err)
	}
	b.Done(tk, breaker.Success, time.Millisecond) // half_open → closed

	rcv.wait(t, 3)
	time.Sleep(50 * time.Millisecond) // nothing more may arrive
	if n := rcv.count(); n != 3 {
		t.Fatalf("webhook got %d events, want exactly 3", n)
	}
	wantKeys := []string{"consecutive", "counts", "event", "from", "generation", "mode", "open_for_seconds",
		"reason", "replica", "time", "to", "upstream"}
	want := []struct{ from, to, reason string }{
		{"closed", "open", "consecutive_failures"},
		{"open", "half_open", "open_timeout"},
		{"half_open", "closed", "trials_succeeded"},
	}
	for i, body := range rcv.bodies {
		var raw map[string]any
		if err := json.Unmarshal(body, &raw); err != nil {
			t.Fatalf("event %d: %v: %s", i, err, body)
		}
		keys := make([]string, 0, len(raw))
		for k := range raw {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		if !slices.Equal(keys, wantKeys) {
			t.Errorf("event %d keys %v, want %v", i, keys, wantKeys)
		}
		var ev Event
		if err := json.Unmarshal(body, &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Event != "circuit.transition" || ev.Upstream != "payments" || ev.From != want[i].from ||
			ev.To != want[i].to || ev.Reason != want[i].reason || ev.Generation != uint64(i+1) ||
			ev.Mode != "normal" || ev.Replica != "r1" || !ev.Time.Equal(now) {
			t.Errorf("event %d: %+v, want %v", i, ev, want[i])
		}
		if raw["time"] != "2025-03-04T05:06:07.00000089Z" {
			t.Errorf("event %d time %v, want RFC 3339 with nanoseconds", i, raw["time"])
		}
		h := rcv.hdrs[i]
		if h.Get("Content-Type") != "application/json" || h.Get("Authorization") != "Bearer hook-secret" ||
			h.Get("User-Agent") != "fuseproxy/v9" || h.Get("X-Fuseproxy-Event") != "circuit.transition" {
			t.Errorf("event %d headers %v", i, h)
		}
	}
	var first Event
	_ = json.Unmarshal(rcv.bodies[0], &first)
	if first.Counts != (breaker.Counts{Requests: 3, Failures: 3}) || first.Consecutive != 3 || first.OpenForSeconds != 10 {
		t.Errorf("trip event: %+v", first)
	}
	if fm.transitions.Load() != 3 || fm.delivered.Load() != 3 || fm.failed.Load() != 0 || fm.dropped.Load() != 0 {
		t.Errorf("metrics: transitions %d delivered %d failed %d dropped %d", fm.transitions.Load(),
			fm.delivered.Load(), fm.failed.Load(), fm.dropped.Load())
	}

	// One log line per transition, with the documented fields.
	lines := logs.FilterMessage("circuit transition").All()
	if len(lines) != 3 {
		t.Fatalf("%d log lines, want 3", len(lines))
	}
	fields := lines[0].ContextMap()
	for _, k := range []string{"upstream", "from", "to", "reason", "requests", "failures", "slow", "failure_rate",
		"consecutive", "generation", "mode", "open_for_seconds", "replica"} {
		if _, ok := fields[k]; !ok {
			t.Errorf("log line lacks %q: %v", k, fields)
		}
	}
	if fields["failure_rate"] != 100.0 || fields["replica"] != "r1" || fields["to"] != "open" {
		t.Errorf("log line: %v", fields)
	}
}

// TestHangingWebhookDoesNotBlock: with a webhook that never answers and a queue of 8,
// 10,000 transitions are reported at once; the overflow is dropped and counted.
func TestHangingWebhookDoesNotBlock(t *testing.T) {
	release := make(chan struct{})
	var arrived atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)

	fm := &fakeMetrics{}
	d := New(config.Events{Enabled: true, QueueSize: 8, Webhooks: []config.Webhook{{URL: srv.URL, Timeout: time.Minute, Retries: 3}}},
		Options{Replica: "r1", Metrics: fm})
	d.Start()

	tr := breaker.Transition{Upstream: "api", From: breaker.Closed, To: breaker.Open, Reason: "consecutive_failures"}
	const calls = 10_000
	start := time.Now()
	for i := range calls {
		tr.Generation = uint64(i + 1)
		d.OnTransition(tr)
	}
	elapsed := time.Since(start)
	if elapsed > 2*time.Second {
		t.Errorf("%d OnTransition calls took %v with a hanging webhook", calls, elapsed)
	}
	t.Logf("%d OnTransition calls with a hanging webhook: %v (%v each)", calls, elapsed, elapsed/calls)
	// The worker holds at most one event, the queue 8: everything else was dropped.
	if dropped := fm.dropped.Load(); dropped < calls-9 || dropped > calls-8 {
		t.Errorf("dropped %d, want %d or %d", dropped, calls-9, calls-8)
	}
	if fm.transitions.Load() != calls {
		t.Errorf("transitions counted %d, want %d", fm.transitions.Load(), calls)
	}

	// Close gives up on the hanging delivery when its context ends.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start = time.Now()
	_ = d.Close(ctx)
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Close took %v with a hanging webhook", took)
	}
	if arrived.Load() < 1 {
		t.Errorf("the webhook never received a request")
	}
	d.OnTransition(tr) // after Close: counted, not queued, no panic
}

func TestRetries(t *testing.T) {
	for _, tc := range []struct {
		name          string
		status        func(n int) int
		wantRequests  int
		wantDelivered bool
	}{
		{"5xx then ok", func(n int) int { return map[bool]int{true: 503, false: 200}[n <= 2] }, 3, true},
		{"429 is retried", func(n int) int { return map[bool]int{true: 429, false: 202}[n == 1] }, 2, true},
		{"always 5xx", func(int) int { return 500 }, 3, false}, // 1 + 2 retries
		{"4xx is final", func(int) int { return 400 }, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rcv := newReceiver(t, tc.status)
			fm := &fakeMetrics{}
			h := hook(rcv.srv.URL)
			h.Retries = 2
			d := New(config.Events{Enabled: true, QueueSize: 4, Webhooks: []config.Webhook{h}},
				Options{Metrics: fm, Backoff: time.Millisecond})
			d.Start()
			d.OnTransition(breaker.Transition{Upstream: "api", To: breaker.Open})
			closeDispatcher(t, d) // delivers what is queued first
			if n := rcv.count(); n != tc.wantRequests {
				t.Errorf("%d requests, want %d", n, tc.wantRequests)
			}
			if got := fm.delivered.Load() == 1; got != tc.wantDelivered || fm.delivered.Load()+fm.failed.Load() != 1 {
				t.Errorf("delivered %d failed %d", fm.delivered.Load(), fm.failed.Load())
			}
		})
	}
}

func TestEveryWebhookGetsTheEvent(t *testing.T) {
	a, b := newReceiver(t, nil), newReceiver(t, func(int) int { return 500 })
	fm := &fakeMetrics{}
	hb := hook(b.srv.URL)
	hb.Retries = 0
	d := New(config.Events{Enabled: true, QueueSize: 4, Webhooks: []config.Webhook{hook(a.srv.URL), hb}},
		Options{Metrics: fm, Backoff: time.Millisecond})
	d.Start()
	d.OnTransition(breaker.Transition{Upstream: "api", To: breaker.Open})
	closeDispatcher(t, d)
	if a.count() != 1 || b.count() != 1 {
		t.Errorf("requests: a %d b %d, want 1 each", a.count(), b.count())
	}
	if fm.delivered.Load() != 1 || fm.failed.Load() != 1 {
		t.Errorf("delivered %d failed %d, want 1 and 1", fm.delivered.Load(), fm.failed.Load())
	}
}

func TestDisabledStillCounts(t *testing.T) {
	rcv := newReceiver(t, nil)
	fm := &fakeMetrics{}
	core, logs := observer.New(zap.InfoLevel)
	d := New(config.Events{Enabled: false, QueueSize: 4, Webhooks: []config.Webhook{hook(rcv.srv.URL)}},
		Options{Logger: zap.New(core), Metrics: fm})
	d.Start()
	d.OnTransition(breaker.Transition{Upstream: "api", To: breaker.Open})
	// A reload turns events on: the next transition is logged and sent.
	d.Update(config.Events{Enabled: true, Webhooks: []config.Webhook{hook(rcv.srv.URL)}})
	d.OnTransition(breaker.Transition{Upstream: "api", From: breaker.Open, To: breaker.HalfOpen, Mode: breaker.MetricsOnly})
	closeDispatcher(t, d)
	if fm.transitions.Load() != 2 {
		t.Errorf("transitions counted %d, want 2", fm.transitions.Load())
	}
	if n := rcv.count(); n != 1 {
		t.Errorf("webhook got %d events, want 1 (events disabled for the first)", n)
	}
	lines := logs.FilterMessage("circuit transition").All()
	if len(lines) != 1 {
		t.Fatalf("%d log lines, want 1", len(lines))
	}
	if lines[0].ContextMap()["dry_run"] != true {
		t.Errorf("a metrics_only transition is not marked dry_run: %v", lines[0].ContextMap())
	}
}

// A dispatcher closed before it started has no worker to wait for: Close returns at
// once and says what it did not deliver, a second Close says nothing more, and neither a
// later Start nor a later transition sends anything.
func TestCloseWithoutStart(t *testing.T) {
	rcv := newReceiver(t, nil)
	core, logs := observer.New(zap.InfoLevel)
	fm := &fakeMetrics{}
	d := New(config.Events{Enabled: true, QueueSize: 1, Webhooks: []config.Webhook{hook(rcv.srv.URL)}},
		Options{Logger: zap.New(core), Metrics: fm})
	d.OnTransition(breaker.Transition{Upstream: "api", To: breaker.Open})
	closeDispatcher(t, d)
	undelivered := logs.FilterMessage("transition events not delivered at shutdown").All()
	if len(undelivered) != 1 || undelivered[0].ContextMap()["events"] != int64(1) {
		t.Fatalf("shutdown lines %v, want one with events=1", undelivered)
	}
	closeDispatcher(t, d) // twice is fine, and says nothing more
	d.Start()             // after Close: no worker
	d.OnTransition(breaker.Transition{Upstream: "api", From: breaker.Open, To: breaker.HalfOpen})
	closeDispatcher(t, d)
	if n := len(logs.FilterMessage("transition events not delivered at shutdown").All()); n != 1 {
		t.Errorf("%d shutdown lines after closing three times, want 1", n)
	}
	if d.started || len(d.queue) != 1 {
		t.Errorf("after Close, Start started a worker (%v) or a transition was queued (%d queued)", d.started, len(d.queue))
	}
	if n := rcv.count(); n != 0 || fm.delivered.Load()+fm.failed.Load() != 0 {
		t.Errorf("webhook got %d events, %d deliveries tried; want none", n, fm.delivered.Load()+fm.failed.Load())
	}
	if fm.transitions.Load() != 2 {
		t.Errorf("transitions counted %d, want 2 (counting goes on after Close)", fm.transitions.Load())
	}
}

func TestRedact(t *testing.T) {
	if got := redact("https://user:pw@hooks.example.com/x?token=abc#f"); got != "https://hooks.example.com/x" {
		t.Errorf("redact: %s", got)
	}
}

func benchmarkOnTransition(b *testing.B, hooks []config.Webhook) {
	// A production logger (JSON) writing to nowhere: the log line is part of the cost.
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(io.Discard), zap.InfoLevel))
	d := New(config.Events{Enabled: true, QueueSize: 8, Webhooks: hooks}, Options{Logger: log, Replica: "r1", Metrics: &fakeMetrics{}})
	d.Start()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_ = d.Close(ctx)
	}()
	tr := breaker.Transition{Upstream: "api", From: breaker.Closed, To: breaker.Open, Reason: "consecutive_failures"}
	b.ReportAllocs()
	for b.Loop() {
		d.OnTransition(tr)
	}
}

// BenchmarkOnTransitionNoWebhook is the baseline: metrics and the log line.
func BenchmarkOnTransitionNoWebhook(b *testing.B) { benchmarkOnTransition(b, nil) }

// BenchmarkOnTransitionHangingWebhook: the webhook never answers, so after 9 events
// every call finds the queue full and drops.
func BenchmarkOnTransitionHangingWebhook(b *testing.B) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	benchmarkOnTransition(b, []config.Webhook{{URL: srv.URL, Timeout: time.Minute, Retries: 3}})
}

// A target circuit's transitions (UPSTREAM@HOST:PORT) are target events: webhook event
// target.transition with upstream and target apart, and log lines that say what happened
// to the target.
func TestTargetTransitionEvents(t *testing.T) {
	rcv := newReceiver(t, nil)
	core, logs := observer.New(zap.InfoLevel)
	d := New(config.Events{Enabled: true, QueueSize: 16, Webhooks: []config.Webhook{hook(rcv.srv.URL)}},
		Options{Logger: zap.New(core), Replica: "r1"})
	d.Start()
	defer closeDispatcher(t, d)

	clk := &clock{}
	b := breaker.New("payments@10.0.0.6:8080", breaker.Settings{ConsecutiveFailures: 1, OpenDuration: 10 * time.Second},
		breaker.Options{Clock: clk, Observer: d, Rand: func() float64 { return 0.5 }})
	tk, _ := b.Allow()
	b.Done(tk, breaker.GatewayFailure, time.Millisecond)
	clk.Add(11 * time.Second)
	tk, err := b.Allow()
	if err != nil {
		t.Fatal(err)
	}
	b.Done(tk, breaker.Success, time.Millisecond)

	rcv.wait(t, 3)
	var msgs []string
	for _, e := range logs.All() {
		msgs = append(msgs, e.Message)
		if e.ContextMap()["upstream"] != "payments" || e.ContextMap()["target"] != "10.0.0.6:8080" {
			t.Errorf("log %q: fields %v, want upstream payments and target 10.0.0.6:8080", e.Message, e.ContextMap())
		}
	}
	if want := []string{"target ejected", "target returning on trial", "target restored"}; !slices.Equal(msgs, want) {
		t.Errorf("log messages %q, want %q", msgs, want)
	}
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	for _, body := range rcv.bodies {
		var ev Event
		if err := json.Unmarshal(body, &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Event != TargetEventType || ev.Upstream != "payments" || ev.Target != "10.0.0.6:8080" {
			t.Errorf("webhook event %s, want target.transition for payments / 10.0.0.6:8080", body)
		}
	}
}

// README's webhook body is what the dispatcher sends for the transition README's log
// sample shows (replica b of the two-replica demo opening the circuit), byte for byte.
func TestReadmeWebhookSample(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var sample string
	for l := range strings.Lines(string(readme)) {
		if strings.HasPrefix(l, `{"event":"circuit.transition"`) {
			sample = strings.TrimSpace(l)
		}
	}
	if sample == "" {
		t.Fatal("README.md shows no webhook body")
	}
	rcv := newReceiver(t, nil)
	now := time.Date(2026, 12, 3, 12, 24, 41, 776085132, time.UTC)
	d := New(config.Events{Enabled: true, QueueSize: 4, Webhooks: []config.Webhook{hook(rcv.srv.URL)}},
		Options{Replica: "b", Now: func() time.Time { return now }})
	d.Start()
	defer closeDispatcher(t, d)
	d.OnTransition(breaker.Transition{Upstream: "demo", From: breaker.Closed, To: breaker.Open,
		Reason: breaker.ReasonConsecutiveFailures, Generation: 1, Mode: breaker.Normal,
		Counts: breaker.Counts{Requests: 1}, Consecutive: 0, OpenFor: 10681 * time.Millisecond})
	rcv.wait(t, 1)
	rcv.mu.Lock()
	got := strings.TrimSpace(string(rcv.bodies[0]))
	rcv.mu.Unlock()
	if got != sample {
		t.Errorf("README's webhook body\n  %s\nthe dispatcher sends\n  %s", sample, got)
	}
}
