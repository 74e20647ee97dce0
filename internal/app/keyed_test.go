package app

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/store"
)

const keyedAppConfig = `listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
store:
  replica_id: solo
upstreams:
  api:
    targets: ["http://127.0.0.1:1"]
    keyed:
      from: [header:X-Tenant-ID]
      consecutive_failures: %N%
routes:
  - upstream: api
`

// A key's circuit is created by its first request and handed to the store, which then
// commands it by name; a reload hands it over again with the new settings; per-key
// metrics count it without a key label.
func TestKeyedWiring(t *testing.T) {
	parse := func(n string) *config.Config {
		cfg, err := config.Parse("keyed.yaml", []byte(strings.ReplaceAll(keyedAppConfig, "%N%", n)))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	a, err := New(parse("2"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodGet, "http://x/", nil)
	req.Header.Set("X-Tenant-ID", "acme")
	for range 2 {
		a.proxy.ServeHTTP(httptest.NewRecorder(), req) // 502: nothing listens on port 1
	}
	ks := a.Store().(store.KeyStore)
	kc, _ := a.KeyCircuit("api")
	h, err := ks.InspectKey(t.Context(), "api#acme", kc)
	if err != nil || h["state"] != "open" {
		t.Fatalf("the store's view of api#acme: %v, %v; want open after 2 failures", h, err)
	}
	rec := httptest.NewRecorder()
	a.proxy.ServeHTTP(rec, req)
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("X-Fuse-Scope") != "key" {
		t.Fatalf("a request of the open key: %d %v", rec.Code, rec.Header())
	}
	if err := ks.ControlKey(t.Context(), "api#acme", kc, store.Command{Op: store.OpReset}); err != nil {
		t.Fatal(err)
	}
	if err := a.Reload(parse("7")); err != nil {
		t.Fatal(err)
	}
	b, ok := a.Key("api", "acme")
	if !ok || b.State() != breaker.Closed || b.Settings().ConsecutiveFailures != 7 {
		t.Fatalf("after a reset and a reload: %v", b)
	}
	if kc, _ := a.KeyCircuit("api"); kc.Settings.ConsecutiveFailures != 7 {
		t.Fatalf("the store's settings of the keys after a reload: %+v", kc.Settings)
	}
	st := a.KeyStats()
	if len(st) != 1 || st[0].Tracked != 1 || st[0].Rejected != 1 {
		t.Fatalf("KeyStats = %+v", st)
	}
}
