package proxy

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
)

// switchBackend answers with the status it is set to (200 at first) and counts requests.
type switchBackend struct {
	*httptest.Server
	status atomic.Int32
	hits   atomic.Int64
}

func newSwitchBackend(t *testing.T) *switchBackend {
	t.Helper()
	b := &switchBackend{}
	b.status.Store(200)
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		w.WriteHeader(int(b.status.Load()))
	}))
	t.Cleanup(b.Close)
	return b
}

// ejecting returns an upstream over targets with outlier detection on: consecutive
// gateway errors and consecutive 5xx at 3, no percentage rule, 10 s base ejection; its
// own breaker off, so only ejection acts.
func ejecting(t *testing.T, targets ...string) *config.Upstream {
	t.Helper()
	u := config.DefaultUpstream()
	u.Breaker.Enabled = false
	u.Outlier.Enabled = true
	u.Outlier.ConsecutiveGatewayErrors = 3
	u.Outlier.Consecutive5xx = 3
	u.Outlier.FailurePercentage = 0
	u.Outlier.BaseEjectionTime = 10 * time.Second
	u.Outlier.Jitter = 0
	u.Failure.FailureStatus = defaultFailures()
	for _, s := range targets {
		tu, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		u.Targets = append(u.Targets, s)
		u.TargetURLs = append(u.TargetURLs, tu)
	}
	return u
}

func (f *fixture) target(t *testing.T, u *config.Upstream, i int) *breaker.Breaker {
	t.Helper()
	b := f.breakers[config.TargetName("svc", u.TargetURLs[i])]
	if b == nil {
		t.Fatalf("no breaker for target %d", i)
	}
	return b
}

// statuses sends n GETs and counts the answers by status.
func (f *fixture) statuses(t *testing.T, n int) map[int]int {
	t.Helper()
	got := map[int]int{}
	for range n {
		resp := f.get(t, "h.example", "/")
		readBody(t, resp)
		got[resp.StatusCode]++
	}
	return got
}

// One dead target of three: after the consecutive gateway errors that eject it, no
// request fails, and the two others share the traffic evenly.
func TestEjectionSkipsDeadTarget(t *testing.T) {
	a, b := newSwitchBackend(t), newSwitchBackend(t)
	u := ejecting(t, a.URL, refusedURL(t), b.URL)
	f := newFixture(t, single(u))

	got := f.statuses(t, 60)
	if got[502] != 3 || got[200] != 57 {
		t.Fatalf("answers %v: want exactly 3 502s (the run that ejects the dead target), then 200s", got)
	}
	dead := f.target(t, u, 1)
	if dead.State() != breaker.Open {
		t.Fatalf("dead target's circuit is %v, want open", dead.State())
	}
	// Round robin over the two left: each gets half of the rest, within one.
	if d := a.hits.Load() - b.hits.Load(); d < -2 || d > 2 {
		t.Errorf("healthy targets got %d and %d requests: want an even share", a.hits.Load(), b.hits.Load())
	}
}

// The target's circuit judges 5xx by its own rule, whatever the upstream's failure
// settings say: an upstream that does not count 503 still ejects a target answering it.
func TestEjectionIgnoresUpstreamFailureSettings(t *testing.T) {
	good, bad := newSwitchBackend(t), newSwitchBackend(t)
	bad.status.Store(503)
	u := ejecting(t, good.URL, bad.URL)
	u.Failure.FailureStatus = config.StatusSet{} // the upstream counts no status
	f := newFixture(t, single(u))

	got := f.statuses(t, 40)
	if got[503] != 3 {
		t.Fatalf("answers %v: want 3 503s before the target is ejected", got)
	}
	if bad.hits.Load() != 3 {
		t.Errorf("ejected target got %d requests, want 3", bad.hits.Load())
	}
}

