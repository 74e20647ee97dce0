package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/internal/admin"
	"github.com/fuseproxy/fuseproxy/internal/app"
	"github.com/fuseproxy/fuseproxy/internal/telemetry"
	"github.com/fuseproxy/fuseproxy/store"
)

const testConfig = `
admin:
  listen: 127.0.0.1:0
upstreams:
  api:
    targets: ["http://127.0.0.1:1"]
    breaker:
      consecutive_failures: 2
      open_duration: 30s
      jitter: 0
  legacy:
    targets: ["http://127.0.0.1:1"]
    breaker:
      enabled: false
routes:
  - upstream: api
`

// clock is a manual breaker.Clock.
type clock struct {
	mu  sync.Mutex
	now time.Duration
}

func (c *clock) Now() time.Duration  { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.now += d; c.mu.Unlock() }

// fakeBackend is an admin.Backend over a memory store (or a wrapper of one).
type fakeBackend struct {
	cfg       *config.Config
	breakers  map[string]*breaker.Breaker
	store     store.Store
	ready     atomic.Bool
	reloads   atomic.Int32
	reloadErr error
	clock     *clock
}

func (f *fakeBackend) Breakers() map[string]*breaker.Breaker { return f.breakers }
func (f *fakeBackend) Store() store.Store                    { return f.store }
func (f *fakeBackend) Config() *config.Config                { return f.cfg }
func (f *fakeBackend) ReplicaID() string                     { return "replica-1" }
func (f *fakeBackend) Ready() bool                           { return f.ready.Load() }
func (f *fakeBackend) ReloadFile() error                     { f.reloads.Add(1); return f.reloadErr }

func mustConfig(t testing.TB, yaml string) *config.Config {
	t.Helper()
	cfg, err := config.ParseWithEnv("test.yaml", []byte(yaml), nil)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return cfg
}

func newBackend(t testing.TB) *fakeBackend {
	cfg := mustConfig(t, testConfig)
	f := &fakeBackend{cfg: cfg, clock: &clock{}, breakers: map[string]*breaker.Breaker{}}
	mem := store.NewMemory("replica-1").WithHistory(store.HistoryOptions{Retention: time.Hour, MaxEntries: 100}, nil)
	circuits := map[string]store.Circuit{}
	for name, u := range cfg.Upstreams {
		if !u.Breaker.Enabled {
			continue
		}
		b := breaker.New(name, u.Breaker.Settings(), breaker.Options{Clock: f.clock, Observer: mem})
		f.breakers[name] = b
		circuits[name] = store.Circuit{Breaker: b}
	}
	mem.Attach(circuits)
	f.store = mem
	f.ready.Store(true)
	return f
}

// server serves the admin API for f on loopback.
func server(t testing.TB, f *fakeBackend, o admin.Options) *httptest.Server {
	srv := httptest.NewServer(admin.NewHandler(f, o))
	t.Cleanup(srv.Close)
	return srv
}

type answer struct {
	status int
	header http.Header
	body   string
}

func do(t testing.TB, method, url, token, body string) answer {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if method != http.MethodGet {
		req.Header.Set(admin.HeaderAdmin, "1") // as the CLI does
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header, string(b)}
}

func decode[T any](t testing.TB, a answer) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(a.body), &v); err != nil {
		t.Fatalf("decoding %T from %q: %v", v, a.body, err)
	}
	return v
}

func trip(b *breaker.Breaker, n int) {
	for range n {
		tk, err := b.Allow()
		if err == nil {
			b.Done(tk, breaker.Failure, time.Millisecond)
		}
	}
}

