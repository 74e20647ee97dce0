package app

import (
	"testing"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
)

func ejectionConfig(t *testing.T, targets string) *config.Config {
	t.Helper()
	cfg, err := config.Parse("test.yaml", []byte(`listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
store:
  replica_id: solo
upstreams:
  api:
    targets: [`+targets+`]
    outlier_detection:
      enabled: true
  single:
    targets: ["http://127.0.0.1:9"]
    outlier_detection:
      enabled: true
routes:
  - upstream: api
`))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// Each target of an upstream with outlier detection has a circuit in the store; a single
// target has none; a reload keeps the circuits (and state) of the targets that remain,
// drops the removed one and adds the new one closed.
func TestTargetCircuitsSurviveReload(t *testing.T) {
	a, err := New(ejectionConfig(t, `"http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"`), Options{})
	if err != nil {
		t.Fatal(err)
	}
	bs := a.Breakers()
	for _, name := range []string{"api", "api@127.0.0.1:1", "api@127.0.0.1:2", "api@127.0.0.1:3", "single"} {
		if bs[name] == nil {
			t.Fatalf("no circuit %q (have %d)", name, len(bs))
		}
	}
	if _, ok := bs["single@127.0.0.1:9"]; ok {
		t.Error("a single target got a circuit of its own: it can never be ejected")
	}
	if _, err := a.Store().Inspect(t.Context(), "api@127.0.0.1:2"); err != nil {
		t.Errorf("the store does not hold target circuit api@127.0.0.1:2: %v", err)
	}
	bs["api@127.0.0.1:2"].Trip()
	kept := bs["api@127.0.0.1:2"]

	if err := a.Reload(ejectionConfig(t, `"http://127.0.0.1:2", "http://127.0.0.1:4", "http://127.0.0.1:3"`)); err != nil {
		t.Fatal(err)
	}
	bs = a.Breakers()
	if bs["api@127.0.0.1:2"] != kept || kept.State() != breaker.Open {
		t.Errorf("the remaining ejected target lost its circuit or state across the reload")
	}
	if _, ok := bs["api@127.0.0.1:1"]; ok {
		t.Error("the removed target's circuit is still there")
	}
	if b := bs["api@127.0.0.1:4"]; b == nil || b.State() != breaker.Closed {
		t.Error("the new target has no closed circuit")
	}
	if _, err := a.Store().Inspect(t.Context(), "api@127.0.0.1:1"); err == nil {
		t.Error("the store still holds the removed target's circuit")
	}
}
