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

// A reload that removes a checked target deletes its health check probe series (the
// series of the targets that remain keep their counts), as it deletes a removed
// upstream's: the metric's labels stay bounded by the config.
func TestReloadDropsRemovedTargetsProbeSeries(t *testing.T) {
	checked := func(targets string) *config.Config {
		cfg, err := config.Parse("test.yaml", []byte(`upstreams:
  api:
    targets: [`+targets+`]
    outlier_detection:
      enabled: true
    health_check:
      path: /healthz
routes:
  - upstream: api
`))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	a, err := New(checked(`"http://127.0.0.1:1", "http://127.0.0.1:2"`), Options{})
	if err != nil {
		t.Fatal(err)
	}
	// What the checker's Observe hook reports after a probe of each target.
	a.Metrics().HealthProbe("api", "127.0.0.1:1", "error")
	a.Metrics().HealthProbe("api", "127.0.0.1:2", "ok")
	if err := a.Reload(checked(`"http://127.0.0.1:2", "http://127.0.0.1:3"`)); err != nil {
		t.Fatal(err)
	}
	a.Metrics().HealthProbe("api", "127.0.0.1:2", "ok")
	got := map[string]float64{}
	mfs, err := a.Metrics().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "fuseproxy_health_check_probes_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var target string
			for _, l := range m.GetLabel() {
				if l.GetName() == "target" {
					target = l.GetValue()
				}
			}
			got[target] += m.GetCounter().GetValue()
		}
	}
	if _, ok := got["127.0.0.1:1"]; ok || got["127.0.0.1:2"] != 2 {
		t.Errorf("probe series by target after the reload: %v; want the removed target's gone and the remaining one's kept (2)", got)
	}
}