func TestListAndShow(t *testing.T) {
	f := newBackend(t)
	wall := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	srv := server(t, f, admin.Options{Now: func() time.Time { return wall }})
	b := f.breakers["api"]
	tk, _ := b.Allow()
	b.Done(tk, breaker.Success, time.Millisecond)
	tk, _ = b.Allow()
	b.Done(tk, breaker.Failure, time.Millisecond)

	a := do(t, "GET", srv.URL+"/circuits", "", "")
	if a.status != 200 || a.header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /circuits: %d %s", a.status, a.body)
	}
	l := decode[admin.CircuitList](t, a)
	if l.Replica != "replica-1" || l.Store.Driver != "memory" || len(l.Circuits) != 2 {
		t.Fatalf("list: %+v", l)
	}
	api, legacy := l.Circuits[0], l.Circuits[1]
	if api.Name != "api" || api.State != "closed" || api.Mode != "normal" || api.Source != "local" ||
		api.Counts != (breaker.Counts{Requests: 2, Failures: 1}) || api.Rates.FailureRate != 50 ||
		api.Consecutive != 1 || api.OpenedAt != "" {
		t.Errorf("api: %+v", api)
	}
	if legacy.Name != "legacy" || legacy.State != "disabled" || legacy.Mode != "" || legacy.Source != "" {
		t.Errorf("legacy: %+v", legacy)
	}

	trip(b, 1)
	f.clock.Add(10 * time.Second)
	d := decode[admin.CircuitDetail](t, do(t, "GET", srv.URL+"/circuits/api", "", ""))
	if d.State != "open" || d.Trips != 1 || d.Generation != 1 || d.OpenRemainingSeconds != 20 || d.OpenForSeconds != 30 ||
		d.OpenedAt != "2025-06-01T11:59:50Z" || d.Replica != "replica-1" {
		t.Errorf("detail: %+v", d)
	}
	if d.Settings == nil || d.Settings.OpenDuration != "30s" || d.Settings.ConsecutiveFailures != 2 ||
		d.Settings.Window != "10s" || d.Settings.SlowCallDuration != "1s" || d.Settings.InitialMode != "normal" {
		t.Errorf("settings: %+v", d.Settings)
	}
	if d.SharedStore["state"] != "open" || d.SharedStore["generation"] != "1" {
		t.Errorf("shared_store: %v", d.SharedStore)
	}
	// Durations are strings in the JSON.
	if a := do(t, "GET", srv.URL+"/circuits/api", "", ""); !strings.Contains(a.body, `"open_duration": "30s"`) {
		t.Errorf("settings JSON: %s", a.body)
	}

	d = decode[admin.CircuitDetail](t, do(t, "GET", srv.URL+"/circuits/legacy", "", ""))
	if d.State != "disabled" || d.Settings != nil || d.SharedStore != nil {
		t.Errorf("disabled detail: %+v", d)
	}
	a = do(t, "GET", srv.URL+"/circuits/nope", "", "")
	if e := decode[admin.Error](t, a); a.status != 404 || e.Upstream != "nope" || !strings.Contains(e.Error, "unknown upstream") {
		t.Errorf("unknown: %d %s", a.status, a.body)
	}
}

func TestControl(t *testing.T) {
	f := newBackend(t)
	srv := server(t, f, admin.Options{})
	b := f.breakers["api"]
	post := func(path, body string) answer { return do(t, "POST", srv.URL+path, "", body) }

	a := post("/circuits/api/open", "")
	r := decode[admin.ControlResult](t, a)
	if a.status != 200 || r.Action != "open" || r.Circuit.State != "open" || r.Scope != "replica" || r.Warning != "" || b.State() != breaker.Open {
		t.Errorf("open: %d %s", a.status, a.body)
	}
	a = post("/circuits/api/close", "")
	if r := decode[admin.ControlResult](t, a); a.status != 200 || r.Circuit.State != "closed" || b.State() != breaker.Closed {
		t.Errorf("close: %d %s", a.status, a.body)
	}
	a = post("/circuits/api/mode", `{"mode":"metrics_only"}`)
	if r := decode[admin.ControlResult](t, a); a.status != 200 || r.Circuit.Mode != "metrics_only" || b.Mode() != breaker.MetricsOnly {
		t.Errorf("mode (body): %d %s", a.status, a.body)
	}
	a = post("/circuits/api/mode?mode=forced_open", "")
	if a.status != 200 || b.Mode() != breaker.ForcedOpen {
		t.Errorf("mode (query): %d %s", a.status, a.body)
	}
	a = post("/circuits/api/reset", "")
	if r := decode[admin.ControlResult](t, a); a.status != 200 || r.Circuit.Mode != "normal" || b.Mode() != breaker.Normal {
		t.Errorf("reset: %d %s", a.status, a.body)
	}

	for _, tc := range []struct {
		path, body, field string
		status            int
	}{
		{"/circuits/api/mode", `{"mode":"sideways"}`, "mode", 400},
		{"/circuits/api/mode?mode=sideways", "", "mode", 400},
		{"/circuits/api/mode", "", "mode", 400},
		{"/circuits/api/mode", `{}`, "mode", 400},
		{"/circuits/api/mode", `{"mode":"normal","x":1}`, "body", 400},
		{"/circuits/api/mode", `not json`, "body", 400},
		{"/circuits/nope/open", "", "", 404},
		{"/circuits/nope/mode", `{"mode":"normal"}`, "", 404},
	} {
		a := post(tc.path, tc.body)
		e := decode[admin.Error](t, a)
		if a.status != tc.status || e.Field != tc.field || e.Error == "" {
			t.Errorf("POST %s %q: %d %s, want %d naming field %q", tc.path, tc.body, a.status, a.body, tc.status, tc.field)
		}
	}
	a = post("/circuits/legacy/open", "")
	if e := decode[admin.Error](t, a); a.status != 409 || e.Upstream != "legacy" {
		t.Errorf("disabled breaker: %d %s", a.status, a.body)
	}
	if b.Mode() != breaker.Normal {
		t.Errorf("a bad request changed the mode to %v", b.Mode())
	}
}

