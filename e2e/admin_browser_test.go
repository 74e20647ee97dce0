package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The admin API against web pages: a page the operator's browser opens (from any
// origin) must neither steer nor read the admin API, which has no token on loopback.

// chromium returns the path of Debian's chromium; the test fails without it, as it does
// without redis-server or promtool (.ci/run installs all three).
func chromium(t testing.TB) string {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium not found: apt-get install -y chromium")
	}
	return path
}

// startBrowser starts headless chromium on url with extra flags, its stdout to stdout,
// and returns a channel closed when it exits. It runs in its own process group so that its helper processes (zygote, renderers) are stopped with it when the
// test ends.
func startBrowser(t testing.TB, stdout io.Writer, url string, extra ...string) <-chan struct{} {
	t.Helper()
	args := append([]string{"--headless", "--no-sandbox", "--disable-gpu",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--no-first-run", "--disable-dev-shm-usage", "--disable-breakpad", "--disable-crash-reporter",
		"--user-data-dir=" + t.TempDir()}, extra...)
	cmd := exec.Command(chromium(t), append(args, url)...)
	cmd.Stdout, cmd.Stderr = stdout, io.Discard
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		select {
		case <-done:
			return // exited by itself (--dump-dom): its group is gone with it
		default:
		}
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})
	return done
}

// attackPage is a page on another origin that tries every way a web page can send a
// command to the admin API at %[1]s, each aimed at its own upstream so that a success
// shows which way worked, then POSTs what the browser said of each to its own /report.
const attackPage = `<!doctype html><html><body><script>
const admin = "http://%[1]s";
const results = {};
// frame submits a form into a hidden iframe and waits for the answer to load there.
function frame(action, enctype) {
  return new Promise(resolve => {
    const name = "sink" + Math.random().toString(36).slice(2);
    const f = document.createElement("iframe");
    f.name = name;
    f.onload = () => resolve();
    setTimeout(resolve, 5000);
    document.body.appendChild(f);
    const form = document.createElement("form");
    form.method = "POST"; form.action = admin + action; form.enctype = enctype; form.target = name;
    const i = document.createElement("input");
    i.name = "mode"; i.value = "forced_open";
    form.appendChild(i);
    document.body.appendChild(form);
    form.submit();
  });
}
const attempts = {
  fetch_nocors_query: () => fetch(admin + "/circuits/api/mode?mode=forced_open", {method: "POST", mode: "no-cors"}),
  fetch_nocors_text_body: () => fetch(admin + "/circuits/b/mode", {method: "POST", mode: "no-cors",
    headers: {"Content-Type": "text/plain"}, body: '{"mode":"forced_open"}'}),
  // In no-cors mode the browser drops the headers it would need a preflight for.
  fetch_nocors_with_headers: () => fetch(admin + "/circuits/c/open", {method: "POST", mode: "no-cors",
    headers: {"Content-Type": "application/json", "X-Fuse-Admin": "1"}, body: "{}"}),
  form_text_plain: () => frame("/circuits/d/open", "text/plain"),
  form_urlencoded: () => frame("/circuits/e/mode?mode=forced_open", "application/x-www-form-urlencoded"),
  form_multipart: () => frame("/circuits/f/open", "multipart/form-data"),
  beacon: async () => { if (!navigator.sendBeacon(admin + "/circuits/g/open", "x")) throw new Error("not queued"); },
  // A CORS request with the headers needs a preflight, which the API never grants.
  fetch_cors_json: () => fetch(admin + "/circuits/h/open", {method: "POST",
    headers: {"Content-Type": "application/json", "X-Fuse-Admin": "1"}, body: "{}"}),
  fetch_nocors_flush: () => fetch(admin + "/flush", {method: "POST", mode: "no-cors"}),
  fetch_nocors_reload: () => fetch(admin + "/reload", {method: "POST", mode: "no-cors"}),
};
(async () => {
  for (const [name, f] of Object.entries(attempts)) {
    try { await f(); results[name] = "sent"; } catch (e) { results[name] = "browser refused: " + e; }
  }
  await new Promise(r => setTimeout(r, 500)); // let the beacon go out
  await fetch("/report", {method: "POST", body: JSON.stringify(results)});
})();
</script></body></html>`

// attackUpstreams are the upstreams attackPage aims at, one per way.
var attackUpstreams = []string{upstream, "b", "c", "d", "e", "f", "g", "h"}

