package proxy

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"testing"
	"time"
	"unsafe"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
)

// BenchmarkLookupAdmit measures what the request path does before forwarding and after
// the response headers, for 10, 1,000 and 10,000 upstreams: routing (path check, host
// normalisation, lookup), the upstream's breaker admitting the request (Allow), and the
// outcome reported back (Done, which reads the clock).
//
// Two route layouts, each with one upstream per route:
//
//   - host: a route per host (svc-<i>.example.com), found by a map lookup;
//   - path: host-less routes by path prefix (/svc-<i>/), the layout bench/run.sh
//     generates; a request goes to the first route in config order whose prefix matches.
//
// Two request orders:
//
//   - same: every request goes to upstream n/2, so everything it touches stays in the
//     CPU caches: the cost of the algorithm alone;
//   - spread: successive requests go to unrelated upstreams, spread over all of them, so
//     with 10,000 upstreams the routing table and the breakers are mostly out of the
//     caches (traffic spread evenly over every upstream). 1,000 upstreams' share of them
//     fits in a core's L2 cache: the step from 1,000 to 10,000 is the memory hierarchy's.
func BenchmarkLookupAdmit(b *testing.B) {
	for _, layout := range []string{"host", "path"} {
		for _, order := range []string{"same", "spread"} {
			for _, n := range []int{10, 1_000, 10_000} {
				b.Run(layout+"/"+order+"/"+strconv.Itoa(n), func(b *testing.B) {
					benchmarkLookupAdmit(b, layout, order == "spread", n)
				})
			}
		}
	}
}

func benchmarkLookupAdmit(b *testing.B, layout string, spread bool, n int) {
	cfg := &config.Config{Upstreams: map[string]*config.Upstream{}}
	breakers := make(map[string]*breaker.Breaker, n)
	tu, _ := url.Parse("http://10.0.0.1:8080")
	for i := range n {
		name := fmt.Sprintf("svc-%d", i)
		cfg.Upstreams[name] = targetUpstream(tu)
		cfg.Upstreams[name].Breaker.Enabled = true
		breakers[name] = breaker.New(name, breaker.Settings{
			ConsecutiveFailures: 5, FailureRate: 50, MinimumRequests: 20,
			Window: 10 * time.Second, Buckets: 10, OpenDuration: 30 * time.Second,
		}, breaker.Options{})
		switch layout {
		case "host":
			cfg.Routes = append(cfg.Routes, config.Route{Host: name + ".example.com", PathPrefix: "/", Upstream: name})
		case "path":
			cfg.Routes = append(cfg.Routes, config.Route{PathPrefix: "/" + name + "/", Upstream: name})
		}
	}
	p, err := New(cfg, breakers, Options{})
	if err != nil {
		b.Fatal(err)
	}
	tab := p.table.Load()

	// spread: iteration k goes to upstream i = n/2 + k·stride mod n (stride coprime
	// with n), so that consecutive iterations touch unrelated routes and breakers. The
	// request's Host and path are written into one reused buffer, as if just parsed: only
	// the proxy's own structures are cold, not the benchmark's bookkeeping.
	stride := 7919 % n // a prime
	if n == 10 {
		stride = 3
	}
	i := n / 2
	if !spread {
		stride = 0
	}
	buf := make([]byte, 0, 64)
	var u url.URL
	host := "gateway.example.net:8080"

	b.ReportAllocs()
	for b.Loop() {
		i += stride
		if i >= n {
			i -= n
		}
		buf = append(buf[:0], "/svc-"...)
		buf = strconv.AppendInt(buf, int64(i), 10)
		if layout == "host" {
			buf = append(buf, ".example.com:443/items/42"...)
			j := len(buf) - len("/items/42")
			host, u.Path = unsafe.String(&buf[1], j-1), unsafe.String(&buf[j], len(buf)-j)
		} else {
			buf = append(buf, "/items/42"...)
			u.Path = unsafe.String(&buf[0], len(buf))
		}
		path, ok := routingPath(&u)
		if !ok {
			b.Fatal("routingPath refused", u.Path)
		}
		rt := tab.routes.lookup(normalizeHost(host), path, http.MethodGet)
		if rt == nil || int(rt.index) != i {
			b.Fatalf("host %s path %s routed to %v, want route %d", host, path, rt, i)
		}
		tk, err := rt.up.breaker.Allow()
		if err != nil {
			b.Fatal(err)
		}
		rt.up.breaker.Done(tk, breaker.Success, time.Millisecond)
	}
}
