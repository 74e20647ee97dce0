package e2e

import (
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/internal/testutil/pgtest"
	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// TestCircuitLifecycle walks one replica's circuit closed → open → half-open → closed over
// HTTP and checks what the backend actually received at each step, with the memory store
// and with a single replica on the redis and postgres stores (which must behave the same).
func TestCircuitLifecycle(t *testing.T) {
	for _, driver := range []string{"memory", "redis", "postgres"} {
		t.Run(driver, func(t *testing.T) { testCircuitLifecycle(t, driver) })
	}
}

func testCircuitLifecycle(t *testing.T, driver string) {
	const (
		threshold    = 5
		openDuration = 500 * time.Millisecond
		halfOpenMax  = 2
		successes    = 2
		burstSize    = 20
	)
	backend := startBackend(t)
	cfg := newConfig(t, backend, driver, breakerSettings{
		ConsecutiveFailures: threshold, OpenDuration: openDuration,
		HalfOpenMaxRequests: halfOpenMax, SuccessThreshold: successes,
	})
	switch driver {
	case "redis":
		cfg.RedisURL, cfg.FlushInterval, cfg.ReplicaID = redistest.Start(t).URL(), 50*time.Millisecond, "solo"
	case "postgres":
		cfg.PostgresURL, cfg.FlushInterval, cfg.ReplicaID = pgtest.Start(t).DSN(), 50*time.Millisecond, "solo"
	}
	p := startProxy(t, cfg.YAML(t))

	// Closed: requests reach the backend.
	for i := range 3 {
		if r := p.Get("/hello"); !r.OK() {
			t.Fatalf("healthy request %d: got %v, want 200 from the backend", i+1, r)
		}
	}

	// Closed → open: exactly `threshold` failures reach the backend.
	backend.Set(t, "fail=on")
	before := backend.Stats(t).Requests
	for i := range threshold {
		r := p.Get("/fail")
		if r.Err != nil || r.Status != http.StatusServiceUnavailable || r.Circuit != "" {
			t.Fatalf("failing request %d: got %v, want the backend's own 503", i+1, r)
		}
	}
	p.WaitTransitions(t, 5*time.Second, upstream, "open", 1)
	opened := time.Now()
	if got := backend.Stats(t).Requests - before; got != threshold {
		t.Fatalf("backend received %d requests before the circuit opened, want %d", got, threshold)
	}

	// Open: rejected with the fallback, nothing reaches the backend. Stop well before the
	// open period ends so no request becomes a trial.
	rejected := 0
	for i := 0; i < 10 && time.Since(opened) < openDuration/2; i++ {
		r := p.Get("/while-open")
		assertRejection(t, "request while open", r, "open")
		if n, _ := strconv.Atoi(r.RetryAfter); n < 1 || n > int(math.Ceil(openDuration.Seconds())) {
			t.Errorf("Retry-After while open: got %q, want 1 (the open period, %v, rounded up)", r.RetryAfter, openDuration)
		}
		rejected++
	}
	if rejected == 0 {
		t.Fatalf("no request could be sent while open (machine too slow?)")
	}
	if got := backend.Stats(t).Requests - before; got != threshold {
		t.Fatalf("backend received %d requests in all, want still %d: requests leaked while open", got, threshold)
	}

	// Open → half-open → closed: the backend heals but answers slowly, so concurrent
	// requests pile up; at most halfOpenMax trials reach it. The bursts start once the
	// open period is over: a burst the deadline cut in two could hold the trials and no
	// request after them, and then no half_open rejection would be seen.
	// With shared state the replica, which rejected requests while open, holds a trial
	// permit leased in advance: its first request after the open period is a trial at
	// once, and moves it to half-open, as with the memory store.
	time.Sleep(time.Until(opened.Add(openDuration)))
	tp := trialPhase(t, backend, []*Proxy{p}, burstSize, 1)
	t.Logf("trial phase: %v", tp)
	if tp.MaxInFlight > halfOpenMax {
		t.Errorf("while half-open the backend had %d requests in flight at once, want at most %d (half_open_max_requests)", tp.MaxInFlight, halfOpenMax)
	}
	// Trials are bounded in flight, not in number: with a shared store the first trial
	// runs on the permit leased in advance and the second waits for one more, so a third
	// may start when the first ends (as in TestFleetHalfOpenTrialsBounded).
	most := int64(successes)
	if driver != "memory" {
		most = successes + halfOpenMax - 1
	}
	if tp.Requests < successes || tp.Requests > most {
		t.Errorf("backend received %d trial requests before the circuit closed, want %d to %d (success_threshold)",
			tp.Requests, successes, most)
	}
	if tp.Tally.RejectedHalfOpen == 0 {
		t.Errorf("no request was rejected with X-Fuse-Circuit: half_open during the trials (%v)", tp.Tally)
	}

	// Closed: everything passes again.
	backend.Set(t, "latency=0")
	if c := count(burst([]*Proxy{p}, burstSize, "/after")); c.OK != burstSize {
		t.Fatalf("after the circuit closed: got %v, want all %d ok", c, burstSize)
	}

	// The log tells the same story, one line per transition.
	want := []transition{
		{"closed", "open", "consecutive_failures"},
		{"open", "half_open", "open_timeout"},
		{"half_open", "closed", "trials_succeeded"},
	}
	if driver != "memory" {
		// Decisions are the shared store's, with the same reasons; the replica logs that it adopted them.
		applied := p.LogsWhere(func(l logLine) bool { return l.Msg() == "applied shared state" && l.Str("upstream") == upstream })
		var got []string
		for _, l := range applied {
			got = append(got, l.Str("from")+"→"+l.Str("to"))
		}
		// The move to half-open is the replica's own on its permit in advance, or, had it
		// got none in time, Redis's on the first request after the open period.
		w := []string{"closed→open", "half_open→closed"}
		if len(got) == 3 {
			w = []string{"closed→open", "open→half_open", "half_open→closed"}
		}
		if !slices.Equal(got, w) {
			t.Errorf(`"applied shared state" lines: got %v, want %v`, got, w)
		}
	}
	if got := transitions(p, upstream); !slices.Equal(got, want) {
		t.Errorf(`"circuit transition" lines: got %v, want %v`, got, want)
	}
	// The store's history (GET /circuits/{name}/history, newest first) holds the same
	// three, once each, whatever the driver.
	h, body := newAdminAPI(t, cfg.AdminListen).History(t, upstream)
	var recorded []transition
	for _, tr := range slices.Backward(h.Transitions) {
		recorded = append(recorded, transition{tr.From, tr.To, tr.Reason})
	}
	if !slices.Equal(recorded, want) {
		t.Errorf("history: got %v, want %v:\n%s", recorded, want, body)
	}
}

type transition struct{ From, To, Reason string }

func transitions(p *Proxy, upstream string) []transition {
	var out []transition
	for _, l := range p.Transitions(upstream) {
		out = append(out, transition{l.Str("from"), l.Str("to"), l.Str("reason")})
	}
	return out
}

// trialResult is what the backend received while circuits were open or half-open.
type trialResult struct {
	Bursts      int
	Tally       tally // every response before the circuits closed
	Requests    int64 // backend requests before the circuits closed
	MaxInFlight int64 // the backend's concurrency high-water mark before they closed
	Took        time.Duration
}

func (r trialResult) String() string {
	return "bursts=" + strconv.Itoa(r.Bursts) + " " + r.Tally.String() +
		" backend_requests=" + strconv.FormatInt(r.Requests, 10) +
		" backend_max_in_flight=" + strconv.FormatInt(r.MaxInFlight, 10) + " took=" + r.Took.Round(time.Millisecond).String()
}

// trialPhase heals the backend (slow: 200 ms per answer, so trials overlap the bursts),
// then sends bursts of perProxy concurrent requests to every proxy until each has logged
// its closedCount-th transition to closed. Bursts never overlap a close: after a burst in
// which trials ran it waits for their outcome to settle, and it stops bursting as soon as
// one proxy has closed; so the backend's counts, read at the end, are those of the open
// and half-open periods only.
func trialPhase(t *testing.T, backend *Backend, proxies []*Proxy, perProxy, closedCount int) trialResult {
	t.Helper()
	const settle = time.Second // how long trial outcomes may take to close the circuits
	backend.Reset(t)
	backend.Set(t, "latency=200ms")
	nClosed := func() int {
		n := 0
		for _, p := range proxies {
			if p.CountTransitionsTo(upstream, "closed") >= closedCount {
				n++
			}
		}
		return n
	}
	var res trialResult
	start := time.Now()
	deadline := start.Add(20 * time.Second)
	for nClosed() == 0 {
		if res.Bursts >= 1000 || time.Now().After(deadline) {
			t.Fatalf("circuits not closed after %d bursts in %v: %v", res.Bursts, time.Since(start), res.Tally)
		}
		c := count(burst(proxies, perProxy, "/trial"))
		res.Bursts++
		res.Tally.add(c)
		if c.Other > 0 {
			t.Fatalf("burst %d: got %v, want only 200s and rejections", res.Bursts, c)
		}
		if c.OK > 0 {
			waitFor(settle, 2*time.Millisecond, func() bool { return nClosed() > 0 })
		} else {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if !waitFor(5*time.Second, 2*time.Millisecond, func() bool { return nClosed() == len(proxies) }) {
		for _, p := range proxies {
			t.Errorf("%s: %d transitions to closed, want %d", p.name, p.CountTransitionsTo(upstream, "closed"), closedCount)
		}
		t.FailNow()
	}
	st := backend.Stats(t)
	res.Requests, res.MaxInFlight, res.Took = st.Requests, st.MaxInFlight, time.Since(start)
	if int64(res.Tally.OK) != st.Requests {
		t.Errorf("clients got %d answers from the backend, the backend counted %d requests", res.Tally.OK, st.Requests)
	}
	return res
}

func (c *tally) add(o tally) {
	c.OK += o.OK
	c.RejectedOpen += o.RejectedOpen
	c.RejectedHalfOpen += o.RejectedHalfOpen
	c.Other += o.Other
	for _, e := range o.other {
		if len(c.other) < 5 {
			c.other = append(c.other, e)
		}
	}
}

// TestValidateExitCodes checks `fuseproxy validate` and `fuseproxy version` exit codes and
// that a bad value is reported at its file and line.
func TestValidateExitCodes(t *testing.T) {
	dir := t.TempDir()
	const good = `listen: "127.0.0.1:18080"
upstreams:
  x:
    targets: ["http://127.0.0.1:18081"]
    breaker:
      consecutive_failures: 5
      failure_rate: 50
routes:
  - path_prefix: /
    upstream: x
`
	bad := strings.Replace(good, "failure_rate: 50", "failure_rate: 120", 1)
	line := 1 + strings.Count(bad[:strings.Index(bad, "failure_rate: 120")], "\n")
	writeFile(t, dir, "good.yaml", good)
	writeFile(t, dir, "bad.yaml", bad)

	code, stdout, stderr := runProcess(t, dir, 30*time.Second, "validate", "-config", "good.yaml")
	if code != 0 || !strings.Contains(stdout, "good.yaml: ok") {
		t.Errorf("validate good.yaml: got exit %d, stdout %q, stderr %q; want exit 0 and \"good.yaml: ok\"", code, stdout, stderr)
	}

	code, _, stderr = runProcess(t, dir, 30*time.Second, "validate", "-config", "bad.yaml")
	want := "bad.yaml:" + strconv.Itoa(line) + ": upstreams.x.breaker.failure_rate: must be between 0 and 100, got 120"
	if code != 1 || !strings.Contains(stderr, want) {
		t.Errorf("validate bad.yaml: got exit %d, stderr %q; want exit 1 and %q", code, stderr, want)
	}

	code, stdout, _ = runProcess(t, dir, 30*time.Second, "version")
	if code != 0 || !strings.HasPrefix(stdout, "fuseproxy ") {
		t.Errorf("version: got exit %d, stdout %q; want exit 0 and \"fuseproxy <version>\"", code, stdout)
	}

	code, _, stderr = runProcess(t, dir, 30*time.Second, "no-such-command")
	if code != 2 || !strings.Contains(stderr, "unknown command") {
		t.Errorf("unknown command: got exit %d, stderr %q; want exit 2 and \"unknown command\"", code, stderr)
	}
}

func writeFile(t *testing.T, dir, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
