package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestOpsReloadUnderLoad: a config file changed under steady load is picked up by the
// file watch (serve's default -watch 1s) without a single failed request and without
// resetting an open circuit; a broken file changes nothing but is logged with file:line
// and counted as a failed reload; SIGHUP and `fuseproxy reload` reload too.
func TestOpsReloadUnderLoad(t *testing.T) {
	const workers = 4
	healthy := startBackend(t)
	failing := startBackend(t)
	failing.Set(t, "fail=on")
	cfg := newOpsConfig(t, []opsUpstream{
		{Name: "api", Target: healthy.URL(), ConsecutiveFailures: 5, FailureRate: 50},
		{Name: "down", Target: failing.URL(), ConsecutiveFailures: 3, OpenDuration: time.Minute},
	}, []opsRoute{{"/down/", "down"}, {"/", "api"}})
	p := startProxy(t, cfg.YAML(t))
	path := p.configPath()
	adm := newAdminAPI(t, cfg.AdminListen)

	// The second upstream's circuit is open (failures tripped it) for the whole test.
	for i := range 3 {
		if r := p.Get("/down/x"); r.Err != nil || r.Status != http.StatusServiceUnavailable || r.Circuit != "" {
			t.Fatalf("failing request %d to down: got %v, want the backend's own 503", i+1, r)
		}
	}
	p.WaitTransitions(t, 5*time.Second, "down", "open", 1)
	down := adm.Circuit(t, "down")
	if down.State != "open" || down.Generation == 0 {
		t.Fatalf("down after tripping: state %s generation %d, want open with a generation", down.State, down.Generation)
	}
	assertStillOpen := func(when string) {
		t.Helper()
		c := adm.Circuit(t, "down")
		if c.State != "open" || c.Generation != down.Generation {
			t.Fatalf("%s: down is %s generation %d, want still open, generation %d", when, c.State, c.Generation, down.Generation)
		}
		assertRejection(t, "down "+when, p.Get("/down/y"), "open")
	}
	settingsOf := func(name string) (int, float64) {
		c := adm.Circuit(t, name)
		return c.Settings.ConsecutiveFailures, c.Settings.FailureRate
	}
	if cf, fr := settingsOf("api"); cf != 5 || fr != 50 {
		t.Fatalf("api settings at start: consecutive_failures %d failure_rate %g, want 5 and 50", cf, fr)
	}

	ld := startLoad(t, p, workers, "/load", 2*time.Millisecond, 60*time.Second)
	if !waitFor(10*time.Second, 5*time.Millisecond, func() bool { return ld.Count() >= 100 }) {
		t.Fatalf("load: only %d responses in 10s", ld.Count())
	}
	loadStart := time.Now()

	// 1. A valid change, saved like an editor saves: the file watch applies it.
	cfg.upstream(t, "api").ConsecutiveFailures, cfg.upstream(t, "api").FailureRate = 7, 60
	cfg.upstream(t, "down").ConsecutiveFailures = 4
	written := time.Now()
	replaceFile(t, path, cfg.YAML(t))
	if !waitFor(10*time.Second, 10*time.Millisecond, func() bool { cf, fr := settingsOf("api"); return cf == 7 && fr == 60 }) {
		cf, fr := settingsOf("api")
		t.Fatalf("api settings 10s after the file changed: consecutive_failures %d failure_rate %g, want 7 and 60", cf, fr)
	}
	applied := time.Since(written)
	if cf, _ := settingsOf("down"); cf != 4 {
		t.Errorf("down consecutive_failures after the reload: %d, want 4", cf)
	}
	assertStillOpen("after the watched reload")
	if s, f := adm.reloads(t); s != 1 || f != 0 {
		t.Errorf("reloads after the watched change: success %g failure %g, want 1 and 0", s, f)
	}

	// 2. A broken file: the old config keeps serving; the error names file, line, field.
	badCfg := cfg
	badCfg.Upstreams = append([]opsUpstream(nil), cfg.Upstreams...)
	badCfg.upstream(t, "api").FailureRate = 120
	bad := badCfg.YAML(t)
	wantErr := fmt.Sprintf("%s:%d: upstreams.api.breaker.failure_rate", path, lineOf(bad, "failure_rate: 120"))
	replaceFile(t, path, bad)
	failed := func(l logLine) bool {
		return l.Msg() == "config reload failed; the old config keeps serving" && strings.Contains(l.Str("error"), wantErr)
	}
	l := p.WaitLog(t, 10*time.Second, "about the broken file", failed)
	t.Logf("logged: %s", l.Str("error"))
	if !waitFor(5*time.Second, 10*time.Millisecond, func() bool { _, f := adm.reloads(t); return f == 1 }) {
		s, f := adm.reloads(t)
		t.Fatalf("reloads after the broken file: success %g failure %g, want failure 1", s, f)
	}
	if cf, fr := settingsOf("api"); cf != 7 || fr != 60 {
		t.Errorf("api settings after the broken file: %d and %g, want still 7 and 60", cf, fr)
	}
	assertStillOpen("after the broken file")

	// 3. SIGHUP re-reads the (still broken) file: one more failure, nothing changes.
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if !waitFor(5*time.Second, 10*time.Millisecond, func() bool { _, f := adm.reloads(t); return f == 2 }) {
		t.Fatalf("SIGHUP with the broken file: failure count did not reach 2")
	}

	// 4. `fuseproxy reload` says why, and exits 1.
	adminEnv := []string{"FUSE_ADMIN_URL=http://" + cfg.AdminListen}
	rp := startProcess(t, "fuseproxy reload (broken)", "", adminEnv, "reload")
	if code, ok := rp.Wait(30 * time.Second); !ok || code != 1 || !strings.Contains(rp.Stderr(), wantErr) {
		t.Errorf("fuseproxy reload with a broken file: exit %d (exited %t), stderr %q; want 1 and %q", code, ok, rp.Stderr(), wantErr)
	}
	if _, f := adm.reloads(t); f != 3 {
		t.Errorf("failure count after `fuseproxy reload`: %g, want 3", f)
	}

	// 5. Fixed: the watch applies it; then SIGHUP and `fuseproxy reload` succeed too.
	cfg.upstream(t, "api").ConsecutiveFailures = 9
	replaceFile(t, path, cfg.YAML(t))
	if !waitFor(10*time.Second, 10*time.Millisecond, func() bool { cf, _ := settingsOf("api"); return cf == 9 }) {
		t.Fatalf("api consecutive_failures after the fix: %d, want 9", adm.Circuit(t, "api").Settings.ConsecutiveFailures)
	}
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if !waitFor(5*time.Second, 10*time.Millisecond, func() bool { s, _ := adm.reloads(t); return s == 3 }) {
		s, f := adm.reloads(t)
		t.Fatalf("after the fix and SIGHUP: success %g failure %g, want success 3", s, f)
	}
	rp = startProcess(t, "fuseproxy reload (fixed)", "", adminEnv, "reload")
	want := "reloaded " + path + ": 2 upstreams"
	if code, ok := rp.Wait(30 * time.Second); !ok || code != 0 || !strings.Contains(rp.stdout.String(), want) {
		t.Errorf("fuseproxy reload: exit %d (exited %t), stdout %q, stderr %q; want 0 and %q", code, ok, rp.stdout.String(), rp.Stderr(), want)
	}
	if s, f := adm.reloads(t); s != 4 || f != 3 {
		t.Errorf("reloads at the end: success %g failure %g, want 4 and 3", s, f)
	}
	assertStillOpen("after every reload")

	// Every request under load, through four reloads and three failed ones, got the
	// healthy backend's 200.
	rs := ld.Stop()
	loadFor := time.Since(loadStart)
	c := count(rs)
	if c.OK != len(rs) {
		t.Errorf("under load through the reloads: %v; want all %d to be 200 from the backend", c, len(rs))
	}
	var lat []time.Duration
	during := 0
	for _, r := range rs {
		lat = append(lat, r.At.Sub(r.Sent))
		if !r.Sent.Before(written) {
			during++
		}
	}
	if during < 100 {
		t.Errorf("only %d requests were sent after the first change: the load did not overlap the reloads", during)
	}
	if got := healthy.Stats(t).Requests; got != int64(len(rs)) {
		t.Errorf("the backend counted %d requests, the clients got %d answers", got, len(rs))
	}
	// Requests in flight at the moment each reload was applied (by the log's timestamp).
	var atReload []int
	for _, l := range p.LogsWhere(func(l logLine) bool { return l.Msg() == "config reloaded" }) {
		ts, err := time.Parse("2006-01-02T15:04:05.000Z0700", l.Str("ts"))
		if err != nil {
			t.Errorf("log time %q: %v", l.Str("ts"), err)
			continue
		}
		n := 0
		for _, r := range rs {
			if !r.Sent.After(ts) && !r.At.Before(ts) {
				n++
			}
		}
		atReload = append(atReload, n)
	}
	report(t, "latency_under_reloads", lat, map[string]any{
		"requests": len(rs), "ok": c.OK, "after_first_change": during, "workers": workers,
		"load_seconds": loadFor.Round(time.Millisecond).Seconds(), "watch_applied_ms": applied.Milliseconds(),
		"in_flight_at_each_reload": atReload,
	})
}
