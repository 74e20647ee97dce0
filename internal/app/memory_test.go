package app

import (
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/internal/telemetry"
	"github.com/fuseproxy/fuseproxy/proxy"
)

// benchConfig is bench/run.sh's layout: n upstreams with breakers on, each routed by
// host (u<i>.bench) and by path prefix (/u<i>/), plus a catch-all route.
func benchConfig(tb testing.TB, n int) *config.Config {
	tb.Helper()
	var sb strings.Builder
	sb.WriteString("listen: \"127.0.0.1:0\"\nadmin: {listen: \"127.0.0.1:0\"}\nevents: {enabled: false}\nstore: {driver: memory, replica_id: mem}\nupstreams:\n")
	for i := range n {
		fmt.Fprintf(&sb, "  u%d: {targets: [\"http://127.0.0.1:18080\"], breaker: {enabled: true}}\n", i)
	}
	sb.WriteString("routes:\n")
	for i := range n {
		fmt.Fprintf(&sb, "  - {host: u%d.bench, upstream: u%d}\n", i, i)
	}
	for i := range n {
		fmt.Fprintf(&sb, "  - {path_prefix: /u%d/, upstream: u%d}\n", i, i)
	}
	sb.WriteString("  - {path_prefix: /, upstream: u0}\n")
	cfg, err := config.Parse("bench.yaml", []byte(sb.String()))
	if err != nil {
		tb.Fatal(err)
	}
	return cfg
}

// liveHeap returns the bytes of live heap objects after a full collection.
func liveHeap() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC() // the second cycle frees what the first one's finalizers released
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkUpstreamMemory reports the live heap each idle upstream costs, in bench/run.sh's
// layout (a breaker, a host route and a path route per upstream), in total and by part:
// the parsed config, the Prometheus series (telemetry), the breakers, the routing table
// with its transports (proxy), and the whole replica as app.New builds it (everything but
// the config). It measures once per run; the ns/op it prints means nothing.
//
//	go test -run '^$' -bench BenchmarkUpstreamMemory -benchtime 1x ./internal/app/
func BenchmarkUpstreamMemory(b *testing.B) {
	for _, n := range []int{10_000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			per := func(before, after uint64) float64 { return (float64(after) - float64(before)) / float64(n) }
			h0 := liveHeap()
			cfg := benchConfig(b, n)
			h1 := liveHeap()

			names := upstreamNames(cfg)
			m := telemetry.New(telemetry.Options{})
			m.SetUpstreams(names)
			h2 := liveHeap()

			bs := make(map[string]*breaker.Breaker, n)
			for name, u := range cfg.Upstreams {
				bs[name] = breaker.New(name, u.Breaker.Settings(), breaker.Options{})
			}
			h3 := liveHeap()

			p, err := proxy.New(cfg, bs, proxy.Options{Recorder: m})
			if err != nil {
				b.Fatal(err)
			}
			h4 := liveHeap()
			runtime.KeepAlive(m)
			runtime.KeepAlive(bs)
			runtime.KeepAlive(p)
			m, bs, p = nil, nil, nil
			h5 := liveHeap()

			a, err := New(cfg, Options{})
			if err != nil {
				b.Fatal(err)
			}
			h6 := liveHeap()
			runtime.KeepAlive(a)
			runtime.KeepAlive(cfg)

			for b.Loop() { // ReportMetric must come after the loop, which resets the metrics
			}
			b.ReportMetric(per(h0, h1), "config-B/upstream")
			b.ReportMetric(per(h1, h2), "telemetry-B/upstream")
			b.ReportMetric(per(h2, h3), "breakers-B/upstream")
			b.ReportMetric(per(h3, h4), "proxy-B/upstream")
			b.ReportMetric(per(h5, h6), "app-B/upstream")
			b.ReportMetric(float64(h6-h0)/(1<<20), "total-MiB")
		})
	}
}

// maxUpstreamHeap bounds the live heap a replica keeps per idle upstream in bench/run.sh's
// layout (a breaker, a host route and a path route each), with 10,000 of them: 2,300
// bytes, against about 1,760 measured (docs/BENCHMARKS.md, "Memory"; 8,550 before the
// parsed config was compacted and the proxy's tables shrunk). Issue #19's goal,
// 40 MiB of RSS idle with 10,000 upstreams, leaves about 2.5 KiB per upstream beside the
// runtime's own.
const maxUpstreamHeap = 2300

// TestUpstreamMemory guards the memory per upstream: a replica built by New from a
// config of 10,000 upstreams, the config itself dropped as Serve drops it, must keep at
// most maxUpstreamHeap bytes of live heap per upstream.
func TestUpstreamMemory(t *testing.T) {
	const n = 10_000
	h0 := liveHeap()
	a, err := New(benchConfig(t, n), Options{})
	if err != nil {
		t.Fatal(err)
	}
	h1 := liveHeap()
	runtime.KeepAlive(a)
	per := (float64(h1) - float64(h0)) / n
	t.Logf("%.0f bytes of live heap per upstream (%.1f MiB for %d)", per, (float64(h1)-float64(h0))/(1<<20), n)
	if per > maxUpstreamHeap {
		t.Errorf("a replica keeps %.0f bytes per idle upstream, want at most %d", per, maxUpstreamHeap)
	}
}