// localOnlyStore answers Control like a redis store that cannot reach Redis.
type localOnlyStore struct{ *store.Memory }

func (s localOnlyStore) Control(ctx context.Context, name string, c store.Command) error {
	if err := s.Memory.Control(ctx, name, c); err != nil {
		return err
	}
	return &store.LocalOnlyError{Err: errors.New("dial tcp 127.0.0.1:6390: connect: connection refused")}
}

func (s localOnlyStore) Status() store.Status {
	return store.Status{Driver: "redis", ReplicaID: "replica-1", Degraded: true, LastError: "connection refused"}
}

func (s localOnlyStore) Resync(context.Context) error {
	return errors.New("dial tcp: connection refused")
}

func TestControlLocalOnlyAndDegraded(t *testing.T) {
	f := newBackend(t)
	f.store = localOnlyStore{f.store.(*store.Memory)}
	srv := server(t, f, admin.Options{})
	a := do(t, "POST", srv.URL+"/circuits/api/open", "", "")
	r := decode[admin.ControlResult](t, a)
	if a.status != 202 || r.Warning != "applied to this replica only" || r.Scope != "replica" ||
		!strings.Contains(r.Detail, "connection refused") || r.Circuit.State != "open" {
		t.Errorf("local-only open: %d %s", a.status, a.body)
	}
	if l := decode[admin.CircuitList](t, do(t, "GET", srv.URL+"/circuits", "", "")); l.Circuits[0].Source != "degraded" {
		t.Errorf("source while degraded: %+v", l.Circuits[0])
	}
	a = do(t, "GET", srv.URL+"/readyz", "", "")
	if r := decode[admin.Readiness](t, a); a.status != 200 || !r.Ready || !r.Degraded || r.Store != "redis" ||
		r.Protection != "local" || r.StoreError != "connection refused" {
		t.Errorf("readyz degraded: %d %s", a.status, a.body)
	}
	a = do(t, "POST", srv.URL+"/flush", "", "")
	if r := decode[admin.FlushResult](t, a); a.status != 503 || r.Flushed || !strings.Contains(r.Error, "refused") {
		t.Errorf("flush with the store down: %d %s", a.status, a.body)
	}
}

