package app

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/internal/admin"
	"github.com/fuseproxy/fuseproxy/internal/watch"
)

const reloadTestConfig = `listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
store:
  replica_id: solo
upstreams:
  api:
    targets: ["http://127.0.0.1:1"]
    breaker:
      failure_rate: %RATE%
routes:
  - upstream: api
`

// writeConfig replaces the file at path in one rename, as an editor saves.
func writeConfig(t *testing.T, path, rate string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strings.ReplaceAll(reloadTestConfig, "%RATE%", rate)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// reloadFailures returns the failure count of config_reloads_total.
func reloadFailures(t *testing.T, a *App) float64 {
	t.Helper()
	mfs, err := a.Metrics().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "fuseproxy_config_reloads_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == "failure" {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatal("no fuseproxy_config_reloads_total{result=\"failure\"} series")
	return 0
}

// A reload that fails is logged exactly once per attempt, whichever of the three
// triggers made it (file watch, SIGHUP, POST /reload), with the trigger named; the admin
// API also answers 500 with the error. ReloadFile itself returns the error without
// logging it, so no path reports it twice and none drops it.
func TestReloadFailureLoggedOncePerTrigger(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fuse.yaml")
	writeConfig(t, path, "50")
	w := watch.New(path)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.InfoLevel)
	hup := make(chan os.Signal, 1)
	a, err := New(cfg, Options{Logger: zap.New(core), Watch: w, WatchInterval: 5 * time.Millisecond, Reload: hup})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-stopped; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	waitUntil(t, "ready", a.Ready)
	_, adminAddr := a.Addrs()

	const msg = "config reload failed; the old config keeps serving"
	failed := func() []observer.LoggedEntry { return logs.FilterMessage(msg).All() }
	wantErr := path + ":10: upstreams.api.breaker.failure_rate"
	checkAttempt := func(n int, trigger string) {
		t.Helper()
		all := failed()
		if len(all) != n {
			t.Fatalf("after the %s attempt: %d %q lines, want %d: %v", trigger, len(all), msg, n, all)
		}
		last := all[n-1].ContextMap()
		if last["trigger"] != trigger || !strings.Contains(last["error"].(string), wantErr) {
			t.Errorf("%s attempt logged %v; want trigger %q and an error naming %q", trigger, last, trigger, wantErr)
		}
		if got := reloadFailures(t, a); got != float64(n) {
			t.Errorf("after the %s attempt: %g failed reloads counted, want %d", trigger, got, n)
		}
	}

	// 1. The file watch sees a broken file.
	writeConfig(t, path, "120")
	waitUntil(t, "the watch's reload failure", func() bool { return len(failed()) >= 1 })
	checkAttempt(1, "watch")

	// 2. SIGHUP re-reads the (still broken) file.
	hup <- syscall.SIGHUP
	waitUntil(t, "the signal's reload failure", func() bool { return len(failed()) >= 2 })
	checkAttempt(2, "signal")

	// 3. POST /reload answers 500 with the error, and logs it once.
	req, err := http.NewRequest(http.MethodPost, "http://"+adminAddr+"/reload", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(admin.HeaderAdmin, "1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusInternalServerError || !strings.Contains(string(body), wantErr) {
		t.Errorf("POST /reload: %d %s, want 500 naming %q", resp.StatusCode, body, wantErr)
	}
	checkAttempt(3, "admin")

	// The old config kept serving throughout.
	if got := a.Config().Upstreams["api"].Breaker.FailureRate; got != 50 {
		t.Errorf("failure_rate in effect: %g, want still 50", got)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
