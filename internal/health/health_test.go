package health

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/store"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// See store's TestMain: go-redis's dial prober outlives a closed client briefly.
		goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"))
}

const waitFor = 5 * time.Second

// eventually polls cond until it holds, failing the test after within.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(time.Millisecond) // polling interval, not synchronisation
	}
}

// backend is an httptest server whose status the test sets; it counts the requests.
type backend struct {
	*httptest.Server
	status atomic.Int64
	hits   atomic.Int64
	mu     sync.Mutex
	last   *http.Request
}

func newBackend(t *testing.T) *backend {
	b := &backend{}
	b.status.Store(200)
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		b.mu.Lock()
		b.last = r
		b.mu.Unlock()
		w.WriteHeader(int(b.status.Load()))
	}))
	t.Cleanup(b.Close)
	return b
}

// check is health_check with the defaults (2 good probes restore, 3 failed eject, 2xx),
// on /healthz every interval.
func check(interval time.Duration) config.HealthCheck {
	h := config.DefaultUpstream().HealthCheck
	h.Path, h.Interval, h.Timeout = "/healthz", interval, interval/2
	for code := 200; code < 300; code++ {
		h.Expected.Set(code, true)
	}
	return h
}

// recStore is a memory store that records the commands it is given, and whose Claim
// answers what the test says.
type recStore struct {
	*store.Memory
	mu    sync.Mutex
	cmds  []store.Op
	claim func() (bool, error) // nil: the memory store's (always held)
}

func (s *recStore) Control(ctx context.Context, name string, c store.Command) error {
	s.mu.Lock()
	s.cmds = append(s.cmds, c.Op)
	s.mu.Unlock()
	return s.Memory.Control(ctx, name, c)
}

func (s *recStore) Claim(ctx context.Context, key string, ttl time.Duration) (bool, error) {
	if s.claim != nil {
		return s.claim()
	}
	return s.Memory.Claim(ctx, key, ttl)
}

func (s *recStore) ops() []store.Op {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]store.Op(nil), s.cmds...)
}

// fixture is one upstream "api" with one target per backend, its circuits attached to
// a memory store, and a checker on them (not running: tests call turn).
type fixture struct {
	st       *recStore
	c        *Checker
	targets  []Target
	breakers []*breaker.Breaker
	logs     *observer.ObservedLogs
	mu       sync.Mutex
	results  []Result
	events   []Event
}

func newFixture(t *testing.T, interval time.Duration, backends ...*backend) *fixture {
	f := &fixture{st: &recStore{Memory: store.NewMemory("r1")}}
	circuits := map[string]store.Circuit{}
	settings := config.DefaultUpstream().Outlier.Settings()
	for _, b := range backends {
		u, _ := url.Parse(b.URL)
		name := config.TargetName("api", u)
		br := breaker.New(name, settings, breaker.Options{})
		circuits[name] = store.Circuit{Breaker: br, TrialLease: time.Second}
		f.breakers = append(f.breakers, br)
		f.targets = append(f.targets, Target{Upstream: "api", Circuit: name, URL: u, Check: check(interval), Breaker: br})
	}
	f.st.Attach(circuits)
	core, logs := observer.New(zap.InfoLevel)
	f.logs = logs
	f.c = New(Options{Store: f.st, Logger: zap.New(core),
		Observe: func(r Result) {
			f.mu.Lock()
			f.results = append(f.results, r)
			f.mu.Unlock()
		},
		OnAction: func(e Event) {
			f.mu.Lock()
			f.events = append(f.events, e)
			f.mu.Unlock()
		}})
	f.c.Update(f.targets)
	return f
}

// turn runs target i's scheduled turn now.
func (f *fixture) turn(t *testing.T, i int) {
	t.Helper()
	f.c.mu.Lock()
	p := f.c.probes[f.targets[i].Circuit]
	f.c.mu.Unlock()
	if p == nil {
		t.Fatalf("target %d not checked", i)
	}
	f.c.turn(context.Background(), p)
}

func (f *fixture) counts(i int) (good, bad int) {
	f.c.mu.Lock()
	p := f.c.probes[f.targets[i].Circuit]
	f.c.mu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.good, p.bad
}

func (f *fixture) lastResult() Result {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.results[len(f.results)-1]
}

