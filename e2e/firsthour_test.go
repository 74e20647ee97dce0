package e2e

// The first hour, as README tells a newcomer to spend it: the demo (started and stopped
// as README says), the demo in a minute, two replicas on one Redis, and the log samples
// README shows, each checked against a real run.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// readmeBlock returns README's text between <!-- name:start --> and <!-- name:end -->.
func readmeBlock(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(moduleRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	start, end := "<!-- "+name+":start -->\n", "<!-- "+name+":end -->"
	s := string(b)
	i, j := strings.Index(s, start), strings.Index(s, end)
	if i < 0 || j < i {
		t.Fatalf("README.md lacks the %q ... %q markers", start, end)
	}
	return s[i+len(start) : j]
}

// readmeSection returns README's text from the heading to the next heading of any level.
func readmeSection(t testing.TB, heading string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(moduleRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "\n"+heading+"\n")
	if i < 0 {
		t.Fatalf("README.md has no heading %q", heading)
	}
	s = s[i+len(heading)+2:]
	if j := strings.Index(s, "\n#"); j >= 0 {
		s = s[:j]
	}
	return s
}

// allRefused reports whether nothing listens on any of addrs.
func allRefused(addrs ...string) bool {
	for _, a := range addrs {
		if !refused(a) {
			return false
		}
	}
	return true
}

// waitOK polls GET url until it answers 200 from the upstream.
func waitOK(t testing.TB, c *http.Client, url string, timeout time.Duration) {
	t.Helper()
	var r response
	if !waitFor(timeout, 50*time.Millisecond, func() bool { r = doGet(c, url); return r.OK() }) {
		t.Fatalf("GET %s: %v, want 200 within %v", url, r, timeout)
	}
}

// TestReadmeDemoGoRunStoppedByItsPID: `go run ./cmd/fuseproxy demo &` puts `go run` in
// the background, and `go run` does not pass SIGTERM on to the demo it runs. Killed by
// that PID (`kill $!`), go run exits at once; the demo, its child, notices and frees
// every port. (Before, the demo kept the proxy, admin and upstream ports.)
func TestReadmeDemoGoRunStoppedByItsPID(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: compiles the command with go run")
	}
	proxyAddr, adminAddr, upAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "run", "./cmd/fuseproxy", "demo",
		"-listen", proxyAddr, "-admin", adminAddr, "-upstream", upAddr)
	cmd.Dir = moduleRoot(t)
	cmd.Env = childEnv()
	var out lineBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// The demo, go run's child, shares the output pipe: do not wait for it to close.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill() // go run; the demo then stops with its parent
		<-done
		if !waitFor(10*time.Second, 50*time.Millisecond, func() bool { return allRefused(proxyAddr, adminAddr, upAddr) }) {
			t.Errorf("after the test, the demo still holds a port:\n%s", tail(out.String(), 20))
			// Leave nothing running: the demo printed its pid.
			var pid int
			if _, after, ok := strings.Cut(out.String(), "fuseproxy demo: pid "); ok {
				pid, _ = strconv.Atoi(strings.TrimRight(strings.Fields(after)[0], ";"))
			}
			if pid > 0 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})

	// -upstream moved the config's target along with the flaky upstream: 200, not 502.
	waitOK(t, newHTTPClient(t), "http://"+proxyAddr+"/demo/hello", 3*time.Minute)
	// README quotes the line that names the pid to kill.
	pidLine := regexp.MustCompile(`fuseproxy demo: pid (\d+); stop it with Ctrl-C or kill (\d+)`)
	if m := pidLine.FindStringSubmatch(out.String()); m == nil || m[1] != m[2] {
		t.Errorf("the demo did not print its pid as README quotes it:\n%s", out.String())
	} else if quoted := pidLine.FindString(readmeSection(t, "### The demo in a minute")); quoted == "" {
		t.Errorf("README's demo section does not quote the pid line %q", m[0])
	}

	// kill $! (SIGTERM to go run).
	stopped := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("go run did not exit on SIGTERM")
	}
	if !waitFor(10*time.Second, 20*time.Millisecond, func() bool { return allRefused(proxyAddr, adminAddr, upAddr) }) {
		t.Fatalf("10 s after kill of go run's pid, the demo still holds a port (proxy %t, admin %t, upstream %t refused):\n%s",
			refused(proxyAddr), refused(adminAddr), refused(upAddr), tail(out.String(), 20))
	}
	t.Logf("FIGURE demo go-run stop: every port free %v after SIGTERM to go run", time.Since(stopped).Round(time.Millisecond))
	if !strings.Contains(out.String(), "exited; stopping") || !strings.Contains(out.String(), `"stopped"`) && !strings.Contains(out.String(), "\tstopped\t") {
		t.Errorf("the demo's log does not say it stopped with its parent:\n%s", tail(out.String(), 10))
	}
}

