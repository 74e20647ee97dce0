package admin_test

// In-process replicas (internal/app) with their real admin listener: metrics moving as a
// circuit trips and recovers, /readyz during shutdown, and a fleet of two replicas
// sharing a real redis-server.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/fuseproxy/fuseproxy/internal/admin"
	"github.com/fuseproxy/fuseproxy/internal/app"
	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// backend is an upstream whose answers the test switches; newUpstream starts one.
type backend struct {
	srv      *httptest.Server
	fail     atomic.Bool
	requests atomic.Int64
	block    chan struct{} // requests to /slow wait for it
	arrived  chan struct{} // one value per request to /slow
}

func newUpstream(t *testing.T) *backend {
	b := &backend{block: make(chan struct{}), arrived: make(chan struct{}, 16)}
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.requests.Add(1)
		if r.URL.Path == "/slow" {
			b.arrived <- struct{}{}
			<-b.block
		}
		if b.fail.Load() {
			http.Error(w, "backend failing", http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "hello")
	}))
	t.Cleanup(b.srv.Close)
	return b
}

// replica is one running in-process app.
type replica struct {
	app     *app.App
	proxy   string // base URL
	admin   string // base URL
	logs    *observer.ObservedLogs
	stop    context.CancelFunc
	stopped chan error
}

func startReplica(t *testing.T, yaml string) *replica {
	t.Helper()
	cfg := mustConfig(t, yaml)
	core, logs := observer.New(zap.InfoLevel)
	a, err := app.New(cfg, app.Options{Logger: zap.New(core), Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &replica{app: a, logs: logs, stop: cancel, stopped: make(chan error, 1)}
	go func() { r.stopped <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.stopped:
		case <-time.After(15 * time.Second):
			t.Errorf("replica did not stop")
		}
	})
	waitFor(t, 5*time.Second, "replica ready", func() bool {
		select {
		case err := <-r.stopped:
			t.Fatalf("Run: %v", err)
		default:
		}
		return a.Ready()
	})
	p, ad := a.Addrs()
	r.proxy, r.admin = "http://"+p, "http://"+ad
	return r
}

func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// get sends one request through a replica's proxy.
func get(t testing.TB, url string) (int, http.Header) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header
}

// metric returns a sample's value from a /metrics exposition, -1 when absent.
func metric(text, series string) float64 {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(text)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

func scrape(t testing.TB, r *replica) string {
	t.Helper()
	a := do(t, "GET", r.admin+"/metrics", "", "")
	if a.status != 200 {
		t.Fatalf("/metrics: %d", a.status)
	}
	return a.body
}

func promtoolCheck(t *testing.T, exposition string) {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool not found: apt-get install -y prometheus")
	}
	cmd := exec.Command(path, "check", "metrics")
	cmd.Stdin = strings.NewReader(exposition)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil || strings.TrimSpace(out.String()) != "" {
		t.Fatalf("promtool check metrics: %v\n%s", err, out.String())
	}
}

func memoryConfig(backendURL string) string {
	return `
listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
server:
  shutdown_timeout: 10s
store:
  replica_id: solo
upstreams:
  api:
    targets: ["` + backendURL + `"]
    breaker:
      consecutive_failures: 3
      open_duration: 300ms
      backoff_multiplier: 1
      jitter: 0
routes:
  - upstream: api
`
}