// An ejected target gets nothing until its ejection time is over, then one trial: a
// success brings it back into rotation; a failure ejects it again.
func TestEjectedTargetReturnsOnTrial(t *testing.T) {
	good, flaky := newSwitchBackend(t), newSwitchBackend(t)
	flaky.status.Store(503)
	u := ejecting(t, good.URL, flaky.URL)
	f := newFixture(t, single(u))
	tb := f.target(t, u, 1)

	f.statuses(t, 10)
	if tb.State() != breaker.Open || flaky.hits.Load() != 3 {
		t.Fatalf("target %v after %d requests, want open after 3", tb.State(), flaky.hits.Load())
	}
	f.clock.Add(9 * time.Second)
	f.statuses(t, 10)
	if flaky.hits.Load() != 3 {
		t.Fatalf("ejected target got %d requests before its ejection ended, want 3", flaky.hits.Load())
	}

	// Still failing at the end of the ejection: one trial, ejected again.
	f.clock.Add(2 * time.Second)
	f.statuses(t, 10)
	if flaky.hits.Load() != 4 || tb.State() != breaker.Open {
		t.Fatalf("after the first ejection: %d requests, state %v; want one trial and open again", flaky.hits.Load(), tb.State())
	}

	// Healthy at the end of the second: the trial brings it back.
	flaky.status.Store(200)
	f.clock.Add(time.Minute)
	got := f.statuses(t, 20)
	if got[200] != 20 || tb.State() != breaker.Closed {
		t.Fatalf("answers %v, target %v: want all 200 and the target back", got, tb.State())
	}
	if n := flaky.hits.Load(); n < 4+9 {
		t.Errorf("restored target got %d requests in all, want its share (>= 13)", n)
	}
}

// max_ejection_percent: of three targets two fail; at 50 % one may be ejected (the
// first in config order); the other keeps its share, untracked, and the panic rule lets
// it through even though its own circuit opened.
func TestMaxEjectionPercentHolds(t *testing.T) {
	good, bad1, bad2 := newSwitchBackend(t), newSwitchBackend(t), newSwitchBackend(t)
	bad1.status.Store(503)
	bad2.status.Store(503)
	u := ejecting(t, bad1.URL, good.URL, bad2.URL)
	f := newFixture(t, single(u))

	f.statuses(t, 30)
	if s := f.target(t, u, 0).State(); s != breaker.Open {
		t.Fatalf("first failing target %v, want ejected", s)
	}
	before1, before2 := bad1.hits.Load(), bad2.hits.Load()
	got := f.statuses(t, 30)
	if n := bad1.hits.Load() - before1; n != 0 {
		t.Errorf("ejected target got %d requests", n)
	}
	if n := bad2.hits.Load() - before2; n < 10 {
		t.Errorf("second failing target got %d of 30 requests: past the cap it must keep its share (half)", n)
	}
	if got[503] == 0 || got[200] == 0 {
		t.Errorf("answers %v: want both the good target's 200s and the unejected failing target's 503s", got)
	}

	// max_ejection_percent 0: detection only, no target is skipped.
	u.Outlier.MaxEjectionPercent = 0
	f2 := newFixture(t, single(u))
	f2.statuses(t, 30)
	b0 := bad1.hits.Load()
	f2.statuses(t, 30)
	if n := bad1.hits.Load() - b0; n < 10 {
		t.Errorf("with max_ejection_percent 0 the failing target got %d of 30 requests, want its third", n)
	}
}

func TestMaxEjected(t *testing.T) {
	for _, c := range []struct{ n, pct, want int }{
		{1, 50, 0}, {2, 50, 1}, {3, 50, 1}, {4, 50, 2}, {10, 10, 1}, {5, 10, 1},
		{3, 100, 2}, {2, 100, 1}, {3, 0, 0}, {20, 50, 10},
	} {
		if got := maxEjected(c.n, c.pct); got != c.want {
			t.Errorf("maxEjected(%d, %d) = %d, want %d", c.n, c.pct, got, c.want)
		}
	}
}

// An operator's ejection (mode forced_open) takes the target out until it is reset.
func TestOperatorEjectsAndRestoresTarget(t *testing.T) {
	a, b := newSwitchBackend(t), newSwitchBackend(t)
	u := ejecting(t, a.URL, b.URL)
	f := newFixture(t, single(u))
	tb := f.target(t, u, 1)

	tb.SetMode(breaker.ForcedOpen)
	f.statuses(t, 10)
	if b.hits.Load() != 0 || a.hits.Load() != 10 {
		t.Fatalf("forced-open target got %d requests (other %d), want none", b.hits.Load(), a.hits.Load())
	}
	tb.Reset()
	f.statuses(t, 10)
	if b.hits.Load() != 5 {
		t.Errorf("restored target got %d of 10 requests, want 5", b.hits.Load())
	}
}