// TestReadmeDemoInAMinute runs README's "The demo in a minute" against the demo binary
// (on free ports instead of 8080, 8081 and 8084), checks the transition line README shows
// against the demo's real one, and stops the demo as README says (`kill $!`).
func TestReadmeDemoInAMinute(t *testing.T) {
	minute := readmeSection(t, "### The demo in a minute")
	for _, want := range []string{
		"curl -i localhost:8080/demo/hello                         # 200 from the upstream",
		"curl 'localhost:8081/_flaky/set?fail=on'",
		"# 503 503 503 503 503 503",
		"# X-Fuse-Circuit: open, Retry-After: 9-11",
		"curl 'localhost:8081/_flaky/set?fail=off'",
		"sleep 11; curl -i localhost:8080/demo/hello               # half-open: a trial reaches it, 200",
		"curl -i localhost:8080/demo/hello                         # closed again, 200",
		"go build -o fuseproxy ./cmd/fuseproxy\n    ./fuseproxy demo &\n    kill $!",
	} {
		if !strings.Contains(minute, want) {
			t.Errorf("README's demo in a minute lacks %q, which this test runs", want)
		}
	}
	proxyAddr, adminAddr, upAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	p := startProcess(t, "fuseproxy demo", moduleRoot(t), nil, "demo", "-listen", proxyAddr, "-admin", adminAddr, "-upstream", upAddr)
	c := newHTTPClient(t)
	hello := "http://" + proxyAddr + "/demo/hello"
	waitOK(t, c, hello, 30*time.Second)
	if r := doGet(c, "http://"+upAddr+"/_flaky/set?fail=on"); r.Status != http.StatusOK {
		t.Fatalf("fail=on: %v", r)
	}
	var got []string
	for i := range 6 {
		r := doGet(c, hello)
		got = append(got, strconv.Itoa(r.Status))
		if r.Status != http.StatusServiceUnavailable || (i < 5) != (r.Circuit == "") {
			t.Errorf("request %d: %v; want the upstream's 503 for the first five, the circuit's from the sixth", i+1, r)
		}
	}
	if s := strings.Join(got, " "); s != "503 503 503 503 503 503" {
		t.Errorf("six requests: %s", s)
	}
	r := doGet(c, hello)
	if ra, _ := strconv.Atoi(r.RetryAfter); r.Status != http.StatusServiceUnavailable || r.Circuit != "open" || ra < 9 || ra > 11 {
		t.Errorf("the next request: %v; want 503 with X-Fuse-Circuit: open and Retry-After 9-11", r)
	}

	// The transition line README shows is the shape of the real one.
	var line string
	if !waitFor(5*time.Second, 10*time.Millisecond, func() bool {
		for l := range strings.Lines(p.Stderr()) {
			if strings.Contains(l, "\tcircuit transition\t") {
				line = strings.TrimRight(l, "\n")
				return true
			}
		}
		return false
	}) {
		t.Fatalf("no transition line in the demo's log:\n%s", p.Stderr())
	}
	sample := strings.TrimSpace(readmeBlock(t, "demo-log"))
	checkConsoleSample(t, sample, line)

	doGet(c, "http://"+upAddr+"/_flaky/set?fail=off")
	// sleep 11, polled: the first request the circuit admits is a trial that succeeds.
	var trial response
	start := time.Now()
	if !waitFor(15*time.Second, 100*time.Millisecond, func() bool { trial = doGet(c, hello); return trial.Circuit == "" }) {
		t.Fatalf("the circuit did not let a trial through within 15 s: %v", trial)
	}
	if !trial.OK() {
		t.Errorf("the first trial: %v, want 200 from the upstream", trial)
	}
	if r := doGet(c, hello); !r.OK() {
		t.Errorf("the second request after the open period: %v, want 200", r)
	}
	if st := newAdminAPI(t, adminAddr).Circuit(t, "demo").State; st != "closed" {
		t.Errorf("after two successful trials the circuit is %s, want closed", st)
	}
	t.Logf("FIGURE demo in a minute: trial admitted %v after fail=off", time.Since(start).Round(time.Millisecond))

	// kill $!
	p.Signal(syscall.SIGTERM)
	if code, ok := p.Wait(10 * time.Second); !ok || code != 0 {
		t.Fatalf("demo after SIGTERM: exit %d (exited %t), want 0", code, ok)
	}
	if !allRefused(proxyAddr, adminAddr, upAddr) {
		t.Errorf("the demo exited but a port is still held")
	}
}

