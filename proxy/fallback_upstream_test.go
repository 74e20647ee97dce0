package proxy

import (
	"net/http"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
)

// fallbackFixture: upstream "svc" (one switchable backend, a breaker opening after 3
// failures for 30 s) falls back to "cache" (another backend, its own breaker).
func fallbackFixture(t *testing.T) (*fixture, *switchBackend, *switchBackend) {
	t.Helper()
	primary, cache := newSwitchBackend(t), newSwitchBackend(t)
	svc := upstreamCfg(t, primary.URL)
	svc.Fallback.Upstream = "cache"
	c := upstreamCfg(t, cache.URL)
	cfg := &config.Config{
		Upstreams: map[string]*config.Upstream{"svc": svc, "cache": c},
		Routes:    []config.Route{{PathPrefix: "/api/", StripPrefix: true, Upstream: "svc"}},
	}
	return newFixture(t, cfg), primary, cache
}

func TestFallbackUpstreamServesWhileOpen(t *testing.T) {
	f, primary, cache := fallbackFixture(t)
	primary.status.Store(503)
	for range 3 {
		wantStatus(t, f.get(t, "h.example", "/api/x"), 503)
	}
	if s := f.breakers["svc"].State(); s != breaker.Open {
		t.Fatalf("svc is %v, want open", s)
	}

	// Open: the cache answers, marked.
	resp := f.get(t, "h.example", "/api/x")
	wantStatus(t, resp, 200)
	if got := resp.Header.Get(HeaderCircuit); got != "open" {
		t.Errorf("%s: %q, want open", HeaderCircuit, got)
	}
	if got := resp.Header.Get(HeaderFallback); got != "cache" {
		t.Errorf("%s: %q, want cache", HeaderFallback, got)
	}
	if cache.hits.Load() != 1 || primary.hits.Load() != 3 {
		t.Errorf("hits: cache %d, primary %d; want 1 and 3", cache.hits.Load(), primary.hits.Load())
	}

	// The cache's own failure is its own: a 503 from it is passed on, marked, and counted
	// by its breaker, not svc's.
	cache.status.Store(503)
	for range 3 {
		resp := f.get(t, "h.example", "/api/x")
		wantStatus(t, resp, 503)
		if resp.Header.Get(HeaderFallback) != "cache" {
			t.Errorf("the cache's own 503 is not marked as the fallback's")
		}
	}
	// Its circuit open too: the fallback response, as without a fallback upstream.
	resp = f.get(t, "h.example", "/api/x")
	wantStatus(t, resp, 503)
	if resp.Header.Get(HeaderFallback) != "" || resp.Header.Get(HeaderCircuit) != "open" {
		t.Errorf("with both circuits open: %v, want svc's fallback response", resp.Header)
	}
	if n := cache.hits.Load(); n != 4 {
		t.Errorf("the cache got %d requests, want 4: none once its circuit opened", n)
	}

	// svc back: after its open period its trial goes to svc, and the cache stops.
	primary.status.Store(200)
	f.clock.Add(31 * time.Second)
	before := cache.hits.Load()
	for range 5 {
		resp := f.get(t, "h.example", "/api/x")
		wantStatus(t, resp, 200)
		if resp.Header.Get(HeaderFallback) != "" || resp.Header.Get(HeaderCircuit) != "" {
			t.Errorf("svc closed again, but its answer is marked: %v", resp.Header)
		}
	}
	if cache.hits.Load() != before {
		t.Errorf("the cache got requests after svc closed")
	}
	// Each request the cache served was reported as served by the fallback upstream.
	f.rec.mu.Lock()
	served := append([]string(nil), f.rec.fallbacks...)
	f.rec.mu.Unlock()
	if len(served) != 4 || served[0] != "svc>cache" {
		t.Errorf("FallbackServed calls %q, want 4 × svc>cache", served)
	}
}

// The fallback upstream gets the request as the route forwards it (strip_prefix here),
// under its own targets.
func TestFallbackUpstreamRequestIsTheRoutes(t *testing.T) {
	primary := newSwitchBackend(t)
	cache := echoBackend(t, "cache")
	svc := upstreamCfg(t, primary.URL)
	svc.Fallback.Upstream = "cache"
	svc.Breaker.Mode = "forced_open"
	cfg := &config.Config{
		Upstreams: map[string]*config.Upstream{"svc": svc, "cache": upstreamCfg(t, cache.URL)},
		Routes:    []config.Route{{PathPrefix: "/api/", StripPrefix: true, Upstream: "svc"}},
	}
	f := newFixture(t, cfg)
	resp := f.get(t, "h.example", "/api/items/1?q=2")
	e := decodeEcho(t, resp)
	if e.Backend != "cache" || e.RequestURI != "/items/1?q=2" {
		t.Errorf("fallback request: backend %s, URI %s; want cache, /items/1?q=2", e.Backend, e.RequestURI)
	}
	if resp.Header.Get(HeaderFallback) != "cache" {
		t.Errorf("not marked: %v", resp.Header)
	}
	if primary.hits.Load() != 0 {
		t.Errorf("the forced-open primary got %d requests", primary.hits.Load())
	}
	_ = http.StatusOK
}