// least_requests sends a new request to the target with fewer requests in flight.
func TestLeastRequestsPicksTheIdleTarget(t *testing.T) {
	busy := newBlockingBackend(t)
	idle := newSwitchBackend(t)
	u := targetUpstream(mustURL(t, busy.URL), mustURL(t, idle.URL))
	u.LoadBalancing = "least_requests"
	f := newFixture(t, single(u))

	// Send requests until one is held by the busy target (the first pick between two
	// idle targets may go either way).
	var wg sync.WaitGroup
	defer wg.Wait()
	defer busy.Release()
	for held := false; !held; {
		before := idle.hits.Load()
		wg.Go(func() {
			resp := f.get(t, "h.example", "/")
			readBody(t, resp)
		})
		deadline := time.Now().Add(10 * time.Second)
		for !held && idle.hits.Load() == before {
			select {
			case <-busy.started:
				held = true
			default:
				if time.Now().After(deadline) {
					t.Fatal("the request reached neither target")
				}
				time.Sleep(time.Millisecond)
			}
		}
	}
	base := idle.hits.Load()
	for range 20 {
		resp := f.get(t, "h.example", "/")
		readBody(t, resp)
	}
	if n := idle.hits.Load() - base; n != 20 {
		t.Errorf("idle target got %d of 20 requests while the other held one in flight, want all", n)
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// failure_percentage: a target failing every other request never builds a run, but its
// failure rate over the interval ejects it once it had minimum_requests.
func TestEjectionByFailurePercentage(t *testing.T) {
	good := newSwitchBackend(t)
	var n atomic.Int64
	alternating := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1)%2 == 0 {
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	t.Cleanup(alternating.Close)
	u := ejecting(t, good.URL, alternating.URL)
	u.Outlier.ConsecutiveGatewayErrors, u.Outlier.Consecutive5xx = 0, 0
	u.Outlier.FailurePercentage, u.Outlier.MinimumRequests = 50, 10
	f := newFixture(t, single(u))

	f.statuses(t, 40)
	if s := f.target(t, u, 1).State(); s != breaker.Open {
		t.Fatalf("alternating target %v after %d requests, want ejected", s, n.Load())
	}
	if got := n.Load(); got != 10 {
		t.Errorf("the alternating target got %d requests, want 10 (minimum_requests, at 50 %% failures)", got)
	}
}

// A body the target breaks off after its headers takes the target's success back.
func TestEjectionCountsBrokenBodies(t *testing.T) {
	good := newSwitchBackend(t)
	cut := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		w.WriteHeader(200)
		_, _ = w.Write([]byte("short"))
		w.(http.Flusher).Flush()    // the headers and 5 bytes are out...
		panic(http.ErrAbortHandler) // ...then the connection closes mid-body
	}))
	t.Cleanup(cut.Close)
	u := ejecting(t, good.URL, cut.URL)
	u.Outlier.ConsecutiveGatewayErrors = 0 // the 5xx run counts late failures
	f := newFixture(t, single(u))

	for range 10 {
		resp, err := f.client.Get(f.srv.URL + "/")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	if s := f.target(t, u, 1).State(); s != breaker.Open {
		t.Fatalf("target cutting its bodies is %v, want ejected after 3 broken bodies", s)
	}
}

// pickCounts builds an upstream over n targets with outlier detection, forces open the
// targets in ejected (an operator's ejection, within a 50 % cap), picks picks times and
// counts the picks per target.
func pickCounts(t *testing.T, n int, lb string, picks int, ejected ...int) []int {
	t.Helper()
	var targets []string
	for i := range n {
		targets = append(targets, "http://10.0.0."+string(rune('1'+i))+":80")
	}
	u := ejecting(t, targets...)
	u.LoadBalancing = lb
	f := &fixture{clock: &fakeClock{}}
	bs := f.makeBreakers(t, single(u))
	for _, i := range ejected {
		bs[config.TargetName("svc", u.TargetURLs[i])].SetMode(breaker.ForcedOpen)
	}
	up, err := newUpstream("svc", u, bs, newFallbacks())
	if err != nil {
		t.Fatal(err)
	}
	counts := make([]int, n)
	for range picks {
		tg, _, tracked := up.pick()
		if !tracked {
			t.Fatalf("target %d picked untracked: the ejections are within the cap", tg.index)
		}
		counts[tg.index]++
	}
	return counts
}

