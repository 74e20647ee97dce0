package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// ejectionFleet is three replicas on one redis-server in front of three flaky backend
// processes, the upstream "api" with outlier detection on.
type ejectionFleet struct {
	Redis    *redistest.Server
	Backends []*Backend
	Replicas []*Proxy
	Admins   []*adminAPI
	flush    time.Duration
}

const ejectionBase = 2 * time.Second // base_ejection_time of the test config

func ejectionYAML(listen, admin, id, redisURL string, flush time.Duration, targets []string, extra string) string {
	return fmt.Sprintf(`listen: %q
admin:
  listen: %q
log:
  format: json
  level: info
store:
  driver: redis
  replica_id: %s
  flush_interval: %s
  redis:
    url: %q
    prefix: fuse
upstreams:
  api:
    targets: [%s]
    timeout: 500ms
    breaker:
      consecutive_failures: 0
      failure_rate: 95
      minimum_requests: 1000
    outlier_detection:
      enabled: true
      consecutive_gateway_errors: 3
      consecutive_5xx: 5
      failure_percentage: 0
      base_ejection_time: %s
      max_ejection_time: 20s
      jitter: 0
      max_ejection_percent: 50
%sroutes:
  - path_prefix: /
    upstream: api
`, listen, admin, id, flush, redisURL, strings.Join(targets, ", "), ejectionBase, extra)
}

func startEjectionFleet(t *testing.T, extra string) *ejectionFleet {
	t.Helper()
	f := &ejectionFleet{Redis: redistest.Start(t), flush: 100 * time.Millisecond}
	var targets []string
	for range 3 {
		b := startBackend(t)
		f.Backends = append(f.Backends, b)
		targets = append(targets, b.URL())
	}
	for i := range 3 {
		admin := freeAddr(t)
		p := startProxy(t, ejectionYAML(freeAddr(t), admin, fmt.Sprintf("r%d", i+1), f.Redis.URL(), f.flush, targets, extra))
		f.Replicas = append(f.Replicas, p)
		f.Admins = append(f.Admins, newAdminAPI(t, admin))
	}
	return f
}

// circuit is the target i's circuit name.
func (f *ejectionFleet) circuit(i int) string { return "api@" + f.Backends[i].addr }

type targetView struct {
	State   string  `json:"state"`
	Mode    string  `json:"mode"`
	Ejected bool    `json:"ejected"`
	Trips   int     `json:"trips"`
	Left    float64 `json:"open_remaining_seconds"`
}

func (f *ejectionFleet) view(t *testing.T, replica, target int) targetView {
	t.Helper()
	r := f.Admins[replica].Get("/circuits/" + f.circuit(target))
	var v targetView
	if r.Err != nil || r.Status != http.StatusOK || json.Unmarshal([]byte(r.Body), &v) != nil {
		t.Fatalf("r%d: GET /circuits/%s: %v", replica+1, f.circuit(target), r)
	}
	return v
}