func TestEjectAfterFailedProbesRestoreAfterGoodOnes(t *testing.T) {
	b := newBackend(t)
	f := newFixture(t, time.Second, b)
	br := f.breakers[0]
	b.status.Store(503)
	for i := 1; i <= 2; i++ {
		f.turn(t, 0)
		if st := br.State(); st != breaker.Closed {
			t.Fatalf("after %d failed probes: %v, want closed", i, st)
		}
	}
	f.turn(t, 0)
	if st := br.State(); st != breaker.Open {
		t.Fatalf("after 3 failed probes: %v, want open (ejected)", st)
	}
	if r := f.lastResult(); r.Outcome != OutcomeBadStatus || r.Status != 503 || r.Target != f.targets[0].Circuit[len("api@"):] || r.Upstream != "api" {
		t.Errorf("result %+v", r)
	}
	// Already open: more failed probes eject nothing more.
	f.turn(t, 0)
	f.turn(t, 0)
	if ops := f.st.ops(); len(ops) != 1 || ops[0] != store.OpOpen || br.Snapshot().Trips != 1 {
		t.Errorf("commands %v, trips %d; want one open", ops, br.Snapshot().Trips)
	}

	b.status.Store(204)
	f.turn(t, 0)
	if st := br.State(); st != breaker.Open {
		t.Fatalf("after 1 good probe: %v, want still open", st)
	}
	f.turn(t, 0)
	if st := br.State(); st != breaker.Closed {
		t.Fatalf("after 2 good probes: %v, want closed (restored)", st)
	}
	if ops := f.st.ops(); len(ops) != 2 || ops[1] != store.OpClose {
		t.Errorf("commands %v, want open then close", ops)
	}
	if b.hits.Load() != 7 {
		t.Errorf("backend got %d probes, want 7", b.hits.Load())
	}

	// One log line per change, at info; none per probe.
	var msgs []string
	for _, e := range f.logs.All() {
		msgs = append(msgs, e.Message)
		if e.Level != zap.InfoLevel || e.ContextMap()["scope"] != "fleet" || e.ContextMap()["upstream"] != "api" {
			t.Errorf("log %q: level %v, fields %v", e.Message, e.Level, e.ContextMap())
		}
	}
	if strings.Join(msgs, "|") != "target ejected by health check|target restored by health check" {
		t.Errorf("logs %q", msgs)
	}
	if len(f.events) != 2 || f.events[0].Action != ActionEject || f.events[0].Consecutive != 3 ||
		f.events[1].Action != ActionRestore || f.events[1].Consecutive != 2 {
		t.Errorf("events %+v", f.events)
	}
}

// A target ejected by others (passive detection, an operator) is restored by good
// probes counted from the first one that finds it out: good probes before, or during an
// earlier ejection someone else ended, count for nothing.
func TestRestoreCountsFromEjection(t *testing.T) {
	b := newBackend(t)
	f := newFixture(t, time.Second, b)
	br := f.breakers[0]
	ctx, name := context.Background(), f.targets[0].Circuit
	for range 3 { // good probes while closed
		f.turn(t, 0)
	}
	if err := f.st.Memory.Control(ctx, name, store.Command{Op: store.OpOpen}); err != nil {
		t.Fatal(err)
	}
	f.turn(t, 0)
	if st := br.State(); st != breaker.Open {
		t.Fatalf("restored by the first good probe after the ejection: %v", st)
	}
	// Someone else restores it (a trial, an operator), then it is ejected again.
	if err := f.st.Memory.Control(ctx, name, store.Command{Op: store.OpClose}); err != nil {
		t.Fatal(err)
	}
	f.turn(t, 0)
	if err := f.st.Memory.Control(ctx, name, store.Command{Op: store.OpOpen}); err != nil {
		t.Fatal(err)
	}
	f.turn(t, 0)
	if st := br.State(); st != breaker.Open {
		t.Fatalf("restored by the first good probe of a new ejection: %v", st)
	}
	f.turn(t, 0)
	if st := br.State(); st != breaker.Closed {
		t.Fatalf("after 2 good probes: %v, want closed", st)
	}
	if ops := f.st.ops(); len(ops) != 1 || ops[0] != store.OpClose {
		t.Errorf("checker's commands %v, want one close", ops)
	}
}

