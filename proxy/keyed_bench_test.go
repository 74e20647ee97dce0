package proxy

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
)

// BenchmarkKeyedAdmission measures admission as ServeHTTP does it, side by side with
// and without per-key breakers (same binary, same upstream): the path check, routing,
// the bulkhead, the key's circuit (keyed only: reading the key, finding its circuit,
// Allow) and the upstream's (Allow), and the outcome reported back to both (Done).
//
//   - unkeyed: no keyed section;
//   - header/N: the key from X-Tenant-ID, requests spread over N active keys (1 or
//     10,000: every key in the table, successive requests on unrelated keys);
//   - header+path/N: the key combined from the header and a path segment.
func BenchmarkKeyedAdmission(b *testing.B) {
	b.Run("unkeyed", func(b *testing.B) { benchmarkKeyedAdmission(b, nil, 1) })
	for _, from := range [][]string{{"header:X-Tenant-ID"}, {"header:X-Tenant-ID", "path:1"}} {
		name := "header"
		if len(from) > 1 {
			name = "header+path"
		}
		for _, n := range []int{1, 10_000} {
			b.Run(name+"/"+strconv.Itoa(n), func(b *testing.B) { benchmarkKeyedAdmission(b, from, n) })
		}
	}
}

func benchmarkKeyedAdmission(b *testing.B, from []string, n int) {
	tu, _ := url.Parse("http://10.0.0.1:8080")
	u := targetUpstream(tu)
	u.Breaker.Enabled = true
	if from != nil {
		u.Keyed.From = from
		for _, s := range from {
			src, err := config.ParseKeySource(s)
			if err != nil {
				b.Fatal(err)
			}
			u.Keyed.Sources = append(u.Keyed.Sources, src)
		}
	}
	cfg := &config.Config{Upstreams: map[string]*config.Upstream{"api": u},
		Routes: []config.Route{{PathPrefix: "/", Upstream: "api"}}}
	br := breaker.New("api", u.Breaker.Settings(), breaker.Options{})
	p, err := New(cfg, map[string]*breaker.Breaker{"api": br}, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	tab := p.table.Load()
	reqs := make([]*http.Request, n)
	for i := range reqs {
		r, _ := http.NewRequest(http.MethodGet, "http://api.example.com/eu/items/42", nil)
		r.Header.Set("X-Tenant-ID", "tenant-"+strconv.Itoa(i))
		reqs[i] = r
	}
	admit := func(r *http.Request) {
		cleaned, ok := routingPath(r.URL)
		if !ok {
			b.Fatal("routingPath refused")
		}
		rt := tab.routes.lookup(normalizeHost(r.Host), cleaned, r.Method)
		up := rt.up
		if !up.bulkhead.acquire() {
			b.Fatal("bulkhead full")
		}
		var ka keyAdmission
		if up.keys != nil {
			if ka, err = up.admitKey(r, cleaned); err != nil {
				b.Fatal(err)
			}
		}
		tk, err := up.breaker.Allow()
		if err != nil {
			b.Fatal(err)
		}
		up.breaker.Done(tk, breaker.Success, time.Millisecond)
		if ka.kc != nil {
			ka.kc.b.Done(ka.ticket, breaker.Success, time.Millisecond)
		}
		up.bulkhead.release()
	}
	for _, r := range reqs { // every key active before the clock starts
		admit(r)
	}
	if from != nil {
		if got := p.KeyStats()[0].Tracked; got != n {
			b.Fatalf("%d keys tracked, want %d", got, n)
		}
	}
	stride := 7919 % n // successive requests on unrelated keys
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		i += stride
		if i >= n {
			i -= n
		}
		admit(reqs[i])
	}
}

// BenchmarkHandlerKeyed is BenchmarkHandler's request through the Proxy, side by side
// without and with per-key breakers on X-Tenant-ID (the request carries the header
// either way): the whole request, routing to response, in-process against a real
// backend.
func BenchmarkHandlerKeyed(b *testing.B) {
	body := strings.Repeat("x", 64)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write([]byte(body))
	}))
	defer backend.Close()
	target, _ := url.Parse(backend.URL)
	for _, keyed := range []bool{false, true} {
		name := "unkeyed"
		if keyed {
			name = "keyed"
		}
		b.Run(name, func(b *testing.B) {
			u := targetUpstream(target)
			u.Breaker.Enabled = true
			if keyed {
				u.Keyed.From = []string{"header:X-Tenant-ID"}
				u.Keyed.Sources = []config.KeySource{{Kind: config.KeyHeader, Name: "X-Tenant-Id"}}
			}
			cfg := &config.Config{Upstreams: map[string]*config.Upstream{"api": u},
				Routes: []config.Route{{Host: "api.example.com", PathPrefix: "/v1/", Upstream: "api"}}}
			br := breaker.New("api", u.Breaker.Settings(), breaker.Options{})
			p, err := New(cfg, map[string]*breaker.Breaker{"api": br}, Options{Recorder: nopRecorder{}})
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			req := httptest.NewRequest(http.MethodGet, "http://api.example.com/v1/items/42?x=1", http.NoBody)
			req.Header.Set("User-Agent", "bench")
			req.Header.Set("X-Tenant-ID", "acme")
			w := &discardWriter{h: make(http.Header)}
			b.ReportAllocs()
			for b.Loop() {
				w.reset()
				p.ServeHTTP(w, req)
				if w.code != http.StatusOK {
					b.Fatalf("status: got %d, want 200", w.code)
				}
			}
		})
	}
}
