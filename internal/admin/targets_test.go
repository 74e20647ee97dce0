package admin_test

import (
	"encoding/json"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/internal/admin"
	"github.com/fuseproxy/fuseproxy/internal/app"
	"github.com/fuseproxy/fuseproxy/store"
)

// GET /circuits says a target is ejected only when the proxy skips it: an operator's
// ejection (forced_open) comes first and takes the cap; a detector's ejection past
// max_ejection_percent (the panic rule) serves traffic, and says so (past_cap); with
// max_ejection_percent 0 (a dry run) only operators eject.
func TestEjectedFollowsTheCap(t *testing.T) {
	for _, c := range []struct {
		pct  int
		want map[string][2]bool // target -> ejected, past_cap
	}{
		{50, map[string][2]bool{"127.0.0.1:1": {false, true}, "127.0.0.1:2": {false, false}, "127.0.0.1:3": {true, false}}},
		{0, map[string][2]bool{"127.0.0.1:1": {false, true}, "127.0.0.1:2": {false, false}, "127.0.0.1:3": {true, false}}},
		{100, map[string][2]bool{"127.0.0.1:1": {true, false}, "127.0.0.1:2": {false, false}, "127.0.0.1:3": {true, false}}},
	} {
		cfg, err := config.Parse("config.yaml", []byte(`upstreams:
  api:
    targets: ["http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"]
    outlier_detection:
      enabled: true
      max_ejection_percent: `+strconv.Itoa(c.pct)+`
routes:
  - upstream: api
`))
		if err != nil {
			t.Fatal(err)
		}
		a, err := app.New(cfg, app.Options{})
		if err != nil {
			t.Fatal(err)
		}
		a.Breakers()["api@127.0.0.1:1"].Trip()
		a.Breakers()["api@127.0.0.1:3"].SetMode(breaker.ForcedOpen)
		srv := httptest.NewServer(admin.NewHandler(a, admin.Options{}))
		resp, err := srv.Client().Get(srv.URL + "/circuits")
		if err != nil {
			t.Fatal(err)
		}
		var l admin.CircuitList
		err = json.NewDecoder(resp.Body).Decode(&l)
		resp.Body.Close()
		srv.Close()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string][2]bool{}
		for _, ci := range l.Circuits {
			if ci.Target != "" {
				got[ci.Target] = [2]bool{ci.Ejected, ci.PastCap}
			}
		}
		for target, want := range c.want {
			if got[target] != want {
				t.Errorf("max_ejection_percent %d: target %s: [ejected past_cap] = %v, want %v", c.pct, target, got[target], want)
			}
		}
	}
}

// A target circuit left over from a config whose outlier detection is now off (a reload
// swaps the config and the circuits one after the other) is never called ejected: the
// proxy no longer skips any target of that upstream.
func TestEjectedNeedsOutlierDetection(t *testing.T) {
	cfg := mustConfig(t, `upstreams:
  api:
    targets: ["http://127.0.0.1:1", "http://127.0.0.1:2"]
routes:
  - upstream: api
`)
	f := &fakeBackend{cfg: cfg, clock: &clock{}, breakers: map[string]*breaker.Breaker{}, store: store.NewMemory("replica-1")}
	b := breaker.New("api@127.0.0.1:1", breaker.Settings{}, breaker.Options{Clock: f.clock})
	b.Trip()
	f.breakers[b.Name()] = b
	srv := server(t, f, admin.Options{})
	var c admin.CircuitDetail
	if a := do(t, "GET", srv.URL+"/circuits/api@127.0.0.1:1", "", ""); a.status != 200 || json.Unmarshal([]byte(a.body), &c) != nil {
		t.Fatalf("GET: %v", a)
	}
	if c.Ejected || !c.PastCap {
		t.Errorf("ejected %v, past_cap %v; want false, true (outlier detection is off)", c.Ejected, c.PastCap)
	}
}