func TestForcedOpenNotRestored(t *testing.T) {
	b := newBackend(t)
	f := newFixture(t, time.Second, b)
	br := f.breakers[0]
	b.status.Store(500)
	for range 3 {
		f.turn(t, 0)
	}
	if br.State() != breaker.Open {
		t.Fatalf("not ejected: %v", br.State())
	}
	ctx := context.Background()
	if err := f.st.Memory.Control(ctx, f.targets[0].Circuit, store.Command{Op: store.OpMode, Mode: breaker.ForcedOpen}); err != nil {
		t.Fatal(err)
	}
	b.status.Store(200)
	for range 5 {
		f.turn(t, 0)
	}
	if ops := f.st.ops(); len(ops) != 1 || br.State() != breaker.Open || br.Mode() != breaker.ForcedOpen {
		t.Errorf("forced_open target: commands %v, state %v, mode %v; want only the ejection", ops, br.State(), br.Mode())
	}
	// forced_closed: the operator keeps it in, failing probes eject nothing.
	if err := f.st.Memory.Control(ctx, f.targets[0].Circuit, store.Command{Op: store.OpReset}); err != nil {
		t.Fatal(err)
	}
	if err := f.st.Memory.Control(ctx, f.targets[0].Circuit, store.Command{Op: store.OpMode, Mode: breaker.ForcedClosed}); err != nil {
		t.Fatal(err)
	}
	b.status.Store(500)
	for range 5 {
		f.turn(t, 0)
	}
	if ops := f.st.ops(); len(ops) != 1 || br.State() != breaker.Closed {
		t.Errorf("forced_closed target: commands %v, state %v; want no ejection", ops, br.State())
	}
}

func TestUpdateKeepsCounts(t *testing.T) {
	b1, b2 := newBackend(t), newBackend(t)
	f := newFixture(t, time.Second, b1, b2)
	b1.status.Store(503)
	b2.status.Store(503)
	f.turn(t, 0)
	f.turn(t, 0)
	f.turn(t, 1)
	// A reload: target 0 stays (new values, new interval), target 1 goes.
	t0 := f.targets[0]
	t0.Check = check(2 * time.Second)
	f.c.Update([]Target{t0})
	if _, bad := f.counts(0); bad != 2 {
		t.Fatalf("count after Update: %d, want 2", bad)
	}
	f.turn(t, 0)
	if st := f.breakers[0].State(); st != breaker.Open {
		t.Fatalf("third failed probe across a reload: %v, want open", st)
	}
	f.c.mu.Lock()
	_, kept := f.c.probes[f.targets[1].Circuit]
	f.c.mu.Unlock()
	if kept {
		t.Fatal("removed target still checked")
	}
	// Re-added: it starts from zero.
	f.c.Update(f.targets)
	if _, bad := f.counts(1); bad != 0 {
		t.Errorf("re-added target's count %d, want 0", bad)
	}
}

// A replica refused the lease does not probe and forgets its counts; one that cannot
// ask (shared store degraded) probes on its own and keeps them.
func TestClaim(t *testing.T) {
	b := newBackend(t)
	f := newFixture(t, time.Second, b)
	b.status.Store(503)
	f.turn(t, 0)
	f.turn(t, 0)
	f.st.claim = func() (bool, error) { return false, nil }
	f.turn(t, 0)
	if _, bad := f.counts(0); bad != 0 || b.hits.Load() != 2 {
		t.Errorf("lease refused: count %d, probes %d; want 0, 2", bad, b.hits.Load())
	}
	f.st.claim = func() (bool, error) { return false, store.ErrDegraded }
	for range 3 {
		f.turn(t, 0)
	}
	if b.hits.Load() != 5 || f.breakers[0].State() != breaker.Open || !f.lastResult().Local {
		t.Errorf("degraded: probes %d, state %v, result %+v; want 5, open, local", b.hits.Load(), f.breakers[0].State(), f.lastResult())
	}
}

func TestProbeRequestAndOutcomes(t *testing.T) {
	b := newBackend(t)
	f := newFixture(t, time.Second, b)
	u, _ := url.Parse(b.URL + "/base/")
	tg := f.targets[0]
	tg.URL = u
	tg.Check.Path = "/healthz?deep=1"
	f.c.Update([]Target{tg})
	f.turn(t, 0)
	b.mu.Lock()
	r := b.last
	b.mu.Unlock()
	if r.Method != "GET" || r.URL.Path != "/base/healthz" || r.URL.RawQuery != "deep=1" || r.UserAgent() != UserAgent {
		t.Errorf("probe %s %s ua %q", r.Method, r.URL, r.UserAgent())
	}
	if res := f.lastResult(); res.Outcome != OutcomeOK || res.Status != 200 || res.Err != nil {
		t.Errorf("result %+v", res)
	}

	// A redirect is an answer, not followed: 3xx is not in 2xx.
	b.status.Store(302)
	f.turn(t, 0)
	if res := f.lastResult(); res.Outcome != OutcomeBadStatus || res.Status != 302 {
		t.Errorf("redirect: %+v", res)
	}

	// No answer within the timeout.
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer close(release)
	su, _ := url.Parse(slow.URL)
	tg.URL, tg.Check.Timeout = su, 50*time.Millisecond
	f.c.Update([]Target{tg})
	f.turn(t, 0)
	if res := f.lastResult(); res.Outcome != OutcomeTimeout || res.Status != 0 || res.Duration < 50*time.Millisecond {
		t.Errorf("slow target: %+v", res)
	}

	// Headers in time, the body not.
	stall := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		_, _ = w.Write([]byte("partial"))
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer stall.Close()
	tg.URL, _ = url.Parse(stall.URL)
	f.c.Update([]Target{tg})
	f.turn(t, 0)
	if res := f.lastResult(); res.Outcome != OutcomeTimeout || res.Status != 200 {
		t.Errorf("stalled body: %+v", res)
	}

	// A long body is read up to maxBody, not to its end: this one never ends.
	long := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(make([]byte, maxBody+1))
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer long.Close()
	tg.URL, _ = url.Parse(long.URL)
	tg.Check.Timeout = waitFor
	f.c.Update([]Target{tg})
	f.turn(t, 0)
	if res := f.lastResult(); res.Outcome != OutcomeOK || res.Duration >= waitFor {
		t.Errorf("endless body: %+v", res)
	}
	tg.Check.Timeout = 50 * time.Millisecond

	// Nothing listening.
	dead := httptest.NewServer(http.NotFoundHandler())
	du, _ := url.Parse(dead.URL)
	dead.Close()
	tg.URL = du
	f.c.Update([]Target{tg})
	f.turn(t, 0)
	if res := f.lastResult(); res.Outcome != OutcomeError || res.Err == nil {
		t.Errorf("dead target: %+v", res)
	}
}