func TestProbesFlushReload(t *testing.T) {
	f := newBackend(t)
	m := telemetry.New(telemetry.Options{Circuits: f.Breakers})
	m.SetUpstreams(map[string]bool{"api": true, "legacy": false})
	srv := server(t, f, admin.Options{Gatherer: m.Registry()})

	a := do(t, "GET", srv.URL+"/healthz", "", "")
	if a.status != 200 || a.body != "ok\n" {
		t.Errorf("healthz: %d %q", a.status, a.body)
	}
	a = do(t, "GET", srv.URL+"/readyz", "", "")
	if r := decode[admin.Readiness](t, a); a.status != 200 || !r.Ready || r.Store != "memory" || r.Degraded ||
		r.Protection != "local" || r.Replica != "replica-1" || r.Upstreams != 2 {
		t.Errorf("readyz: %d %s", a.status, a.body)
	}
	f.ready.Store(false)
	a = do(t, "GET", srv.URL+"/readyz", "", "")
	if r := decode[admin.Readiness](t, a); a.status != 503 || r.Ready {
		t.Errorf("readyz not ready: %d %s", a.status, a.body)
	}
	if a := do(t, "GET", srv.URL+"/healthz", "", ""); a.status != 200 {
		t.Errorf("healthz while not ready: %d", a.status)
	}

	a = do(t, "POST", srv.URL+"/flush", "", "")
	if r := decode[admin.FlushResult](t, a); a.status != 200 || !r.Flushed || r.Store.Driver != "memory" {
		t.Errorf("flush: %d %s", a.status, a.body)
	}

	a = do(t, "POST", srv.URL+"/reload", "", "")
	if r := decode[admin.ReloadResult](t, a); a.status != 200 || !r.Reloaded || r.Path != "test.yaml" || r.Upstreams != 2 || f.reloads.Load() != 1 {
		t.Errorf("reload: %d %s", a.status, a.body)
	}
	f.reloadErr = errors.New("test.yaml:3: upstreams.api.breaker.failure_rate: must be between 0 and 100, got 120")
	a = do(t, "POST", srv.URL+"/reload", "", "")
	if r := decode[admin.ReloadResult](t, a); a.status != 500 || r.Reloaded || !strings.Contains(r.Error, "failure_rate") {
		t.Errorf("failed reload: %d %s", a.status, a.body)
	}

	a = do(t, "GET", srv.URL+"/metrics", "", "")
	if a.status != 200 || !strings.Contains(a.body, `fuseproxy_circuit_state{state="closed",upstream="api"} 1`) {
		t.Errorf("metrics: %d %.300s", a.status, a.body)
	}

	// Wrong methods and unknown paths answer JSON too.
	a = do(t, "GET", srv.URL+"/flush", "", "")
	if e := decode[admin.Error](t, a); a.status != 405 || a.header.Get("Allow") != "POST" || e.Error == "" {
		t.Errorf("GET /flush: %d %v %s", a.status, a.header, a.body)
	}
	a = do(t, "POST", srv.URL+"/circuits", "", "")
	if a.status != 405 || a.header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST /circuits: %d %v", a.status, a.header)
	}
	a = do(t, "GET", srv.URL+"/nothing/here", "", "")
	if e := decode[admin.Error](t, a); a.status != 404 || e.Error == "" {
		t.Errorf("unknown path: %d %s", a.status, a.body)
	}

	// Without a Gatherer, /metrics is a 404.
	srv2 := server(t, f, admin.Options{})
	if a := do(t, "GET", srv2.URL+"/metrics", "", ""); a.status != 404 {
		t.Errorf("metrics without a gatherer: %d", a.status)
	}
}

// route is one admin route with a request that succeeds when authorized.
type route struct{ method, path, body string }

var allRoutes = []route{
	{"GET", "/circuits", ""},
	{"GET", "/circuits/api", ""},
	{"GET", "/circuits/api/history", ""},
	{"POST", "/circuits/api/open", ""},
	{"POST", "/circuits/api/close", ""},
	{"POST", "/circuits/api/reset", ""},
	{"POST", "/circuits/api/mode", `{"mode":"metrics_only"}`},
	{"POST", "/flush", ""},
	{"POST", "/reload", ""},
	{"GET", "/readyz", ""},
	{"GET", "/metrics", ""},
	{"GET", "/healthz", ""},
}