// waitEjected polls every replica's admin API (about every millisecond) until each shows
// target ejected (want true) or back (want false), and returns when the last one did.
func (f *ejectionFleet) waitEjected(t *testing.T, target int, want bool, timeout time.Duration) time.Time {
	t.Helper()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		last time.Time
	)
	for i := range f.Replicas {
		wg.Go(func() {
			ok := waitFor(timeout, time.Millisecond, func() bool {
				r := f.Admins[i].Get("/circuits/" + f.circuit(target))
				var v targetView
				return r.Err == nil && json.Unmarshal([]byte(r.Body), &v) == nil && v.Ejected == want
			})
			mu.Lock()
			defer mu.Unlock()
			if !ok {
				t.Errorf("r%d: target %s ejected=%v not reached within %v: %+v", i+1, f.circuit(target), want, timeout, f.view(t, i, target))
			}
			if now := time.Now(); now.After(last) {
				last = now
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	return last
}

// fleetLoad sends requests round-robin through every replica from a few workers.
func (f *ejectionFleet) load(t *testing.T) *load {
	l := &load{stop: make(chan struct{})}
	for w := range 6 {
		l.wg.Go(func() {
			for n := w; ; n++ {
				select {
				case <-l.stop:
					return
				default:
				}
				r := f.Replicas[n%len(f.Replicas)].Get("/x")
				l.mu.Lock()
				l.rs = append(l.rs, r)
				l.mu.Unlock()
				time.Sleep(2 * time.Millisecond)
			}
		})
	}
	t.Cleanup(func() { l.Stop() })
	return l
}

// since returns the responses sent at or after from.
func (l *load) since(from time.Time) []response {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []response
	for _, r := range l.rs {
		if !r.Sent.Before(from) {
			out = append(out, r)
		}
	}
	return out
}

func failedResponses(rs []response) (failed int, example string) {
	for _, r := range rs {
		if !r.OK() {
			failed++
			example = r.String()
		}
	}
	return failed, example
}

// TestEjectionFleet: three replicas on one Redis, three backend processes, load through
// every replica. A target killed, one answering 503 and one too slow are each ejected
// from the fleet's evidence; every replica skips the target within the agreement bound
// of the fleet's decision (the open message Redis publishes); after that no request
// fails, and the ejected target gets no request until its ejection ends. Then two of
// three fail (max_ejection_percent holds), and an operator's eject and restore through
// one replica act on all three.
func TestEjectionFleet(t *testing.T) {
	f := startEjectionFleet(t, "")
	msgs := subscribeEvents(t, f.Redis, "fuse:events")
	for _, p := range f.Replicas {
		p.WaitReady(t, "/warm")
	}
	l := f.load(t)
	bound := 11*f.flush/10 + 50*time.Millisecond // 1.1·F + RTT, with room for a loaded machine
	var lags []time.Duration

	// detect waits for the fleet's decision to eject target i, then for every replica
	// to skip it; it returns when all do.
	detect := func(i int, why string) time.Time {
		t.Helper()
		m := waitTargetMessage(t, msgs, f.circuit(i), "open", 10*time.Second)
		all := f.waitEjected(t, i, true, 5*time.Second)
		lag := all.Sub(m.At)
		lags = append(lags, lag)
		if m.Reason != "consecutive_gateway_failures" {
			t.Errorf("%s: ejected with reason %q, want consecutive_gateway_failures (refused, 503 and timeouts are gateway errors)", why, m.Reason)
		}
		t.Logf("%s: fleet ejected %s (reason %s); every replica skipping it %v later", why, f.circuit(i), m.Reason, lag.Round(100*time.Microsecond))
		return all
	}
	// clean checks that over span after from, no request failed.
	clean := func(from time.Time, span time.Duration, why string) {
		t.Helper()
		time.Sleep(time.Until(from.Add(span)))
		rs := l.since(from)
		if n, ex := failedResponses(rs); n > 0 {
			t.Errorf("%s: %d of %d requests failed after every replica ejected the target (e.g. %s)", why, n, len(rs), ex)
		} else {
			t.Logf("%s: %d requests after detection, none failed", why, len(rs))
		}
	}

	// 1. A target killed: refused connections are gateway errors.
	addr := f.Backends[0].addr
	f.Backends[0].Kill()
	at := detect(0, "killed")
	clean(at, time.Second, "killed")
	checkReadmeTargetLog(t, f.Replicas[0], f.Backends[0].addr)
	f.Backends[0] = startBackendAt(t, addr)
	f.waitEjected(t, 0, false, 3*ejectionBase) // back after its ejection, through a trial

	// 2. A target answering 503: no request reaches it during its ejection; one trial at
	// its end (fleet-wide, half_open_max_requests 1), failed: ejected again, for twice as
	// long (base_ejection_time × ejections).
	f.Backends[1].Set(t, "fail=on")
	at = detect(1, "503")
	hits := f.Backends[1].Stats(t).Requests
	left := time.Duration(f.view(t, 0, 1).Left * float64(time.Second))
	clean(at, left-200*time.Millisecond, "503")
	if n := f.Backends[1].Stats(t).Requests - hits; n != 0 {
		t.Errorf("503: the ejected target got %d requests during its ejection", n)
	}
	m := waitTargetMessage(t, msgs, f.circuit(1), "open", 5*time.Second) // the failed trial
	if n := f.Backends[1].Stats(t).Requests - hits; n != 1 {
		t.Errorf("503: %d requests reached the target between its two ejections, want exactly 1 trial", n)
	}
	f.waitEjected(t, 1, true, 2*time.Second)
	v := f.view(t, 0, 1)
	if v.Trips != 2 || v.Left < 3 || v.Left > 4.1 { // linear backoff: 2 × base, no jitter
		t.Errorf("503: second ejection: %d ejections, %.2fs left, want 2 and about 4s (2 × base)", v.Trips, v.Left)
	}
	t.Logf("503: second ejection %q", m.Raw)
	f.Backends[1].Set(t, "fail=off")
	f.waitEjected(t, 1, false, 3*2*ejectionBase)

	// 3. A slow target: past the upstream's 500 ms timeout, a gateway error.
	f.Backends[2].Set(t, "latency=2s")
	at = detect(2, "slow")
	clean(at, time.Second, "slow")
	f.Backends[2].Set(t, "latency=0")
	f.waitEjected(t, 2, false, 3*ejectionBase)

	// 4. Two of three failing: max_ejection_percent 50 lets one be ejected (the first in
	// config order); the other keeps its share of traffic, and its 503s reach clients.
	f.Backends[0].Set(t, "fail=on")
	f.Backends[1].Set(t, "fail=on")
	detect(0, "two failing")
	waitTargetMessage(t, msgs, f.circuit(1), "open", 10*time.Second)
	from := time.Now()
	before0, before1 := f.Backends[0].Stats(t).Requests, f.Backends[1].Stats(t).Requests
	time.Sleep(time.Second)
	got0, got1 := f.Backends[0].Stats(t).Requests-before0, f.Backends[1].Stats(t).Requests-before1
	rs := l.since(from)
	failed, _ := failedResponses(rs)
	t.Logf("two failing: over 1s the ejected target got %d requests, the one past the cap %d; %d of %d requests failed", got0, got1, failed, len(rs))
	if got0 > 1 { // at most the trial, should its ejection end
		t.Errorf("two failing: the ejected target got %d requests", got0)
	}
	if got1 == 0 || failed == 0 {
		t.Errorf("two failing: the target past the cap got %d requests and %d failed: the panic rule serves it", got1, failed)
	}
	for i := range f.Replicas {
		if v := f.view(t, i, 1); v.State != "open" && v.State != "half_open" {
			t.Errorf("two failing: r%d shows the second failing target %s, want its circuit open (ejection not honoured)", i+1, v.State)
		}
	}
	f.Backends[0].Set(t, "fail=off")
	f.Backends[1].Set(t, "fail=off")
	f.waitEjected(t, 0, false, 4*ejectionBase)
	f.waitEjected(t, 1, false, 4*ejectionBase)

	// 5. An operator ejects a target through r1 and restores it through r2.
	// As `fuseproxy targets eject` does: forced open, then opened (an event everywhere).
	r := faultAdmin(t, f.Admins[0].client, f.Admins[0].base[len("http://"):], "POST", "/circuits/"+f.circuit(2)+"/mode", "", `{"mode":"forced_open"}`)
	if r.Status != http.StatusOK {
		t.Fatalf("eject through r1: %v", r)
	}
	r = faultAdmin(t, f.Admins[0].client, f.Admins[0].base[len("http://"):], "POST", "/circuits/"+f.circuit(2)+"/open", "", "{}")
	if r.Status != http.StatusOK {
		t.Fatalf("eject (open) through r1: %v", r)
	}
	at = f.waitEjected(t, 2, true, 2*time.Second)
	for _, p := range f.Replicas {
		p.WaitLog(t, 2*time.Second, "the operator's ejection event", func(l logLine) bool {
			return l.Msg() == "target ejected" && l.Str("target") == f.Backends[2].addr && l.Str("reason") == "mode"
		})
	}
	hits = f.Backends[2].Stats(t).Requests
	clean(at, time.Second, "manual eject")
	if n := f.Backends[2].Stats(t).Requests - hits; n != 0 {
		t.Errorf("manual eject: the target got %d requests", n)
	}
	r = faultAdmin(t, f.Admins[1].client, f.Admins[1].base[len("http://"):], "POST", "/circuits/"+f.circuit(2)+"/reset", "", "{}")
	if r.Status != http.StatusOK {
		t.Fatalf("restore through r2: %v", r)
	}
	at = f.waitEjected(t, 2, false, 2*time.Second)
	for _, p := range f.Replicas {
		p.WaitLog(t, 2*time.Second, "the operator's restoration event", func(l logLine) bool {
			return l.Msg() == "target restored" && l.Str("target") == f.Backends[2].addr && l.Str("reason") == "reset"
		})
	}
	hits = f.Backends[2].Stats(t).Requests
	time.Sleep(500 * time.Millisecond)
	if n := f.Backends[2].Stats(t).Requests - hits; n == 0 {
		t.Errorf("restored target got no requests")
	}

	l.Stop()
	var worst time.Duration
	for _, lag := range lags {
		worst = max(worst, lag)
	}
	t.Logf("decision to every replica skipping: %v (bound %v)", lags, bound)
	if worst > bound {
		t.Errorf("a replica skipped an ejected target %v after the fleet's decision, want <= %v (1.1·F + RTT)", worst, bound)
	}
}

// TestEjectionRedisDown: with Redis gone, each replica ejects a failing target on its
// own evidence (local protection), and when Redis is back the fleet shares ejections
// again.
func TestEjectionRedisDown(t *testing.T) {
	f := startEjectionFleet(t, "")
	for _, p := range f.Replicas {
		p.WaitReady(t, "/warm")
	}
	f.Redis.Kill()
	for i, p := range f.Replicas {
		ok := waitFor(5*time.Second, 10*time.Millisecond, func() bool {
			r, _ := faultReadyz(t, p, f.Admins[i].base[len("http://"):], "")
			return r.Degraded
		})
		if !ok {
			t.Fatalf("r%d not degraded 5s after Redis died", i+1)
		}
	}
	l := f.load(t)
	f.Backends[1].Set(t, "fail=on")
	at := f.waitEjected(t, 1, true, 5*time.Second)
	for i, p := range f.Replicas {
		// The log line may reach the test a moment after the admin API shows the ejection.
		if !waitFor(2*time.Second, 10*time.Millisecond, func() bool {
			return p.hasLog(func(l logLine) bool { return l.Msg() == "target ejected" && l.Str("target") == f.Backends[1].addr })
		}) {
			t.Errorf("r%d did not log its own ejection", i+1)
		}
	}
	time.Sleep(time.Second)
	rs := l.since(at)
	if n, ex := failedResponses(rs); n > 0 {
		t.Errorf("Redis down: %d of %d requests failed after every replica ejected the target locally (e.g. %s)", n, len(rs), ex)
	}
	hits := f.Backends[1].Stats(t).Requests
	time.Sleep(500 * time.Millisecond)
	if n := f.Backends[1].Stats(t).Requests - hits; n != 0 {
		t.Errorf("Redis down: the ejected target got %d requests during its ejection", n)
	}

	// Redis back: the fleet shares again; an operator's ejection through r1 reaches all.
	f.Backends[1].Set(t, "fail=off")
	f.Redis.Restart()
	for i, p := range f.Replicas {
		ok := waitFor(10*time.Second, 10*time.Millisecond, func() bool {
			r, _ := faultReadyz(t, p, f.Admins[i].base[len("http://"):], "")
			return !r.Degraded
		})
		if !ok {
			t.Fatalf("r%d still degraded 10s after Redis came back", i+1)
		}
	}
	// A command that could not reach Redis within its timeout (450 ms: a loaded machine,
	// the race detector) says so (202, applied to this replica only); an operator tries
	// again, and so does the test, for a few seconds.
	var r response
	waitFor(5*time.Second, 100*time.Millisecond, func() bool {
		r = faultAdmin(t, f.Admins[0].client, f.Admins[0].base[len("http://"):], "POST", "/circuits/"+f.circuit(0)+"/mode", "", `{"mode":"forced_open"}`)
		return r.Status == http.StatusOK
	})
	if r.Status != http.StatusOK {
		t.Fatalf("eject through r1 after Redis came back: %v", r)
	}
	f.waitEjected(t, 0, true, 2*time.Second)
}

// TestEjectionHealthChecks: three replicas probe three targets through shared leases:
// each target gets one probe per interval from the whole fleet; a target failing its
// probes is ejected with no client traffic at all, and restored by its probes once it
// answers again.
func TestEjectionHealthChecks(t *testing.T) {
	const interval = 300 * time.Millisecond
	f := startEjectionFleet(t, fmt.Sprintf(`    health_check:
      path: /health
      interval: %s
      timeout: 200ms
      healthy_threshold: 2
      unhealthy_threshold: 3
`, interval))

	// The probe rate: no client traffic, so every request a backend gets is a probe.
	time.Sleep(2 * interval) // every target's first probe (jittered within an interval) is out
	const span = 3 * time.Second
	before := f.Backends[1].Stats(t).Requests
	time.Sleep(span)
	probes := f.Backends[1].Stats(t).Requests - before
	want := int64(span / interval)
	t.Logf("%d probes in %v against one target from 3 replicas (interval %v: %d expected)", probes, span, interval, want)
	if probes < want-2 || probes > want+2 {
		t.Errorf("a target got %d probes in %v from 3 replicas, want %d ± 2 (one per interval from the fleet)", probes, span, want)
	}

	// A target failing its probes is ejected fleet-wide, without any client request.
	f.Backends[1].Set(t, "fail=on")
	f.waitEjected(t, 1, true, 3*time.Second)
	ejectedBy := func(msg string) bool {
		for _, p := range f.Replicas {
			if p.hasLog(func(l logLine) bool { return l.Msg() == msg && l.Str("target") == f.Backends[1].addr }) {
				return true
			}
		}
		return false
	}
	if !ejectedBy("target ejected by health check") {
		t.Error("no replica logged the health check's ejection")
	}
	// Back: with no client request there is no trial, so only its probes (two good ones)
	// can bring it back, on every replica.
	f.Backends[1].Set(t, "fail=off")
	f.waitEjected(t, 1, false, 3*time.Second)
	if !ejectedBy("target restored by health check") {
		t.Error("no replica logged the health check's restoration")
	}
}

// checkReadmeTargetLog checks README's sample "target ejected" line against the real one
// p logged for target: same message, same fields in the same order, the killed target's
// reason.
func checkReadmeTargetLog(t *testing.T, p *Proxy, target string) {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	const start, end = "<!-- target-log:start -->\n```\n", "\n```\n<!-- target-log:end -->"
	i, j := strings.Index(s, start), strings.Index(s, end)
	if i < 0 || j < i {
		t.Fatal("README.md lacks the target-log markers")
	}
	sample := s[i+len(start) : j]
	var real string
	for _, line := range strings.Split(p.Stderr(), "\n") {
		if strings.Contains(line, `"msg":"target ejected"`) && strings.Contains(line, `"target":"`+target+`"`) {
			real = line
			break
		}
	}
	if real == "" {
		t.Fatalf("%s logged no target ejected line for %s", p.ID, target)
	}
	if a, b := jsonKeys(t, sample), jsonKeys(t, real); a != b {
		t.Errorf("README's target log sample has fields %s, the real line %s:\n%s", a, b, real)
	}
	var sm, rm map[string]any
	_ = json.Unmarshal([]byte(sample), &sm)
	_ = json.Unmarshal([]byte(real), &rm)
	if sm["msg"] != rm["msg"] || sm["reason"] != rm["reason"] || sm["to"] != rm["to"] {
		t.Errorf("README's sample says msg %v reason %v to %v; a killed target logs %v %v %v:\n%s", sm["msg"], sm["reason"], sm["to"], rm["msg"], rm["reason"], rm["to"], real)
	}
}

// jsonKeys returns a JSON object's keys in their order.
func jsonKeys(t *testing.T, line string) string {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(line))
	if _, err := dec.Token(); err != nil {
		t.Fatalf("not a JSON object: %q", line)
	}
	var keys []string
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		keys = append(keys, k.(string))
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
	}
	return strings.Join(keys, ",")
}
