package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// The dashboard (/ui/ on the admin listener) in a real browser: headless chromium
// driven through the DevTools protocol against the real binary.

// dashboardRow is what the page shows of one circuit.
type dashboardRow struct {
	Found                                        bool
	Group                                        string // the group row above it, for a target
	Name, State, Mode, Rate, Window, Trips, Left string
	Trials, Agree, AgreeState                    string
	Bars                                         int
	Buttons                                      []string
	Target                                       bool
}

// dashboardRowJS returns the row of the circuit named by the JSON string %s.
const dashboardRowJS = `((name) => {
  const tr = [...document.querySelectorAll('#rows tr[data-circuit]')].find(r => r.dataset.circuit === name);
  if (!tr) return {Found: false};
  const text = (cls) => { const e = tr.querySelector('td.' + cls); return e ? e.textContent : ''; };
  let g = tr.previousElementSibling;
  while (g && !g.classList.contains('group') && g.classList.contains('target')) g = g.previousElementSibling;
  return {Found: true, Name: text('name'), State: text('state'), Mode: text('mode'), Rate: text('rate'),
    Window: text('window'), Trips: text('trips'), Left: text('left'), Trials: text('trials'),
    Agree: text('agree'), AgreeState: (tr.querySelector('td.agree') || {dataset: {}}).dataset.agree || '',
    Bars: tr.querySelectorAll('svg.spark rect').length,
    Buttons: [...tr.querySelectorAll('button[data-action]')].filter(b => b.offsetParent).map(b => b.dataset.action),
    Target: tr.classList.contains('target'),
    Group: g && g.classList.contains('group') ? g.dataset.group : ''};
})(%s)`

// row reads a circuit's row from the page.
func (p *browserPage) row(name string) dashboardRow {
	p.t.Helper()
	q, _ := json.Marshal(name)
	var r dashboardRow
	p.Eval(fmt.Sprintf(dashboardRowJS, q), &r)
	return r
}

// conn is the page's stream status (#conn's data-conn): connecting, live, reconnecting,
// token.
func (p *browserPage) conn() string {
	var s string
	p.Eval(`document.getElementById('conn').dataset.conn`, &s)
	return s
}

// waitRow polls the page (every 10 ms) until the circuit's row satisfies ok, and
// returns it with the time it took; it fails the test after timeout.
func (p *browserPage) waitRow(timeout time.Duration, name, what string, ok func(dashboardRow) bool) (dashboardRow, time.Duration) {
	p.t.Helper()
	start := time.Now()
	var r dashboardRow
	if !waitFor(timeout, 10*time.Millisecond, func() bool { r = p.row(name); return ok(r) }) {
		p.t.Fatalf("the page did not show %s %s within %v; it shows %+v (stream %s)", name, what, timeout, r, p.conn())
	}
	return r, time.Since(start)
}

// noProblems fails the test if the page reported an error other than those allowed.
func (p *browserPage) noProblems(when string, allowed ...string) {
	p.t.Helper()
next:
	for _, pr := range p.Problems() {
		for _, a := range allowed {
			if strings.Contains(pr, a) {
				continue next
			}
		}
		p.t.Errorf("%s: the page reported %s", when, pr)
	}
}

// waitMessage waits until the page's message line reads want (the answer to a command).
func (p *browserPage) waitMessage(timeout time.Duration, want string) {
	p.t.Helper()
	var msg string
	if !waitFor(timeout, 10*time.Millisecond, func() bool {
		p.Eval(`document.getElementById('message').textContent`, &msg)
		return msg == want
	}) {
		p.t.Errorf("the page's message: %q, want %q", msg, want)
	}
}

// adminCircuit reads GET /circuits/{name} from a replica's admin API.
func adminCircuit(t testing.TB, addr, token, name string) (c struct{ State, Mode string }) {
	t.Helper()
	r := faultAdmin(t, http.DefaultClient, addr, "GET", "/circuits/"+name, token, "")
	if r.Err != nil || r.Status != http.StatusOK || json.Unmarshal([]byte(r.Body), &c) != nil {
		t.Fatalf("GET /circuits/%s on %s: %v", name, addr, r)
	}
	return c
}

