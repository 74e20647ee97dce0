package e2e

import (
	"context"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// faultSoakSample is one reading of a replica's resources (and of Redis, shared).
type faultSoakSample struct {
	At         time.Duration // since the soak started
	Goroutines float64       // go_goroutines from /metrics
	HeapBytes  float64       // go_memstats_heap_inuse_bytes from /metrics
	FDs        int           // /proc/PID/fd entries
	RSSKiB     int64         // VmRSS
	RedisKeys  int64         // DBSIZE
	RedisMem   int64         // used_memory, bytes
}

// TestFaultSoak runs two replicas on the redis store under mixed traffic for 2 minutes
// (30s with -short): keep-alive and fresh connections, GET, HEAD and POST with bodies,
// with the backend failing for 1s in every 8s so the fleet's circuit trips, goes
// half-open and recovers again and again. No request may fail because of the proxy, and
// nothing may grow: every replica's goroutines (go_goroutines), open file descriptors
// and RSS, and Redis's key count and memory, compared between the first and the last
// third of the run (after a warm-up), stay within a small slack.
func TestFaultSoak(t *testing.T) {
	t.Parallel()
	duration, warmup := 2*time.Minute, 10*time.Second
	if testing.Short() {
		duration, warmup = 30*time.Second, 5*time.Second
	}
	const (
		every = 2 * time.Second // sampling
		cycle = 8 * time.Second // backend healthy, then failing for failFor
		fail  = time.Second
	)
	f := startFaultFleet(t, 2, false, func(_ int, c *faultConfig) {
		c.FlushInterval = 100 * time.Millisecond
		u := &c.Upstreams[0]
		u.Timeout, u.ConsecutiveFailures, u.OpenDuration = 2*time.Second, 5, time.Second
	})
	ctx := context.Background()
	rc := f.Redis.Client()

	// Traffic: three keep-alive clients (GET, HEAD, POST 4 KiB) and one that opens a new
	// connection per request.
	rr := &roundRobin{proxies: f.Replicas}
	start := time.Now()
	stop := make(chan struct{})
	var stopOnce sync.Once
	halt := func() { stopOnce.Do(func() { close(stop) }) }
	t.Cleanup(halt) // a test that fails half-way stops its clients too
	var mu sync.Mutex
	var total faultStats
	var wg sync.WaitGroup
	fresh := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	body := strings.Repeat("b", 4<<10)
	for c := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var st faultStats
			defer func() {
				mu.Lock()
				total.merge(st)
				mu.Unlock()
			}()
			for i := 0; i < faultMaxLoadPerClient && time.Since(start) < duration+time.Minute; i++ {
				select {
				case <-stop:
					return
				case <-time.After(3 * time.Millisecond):
				}
				p := rr.Next()
				var r response
				switch {
				case c == 3:
					r = doGet(fresh, p.URL()+"/fresh")
				case i%3 == 1:
					r = faultDo(p.client, "HEAD", p.URL()+"/head", "")
					if r.Err == nil && r.Status == http.StatusOK && r.Circuit == "" {
						r.Body = `{"ok":true}` // HEAD has no body to tell the backend by
					}
				case i%3 == 2:
					r = faultDo(p.client, "POST", p.URL()+"/post", body)
				default:
					r = p.Get("/get")
				}
				if r.Err == nil && r.Status >= 500 && r.Circuit == "" && r.Body == "" {
					r.Body = `{"ok":` // HEAD of a backend failure: no body either
				}
				st.add(r)
			}
		}()
	}

	var samples [][]faultSoakSample // per replica
	samples = make([][]faultSoakSample, len(f.Replicas))
	nextFail := start.Add(cycle - fail)
	failing := false
	cycles := 0
	for time.Since(start) < duration {
		now := time.Now()
		switch {
		case !failing && now.After(nextFail):
			f.Backend.Set(t, "fail=on")
			failing = true
		case failing && now.After(nextFail.Add(fail)):
			f.Backend.Set(t, "fail=off")
			failing, cycles = false, cycles+1
			nextFail = nextFail.Add(cycle)
		}
		if el := time.Since(start); el >= warmup && (len(samples[0]) == 0 || el-samples[0][len(samples[0])-1].At >= every) {
			keys, _ := rc.DBSize(ctx).Result()
			mem := faultRedisMemory(rc.Info(ctx, "memory").Val())
			for i, p := range f.Replicas {
				samples[i] = append(samples[i], faultSoakSample{At: el,
					Goroutines: faultMetric(t, p.client, f.Cfgs[i].AdminListen, "go_goroutines", ""),
					HeapBytes:  faultMetric(t, p.client, f.Cfgs[i].AdminListen, "go_memstats_heap_inuse_bytes", ""),
					FDs:        faultFDs(t, faultPID(p.process)), RSSKiB: faultRSS(t, faultPID(p.process)),
					RedisKeys: keys, RedisMem: mem})
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	halt()
	wg.Wait()
	f.Backend.Set(t, "fail=off")

	t.Logf("soak %v: %v; %d failure cycles", duration, total, cycles)
	if total.ProxyFailed+total.Other > 0 {
		t.Errorf("soak: %v, want no request failed by the proxy", total)
	}
	if total.OK == 0 || total.Rejected == 0 || total.BackendFailed == 0 {
		t.Errorf("soak: %v, want successes, backend failures and rejections (trips)", total)
	}
	extra := map[string]any{"duration_s": duration.Seconds(), "cycles": cycles, "ok": total.OK,
		"rejected": total.Rejected, "backend_5xx": total.BackendFailed}
	for i, p := range f.Replicas {
		faultOpens, closes := p.CountTransitionsTo(upstream, "open"), p.CountTransitionsTo(upstream, "closed")
		if faultOpens < cycles-1 || closes < cycles-1 {
			t.Errorf("%s: %d trips and %d recoveries in %d failure cycles, want one of each per cycle", p.ID, faultOpens, closes, cycles)
		}
		s := samples[i]
		third := len(s) / 3
		if third < 3 {
			t.Fatalf("only %d samples", len(s))
		}
		first, last := s[:third], s[len(s)-third:]
		g0, g1 := faultMedian(first, func(x faultSoakSample) float64 { return x.Goroutines }), faultMedian(last, func(x faultSoakSample) float64 { return x.Goroutines })
		f0, f1 := faultMedian(first, func(x faultSoakSample) float64 { return float64(x.FDs) }), faultMedian(last, func(x faultSoakSample) float64 { return float64(x.FDs) })
		r0, r1 := faultMedian(first, func(x faultSoakSample) float64 { return float64(x.RSSKiB) }), faultMedian(last, func(x faultSoakSample) float64 { return float64(x.RSSKiB) })
		h0, h1 := faultMedian(first, func(x faultSoakSample) float64 { return x.HeapBytes }), faultMedian(last, func(x faultSoakSample) float64 { return x.HeapBytes })
		t.Logf("%s: goroutines %.0f → %.0f, fds %.0f → %.0f, heap in use %.1f → %.1f MiB, RSS %.1f → %.1f MiB (median of first vs last third, %d samples); %d trips",
			p.ID, g0, g1, f0, f1, h0/(1<<20), h1/(1<<20), r0/1024, r1/1024, len(s), faultOpens)
		if h1 > h0*1.25+10<<20 {
			t.Errorf("%s: heap in use grew from %.1f to %.1f MiB", p.ID, h0/(1<<20), h1/(1<<20))
		}
		if g1 > g0*1.2+10 {
			t.Errorf("%s: goroutines grew from %.0f to %.0f", p.ID, g0, g1)
		}
		if f1 > f0+10 {
			t.Errorf("%s: open file descriptors grew from %.0f to %.0f", p.ID, f0, f1)
		}
		// A binary built with -race keeps the race detector's shadow memory and history in
		// its RSS, which grow with every goroutine and lock it ever saw: there the Go heap
		// above is the leak signal, and RSS is asserted for a plain binary only.
		if r1 > r0*1.25+10*1024 && !faultRaceBinary() {
			t.Errorf("%s: RSS grew from %.1f to %.1f MiB", p.ID, r0/1024, r1/1024)
		}
		extra[p.ID] = map[string]any{"goroutines": []float64{g0, g1}, "fds": []float64{f0, f1},
			"rss_mib": []float64{faultRound1(r0 / 1024), faultRound1(r1 / 1024)}, "trips": faultOpens, "recoveries": closes}
	}
	s := samples[0]
	third := len(s) / 3
	k0, k1 := faultMedian(s[:third], func(x faultSoakSample) float64 { return float64(x.RedisKeys) }), slices.MaxFunc(s, func(a, b faultSoakSample) int { return int(a.RedisKeys - b.RedisKeys) }).RedisKeys
	m0, m1 := faultMedian(s[:third], func(x faultSoakSample) float64 { return float64(x.RedisMem) }), faultMedian(s[len(s)-third:], func(x faultSoakSample) float64 { return float64(x.RedisMem) })
	t.Logf("Redis: keys %.0f at first, at most %d; used_memory %.0f → %.0f KiB", k0, k1, m0/1024, m1/1024)
	// One upstream's keys (state, leases, ...) plus each replica's heartbeat key
	// (<prefix>:heartbeat:<replica>, 5 s, written while a replica is idle or in doubt).
	if want := int64(3 + len(f.Replicas)); k1 > want {
		t.Errorf("Redis held up to %d keys, want at most %d (3 for the upstream: state, leases, ...; a heartbeat key per replica)", k1, want)
	}
	if m1 > m0+1<<20 {
		t.Errorf("Redis used_memory grew from %.0f to %.0f KiB", m0/1024, m1/1024)
	}
	extra["redis_keys_max"], extra["redis_used_memory_kib"] = k1, []float64{faultRound1(m0 / 1024), faultRound1(m1 / 1024)}
	faultFigures{Sent: total.Sent, ProxyFailed: total.ProxyFailed + total.Other, Extra: extra}.record(t, "soak")
}

// faultDo sends method url with body (none when empty) and reads up to 64 KiB back.
func faultDo(c *http.Client, method, url, body string) response {
	r := response{Sent: time.Now()}
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		r.Err = err
		return r
	}
	resp, err := c.Do(req)
	if err != nil {
		r.Err, r.At = err, time.Now()
		return r
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	r.At, r.Status, r.Body, r.Err = time.Now(), resp.StatusCode, string(b), err
	r.Circuit, r.RetryAfter = resp.Header.Get("X-Fuse-Circuit"), resp.Header.Get("Retry-After")
	return r
}

func faultRedisMemory(info string) int64 {
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

func faultMedian(s []faultSoakSample, f func(faultSoakSample) float64) float64 {
	v := make([]float64, len(s))
	for i, x := range s {
		v[i] = f(x)
	}
	slices.Sort(v)
	return v[len(v)/2]
}

func faultRound1(x float64) float64 { return float64(int64(x*10+0.5)) / 10 }

// faultRaceBinary reports whether the replicas run a binary built with -race.
func faultRaceBinary() bool {
	return os.Getenv("FUSE_E2E_RACE") == "1" && os.Getenv("FUSE_E2E_BINARY") == ""
}
