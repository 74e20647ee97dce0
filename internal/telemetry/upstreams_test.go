package telemetry

import (
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/proxy"
)

func TestDurationBoundsAreDefBucketsFromHalfAMillisecond(t *testing.T) {
	want := append([]float64{.0005, .001, .0025}, prometheus.DefBuckets...)
	if len(durationBounds) != len(want) {
		t.Fatalf("%d bounds, want %d", len(durationBounds), len(want))
	}
	for i, b := range durationBounds {
		if b.Seconds() != want[i] {
			t.Errorf("bound %d: %v, want %v", i, b, want[i])
		}
	}
}

// Buckets are "less than or equal" (as client_golang's histograms): an observation on a
// bound counts in that bound's bucket.
func TestHistogramBuckets(t *testing.T) {
	m := New(Options{NoRuntimeCollectors: true})
	m.SetUpstreams(map[string]bool{"api": false})
	for _, d := range []time.Duration{0, 5 * time.Millisecond, 5*time.Millisecond + 1, 10 * time.Second, 10*time.Second + 1} {
		m.Request("api", proxy.Success, 200, d)
	}
	text := scrape(t, m)
	for _, want := range []string{
		`fuseproxy_upstream_request_duration_seconds_bucket{upstream="api",le="0.0005"} 1`,
		`fuseproxy_upstream_request_duration_seconds_bucket{upstream="api",le="0.0025"} 1`,
		`fuseproxy_upstream_request_duration_seconds_bucket{upstream="api",le="0.005"} 2`,
		`fuseproxy_upstream_request_duration_seconds_bucket{upstream="api",le="0.01"} 3`,
		`fuseproxy_upstream_request_duration_seconds_bucket{upstream="api",le="5"} 3`,
		`fuseproxy_upstream_request_duration_seconds_bucket{upstream="api",le="10"} 4`,
		`fuseproxy_upstream_request_duration_seconds_bucket{upstream="api",le="+Inf"} 5`,
		`fuseproxy_upstream_request_duration_seconds_sum{upstream="api"} 20.010000002`,
		`fuseproxy_upstream_request_duration_seconds_count{upstream="api"} 5`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("exposition lacks %s", want)
		}
	}
}

// Switching an upstream's breaker off and on again keeps its request counts and starts
// its transition series over at 0, as deleting and re-creating them did.
func TestBreakerToggleKeepsRequestCounts(t *testing.T) {
	m := New(Options{NoRuntimeCollectors: true})
	m.SetUpstreams(map[string]bool{"api": true})
	m.Request("api", proxy.Success, 200, time.Millisecond)
	m.Transition(breaker.Transition{Upstream: "api", From: breaker.Closed, To: breaker.Open})
	m.SetUpstreams(map[string]bool{"api": false})
	m.Transition(breaker.Transition{Upstream: "api", From: breaker.Open, To: breaker.Closed}) // not counted
	m.SetUpstreams(map[string]bool{"api": true})
	text := scrape(t, m)
	for _, want := range []string{
		`fuseproxy_requests_total{outcome="success",upstream="api"} 1`,
		`fuseproxy_circuit_transitions_total{from="closed",to="open",upstream="api"} 0`,
		`fuseproxy_circuit_transitions_total{from="open",to="closed",upstream="api"} 0`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("exposition lacks %s:\n%s", want, text)
		}
	}
}

// Scrapes, reloads and requests run concurrently (and under go test -race): no request
// is lost, every scrape sees the counters only grow, and the exposition stays valid.
func TestScrapeWhileCounting(t *testing.T) {
	m := New(Options{NoRuntimeCollectors: true})
	m.SetUpstreams(map[string]bool{"a": true, "b": false})
	names := []string{"a", "b"}
	sent := make([]int, len(names))
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				m.Request(name, proxy.Success, 200, time.Millisecond)
				m.Transition(breaker.Transition{Upstream: name, From: breaker.Closed, To: breaker.Open})
				sent[i]++
			}
		}()
	}
	seen := make([]float64, len(names))
	for i := range 20 {
		m.SetUpstreams(map[string]bool{"a": i%2 == 0, "b": true})
		text := scrape(t, m)
		for j, name := range names {
			n := successes(t, text, name)
			if n < seen[j] {
				t.Fatalf("scrape %d: %s's requests went from %v down to %v", i, name, seen[j], n)
			}
			seen[j] = n
		}
	}
	close(stop)
	wg.Wait()
	text := scrape(t, m)
	for j, name := range names {
		if n := successes(t, text, name); n != float64(sent[j]) || sent[j] == 0 {
			t.Errorf("%s: %v requests counted, %d sent", name, n, sent[j])
		}
	}
	PromtoolCheck(t, text)
}

// successes reads an upstream's success counter from an exposition.
func successes(t *testing.T, text, upstream string) float64 {
	t.Helper()
	prefix := `fuseproxy_requests_total{outcome="success",upstream="` + upstream + `"} `
	for line := range strings.Lines(text) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), prefix); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return n
		}
	}
	t.Fatalf("no %s in the exposition:\n%s", prefix, text)
	return 0
}

// An idle upstream's series must stay cheap: with client_golang's vectors they cost about
// 9 KiB of heap each (85 MiB for 10,000 upstreams).
func TestHeapPerUpstream(t *testing.T) {
	const n = 2000
	names := make(map[string]bool, n)
	for i := range n {
		names[fmt.Sprintf("upstream-%d", i)] = true
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	m := New(Options{NoRuntimeCollectors: true})
	m.SetUpstreams(names)
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := (float64(after.HeapAlloc) - float64(before.HeapAlloc)) / n
	runtime.KeepAlive(m)
	runtime.KeepAlive(names)
	t.Logf("%.0f bytes of heap per upstream", per)
	if per > 1024 {
		t.Errorf("%.0f bytes of heap per upstream, want at most 1 KiB", per)
	}
}

// BenchmarkScrape gathers the registry (what /metrics does before encoding) with 10,000
// upstreams, each with a breaker.
func BenchmarkScrape(b *testing.B) {
	names := make(map[string]bool, 10_000)
	for i := range 10_000 {
		names[fmt.Sprintf("upstream-%d", i)] = true
	}
	m := New(Options{NoRuntimeCollectors: true})
	m.SetUpstreams(names)
	for name := range names {
		m.Request(name, proxy.Success, 200, 30*time.Millisecond)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Registry().Gather(); err != nil {
			b.Fatal(err)
		}
	}
}