// TestDashboard loads the dashboard from a replica without an admin token: the page
// loads and goes live with no console error; a backend failure that trips the circuit
// shows it open in the page within 1 s; the page's "close" button closes it (no token
// needed); and circuit names reach the page as text, target circuits
// (UPSTREAM@HOST:PORT) grouped under their upstream.
func TestDashboard(t *testing.T) {
	chromium(t)
	backend := startBackend(t)
	cfg := newFaultConfig(t, backend.URL())
	cfg.Upstreams[0].ConsecutiveFailures, cfg.Upstreams[0].OpenDuration = 3, time.Minute
	p := startProxy(t, cfg.YAML(t))
	page := startPage(t, 1500, 600)
	page.Navigate("http://" + cfg.AdminListen + "/ui/")
	page.waitRow(10*time.Second, upstream, "closed and live", func(r dashboardRow) bool {
		return r.State == "closed" && r.Mode == "normal" && r.Trials == "0 / 1" && r.Agree != ""
	})
	if c := page.conn(); c != "live" {
		t.Fatalf("stream status %q, want live", c)
	}
	page.noProblems("after loading the page")

	// A backend failure trips the circuit; the page shows it open within 1 s of the
	// response that tripped it (the breaker counts the failure before the client gets it).
	backend.Set(t, "fail=on")
	for i := range 3 {
		if r := p.Get("/fail"); r.Err != nil || r.Status != http.StatusServiceUnavailable || r.Circuit != "" {
			t.Fatalf("failure %d: %v, want the backend's 503", i+1, r)
		}
	}
	tripped := time.Now()
	row, _ := page.waitRow(5*time.Second, upstream, "open", func(r dashboardRow) bool { return r.State == "open" })
	took := time.Since(tripped)
	t.Logf("the trip reached the page in %v: %+v", took.Round(time.Millisecond), row)
	if took > time.Second {
		t.Errorf("the page showed the circuit open %v after the trip, want within 1s", took)
	}
	if c := adminCircuit(t, cfg.AdminListen, "", upstream); c.State != "open" {
		t.Fatalf("admin API: %s is %s, want open", upstream, c.State)
	}
	if row.Trips != "1" || row.Left == "–" || !strings.HasSuffix(row.Left, "s") || row.Bars == 0 {
		t.Errorf("open row: %+v, want 1 trip, time left open and a sparkline", row)
	}
	if r := p.Get("/x"); !r.Rejected() {
		t.Errorf("the proxy while open: %v, want a rejection", r)
	}

	// The page's close button, without a token.
	backend.Set(t, "fail=off")
	page.Click(`tr[data-circuit="api"] button[data-action="close"]`)
	if !waitFor(5*time.Second, 10*time.Millisecond, func() bool { return adminCircuit(t, cfg.AdminListen, "", upstream).State == "closed" }) {
		t.Fatalf("the page's close button: %s is %+v, want closed", upstream, adminCircuit(t, cfg.AdminListen, "", upstream))
	}
	page.waitRow(5*time.Second, upstream, "closed again", func(r dashboardRow) bool { return r.State == "closed" })
	page.waitMessage(5*time.Second, "close api: done (replica), now closed/normal.")

	// Names as text and target circuits under their upstream: a frame rendered by the
	// page's own code (render), read back in the same task, before the next frame.
	var got struct {
		Order   []string
		Groups  []string
		Injects int
		Kept    bool
		Rows    []string
	}
	page.Eval(`(() => {
	  const c = (name, state) => ({name, state, mode: 'normal', counts: {requests: 0, failures: 0, slow: 0},
	    rates: {failure_rate: 0, slow_rate: 0}, trips: 0, trials_in_flight: 0, trial_slots: 1, history: []});
	  const frame = {replica: 'r', store: {driver: 'memory'}, time: new Date().toISOString(), circuits: [
	    c('zeta@10.0.0.2:80', 'closed'), c('api@10.0.0.1:80', 'open'), c('api', 'closed'),
	    c('orphan@h:1', 'closed'), c('<img src=x id=inj>', 'closed'), c('api@10.0.0.0:80', 'closed')]};
	  render(frame);
	  const before = [...document.querySelectorAll('#rows tr')];
	  render(frame); // the same rows, kept
	  const rows = [...document.querySelectorAll('#rows tr')];
	  return {Order: rows.map(r => r.dataset.circuit || ('group:' + r.dataset.group)),
	    Groups: rows.filter(r => r.classList.contains('target')).map(r => r.dataset.circuit),
	    Injects: document.querySelectorAll('#inj').length,
	    Kept: rows.length === before.length && rows.every((r, i) => r === before[i]),
	    Rows: rows.map(r => r.querySelector('td').textContent)};
	})()`, &got)
	wantOrder := "<img src=x id=inj>,api,api@10.0.0.0:80,api@10.0.0.1:80,group:orphan,orphan@h:1,group:zeta,zeta@10.0.0.2:80"
	if strings.Join(got.Order, ",") != wantOrder || got.Injects != 0 || got.Rows[0] != "<img src=x id=inj>" || !got.Kept {
		t.Errorf("rendered rows %q (first cells %q, %d injected elements, rows kept by a second render: %v), want %s, the name as text, the rows kept",
			got.Order, got.Rows, got.Injects, got.Kept, wantOrder)
	}
	// The next frame puts the real circuits back, and the others go.
	if !waitFor(5*time.Second, 10*time.Millisecond, func() bool {
		var n int
		page.Eval(`document.querySelectorAll('#rows tr').length`, &n)
		return n == 1
	}) {
		var rows []string
		page.Eval(`[...document.querySelectorAll('#rows tr')].map(r => r.dataset.circuit || r.dataset.group)`, &rows)
		t.Errorf("rows after the next frame: %q, want only %s", rows, upstream)
	}
	page.waitRow(5*time.Second, upstream, "back from the stream", func(r dashboardRow) bool { return r.State == "closed" && !r.Target })
	page.noProblems("at the end")

	// The page's open stream does not hold the shutdown up: it ends when the admin
	// server's shutdown begins, not at its 2 s deadline.
	start := time.Now()
	p.Signal(syscall.SIGTERM)
	if code, ok := p.Wait(10 * time.Second); !ok || code != 0 {
		t.Fatalf("SIGTERM with the dashboard open: exit %d (exited %v)", code, ok)
	}
	if took := time.Since(start); took > 1500*time.Millisecond {
		t.Errorf("SIGTERM with the dashboard open: stopped after %v, want well within the admin API's 2s shutdown deadline", took)
	}
}

