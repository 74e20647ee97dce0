package app

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fuseproxy/fuseproxy/config"
)

// `demo -upstream ADDR` moves the config's target along with the flaky upstream (it used
// to move only the upstream: every request 502), and -listen and -admin move the
// listeners; the changes hold at reloads too.
func TestDemoOverridesMoveTheTarget(t *testing.T) {
	o := DemoOverrides{Listen: "127.0.0.1:18082", Admin: "127.0.0.1:19092", Upstream: "127.0.0.1:18081"}
	path := filepath.Join("..", "..", "config.example.yaml")
	cfg, err := loadAdjusted(path, o.Apply)
	if err != nil {
		t.Fatal(err)
	}
	demo := cfg.Upstreams["demo"]
	if got := demo.Targets; len(got) != 1 || got[0] != "http://127.0.0.1:18081" {
		t.Errorf("targets %v, want [http://127.0.0.1:18081]", got)
	}
	if got := demo.TargetURLs; len(got) != 1 || got[0].Host != "127.0.0.1:18081" {
		t.Errorf("target URLs %v, want the moved target (validated again)", got)
	}
	if cfg.Listen != o.Listen || cfg.Admin.Listen != o.Admin {
		t.Errorf("listen %q, admin %q; want %q, %q", cfg.Listen, cfg.Admin.Listen, o.Listen, o.Admin)
	}

	// Without overrides, the example's own values.
	cfg, err = loadAdjusted(path, DemoOverrides{Upstream: DemoUpstream}.Apply)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Upstreams["demo"].Targets[0]; got != "http://"+DemoUpstream {
		t.Errorf("target %q, want http://%s", got, DemoUpstream)
	}

	// A config with nothing at the demo's address cannot be moved: an error, not 502s.
	other := &config.Config{Path: "mine.yaml", Upstreams: map[string]*config.Upstream{"api": {Targets: []string{"http://10.0.0.1:80"}}}}
	if err := o.Apply(other); err == nil || !strings.Contains(err.Error(), "no target of mine.yaml is at 127.0.0.1:8081") {
		t.Errorf("moving a config without the demo's target: %v", err)
	}
}

// A reload re-reads the file and applies the demo's overrides again: the target stays
// moved.
func TestDemoOverridesHoldAtReload(t *testing.T) {
	src, err := os.ReadFile(filepath.Join("..", "..", "config.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "demo.yaml")
	if err := os.WriteFile(path, src, 0o644); err != nil {
		t.Fatal(err)
	}
	o := DemoOverrides{Listen: "127.0.0.1:0", Admin: "127.0.0.1:0", Upstream: "127.0.0.1:18081"}
	cfg, err := loadAdjusted(path, o.Apply)
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(cfg, Options{Adjust: o.Apply})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.store.Close() })
	if err := a.ReloadFile(); err != nil {
		t.Fatal(err)
	}
	if got := a.Targets("demo")[0].String(); got != "http://127.0.0.1:18081" {
		t.Errorf("after a reload the target is %q, want the moved http://127.0.0.1:18081", got)
	}
}