// The share of ejected targets spreads evenly over the others, whichever targets are
// ejected: round robin gives each remaining target exactly its turn, least_requests
// (idle targets: every draw a tie) an even share within a few percent.
func TestEjectedShareSpreadsEvenly(t *testing.T) {
	// Round robin, two adjacent targets of four ejected: the two others alternate.
	if got := pickCounts(t, 4, "round_robin", 60, 1, 2); got[0] != 30 || got[3] != 30 {
		t.Errorf("round robin, targets 1 and 2 of 4 ejected: picks %v, want 30 each for 0 and 3", got)
	}
	// Round robin, targets 0 and 1 of five ejected: 20 each for the three others.
	if got := pickCounts(t, 5, "round_robin", 60, 0, 1); got[2] != 20 || got[3] != 20 || got[4] != 20 {
		t.Errorf("round robin, targets 0 and 1 of 5 ejected: picks %v, want 20 each for 2, 3 and 4", got)
	}
	// least_requests, one of three ejected: the other two get half each (within 3 %;
	// the binomial standard deviation of 30000 picks is under 1 %).
	const picks = 30000
	for _, c := range []struct {
		n       int
		ejected []int
	}{{3, []int{1}}, {3, []int{0}}, {4, []int{1, 2}}, {5, []int{0, 1}}} {
		got := pickCounts(t, c.n, "least_requests", picks, c.ejected...)
		want := picks / (c.n - len(c.ejected))
		for i, k := range got {
			if slices.Contains(c.ejected, i) {
				continue
			}
			if d := k - want; d < -want*3/100 || d > want*3/100 {
				t.Errorf("least_requests, %v of %d ejected: picks %v, want about %d for each of the others", c.ejected, c.n, got, want)
				break
			}
		}
	}
}

// An operator's ejection comes before the detectors': with the cap (one of three) taken
// by a failing target, forcing another open takes that target out, and the failing one
// serves again past the cap.
func TestOperatorEjectionComesFirst(t *testing.T) {
	bad, good, maint := newSwitchBackend(t), newSwitchBackend(t), newSwitchBackend(t)
	bad.status.Store(503)
	u := ejecting(t, bad.URL, good.URL, maint.URL)
	f := newFixture(t, single(u))
	f.statuses(t, 20)
	if f.target(t, u, 0).State() != breaker.Open {
		t.Fatal("the failing target was not ejected")
	}
	f.target(t, u, 2).SetMode(breaker.ForcedOpen)
	b0, m0 := bad.hits.Load(), maint.hits.Load()
	f.statuses(t, 20)
	if n := maint.hits.Load() - m0; n != 0 {
		t.Errorf("the target an operator ejected got %d requests", n)
	}
	if n := bad.hits.Load() - b0; n < 8 {
		t.Errorf("the failing target past the cap got %d of 20 requests, want its half", n)
	}
}

func TestTargetOutcome(t *testing.T) {
	for code, want := range map[int]breaker.Outcome{
		200: breaker.Success, 404: breaker.Success, 429: breaker.Success, 101: breaker.Success,
		500: breaker.Failure, 507: breaker.Failure, 599: breaker.Failure,
		502: breaker.GatewayFailure, 503: breaker.GatewayFailure, 504: breaker.GatewayFailure,
		501: breaker.Success, 505: breaker.Success, // caused by the client's request
	} {
		if got := targetOutcome(code); got != want {
			t.Errorf("targetOutcome(%d) = %v, want %v", code, got, want)
		}
	}
}

// Every gateway error counts toward the gateway run, not only refused connections: a
// target that accepts and resets the connection before answering, and one that answers
// 502, are ejected by consecutive_gateway_errors alone (5xx run off).
func TestEjectionOnEveryGatewayError(t *testing.T) {
	for name, handler := range map[string]http.HandlerFunc{
		"reset before the response": func(w http.ResponseWriter, r *http.Request) {
			c, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				if tc, ok := c.(*net.TCPConn); ok {
					_ = tc.SetLinger(0) // RST, not FIN
				}
				c.Close()
			}
		},
		"502": func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusBadGateway) },
	} {
		t.Run(name, func(t *testing.T) {
			good := newSwitchBackend(t)
			bad := httptest.NewServer(handler)
			t.Cleanup(bad.Close)
			u := ejecting(t, good.URL, bad.URL)
			u.Outlier.Consecutive5xx = 0
			f := newFixture(t, single(u))
			got := f.statuses(t, 20)
			if s := f.target(t, u, 1).State(); s != breaker.Open {
				t.Fatalf("target %v after %v, want ejected by its gateway errors", s, got)
			}
			if got[200] < 17 {
				t.Errorf("answers %v: want the 3 failures that eject it, then 200s", got)
			}
		})
	}
}
