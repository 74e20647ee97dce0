package e2e

import (
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/internal/testutil/faultproxy"
	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// faultFleet is replicas sharing one flaky backend and one redis-server, each replica
// through its own faultproxy to Redis (so a test can break one replica's path only).
type faultFleet struct {
	Backend  *Backend
	Redis    *redistest.Server
	RedisFP  []*faultproxy.Proxy // per replica; nil where the replica talks to Redis directly
	Replicas []*Proxy
	Cfgs     []faultConfig
}

// startFaultFleet starts n replicas (ids r1, r2, ...). viaProxy puts a faultproxy between
// each replica and Redis. tune, if not nil, adjusts each replica's config.
func startFaultFleet(t *testing.T, n int, viaProxy bool, tune func(i int, c *faultConfig)) *faultFleet {
	t.Helper()
	f := &faultFleet{Backend: startBackend(t), Redis: redistest.Start(t)}
	base := newFaultConfig(t, f.Backend.URL())
	for i := range n {
		id := "r" + string(rune('1'+i))
		url := f.Redis.URL()
		var fp *faultproxy.Proxy
		if viaProxy {
			fp = faultproxy.Start(t, f.Redis.Addr())
			url = "redis://" + fp.Addr() + "/0"
		}
		c := base.fresh(t, id).withRedis(id, url)
		if tune != nil {
			tune(i, &c)
		}
		f.RedisFP = append(f.RedisFP, fp)
		f.Cfgs = append(f.Cfgs, c)
		f.Replicas = append(f.Replicas, startProxy(t, c.YAML(t)))
	}
	return f
}

func (f *faultFleet) key() string { return f.Cfgs[0].Prefix + ":{" + upstream + "}:state" }

// each runs fn on every replica's faultproxy to Redis.
func (f *faultFleet) each(fn func(*faultproxy.Proxy)) {
	for _, fp := range f.RedisFP {
		if fp != nil {
			fn(fp)
		}
	}
}

// faultCutRedis makes Redis unreachable through fp: open connections are reset and new ones
// closed at once.
func faultCutRedis(fp *faultproxy.Proxy) {
	fp.Set(faultproxy.Faults{Drop: true})
	fp.Reset()
}

func faultHealRedis(fp *faultproxy.Proxy) { fp.Set(faultproxy.Faults{}) }

// faultWaitLog waits for a line matching match logged after since.
func faultWaitLog(t *testing.T, p *Proxy, timeout time.Duration, what string, since time.Time, match func(logLine) bool) logLine {
	t.Helper()
	return p.WaitLog(t, timeout, what, func(l logLine) bool { return !l.At.Before(since) && match(l) })
}

// faultTripLocally sends failing requests through p (the backend failing), 5 ms apart, until
// one is rejected; it returns how many reached the backend and the rejection.
func faultTripLocally(t *testing.T, p *Proxy, limit int) (int, response) {
	t.Helper()
	for n := 0; n < limit; n++ {
		r := p.Get("/fail")
		if r.Rejected() {
			return n, r
		}
		if !failedByBackend(r) {
			t.Fatalf("%s failing request %d: got %v, want the backend's own 503", p.name, n+1, r)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s: no rejection after %d failures", p.name, limit)
	return 0, response{}
}

// faultAssertOpenHolds sends n requests through each replica, checks each is rejected as
// open, and returns how many reached the backend meanwhile.
func faultAssertOpenHolds(t *testing.T, f *faultFleet, n int) int {
	t.Helper()
	before := f.Backend.Stats(t).Requests
	for _, p := range f.Replicas {
		for i := range n {
			if r := p.Get("/while-open"); !r.Rejected() || r.Circuit != "open" {
				t.Errorf("%s request %d while its circuit is open: got %v, want a rejection", p.ID, i+1, r)
				break
			}
		}
	}
	return int(f.Backend.Stats(t).Requests - before)
}

// TestFaultRedisSlow puts latency above store.redis.read_timeout between every replica
// and Redis. Requests never wait on Redis, so none fails and latency stays that of the
// backend; each replica's store degrades; each replica's local breaker then opens after
// exactly its own consecutive_failures and keeps the backend from further requests.
func TestFaultRedisSlow(t *testing.T) {
	t.Parallel()
	const (
		threshold = 5
		latency   = 200 * time.Millisecond // per chunk and direction; read_timeout is 50ms
	)
	f := startFaultFleet(t, 2, true, func(_ int, c *faultConfig) {
		c.RedisRead, c.RedisWrite, c.RedisDial = 50*time.Millisecond, 50*time.Millisecond, 100*time.Millisecond
		c.Upstreams[0].OpenDuration = 3 * time.Second
	})
	rr := &roundRobin{proxies: f.Replicas}
	load := faultLoad(t, 2, 5*time.Millisecond, "/load", rr.Next)
	time.Sleep(500 * time.Millisecond)
	_, warm := load.Snapshot()

	slowSince := time.Now()
	f.each(func(fp *faultproxy.Proxy) { fp.Set(faultproxy.Faults{Latency: latency}) })
	var degradedAfter []time.Duration
	for _, p := range f.Replicas {
		l := faultWaitLog(t, p, 10*time.Second, `"redis store degraded"`, slowSince, msgPrefix("redis store degraded"))
		degradedAfter = append(degradedAfter, l.At.Sub(slowSince))
	}
	time.Sleep(time.Second) // load while degraded
	_, total := load.Stop()
	during := total.Sent - warm.Sent
	t.Logf("load with Redis slow: %v; degraded after %v", total, degradedAfter)
	if total.ProxyFailed+total.Other > 0 || total.OK != total.Sent {
		t.Errorf("with Redis slow: got %v, want every request answered 200 by the backend", total)
	}
	if during < 50 {
		t.Errorf("only %d requests sent while Redis was slow: the load stalled", during)
	}
	for i, p := range f.Replicas {
		rd, code := faultReadyz(t, p, f.Cfgs[i].AdminListen, "")
		if code != http.StatusOK || !rd.Ready || !rd.Degraded || rd.Protection != "local" {
			t.Errorf("%s /readyz with Redis slow: %d %+v, want 200 ready, degraded, protection local", p.ID, code, rd)
		}
	}

	// Local breakers protect: each opens after exactly its own threshold.
	f.Backend.Set(t, "fail=on")
	before := f.Backend.Stats(t).Requests
	for _, p := range f.Replicas {
		n, r := faultTripLocally(t, p, 4*threshold)
		assertRejection(t, p.ID+" with Redis slow", r, "open")
		if n != threshold {
			t.Errorf("%s with Redis slow: opened after %d failures, want %d", p.ID, n, threshold)
		}
	}
	reached := f.Backend.Stats(t).Requests - before
	leaked := faultAssertOpenHolds(t, f, 10)

	// Redis fast again: the replicas recover and resync.
	healed := time.Now()
	f.each(faultHealRedis)
	var recovered time.Duration
	for _, p := range f.Replicas {
		l := faultWaitLog(t, p, 10*time.Second, `"redis store recovered"`, healed, msgPrefix("redis store recovered"))
		recovered = max(recovered, l.At.Sub(healed))
	}
	faultFigures{Sent: total.Sent + int(reached) + 11*len(f.Replicas), ProxyFailed: total.ProxyFailed + total.Other,
		ReachedOpen: leaked, Recover: recovered, Extra: map[string]any{
			"redis_latency_ms": latency.Milliseconds(), "read_timeout_ms": 50,
			"degraded_after_ms": durationsMs(degradedAfter), "failures_before_open": reached,
			"request_p50_ms": ms(percentile(total.latencies, 50)), "request_p99_ms": ms(percentile(total.latencies, 99)),
		}}.record(t, "redis_slow")
	if p50 := percentile(total.latencies, 50); p50 >= latency/4 {
		t.Errorf("request p50 %v with Redis answering in %v+: the request path waits on Redis", p50, latency)
	}
	if leaked != 0 {
		t.Errorf("%d requests reached the backend while the local breakers were open", leaked)
	}
}

// TestFaultRedisFlapping breaks every replica's connections to Redis in short blips,
// each well shorter than degrade_after × flush_interval: the store must ride them out
// without ever declaring itself degraded (no "redis store degraded" line, so breakers
// never flip between shared and local decisions), and no request may fail.
func TestFaultRedisFlapping(t *testing.T) {
	t.Parallel()
	const (
		blips        = 8
		blip         = 120 * time.Millisecond
		between      = 500 * time.Millisecond
		flush        = 100 * time.Millisecond
		degradeAfter = 4 // 4 × 100ms = 400ms of failed exchanges before degrading
	)
	f := startFaultFleet(t, 2, true, func(_ int, c *faultConfig) {
		c.FlushInterval, c.DegradeAfter = flush, degradeAfter
	})
	rr := &roundRobin{proxies: f.Replicas}
	errorsBefore := make([]float64, len(f.Replicas))
	for i, p := range f.Replicas {
		errorsBefore[i] = faultMetric(t, p.client, f.Cfgs[i].AdminListen, "fuseproxy_store_flush_errors_total", "")
	}
	load := faultLoad(t, 2, 5*time.Millisecond, "/load", rr.Next)
	start := time.Now()
	for range blips {
		time.Sleep(between)
		f.each(faultCutRedis)
		time.Sleep(blip)
		f.each(faultHealRedis)
	}
	time.Sleep(between)
	_, total := load.Stop()
	var flushErrors []float64
	for i, p := range f.Replicas {
		n := faultMetric(t, p.client, f.Cfgs[i].AdminListen, "fuseproxy_store_flush_errors_total", "") - errorsBefore[i]
		flushErrors = append(flushErrors, n)
		if lines := p.LogsWhere(msgPrefix("redis store degraded")); len(lines) > 0 {
			t.Errorf("%s logged %d \"redis store degraded\" lines for blips of %v (degrade_after %d × flush_interval %v = %v): first %v",
				p.ID, len(lines), blip, degradeAfter, flush, degradeAfter*flush, lines[0])
		}
	}
	t.Logf("%d blips of %v in %v: %v; failed exchanges per replica %v", blips, blip, time.Since(start).Round(time.Millisecond), total, flushErrors)
	if total.OK != total.Sent {
		t.Errorf("with Redis flapping: got %v, want every request answered 200 by the backend", total)
	}
	if slices.Max(flushErrors) == 0 {
		t.Errorf("no exchange with Redis failed during %d blips: the blips did not reach the store", blips)
	}
	faultFigures{Sent: total.Sent, ProxyFailed: total.ProxyFailed + total.Other, Extra: map[string]any{
		"blips": blips, "blip_ms": blip.Milliseconds(), "flush_interval_ms": flush.Milliseconds(),
		"degrade_after": degradeAfter, "failed_exchanges": flushErrors, "degraded_lines": 0,
	}}.record(t, "redis_flapping")
}

// TestFaultRedisGoneAndBack takes Redis away from every replica for good (as far as the
// replicas can tell), two ways: every connection reset and new ones closed at once (a
// faultproxy), and redis-server killed (connections refused, long enough for go-redis to
// stop dialling and only probe once a second). Meanwhile the replicas keep serving every
// request, /readyz says degraded with local protection, and each replica's breaker opens
// on its own failures. When Redis returns, every replica logs "redis store recovered"
// within 2s and serves from the shared state again.
func TestFaultRedisGoneAndBack(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"connections_dropped", "redis_killed"} {
		t.Run(how, func(t *testing.T) { testRedisGoneAndBack(t, how) })
	}
}

func testRedisGoneAndBack(t *testing.T, how string) {
	const (
		threshold = 5
		gone      = 3 * time.Second // > 16 failed dials at 100ms: go-redis's pool probes once a second
	)
	viaProxy := how == "connections_dropped"
	f := startFaultFleet(t, 2, viaProxy, func(_ int, c *faultConfig) {
		c.Upstreams[0].OpenDuration = 30 * time.Second // stays open while Redis is away
	})
	rr := &roundRobin{proxies: f.Replicas}
	load := faultLoad(t, 2, 5*time.Millisecond, "/load", rr.Next)
	time.Sleep(300 * time.Millisecond)
	cut := time.Now()
	if viaProxy {
		f.each(faultCutRedis)
	} else {
		f.Redis.Kill()
	}
	for _, p := range f.Replicas {
		faultWaitLog(t, p, 10*time.Second, `"redis store degraded"`, cut, msgPrefix("redis store degraded"))
	}
	time.Sleep(time.Until(cut.Add(gone / 2)))
	_, total := load.Stop()
	t.Logf("load with Redis gone: %v", total)
	if total.OK != total.Sent {
		t.Errorf("with Redis gone: got %v, want every request answered 200 by the backend", total)
	}
	for i, p := range f.Replicas {
		rd, code := faultReadyz(t, p, f.Cfgs[i].AdminListen, "")
		if code != http.StatusOK || !rd.Ready || !rd.Degraded || rd.Protection != "local" || rd.StoreError == "" {
			t.Errorf("%s /readyz with Redis gone: %d %+v, want 200, ready, degraded, protection local, the store's error", p.ID, code, rd)
		}
	}
	f.Backend.Set(t, "fail=on")
	before := f.Backend.Stats(t).Requests
	for _, p := range f.Replicas {
		if n, r := faultTripLocally(t, p, 4*threshold); n != threshold {
			t.Errorf("%s with Redis gone: opened after %d failures (%v), want %d", p.ID, n, r, threshold)
		}
	}
	reached := f.Backend.Stats(t).Requests - before
	leaked := faultAssertOpenHolds(t, f, 10)
	f.Backend.Reset(t)
	time.Sleep(time.Until(cut.Add(gone)))

	back := time.Now()
	if viaProxy {
		f.each(faultHealRedis)
	} else {
		f.Redis.Restart()
		back = time.Now() // from when it answers
	}
	var each []time.Duration
	for _, p := range f.Replicas {
		l := faultWaitLog(t, p, 10*time.Second, `"redis store recovered"`, back, msgPrefix("redis store recovered"))
		each = append(each, l.At.Sub(back))
	}
	recovered := slices.Max(each)
	// Back on the shared state (closed in Redis: the local trips never reached it).
	for i, p := range f.Replicas {
		if r := p.Get("/after"); !r.OK() {
			t.Errorf("%s after Redis returned: got %v, want 200 (shared state closed)", p.ID, r)
		}
		rd, _ := faultReadyz(t, p, f.Cfgs[i].AdminListen, "")
		if rd.Degraded || rd.Protection != "shared" {
			t.Errorf("%s /readyz after Redis returned: %+v, want protection shared", p.ID, rd)
		}
	}
	faultFigures{Sent: total.Sent + int(reached) + 10*len(f.Replicas) + len(f.Replicas),
		ProxyFailed: total.ProxyFailed + total.Other, ReachedOpen: leaked, Recover: recovered,
		Extra: map[string]any{"how": how, "gone_ms": gone.Milliseconds(), "per_replica_recover_ms": durationsMs(each),
			"failures_before_local_open": reached}}.record(t, "redis_gone_"+how)
	if recovered > 2*time.Second {
		t.Errorf("recovery after Redis returned took %v (per replica %v), want <= 2s", recovered, each)
	}
	if leaked != 0 {
		t.Errorf("%d requests reached the backend while the local breakers were open", leaked)
	}
}