func TestProbeURL(t *testing.T) {
	for _, c := range []struct{ base, path, want string }{
		{"http://10.0.0.1:8080", "/healthz", "http://10.0.0.1:8080/healthz"},
		{"http://10.0.0.1:8080/", "/healthz", "http://10.0.0.1:8080/healthz"},
		{"https://api.internal/v1/", "/health?x=1", "https://api.internal/v1/health?x=1"},
		{"http://u:p@h/a%2Fb", "/h", "http://h/a%2Fb/h"},
	} {
		u, err := url.Parse(c.base)
		if err != nil {
			t.Fatal(err)
		}
		if got := probeURL(u, c.path); got != c.want {
			t.Errorf("probeURL(%s, %s) = %s, want %s", c.base, c.path, got, c.want)
		}
	}
}

// Run probes every target on its own schedule, Update starts and stops goroutines, and
// Run returns only after all of them stopped (TestMain checks for leaks).
func TestRunLifecycle(t *testing.T) {
	b1, b2 := newBackend(t), newBackend(t)
	f := newFixture(t, 20*time.Millisecond, b1, b2)
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- f.c.Run(ctx) }()
	eventually(t, waitFor, "both targets probed", func() bool { return b1.hits.Load() >= 2 && b2.hits.Load() >= 2 })
	if err := f.c.Run(ctx); err == nil {
		t.Error("a second Run did not fail")
	}

	f.c.mu.Lock()
	gone := f.c.probes[f.targets[1].Circuit]
	f.c.mu.Unlock()
	f.c.Update(f.targets[:1])
	select {
	case <-gone.done:
	case <-time.After(waitFor):
		t.Fatal("removed target's goroutine did not stop")
	}
	n := b2.hits.Load()
	// A target added while running starts probing.
	f.c.Update(f.targets)
	eventually(t, waitFor, "re-added target probed", func() bool { return b2.hits.Load() > n })

	cancel()
	select {
	case err := <-ran:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitFor):
		t.Fatal("Run did not return")
	}
	f.c.mu.Lock()
	for name, p := range f.c.probes {
		select {
		case <-p.done:
		default:
			t.Errorf("%s: goroutine still running after Run returned", name)
		}
	}
	f.c.mu.Unlock()
}

var _ Store = store.Store(nil) // store.Store is a health.Store

func TestEventErrors(t *testing.T) {
	b := newBackend(t)
	f := newFixture(t, time.Second, b)
	local := &localOnly{recStore: f.st}
	f.c.o.Store = local
	b.status.Store(503)
	for range 3 {
		f.turn(t, 0)
	}
	var lo *store.LocalOnlyError
	if len(f.events) != 1 || !errors.As(f.events[0].Err, &lo) {
		t.Fatalf("events %+v", f.events)
	}
	if e := f.logs.All(); len(e) != 1 || e[0].ContextMap()["scope"] != "replica" {
		t.Errorf("logs %+v", e)
	}
}

// localOnly answers Control like a Redis store that cannot reach Redis.
type localOnly struct{ *recStore }

func (s *localOnly) Control(ctx context.Context, name string, c store.Command) error {
	if err := s.recStore.Control(ctx, name, c); err != nil {
		return err
	}
	return &store.LocalOnlyError{Err: errors.New("connection refused")}
}