// checkConsoleSample compares a console log line README shows with a real one: the same
// level and message, the same fields in the same order, and the same values for the
// fields that do not depend on the moment.
func checkConsoleSample(t testing.TB, sample, real string) {
	t.Helper()
	split := func(s string) (level, msg, fields string) {
		f := strings.SplitN(s, "\t", 4)
		if len(f) != 4 {
			t.Fatalf("not a console log line (time, level, message, fields): %q", s)
		}
		return f[1], f[2], f[3]
	}
	sl, sm, sf := split(sample)
	rl, rm, rf := split(real)
	if sl != rl || sm != rm {
		t.Errorf("README's line is %s %q, the real one %s %q", sl, sm, rl, rm)
	}
	checkJSONSample(t, "README's demo log line", sf, rf, "replica")
}

// checkJSONSample compares a JSON object README shows with a real one: the same keys in
// the same order, equal strings and booleans (except the keys in vary), and numbers that
// are both zero or both not.
func checkJSONSample(t testing.TB, what, sample, real string, vary ...string) {
	t.Helper()
	sk, sv := orderedJSON(t, sample)
	rk, rv := orderedJSON(t, real)
	if strings.Join(sk, ",") != strings.Join(rk, ",") {
		t.Errorf("%s has the fields\n  %s\nthe real line\n  %s\nreal line: %s", what, strings.Join(sk, ","), strings.Join(rk, ","), real)
		return
	}
	for _, k := range sk {
		if slices.Contains(vary, k) || k == "ts" || k == "time" {
			continue
		}
		switch s := sv[k].(type) {
		case json.Number:
			r, _ := rv[k].(json.Number)
			if (s.String() == "0") != (r.String() == "0") {
				t.Errorf("%s: %s is %s, the real line's %s (zero in one, not the other)\nreal line: %s", what, k, s, r, real)
			}
		default:
			if fmt.Sprint(s) != fmt.Sprint(rv[k]) {
				t.Errorf("%s: %s is %v, the real line's %v\nreal line: %s", what, k, s, rv[k], real)
			}
		}
	}
}

// orderedJSON returns the top-level keys of a JSON object in order, and its values.
func orderedJSON(t testing.TB, s string) ([]string, map[string]any) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("not a JSON object: %q", s)
	}
	var keys []string
	vals := map[string]any{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		k := tok.(string)
		var v any
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		keys = append(keys, k)
		vals[k] = v
	}
	return keys, vals
}

// twoReplicasRecipe is README's "Two replicas on your machine", as this test runs it.
const twoReplicasRecipe = "```\n" + `redis-server --port 6390 --save '' &
go build -o fuseproxy ./cmd/fuseproxy
export FUSE_STORE=cache FUSE_REDIS_URL=redis://127.0.0.1:6390/0
FUSE_REPLICA_ID=a ./fuseproxy demo &
FUSE_REPLICA_ID=b ./fuseproxy demo -flaky=false -listen :8082 -admin 127.0.0.1:8085 &
curl 'localhost:8081/_flaky/set?fail=on'
for i in $(seq 5); do curl -s -o /dev/null localhost:8080/demo/hello; done
sleep 1; curl -si localhost:8082/demo/hello | grep X-Fuse-Circuit
./fuseproxy circuits list --admin 127.0.0.1:8085
kill %3 %2 %1
` + "```\n"