func TestAuth(t *testing.T) {
	const token = "s3cret-token"
	f := newBackend(t)
	m := telemetry.New(telemetry.Options{Circuits: f.Breakers, NoRuntimeCollectors: true})
	srv := server(t, f, admin.Options{Token: token, Gatherer: m.Registry()})
	for _, rt := range allRoutes {
		for _, tc := range []struct {
			name, token string
			status      int
		}{
			{"no token", "", 401},
			{"wrong token", "s3cret-tokeN", 401},
			{"token prefix", "s3cret", 401},
			{"right token", token, 200},
		} {
			a := do(t, rt.method, srv.URL+rt.path, tc.token, rt.body)
			want := tc.status
			if rt.path == "/healthz" {
				want = 200 // liveness needs no token (documented): it says only "ok"
			}
			if a.status != want {
				t.Errorf("%s %s with %s: %d %s, want %d", rt.method, rt.path, tc.name, a.status, a.body, want)
				continue
			}
			if want == 401 {
				if a.body != "{\n  \"error\": \"unauthorized\"\n}\n" || a.header.Get("WWW-Authenticate") != "Bearer" {
					t.Errorf("%s %s 401: body %q, WWW-Authenticate %q", rt.method, rt.path, a.body, a.header.Get("WWW-Authenticate"))
				}
			}
		}
	}
	// Nothing else is reachable unauthenticated: not even whether a route exists.
	for _, p := range []string{"/nothing", "/circuits/nope", "/circuits/nope/open"} {
		if a := do(t, "POST", srv.URL+p, "", ""); a.status != 401 {
			t.Errorf("POST %s without a token: %d", p, a.status)
		}
	}
	// The scheme is case-insensitive; other schemes are refused.
	req, _ := http.NewRequest("GET", srv.URL+"/circuits", nil)
	req.Header.Set("Authorization", "bearer "+token)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
		t.Errorf("lower-case bearer: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	req.Header.Set("Authorization", "Basic "+token)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 401 {
		t.Errorf("basic scheme: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
}

func TestNoTokenOnlyOnLoopback(t *testing.T) {
	f := newBackend(t)
	h := admin.NewHandler(f, admin.Options{})
	for _, tc := range []struct {
		addr   net.Addr
		status int
	}{
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 8084}, 200},
		{&net.TCPAddr{IP: net.IPv6loopback, Port: 8084}, 200},
		{&net.TCPAddr{IP: net.ParseIP("10.1.2.3"), Port: 8084}, 403},
		{&net.TCPAddr{IP: net.ParseIP("0.0.0.0"), Port: 8084}, 403},
	} {
		req := httptest.NewRequest("GET", "http://"+tc.addr.String()+"/circuits", nil)
		req = req.WithContext(context.WithValue(req.Context(), http.LocalAddrContextKey, tc.addr))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != tc.status {
			t.Errorf("request on %v without a token: %d, want %d", tc.addr, rec.Code, tc.status)
		}
	}
}

func TestListenRefusesPublicWithoutToken(t *testing.T) {
	for _, tc := range []struct {
		addr, token string
		ok          bool
	}{
		{"127.0.0.1:8084", "", true},
		{"localhost:8084", "", true},
		{"[::1]:8084", "", true},
		{"0.0.0.0:8084", "", false},
		{":8084", "", false},
		{"10.0.0.5:8084", "", false},
		{"[::]:8084", "", false},
		{"example.com:8084", "", false},
		{"0.0.0.0:8084", "tok", true},
		{"no-port", "tok", false},
	} {
		err := admin.CheckListen(tc.addr, tc.token)
		if (err == nil) != tc.ok {
			t.Errorf("CheckListen(%q, %q) = %v, want ok %v", tc.addr, tc.token, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "admin.listen") {
			t.Errorf("error does not name admin.listen: %v", err)
		}
	}
	if ln, err := admin.Listen("0.0.0.0:0", ""); err == nil {
		ln.Close()
		t.Fatal("Listen bound 0.0.0.0 without a token")
	} else if !strings.Contains(err.Error(), `admin.listen "0.0.0.0:0" is not a loopback address`) {
		t.Errorf("error: %v", err)
	}
	ln, err := admin.Listen("127.0.0.1:0", "")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
}

// TestAppRefusesPublicAdminWithoutToken: the app does not start (config validation is
// bypassed here by editing a loaded config, as a bug or a future code path might).
func TestAppRefusesPublicAdminWithoutToken(t *testing.T) {
	cfg := mustConfig(t, testConfig)
	cfg.Admin.Listen = "0.0.0.0:0"
	a, err := app.New(cfg, app.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = a.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "admin.listen") {
		t.Fatalf("Run with a public admin listener and no token: %v", err)
	}
}