// TestMetricsFollowTripAndRecovery drives a circuit closed → open → half_open → closed
// through the proxy and watches /metrics move with it; the exposition passes promtool.
func TestMetricsFollowTripAndRecovery(t *testing.T) {
	be := newUpstream(t)
	r := startReplica(t, memoryConfig(be.srv.URL))
	const (
		ok       = `fuseproxy_requests_total{outcome="success",upstream="api"}`
		failed   = `fuseproxy_requests_total{outcome="failure_status",upstream="api"}`
		rejected = `fuseproxy_requests_total{outcome="rejected",upstream="api"}`
		toOpen   = `fuseproxy_circuit_transitions_total{from="closed",to="open",upstream="api"}`
		toHalf   = `fuseproxy_circuit_transitions_total{from="open",to="half_open",upstream="api"}`
		toClosed = `fuseproxy_circuit_transitions_total{from="half_open",to="closed",upstream="api"}`
		isOpen   = `fuseproxy_circuit_state{state="open",upstream="api"}`
		isClosed = `fuseproxy_circuit_state{state="closed",upstream="api"}`
		duration = `fuseproxy_upstream_request_duration_seconds_count{upstream="api"}`
	)
	text := scrape(t, r)
	promtoolCheck(t, text)
	for _, s := range []string{ok, failed, rejected, toOpen, toHalf, toClosed} {
		if v := metric(text, s); v != 0 {
			t.Errorf("at start %s = %v, want 0", s, v)
		}
	}
	if metric(text, isClosed) != 1 || metric(text, isOpen) != 0 {
		t.Errorf("at start the circuit is not closed:\n%s", text)
	}

	for range 2 {
		if code, _ := get(t, r.proxy+"/"); code != 200 {
			t.Fatalf("healthy request: %d", code)
		}
	}
	be.fail.Store(true)
	for range 3 {
		get(t, r.proxy+"/")
	}
	code, h := get(t, r.proxy+"/")
	if code != 503 || h.Get("X-Fuse-Circuit") != "open" {
		t.Fatalf("after 3 failures: %d %v, want a rejection", code, h)
	}
	text = scrape(t, r)
	for s, want := range map[string]float64{ok: 2, failed: 3, rejected: 1, toOpen: 1, toHalf: 0, isOpen: 1, isClosed: 0, duration: 5} {
		if v := metric(text, s); v != want {
			t.Errorf("while open %s = %v, want %v", s, v, want)
		}
	}

	be.fail.Store(false)
	time.Sleep(350 * time.Millisecond) // the open period ends
	if code, _ := get(t, r.proxy+"/"); code != 200 {
		t.Fatalf("trial request: %d", code)
	}
	text = scrape(t, r)
	for s, want := range map[string]float64{ok: 3, toHalf: 1, toClosed: 1, isOpen: 0, isClosed: 1} {
		if v := metric(text, s); v != want {
			t.Errorf("after recovery %s = %v, want %v", s, v, want)
		}
	}
	promtoolCheck(t, text)

	// The transition log tells the same story.
	var got []string
	for _, e := range r.logs.FilterMessage("circuit transition").All() {
		f := e.ContextMap()
		got = append(got, fmt.Sprint(f["from"], "→", f["to"]))
	}
	if strings.Join(got, " ") != "closed→open open→half_open half_open→closed" {
		t.Errorf("transition log: %v", got)
	}
}