// TestAdminRefusesWebPages runs the real binary with no admin token on loopback and a
// real browser (headless chromium) on a page served from another origin that tries to
// steer the admin API every way a page can (fetch no-cors with a query, a text/plain
// body or non-simple headers, which no-cors drops; form posts of the three encodings;
// sendBeacon; a CORS fetch; flush and reload): every circuit stays as it was, and no
// command, flush or reload happened (log, reload metric). The browser then loads the admin API under a foreign name that
// resolves to 127.0.0.1, as after DNS rebinding: it gets a 403, not the circuits. Then
// curl-like requests show the rules one by one, and the CLI (and a plain JSON or
// Authorization request) still steers the circuits, so the refusals are the guard's.
func TestAdminRefusesWebPages(t *testing.T) {
	backend := startBackend(t)
	cfg := newFaultConfig(t, backend.URL())
	cfg.AdminAllowedHosts = []string{"fuseproxy-admin.test"}
	for _, name := range attackUpstreams[1:] {
		cfg.Upstreams = append(cfg.Upstreams, faultUpstream{Name: name, Target: backend.URL(),
			Timeout: 5 * time.Second, ConsecutiveFailures: 5, OpenDuration: time.Minute})
	}
	p := startProxy(t, cfg.YAML(t))
	admin := newAdminAPI(t, cfg.AdminListen)
	state := func() map[string]string {
		out := make(map[string]string)
		for _, name := range attackUpstreams {
			r := admin.Get("/circuits/" + name)
			var c struct{ State, Mode string }
			if r.Status != http.StatusOK || json.Unmarshal([]byte(r.Body), &c) != nil {
				t.Fatalf("GET /circuits/%s: %v", name, r)
			}
			out[name] = c.State + "/" + c.Mode
		}
		return out
	}
	before := state()

	// The attack, from http://127.0.0.1:OTHERPORT.
	reports := make(chan map[string]string, 1)
	var once sync.Once
	attacker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/":
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			fmt.Fprintf(w, attackPage, cfg.AdminListen)
		case "/report":
			var m map[string]string
			if err := json.NewDecoder(r.Body).Decode(&m); err == nil {
				once.Do(func() { reports <- m })
			}
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(attacker.Close)
	startBrowser(t, io.Discard, attacker.URL+"/")
	var report map[string]string
	select {
	case report = <-reports:
	case <-time.After(60 * time.Second):
		t.Fatal("the attack page did not report within 60s")
	}
	t.Logf("the browser on %s: %v", attacker.URL, report)
	// The ways that leave the browser did reach the API (fetch no-cors resolves only on
	// an answer), so the circuits below were really attacked.
	for _, name := range []string{"fetch_nocors_query", "fetch_nocors_text_body", "fetch_nocors_with_headers", "fetch_nocors_flush", "fetch_nocors_reload", "beacon"} {
		if report[name] != "sent" {
			t.Errorf("attack %s did not leave the browser: %q", name, report[name])
		}
	}
	if after := state(); fmt.Sprint(after) != fmt.Sprint(before) {
		for _, name := range attackUpstreams {
			if after[name] != before[name] {
				t.Errorf("circuit %s after the web page: %s, want %s untouched", name, after[name], before[name])
			}
		}
	}
	if ok, failed := admin.reloads(t); ok+failed != 0 {
		t.Errorf("the web page reloaded the config: %g reloads, %g failed", ok, failed)
	}
	for _, msg := range []string{"admin command", "admin flush", "config reloaded"} {
		if l := p.LogsWhere(msgPrefix(msg)); len(l) > 0 {
			t.Errorf("logged %q after the web page's requests only: %v", msg, l[0])
		}
	}

	// DNS rebinding: the browser reaches the API under the attacker's name.
	_, port, _ := net.SplitHostPort(cfg.AdminListen)
	rebound := browserDOM(t, "http://rebind.test:"+port+"/circuits",
		"--host-resolver-rules=MAP rebind.test 127.0.0.1")
	if strings.Contains(rebound, `"circuits"`) || !strings.Contains(rebound, "not a name of this admin API") {
		t.Errorf("GET /circuits as http://rebind.test:%s in the browser: the page shows\n%s\nwant the 403", port, rebound)
	}

	// curl: the rules one by one.
	base := "http://" + cfg.AdminListen
	for _, tc := range []struct {
		name, method, path, host string
		header                   map[string]string
		body                     string
		status                   int
	}{
		{"foreign Host reads circuits", "GET", "/circuits", "attacker.example:" + port, nil, "", 403},
		{"foreign Host reads metrics", "GET", "/metrics", "attacker.example", nil, "", 403},
		{"foreign Host reads readyz", "GET", "/readyz", "attacker.example", nil, "", 403},
		{"foreign Host commands", "POST", "/circuits/api/open", "attacker.example", map[string]string{"X-Fuse-Admin": "1"}, "", 403},
		{"foreign Host, healthz", "GET", "/healthz", "attacker.example", nil, "", 200},
		{"localhost", "GET", "/circuits", "localhost:" + port, nil, "", 200},
		{"IPv6 literal", "GET", "/metrics", "[::1]:" + port, nil, "", 200},
		{"another IP (a pod IP)", "GET", "/metrics", "10.1.2.3:8084", nil, "", 200},
		{"allowed_hosts name, another port", "GET", "/readyz", "FUSEPROXY-ADMIN.test.:80", nil, "", 200},
		{"text/plain command", "POST", "/circuits/api/open", "", map[string]string{"Content-Type": "text/plain"}, `{"mode":"forced_open"}`, 403},
		{"form command", "POST", "/circuits/api/mode", "", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, "mode=forced_open", 403},
		{"bare command", "POST", "/flush", "", nil, "", 403},
		{"same-site Sec-Fetch-Site (another port)", "POST", "/circuits/api/open", "", map[string]string{"X-Fuse-Admin": "1", "Sec-Fetch-Site": "same-site"}, "", 403},
		{"foreign Origin", "POST", "/circuits/api/open", "", map[string]string{"X-Fuse-Admin": "1", "Origin": attacker.URL}, "", 403},
		{"unknown path, bare", "POST", "/future-endpoint", "", nil, "", 403},
	} {
		req, err := http.NewRequest(tc.method, base+tc.path, strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		if tc.host != "" {
			req.Host = tc.host
		}
		for k, v := range tc.header {
			req.Header.Set(k, v)
		}
		r := do(admin.client, req)
		if r.Err != nil || r.Status != tc.status {
			t.Errorf("%s: %s %s (Host %q): %v, want %d", tc.name, tc.method, tc.path, tc.host, r, tc.status)
		}
	}
	if after := state(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("circuits after the refused curl requests: %v, want %v", after, before)
	}

	// The operator's ways still work: the CLI, a JSON body, the same origin.
	if code, out, errOut := runProcess(t, "", 30*time.Second, "circuits", "open", "b", "--admin", cfg.AdminListen); code != 0 {
		t.Fatalf("fuseproxy circuits open b: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut := runProcess(t, "", 30*time.Second, "circuits", "mode", "c", "metrics_only", "--admin", cfg.AdminListen); code != 0 {
		t.Fatalf("fuseproxy circuits mode c metrics_only: exit %d\n%s%s", code, out, errOut)
	}
	if r := admin.post(t, "/circuits/d/mode", `{"mode":"forced_open"}`); r.Status != http.StatusOK {
		t.Errorf("POST /circuits/d/mode with a JSON body: %v", r)
	}
	req, _ := http.NewRequest("POST", base+"/circuits/e/open", nil)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Origin", base)
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	if r := do(admin.client, req); r.Status != http.StatusOK {
		t.Errorf("POST /circuits/e/open from the API's own origin: %v", r)
	}
	want := maps.Clone(before)
	maps.Copy(want, map[string]string{"b": "open/normal", "c": "closed/metrics_only", "d": "closed/forced_open", "e": "open/normal"})
	if after := state(); fmt.Sprint(after) != fmt.Sprint(want) {
		t.Errorf("circuits after the operator's commands: %v, want %v", after, want)
	}
	if code, out, errOut := runProcess(t, "", 30*time.Second, "reload", "--admin", cfg.AdminListen); code != 0 {
		t.Fatalf("fuseproxy reload: exit %d\n%s%s", code, out, errOut)
	}
	if ok, _ := admin.reloads(t); ok != 1 {
		t.Errorf("after fuseproxy reload: %g reloads, want 1", ok)
	}
	if code, out, errOut := runProcess(t, "", 30*time.Second, "health", "--admin", cfg.AdminListen); code != 0 {
		t.Errorf("fuseproxy health: exit %d\n%s%s", code, out, errOut)
	}
}

// browserDOM loads url in headless chromium and returns the page's DOM as the browser
// shows it (--dump-dom), waiting at most 60 s.
func browserDOM(t testing.TB, url string, extra ...string) string {
	t.Helper()
	var out lineBuffer
	done := startBrowser(t, &out, url, append(extra, "--dump-dom")...)
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatalf("chromium --dump-dom %s did not exit within 60s", url)
	}
	return out.String()
}
