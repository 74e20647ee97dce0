package e2e

// The operator's view (issue #17): the Grafana dashboard's queries and the alert rules'
// series against a real Prometheus scraping a real fuseproxy, the rules through promtool,
// and the access log written by the real binary (README's sample line included).

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tool returns the path of a Prometheus binary; the test fails without it, as it does
// without redis-server or chromium (README's prerequisites; .ci/run installs them).
func tool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: apt-get install -y prometheus", name)
	}
	return path
}

// TestPrometheusRules checks examples/prometheus/alerts.yml with promtool and runs its
// unit tests (alerts_test.yml).
func TestPrometheusRules(t *testing.T) {
	promtool := tool(t, "promtool")
	dir := filepath.Join("..", "examples", "prometheus")
	for _, args := range [][]string{{"check", "rules", "alerts.yml"}, {"test", "rules", "alerts_test.yml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// dashboardQueries returns every PromQL expression of a Grafana dashboard (the "expr" of
// every target, in rows too) and the metric of every label_values() variable.
func dashboardQueries(t *testing.T, path string) (exprs []string, variables []string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if s, ok := x.(string); ok && k == "expr" {
					exprs = append(exprs, s)
				}
				if s, ok := x.(string); ok && k == "definition" {
					variables = append(variables, s)
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(doc)
	slices.Sort(exprs)
	return slices.Compact(exprs), variables
}

// grafanaVars replaces the dashboard's Grafana variables with what Grafana would send.
var grafanaVars = strings.NewReplacer("$__rate_interval", "1m", "$__interval", "15s", "$__range", "5m",
	`"$upstream"`, `".*"`, "${upstream}", ".*")

// ruleSeries returns the fuseproxy metric names each alert rule reads.
func ruleSeries(t *testing.T, path string) map[string][]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	var alert string
	inExpr := false
	metric := regexp.MustCompile(`\bfuseproxy_[a-z_]+`)
	for line := range strings.Lines(string(b)) {
		trim := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(trim, "- alert:"):
			alert, inExpr = strings.TrimSpace(strings.TrimPrefix(trim, "- alert:")), false
		case strings.HasPrefix(trim, "expr:"):
			inExpr = true
		case strings.HasPrefix(trim, "for:"), strings.HasPrefix(trim, "labels:"), strings.HasPrefix(trim, "annotations:"):
			inExpr = false
		}
		if inExpr && alert != "" && !strings.HasPrefix(trim, "#") {
			out[alert] = append(out[alert], metric.FindAllString(line, -1)...)
		}
	}
	for alert, series := range out {
		slices.Sort(series)
		out[alert] = slices.Compact(series)
	}
	return out
}

// promQuery runs an instant query and returns the number of results (vector or matrix
// elements; 1 for a scalar).
func promQuery(c *http.Client, base, q string) (int, error) {
	res, err := c.Get(base + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(res.Body).Decode(&body); err != nil {
		return 0, err
	}
	if body.Status != "success" {
		return 0, fmt.Errorf("%s: %s", body.Status, body.Error)
	}
	if body.Data.ResultType == "scalar" {
		return 1, nil
	}
	var results []json.RawMessage
	if err := json.Unmarshal(body.Data.Result, &results); err != nil {
		return 0, err
	}
	return len(results), nil
}

// TestGrafanaDashboardQueries starts a real fuseproxy with a healthy upstream (with
// outlier detection, so its target's ejection series exist) and a failing one (whose
// circuit opens), a real Prometheus scraping its /metrics every second,
// then runs every PromQL expression of examples/grafana/fuseproxy.json (read from the
// JSON) and requires each to return data; the dashboard's variables and every series the
// alert rules read must exist too.
func TestGrafanaDashboardQueries(t *testing.T) {
	prometheus := tool(t, "prometheus")
	exprs, variables := dashboardQueries(t, filepath.Join("..", "examples", "grafana", "fuseproxy.json"))
	if len(exprs) < 20 {
		t.Fatalf("only %d queries found in the dashboard", len(exprs))
	}
	healthy, failing := startBackend(t), startBackend(t)
	failing.Set(t, "fail=on")
	admin := freeAddr(t)
	p := startProxy(t, `
listen: `+freeAddr(t)+`
admin: {listen: `+admin+`}
store: {replica_id: prom}
upstreams:
  api:
    targets: ["`+healthy.URL()+`", "`+strings.Replace(healthy.URL(), "127.0.0.1", "localhost", 1)+`"]
    outlier_detection: {enabled: true} # two targets: each has a circuit
  flaky:
    targets: ["`+failing.URL()+`"]
    breaker: {consecutive_failures: 3, open_duration: 5m}
routes:
  - {path_prefix: /flaky, upstream: flaky}
  - {path_prefix: /, upstream: api}
`)
	for range 5 {
		p.Get("/flaky/x")
		p.Get("/a")
	}
	if r := p.Get("/flaky/x"); !r.Rejected() {
		t.Fatalf("flaky's circuit did not open: %v", r)
	}

	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(`
global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: fuseproxy
    static_configs: [{targets: ["`+admin+`"]}]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	promAddr := freeAddr(t)
	prom := exec.Command(prometheus, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr, "--log.level=warn")
	var promLog lineBuffer
	prom.Stdout, prom.Stderr = &promLog, &promLog
	if err := prom.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = prom.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = prom.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = prom.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("prometheus log:\n%s", tail(promLog.String(), 30))
		}
	})
	base := "http://" + promAddr
	c := newHTTPClient(t)

	// Traffic while Prometheus scrapes, so that rates have two samples to work with.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			p.Get("/a")
			p.Get("/flaky/x")
		}
	}()
	defer func() { close(stop); <-done }()

	var queries []string
	for _, e := range exprs {
		queries = append(queries, grafanaVars.Replace(e))
	}
	labelValues := regexp.MustCompile(`^label_values\((\w+),\s*(\w+)\)$`)
	for _, v := range variables {
		m := labelValues.FindStringSubmatch(v)
		if m == nil {
			t.Errorf("dashboard variable %q is not label_values(metric, label)", v)
			continue
		}
		queries = append(queries, "count by ("+m[2]+") ("+m[1]+")")
	}
	rules := ruleSeries(t, filepath.Join("..", "examples", "prometheus", "alerts.yml"))
	if len(rules) < 6 {
		t.Fatalf("found %d alert rules in alerts.yml", len(rules))
	}
	for alert, series := range rules {
		if len(series) == 0 {
			t.Errorf("alert %s reads no fuseproxy series", alert)
		}
		for _, s := range series {
			queries = append(queries, "count("+s+")")
		}
	}
	slices.Sort(queries)
	queries = slices.Compact(queries)

	empty := map[string]string{}
	ok := waitFor(60*time.Second, 500*time.Millisecond, func() bool {
		clear(empty)
		for _, q := range queries {
			n, err := promQuery(c, base, q)
			if err != nil || n == 0 {
				empty[q] = fmt.Sprint("no data ", err)
			}
		}
		return len(empty) == 0
	})
	if !ok {
		for q, why := range empty {
			t.Errorf("%s: %s", q, why)
		}
		return
	}
	t.Logf("%d dashboard queries, %d variables and the series of %d alert rules returned data", len(exprs), len(variables), len(rules))
}

// accessKeys returns an access log line's keys, in order, and its values.
func accessKeys(t *testing.T, line string) ([]string, map[string]any) {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		t.Fatalf("access log line %q: %v", line, err)
	}
	dec := json.NewDecoder(strings.NewReader(line))
	var keys []string
	_, _ = dec.Token()
	for dec.More() {
		k, _ := dec.Token()
		keys = append(keys, k.(string))
		var skip any
		_ = dec.Decode(&skip)
	}
	return keys, m
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines
}

// openOn reports whether process pid has path open.
func openOn(pid int, path string) bool {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, e := range ents {
		if target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name())); err == nil && target == path {
			return true
		}
	}
	return false
}

// TestAccessLog runs the real binary with the access log to a file: one line per
// request with README's fields in README's order (the sample line there is checked
// against the real one), the query string left out; a reload to another path moves the
// log and closes the old file; shutdown writes the last lines and closes the file.
func TestAccessLog(t *testing.T) {
	backend := startBackend(t)
	dir := t.TempDir()
	first, second := filepath.Join(dir, "access.log"), filepath.Join(dir, "access-2.log")
	listen, admin := freeAddr(t), freeAddr(t)
	cfg := func(path string) string {
		return `
listen: ` + listen + `
admin: {listen: ` + admin + `}
store: {replica_id: logs}
access_log: {enabled: true, path: "` + path + `"}
upstreams:
  payments: {targets: ["` + backend.URL() + `"]}
routes:
  - {path_prefix: /pay, upstream: payments}
`
	}
	p := startProxy(t, cfg(first))
	pid := p.cmd.Process.Pid
	// README's run: the same upstream, route and request.
	if r := p.Get("/pay/invoices/42?card=4111"); !r.OK() {
		t.Fatalf("request: %v", r)
	}
	var lines []string
	if !waitFor(5*time.Second, 5*time.Millisecond, func() bool { lines = readLines(t, first); return len(lines) == 1 }) {
		t.Fatalf("access log %s: %q, want one line", first, lines)
	}
	if strings.Contains(lines[0], "4111") {
		t.Errorf("the query string was logged: %s", lines[0])
	}
	keys, got := accessKeys(t, lines[0])
	for k, want := range map[string]any{"route": 0.0, "upstream": "payments", "target": strings.TrimPrefix(backend.URL(), "http://"),
		"method": "GET", "path": "/pay/invoices/42", "status": 200.0, "circuit": "closed", "attempts": 1.0, "outcome": "success"} {
		if got[k] != want {
			t.Errorf("%s = %v, want %v (line %s)", k, got[k], want, lines[0])
		}
	}
	if d, ok := got["duration_ms"].(float64); !ok || d <= 0 {
		t.Errorf("duration_ms = %v", got["duration_ms"])
	}
	if _, err := time.Parse(time.RFC3339Nano, fmt.Sprint(got["time"])); err != nil {
		t.Errorf("time: %v", err)
	}

	// README's sample: the same keys in the same order, the same values but for the
	// time, the duration and the target's port.
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var sample string
	for line := range strings.Lines(string(readme)) {
		if strings.HasPrefix(line, `{"time":`) && strings.Contains(line, `"attempts":`) {
			sample = strings.TrimSpace(line)
			break
		}
	}
	if sample == "" {
		t.Fatal("README.md has no access log sample line")
	}
	sampleKeys, sampleVals := accessKeys(t, sample)
	if !slices.Equal(keys, sampleKeys) {
		t.Errorf("README's access log keys %v, the real line's %v", sampleKeys, keys)
	}
	for _, k := range keys {
		switch k {
		case "time", "duration_ms":
		case "target":
			if !regexp.MustCompile(`^127\.0\.0\.1:\d+$`).MatchString(fmt.Sprint(sampleVals[k])) {
				t.Errorf("README's target %v", sampleVals[k])
			}
		default:
			if sampleVals[k] != got[k] {
				t.Errorf("README's %s is %v, the real line's %v", k, sampleVals[k], got[k])
			}
		}
	}

	// Reload to another path: new lines go there, the old file is closed.
	if err := os.WriteFile(filepath.Join(p.cmd.Dir, "fuseproxy.yaml"), []byte(cfg(second)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	p.WaitLog(t, 10*time.Second, "config reloaded", func(l logLine) bool { return l.Msg() == "config reloaded" })
	if openOn(pid, first) {
		t.Errorf("after the reload the old access log is still open")
	}
	if !openOn(pid, second) {
		t.Errorf("after the reload the new access log is not open")
	}
	for range 3 {
		p.Get("/pay/after-reload")
	}
	p.Signal(syscall.SIGTERM)
	if _, ok := p.Wait(20 * time.Second); !ok {
		t.Fatal("proxy did not stop")
	}
	if n := len(readLines(t, first)); n != 1 {
		t.Errorf("the first file has %d lines after the reload, want 1", n)
	}
	if got := readLines(t, second); len(got) != 3 || !strings.Contains(got[2], `"path":"/pay/after-reload"`) {
		t.Errorf("the second file after shutdown: %q, want the 3 later requests", got)
	}
}