// TestReadyzDuringShutdown: /readyz turns 503 as soon as shutdown begins, while the proxy
// still drains a request, and the admin listener closes only after the proxy's.
func TestReadyzDuringShutdown(t *testing.T) {
	be := newUpstream(t)
	r := startReplica(t, memoryConfig(be.srv.URL))
	if a := do(t, "GET", r.admin+"/readyz", "", ""); a.status != 200 {
		t.Fatalf("readyz while serving: %d %s", a.status, a.body)
	}
	done := make(chan int, 1)
	go func() {
		resp, err := http.Get(r.proxy + "/slow")
		if err != nil {
			done <- -1
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	<-be.arrived
	r.stop()
	waitFor(t, 5*time.Second, "readyz 503", func() bool { return do(t, "GET", r.admin+"/readyz", "", "").status == 503 })
	a := do(t, "GET", r.admin+"/readyz", "", "")
	if rd := decode[admin.Readiness](t, a); rd.Ready || rd.Status == "serving" {
		t.Errorf("readyz while draining: %s", a.body)
	}
	if a := do(t, "GET", r.admin+"/healthz", "", ""); a.status != 200 {
		t.Errorf("healthz while draining: %d", a.status)
	}
	select {
	case err := <-r.stopped:
		t.Fatalf("Run returned (%v) before the in-flight request finished", err)
	default:
	}
	close(be.block)
	if code := <-done; code != 200 {
		t.Errorf("the in-flight request got %d, want 200", code)
	}
	select {
	case err := <-r.stopped:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
		r.stopped <- err // for the cleanup
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	if _, err := http.Get(r.admin + "/healthz"); err == nil {
		t.Errorf("the admin listener still answers after Run returned")
	}
}

func redisConfig(backendURL, redisURL, prefix, id string) string {
	return `
listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
store:
  driver: redis
  replica_id: ` + id + `
  flush_interval: 20ms
  redis:
    url: "` + redisURL + `"
    prefix: ` + prefix + `
upstreams:
  api:
    targets: ["` + backendURL + `"]
    breaker:
      consecutive_failures: 3
      open_duration: 1m
      jitter: 0
routes:
  - upstream: api
`
}

func circuitOf(t testing.TB, r *replica) admin.Circuit {
	t.Helper()
	l := decode[admin.CircuitList](t, do(t, "GET", r.admin+"/circuits", "", ""))
	return l.Circuits[0]
}

// TestFleetSteeredThroughOneReplica: two replicas share a redis-server. Commands sent to
// replica A's admin API steer replica B too.
func TestFleetSteeredThroughOneReplica(t *testing.T) {
	rs := redistest.Start(t)
	be := newUpstream(t)
	a := startReplica(t, redisConfig(be.srv.URL, rs.URL(), "fleet", "a"))
	b := startReplica(t, redisConfig(be.srv.URL, rs.URL(), "fleet", "b"))
	if code, _ := get(t, b.proxy+"/"); code != 200 {
		t.Fatalf("B before: %d", code)
	}

	// 1. Open through A: B rejects.
	res := do(t, "POST", a.admin+"/circuits/api/open", "", "")
	if cr := decode[admin.ControlResult](t, res); res.status != 200 || cr.Scope != "fleet" || cr.Circuit.State != "open" {
		t.Fatalf("open through A: %d %s", res.status, res.body)
	}
	waitFor(t, 5*time.Second, "B rejecting", func() bool {
		code, h := get(t, b.proxy+"/")
		return code == 503 && h.Get("X-Fuse-Circuit") == "open"
	})
	if c := circuitOf(t, b); c.State != "open" || c.Source != "shared" {
		t.Errorf("B's view: %+v", c)
	}
	d := decode[admin.CircuitDetail](t, do(t, "GET", b.admin+"/circuits/api", "", ""))
	if d.SharedStore["st"] != "1" || d.SharedStore["key"] != "fleet:{api}:state" || d.SharedStoreError != "" {
		t.Errorf("B's view of the shared store: %v %s", d.SharedStore, d.SharedStoreError)
	}

	// 2. Reset through A: everyone closed.
	res = do(t, "POST", a.admin+"/circuits/api/reset", "", "")
	if res.status != 200 {
		t.Fatalf("reset: %d %s", res.status, res.body)
	}
	waitFor(t, 5*time.Second, "B closed", func() bool { return circuitOf(t, b).State == "closed" })
	if code, _ := get(t, b.proxy+"/"); code != 200 {
		t.Fatalf("B after reset: %d", code)
	}

	// 3. metrics_only through A: B trips on its own failures but lets traffic through;
	// would_reject counts what it would have rejected and the log says so.
	res = do(t, "POST", a.admin+"/circuits/api/mode", "", `{"mode":"metrics_only"}`)
	if res.status != 200 {
		t.Fatalf("mode: %d %s", res.status, res.body)
	}
	waitFor(t, 5*time.Second, "B in metrics_only", func() bool { return circuitOf(t, b).Mode == "metrics_only" })
	be.fail.Store(true)
	waitFor(t, 5*time.Second, "B open (dry run)", func() bool {
		get(t, b.proxy+"/")
		return circuitOf(t, b).State == "open"
	})
	before := be.requests.Load()
	for range 5 {
		code, h := get(t, b.proxy+"/")
		if code != 500 || h.Get("X-Fuse-Circuit") != "" {
			t.Fatalf("metrics_only while open: %d %v, want the backend's own 500", code, h)
		}
	}
	if n := be.requests.Load() - before; n != 5 {
		t.Errorf("backend got %d of 5 requests in metrics_only", n)
	}
	if v := metric(scrape(t, b), `fuseproxy_requests_would_reject_total{upstream="api"}`); v < 5 {
		t.Errorf("would_reject = %v, want >= 5", v)
	}
	if v := metric(scrape(t, b), `fuseproxy_requests_total{outcome="rejected",upstream="api"}`); v != 1 {
		t.Errorf("rejected = %v, want 1 (step 1 only)", v)
	}
	var dry bool
	for _, e := range b.logs.FilterMessage("circuit transition").All() {
		f := e.ContextMap()
		if f["to"] == "open" && f["mode"] == "metrics_only" && f["dry_run"] == true && f["replica"] == "b" {
			dry = true
		}
	}
	if !dry {
		t.Errorf("B's log has no dry-run transition to open: %v", b.logs.FilterMessage("circuit transition").All())
	}

	// 4. Reset through A: all closed and normal again, traffic flows.
	be.fail.Store(false)
	if res := do(t, "POST", a.admin+"/circuits/api/reset", "", ""); res.status != 200 {
		t.Fatalf("reset: %d %s", res.status, res.body)
	}
	for _, r := range []*replica{a, b} {
		waitFor(t, 5*time.Second, "closed and normal", func() bool {
			c := circuitOf(t, r)
			return c.State == "closed" && c.Mode == "normal"
		})
		if code, _ := get(t, r.proxy+"/"); code != 200 {
			t.Errorf("after the last reset: %d", code)
		}
	}
	if v := metric(scrape(t, b), `fuseproxy_store_degraded`); v != 0 {
		t.Errorf("store_degraded = %v", v)
	}
	if v := metric(scrape(t, b), `fuseproxy_store_flush_duration_seconds_count`); v <= 0 {
		t.Errorf("no flushes measured: %v", v)
	}
}

// TestReloadThroughAdmin: POST /reload re-reads the file; a broken file keeps the old
// config and counts a failure.
func TestReloadThroughAdmin(t *testing.T) {
	be := newUpstream(t)
	path := t.TempDir() + "/config.yaml"
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := memoryConfig(be.srv.URL)
	write(cfg)
	c := mustConfig(t, cfg)
	c.Path = path
	core, _ := observer.New(zap.InfoLevel)
	ap, err := app.New(c, app.Options{Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- ap.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-stopped; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	}()
	waitFor(t, 5*time.Second, "ready", ap.Ready)
	_, ad := ap.Addrs()
	url := "http://" + ad

	write(strings.Replace(cfg, "routes:\n", `  other:
    targets: ["`+be.srv.URL+`"]
routes:
  - path_prefix: /other
    upstream: other
`, 1))
	res := do(t, "POST", url+"/reload", "", "")
	if rr := decode[admin.ReloadResult](t, res); res.status != 200 || !rr.Reloaded || rr.Upstreams != 2 {
		t.Fatalf("reload: %d %s", res.status, res.body)
	}
	text := do(t, "GET", url+"/metrics", "", "").body
	if metric(text, `fuseproxy_requests_total{outcome="success",upstream="other"}`) != 0 ||
		metric(text, `fuseproxy_config_reloads_total{result="success"}`) != 1 {
		t.Errorf("after reload:\n%s", text)
	}
	write("upstreams: [")
	res = do(t, "POST", url+"/reload", "", "")
	if rr := decode[admin.ReloadResult](t, res); res.status != 500 || rr.Reloaded || !strings.Contains(rr.Error, "config.yaml") {
		t.Fatalf("broken reload: %d %s", res.status, res.body)
	}
	text = do(t, "GET", url+"/metrics", "", "").body
	if metric(text, `fuseproxy_config_reloads_total{result="failure"}`) != 1 || len(ap.Config().Upstreams) != 2 {
		t.Errorf("after a failed reload:\n%s", text)
	}
	// Back to one upstream: the removed upstream's series are gone.
	write(cfg)
	if res := do(t, "POST", url+"/reload", "", ""); res.status != 200 {
		t.Fatalf("reload: %d %s", res.status, res.body)
	}
	if text := do(t, "GET", url+"/metrics", "", "").body; strings.Contains(text, `upstream="other"`) {
		t.Errorf("series of the removed upstream remain")
	}
}