// TestDashboardFleet runs three replicas on one redis-server with an admin token and
// drives the dashboard of the first: the page asks for the token, takes it, and its
// "open" button then forces the circuit open on every replica (each replica's own
// admin API says so, and each rejects); the page's mode control sets metrics_only
// fleet-wide. With FUSE_UPDATE_SCREENSHOT=1 it also runs a minute of mixed traffic and
// writes docs/dashboard.png.
func TestDashboardFleet(t *testing.T) {
	chromium(t)
	const token = "s3cret-dashboard"
	redis := redistest.Start(t)
	healthy, flaky := startBackend(t), startBackend(t)
	base := newFaultConfig(t, healthy.URL()).withRedis("r1", redis.URL())
	base.AdminToken, base.FlushInterval = token, 50*time.Millisecond
	base.Upstreams[0].ConsecutiveFailures, base.Upstreams[0].OpenDuration = 5, time.Minute
	for _, u := range []faultUpstream{
		{Name: "catalog", Target: healthy.URL(), ConsecutiveFailures: 5, OpenDuration: time.Minute},
		{Name: "checkout", Target: flaky.URL(), FailureRate: 50, MinimumRequests: 10, Window: 30 * time.Second, OpenDuration: 20 * time.Second},
		{Name: "search", Target: healthy.URL(), ConsecutiveFailures: 5, OpenDuration: time.Minute},
	} {
		u.Timeout = 5 * time.Second
		base.Upstreams = append(base.Upstreams, u)
		// Routes match in config order: before api's "/".
		base.Routes = append([]faultRoute{{Prefix: "/" + u.Name + "/", Upstream: u.Name}}, base.Routes...)
	}
	var replicas []*Proxy
	var admins []string
	for i, id := range []string{"r1", "r2", "r3"} {
		c := base
		if i > 0 {
			c = base.fresh(t, id)
		}
		replicas = append(replicas, startProxy(t, c.YAML(t)))
		admins = append(admins, c.AdminListen)
	}

	page := startPage(t, 1500, 600)
	page.Navigate("http://" + admins[0] + "/ui/")
	if !waitFor(10*time.Second, 10*time.Millisecond, func() bool { return page.conn() == "token" }) {
		t.Fatalf("without a token the page shows stream status %q, want token", page.conn())
	}
	page.Type("#token", token)
	page.Click("#token-save")
	page.waitRow(10*time.Second, upstream, "closed, live, agreeing with redis", func(r dashboardRow) bool {
		return r.State == "closed" && r.AgreeState == "yes"
	})
	// The token was asked for once (the 401 the browser logs); nothing else went wrong.
	page.noProblems("after entering the token", "status of 401")

	// The page's open button: every replica opens.
	page.Click(`tr[data-circuit="api"] button[data-action="open"]`)
	for i, addr := range admins {
		var c struct{ State, Mode string }
		if !waitFor(5*time.Second, 10*time.Millisecond, func() bool {
			c = adminCircuit(t, addr, token, upstream)
			return c.State == "open"
		}) {
			t.Fatalf("replica %s after the page's open button: %s is %+v, want open", replicas[i].ID, upstream, c)
		}
		if r := replicas[i].Get("/x"); !r.Rejected() {
			t.Errorf("replica %s after the page's open button: %v, want a rejection", replicas[i].ID, r)
		}
	}
	if before := healthy.Stats(t).Requests; before != 0 {
		t.Errorf("the healthy backend got %d requests for a circuit forced open", before)
	}
	page.waitMessage(5*time.Second, "open api: done (fleet), now open/normal.")
	page.waitRow(5*time.Second, upstream, "open and agreeing", func(r dashboardRow) bool {
		return r.State == "open" && r.AgreeState == "yes" && r.Trips == "1"
	})

	// The mode control: metrics_only for search, on every replica.
	page.Eval(`document.querySelector('tr[data-circuit="search"] select').value = 'metrics_only'`, nil)
	page.Click(`tr[data-circuit="search"] button[data-action="mode"]`)
	for i, addr := range admins {
		var c struct{ State, Mode string }
		if !waitFor(5*time.Second, 10*time.Millisecond, func() bool {
			c = adminCircuit(t, addr, token, "search")
			return c.Mode == "metrics_only"
		}) {
			t.Fatalf("replica %s after the page's mode control: search is %+v, want metrics_only", replicas[i].ID, c)
		}
	}
	page.waitRow(5*time.Second, "search", "metrics_only", func(r dashboardRow) bool { return r.Mode == "metrics_only" })
	page.noProblems("after the commands", "status of 401")

	if os.Getenv("FUSE_UPDATE_SCREENSHOT") == "" {
		return
	}
	// Mixed traffic for the sparklines (one sample per 5 s): catalog healthy, checkout
	// failing more and more until its failure rate trips it.
	var loads []*load
	for _, p := range replicas {
		loads = append(loads, startLoad(t, p, 1, "/catalog/item", 100*time.Millisecond, 3*time.Minute),
			startLoad(t, p, 1, "/checkout/cart", 150*time.Millisecond, 3*time.Minute),
			startLoad(t, p, 1, "/search/q", 200*time.Millisecond, 3*time.Minute))
	}
	for _, rate := range []string{"0", "0", "0.02", "0.05", "0.05", "0.1", "0.1", "0.2", "0.2", "0.3", "0.3", "0.4", "0.6", "0.8"} {
		flaky.Set(t, "fail=on&rate="+rate)
		time.Sleep(5 * time.Second) // pacing the picture's traffic, not synchronisation
	}
	page.waitRow(60*time.Second, "checkout", "open", func(r dashboardRow) bool { return r.State == "open" })
	time.Sleep(10 * time.Second) // a few samples of the open circuit (picture only)
	for _, l := range loads {
		l.Stop()
	}
	page.Eval(`document.getElementById('message').hidden = true`, nil)
	png := page.Screenshot(1600, 320)
	if err := os.WriteFile(filepath.Join("..", "docs", "dashboard.png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote docs/dashboard.png (%d bytes)", len(png))
	page.noProblems("after the traffic", "status of 401")
}

// TestDashboardSparklineGrows: after the first frame the stream sends only the samples
// taken since the previous frame (one every 5 s), and the page appends them: the
// sparkline gains a bar per sample instead of being replaced by the last one.
func TestDashboardSparklineGrows(t *testing.T) {
	chromium(t)
	backend := startBackend(t)
	cfg := newFaultConfig(t, backend.URL())
	startProxy(t, cfg.YAML(t))
	page := startPage(t, 1500, 600)
	page.Navigate("http://" + cfg.AdminListen + "/ui/")
	samples := func() int {
		var label string
		page.Eval(`(document.querySelector('tr[data-circuit="`+upstream+`"] svg.spark') || {getAttribute: () => ''}).getAttribute('aria-label') || ''`, &label)
		n, _ := strconv.Atoi(strings.Fields(label + " -1")[0])
		return n
	}
	if !waitFor(10*time.Second, 20*time.Millisecond, func() bool { return samples() >= 1 }) {
		t.Fatalf("no sample shown within 10 s: %d", samples())
	}
	first := samples()
	if !waitFor(20*time.Second, 100*time.Millisecond, func() bool { return samples() >= first+2 }) {
		t.Fatalf("the sparkline shows %d samples 20 s after it showed %d: want the new samples appended", samples(), first)
	}
	page.noProblems("after two new samples")
}