// TestReadmeTwoReplicasOnOneRedis runs README's two-replica recipe (its own redis-server
// and free ports instead of 6390, 8080-8082, 8084 and 8085; JSON logs, to check README's
// transition samples against them): five failures through replica a open the circuit,
// replica b, which sent nothing, rejects; then a dry run in metrics_only mode. The
// transition lines README shows are checked against b's real ones.
func TestReadmeTwoReplicasOnOneRedis(t *testing.T) {
	if got := readmeBlock(t, "two-replicas"); got != twoReplicasRecipe {
		t.Fatalf("README's two-replica recipe is not the one this test runs:\n%s\nwant:\n%s", got, twoReplicasRecipe)
	}
	redis := redistest.Start(t)
	env := func(id string) []string {
		return []string{"FUSE_STORE=cache", "FUSE_REDIS_URL=" + redis.URL(), "FUSE_REPLICA_ID=" + id}
	}
	pa, aa, up := freeAddr(t), freeAddr(t), freeAddr(t)
	pb, ab := freeAddr(t), freeAddr(t)
	root := moduleRoot(t)
	a := startProcess(t, "demo a", root, env("a"), "demo", "-listen", pa, "-admin", aa, "-upstream", up, "-log-format", "json")
	b := startProcess(t, "demo b", root, env("b"), "demo", "-flaky=false", "-listen", pb, "-admin", ab, "-upstream", up, "-log-format", "json")
	c := newHTTPClient(t)
	// Ready as the recipe finds them: asked of their admin APIs, with no request through
	// either proxy before the recipe's own (a success of b's that reached Redis after
	// a's first failures would end the fleet's run of consecutive failures, a race the
	// recipe does not have).
	for _, admin := range []string{aa, ab} {
		if !waitFor(30*time.Second, 50*time.Millisecond, func() bool { return doGet(c, "http://"+admin+"/readyz").Status == http.StatusOK }) {
			t.Fatalf("%s/readyz: not ready within 30s", admin)
		}
	}

	doGet(c, "http://"+up+"/_flaky/set?fail=on")
	failThroughA := func() {
		t.Helper()
		for i := range 5 {
			if r := doGet(c, "http://"+pa+"/demo/hello"); r.Status != http.StatusServiceUnavailable || r.Circuit != "" {
				t.Fatalf("request %d through a: %v, want the upstream's 503", i+1, r)
			}
		}
	}
	failThroughA()
	// sleep 1: within it, b has adopted the open circuit (asked of its admin API, so that
	// b itself sends no request before its one curl).
	adminB, opened := newAdminAPI(t, ab), time.Now()
	if !waitFor(time.Second, 5*time.Millisecond, func() bool { return adminB.Circuit(t, "demo").State == "open" }) {
		t.Fatalf("replica b: the circuit is %s 1 s after five failures through a, want open", adminB.Circuit(t, "demo").State)
	}
	t.Logf("FIGURE two replicas: b open %v after a's fifth failure", time.Since(opened).Round(time.Millisecond))
	if r := doGet(c, "http://"+pb+"/demo/hello"); r.Circuit != "open" || r.Status != http.StatusServiceUnavailable {
		t.Errorf("replica b: %v, want 503 with X-Fuse-Circuit: open", r)
	}
	code, out, errs := runProcess(t, "", 30*time.Second, "circuits", "list", "--admin", ab)
	if code != 0 || !strings.Contains(out, "demo") || !containsRow(out, "demo", "open", "shared") {
		t.Errorf("circuits list on b: exit %d, output\n%s%s\nwant demo open, source shared", code, out, errs)
	}

	// A dry run: reset, metrics_only, five failures: the circuit "opens" and admits.
	for _, args := range [][]string{{"reset", "demo"}, {"mode", "demo", "metrics_only"}} {
		if code, out, errs := runProcess(t, "", 30*time.Second, append(append([]string{"circuits"}, args...), "--admin", aa)...); code != 0 {
			t.Fatalf("circuits %v: exit %d: %s%s", args, code, out, errs)
		}
	}
	failThroughA()
	transitions := func(p *process) []string {
		var out []string
		for l := range strings.Lines(p.Stderr()) {
			if strings.Contains(l, `"msg":"circuit transition"`) {
				out = append(out, strings.TrimSpace(l))
			}
		}
		return out
	}
	if !waitFor(5*time.Second, 10*time.Millisecond, func() bool {
		for _, l := range transitions(b) {
			if strings.Contains(l, `"dry_run":true`) {
				return true
			}
		}
		return false
	}) {
		t.Fatalf("replica b logged no dry-run transition:\n%s", strings.Join(transitions(b), "\n"))
	}
	real := transitions(b)
	for _, l := range real {
		t.Logf("replica b: %s", l)
	}

	// README's samples, each against b's real line with the same from, to and mode.
	events := readmeSection(t, "### Transition events")
	var samples int
	for l := range strings.Lines(events) {
		l = strings.TrimSpace(l)
		if !strings.HasPrefix(l, `{"level"`) {
			continue
		}
		samples++
		_, sv := orderedJSON(t, l)
		var match string
		for _, rl := range real {
			_, rv := orderedJSON(t, rl)
			if rv["from"] == sv["from"] && rv["to"] == sv["to"] && rv["mode"] == sv["mode"] {
				match = rl
			}
		}
		if match == "" {
			t.Errorf("README's sample %s: replica b logged no transition %v -> %v in mode %v", l, sv["from"], sv["to"], sv["mode"])
			continue
		}
		// The counts depend on when b read them (a flush reply or the pub/sub message).
		checkJSONSample(t, "README's transition sample", l, match, "requests", "failures", "slow", "failure_rate", "consecutive")
	}
	if samples < 2 {
		t.Errorf("README's transition events show %d log samples, want the opening and the dry run", samples)
	}

	// kill %3 %2 %1
	for _, p := range []*process{b, a} {
		p.Signal(syscall.SIGTERM)
		if code, ok := p.Wait(10 * time.Second); !ok || code != 0 {
			t.Fatalf("%s after SIGTERM: exit %d (exited %t), want 0", p.name, code, ok)
		}
	}
	if !allRefused(pa, aa, up, pb, ab) {
		t.Errorf("the demos exited but a port is still held")
	}
}

// containsRow reports whether a line of a table starts with first and holds every word.
func containsRow(table, first string, words ...string) bool {
	for l := range strings.Lines(table) {
		f := strings.Fields(l)
		if len(f) == 0 || f[0] != first {
			continue
		}
		ok := true
		for _, w := range words {
			ok = ok && slices.Contains(f, w)
		}
		if ok {
			return true
		}
	}
	return false
}

// TestReadmePrerequisitesNameEveryTool: every program a test looks up on PATH
// (exec.LookPath) is named in README's test prerequisites, with the packages to install;
// docker-compose was once left out.
func TestReadmePrerequisitesNameEveryTool(t *testing.T) {
	root := moduleRoot(t)
	b, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	i := strings.Index(readme, "Run every test")
	j := strings.Index(readme, "go test -race -count=1 ./...")
	if i < 0 || j < i {
		t.Fatal("README.md: no \"Run every test\" paragraph before its test command")
	}
	prereq := readme[i:j]
	lookPath := regexp.MustCompile(`exec\.LookPath\("([^"]+)"\)`)
	tools := map[string]string{} // tool -> a file that looks it up
	err = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && strings.HasPrefix(d.Name(), ".") && path != root {
			return filepath.SkipDir
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range lookPath.FindAllStringSubmatch(string(src), -1) {
			tools[m[1]], _ = filepath.Rel(root, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(tools) < 3 {
		t.Fatalf("found only %v looked up on PATH: the search is broken", tools)
	}
	for tool, file := range tools {
		if !strings.Contains(prereq, "`"+tool+"`") {
			t.Errorf("%s looks up %s on PATH, but README's test prerequisites do not name `%s`:\n%s", file, tool, tool, prereq)
		}
	}
	for _, pkg := range []string{"redis-server", "prometheus", "docker-compose", "chromium", "postgresql"} {
		if !strings.Contains(prereq, pkg) {
			t.Errorf("README's apt-get line lacks the package %s", pkg)
		}
	}
}

// TestDemoLogsUnreachableUpstream: a demo whose upstream is not there (here
// -flaky=false with nothing at -upstream) answers 502, and says why in its log at a
// level a newcomer sees: one warn line, however many requests fail within 10 s.
func TestDemoLogsUnreachableUpstream(t *testing.T) {
	proxyAddr, adminAddr, upAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	p := startProcess(t, "fuseproxy demo", moduleRoot(t), nil, "demo", "-flaky=false",
		"-listen", proxyAddr, "-admin", adminAddr, "-upstream", upAddr)
	c := newHTTPClient(t)
	var r response
	if !waitFor(30*time.Second, 50*time.Millisecond, func() bool { r = doGet(c, "http://"+proxyAddr+"/demo/hello"); return r.Err == nil }) {
		t.Fatalf("the demo did not answer: %v", r)
	}
	for range 3 {
		doGet(c, "http://"+proxyAddr+"/demo/hello")
	}
	if r.Status != http.StatusBadGateway {
		t.Errorf("first request: %v, want 502", r)
	}
	warns := func() int { return strings.Count(p.Stderr(), "\tWARN\tupstream request failed\t") }
	if !waitFor(5*time.Second, 10*time.Millisecond, func() bool { return warns() > 0 }) {
		t.Fatalf("no warn line for the unreachable upstream:\n%s", p.Stderr())
	}
	if n := warns(); n != 1 || !strings.Contains(p.Stderr(), upAddr) {
		t.Errorf("%d warn lines for 4 failures within 10 s, want 1 naming %s:\n%s", n, upAddr, p.Stderr())
	}
}
