package e2e

// Helpers of the fault and bad-input tests (faults_*_test.go): a config builder with the
// knobs those tests turn (timeouts, Redis tolerance, several upstreams and routes, an
// admin token), a load generator that tells the proxy's own failures from the backend's,
// readers of a process's /proc figures and of /metrics, and a small in-test backend for
// what the flaky backend cannot do (slow on some requests only, swallow a huge body).

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"text/template"
	"time"
)

// ---------------------------------------------------------------------------------------
// Config.

// faultConfig is the e2e tests' one config builder (config_test.go's proxyConfig and
// ops_config_test.go's opsConfig render through it).

// faultUpstream is one upstream of a faultConfig. Zero durations and counts are left out of
// the file (the product's defaults apply) unless noted.
type faultUpstream struct {
	Name                  string
	Target                string // base URL
	Timeout               time.Duration
	ResponseHeaderTimeout time.Duration
	// Breaker; every rule is written, so 0 disables it.
	ConsecutiveFailures  int
	FailureRate          float64
	SlowCallRate         float64
	SlowCallDuration     time.Duration
	MinimumRequests      int
	Window               time.Duration
	OpenDuration         time.Duration
	Jitter               float64
	HalfOpenMaxRequests  int
	SuccessThreshold     int
	MinReplicasReporting int
}

// faultRoute is one route of a faultConfig.
type faultRoute struct {
	Host, Prefix, Upstream string
	Strip                  bool
}

// faultConfig is one replica's config for the fault tests.
type faultConfig struct {
	Listen, AdminListen, ReplicaID, AdminToken string
	AdminAllowedHosts                          []string

	Store    string // memory | redis | postgres
	RedisURL string
	// PostgresURL is the postgres store's database (prefix fuse_).
	PostgresURL string
	// ClusterAddrs (Redis Cluster) or SentinelMaster and SentinelAddrs (Sentinel) replace
	// RedisURL when set.
	ClusterAddrs   []string
	SentinelMaster string
	SentinelAddrs  []string
	Prefix         string
	FlushInterval  time.Duration
	DegradeAfter   int
	RedisDial      time.Duration
	RedisRead      time.Duration
	RedisWrite     time.Duration

	ShutdownTimeout   time.Duration // 3s when zero
	ReadHeaderTimeout time.Duration
	MaxHeaderBytes    int

	Upstreams []faultUpstream
	Routes    []faultRoute
}

var faultTemplate = template.Must(template.New("fault").Funcs(template.FuncMap{
	"q": strconv.Quote,
}).Parse(`# written by the e2e tests
listen: {{q .Listen}}
admin:
  listen: {{q .AdminListen}}
{{- if .AdminToken}}
  token: {{q .AdminToken}}
{{- end}}
{{- if .AdminAllowedHosts}}
  allowed_hosts: [{{range $i, $h := .AdminAllowedHosts}}{{if $i}}, {{end}}{{q $h}}{{end}}]
{{- end}}
log:
  format: json
  level: info
server:
  shutdown_timeout: {{or .ShutdownTimeout "3s"}}
{{- if .ReadHeaderTimeout}}
  read_header_timeout: {{.ReadHeaderTimeout}}
{{- end}}
{{- if .MaxHeaderBytes}}
  max_header_bytes: {{.MaxHeaderBytes}}
{{- end}}
store:
  driver: {{.Store}}
{{- if .ReplicaID}}
  replica_id: {{.ReplicaID}}
{{- end}}
{{- if eq .Store "redis"}}
  flush_interval: {{.FlushInterval}}
  redis:
{{- if .ClusterAddrs}}
    cluster_addrs: [{{range $i, $a := .ClusterAddrs}}{{if $i}}, {{end}}{{q $a}}{{end}}]
{{- else if .SentinelMaster}}
    sentinel_master: {{q .SentinelMaster}}
    sentinel_addrs: [{{range $i, $a := .SentinelAddrs}}{{if $i}}, {{end}}{{q $a}}{{end}}]
{{- else}}
    url: {{q .RedisURL}}
{{- end}}
    prefix: {{.Prefix}}
{{- if .DegradeAfter}}
    degrade_after: {{.DegradeAfter}}
{{- end}}
{{- if .RedisDial}}
    dial_timeout: {{.RedisDial}}
{{- end}}
{{- if .RedisRead}}
    read_timeout: {{.RedisRead}}
{{- end}}
{{- if .RedisWrite}}
    write_timeout: {{.RedisWrite}}
{{- end}}
{{- else if eq .Store "postgres"}}
  flush_interval: {{.FlushInterval}}
  postgres:
    url: {{q .PostgresURL}}
    prefix: fuse_
{{- if .DegradeAfter}}
    degrade_after: {{.DegradeAfter}}
{{- end}}
{{- end}}
upstreams:
{{- range .Upstreams}}
  {{.Name}}:
    targets: [{{q .Target}}]
{{- if .Timeout}}
    timeout: {{.Timeout}}
{{- end}}
{{- if .ResponseHeaderTimeout}}
    response_header_timeout: {{.ResponseHeaderTimeout}}
{{- end}}
    breaker:
      consecutive_failures: {{.ConsecutiveFailures}}
      failure_rate: {{.FailureRate}}
      slow_call_rate: {{.SlowCallRate}}
{{- if .SlowCallDuration}}
      slow_call_duration: {{.SlowCallDuration}}
{{- end}}
{{- if .MinimumRequests}}
      minimum_requests: {{.MinimumRequests}}
{{- end}}
{{- if .Window}}
      window: {{.Window}}
{{- end}}
      open_duration: {{.OpenDuration}}
      backoff_multiplier: 1
      jitter: {{.Jitter}}
      half_open_max_requests: {{or .HalfOpenMaxRequests 1}}
      success_threshold: {{or .SuccessThreshold 1}}
      min_replicas_reporting: {{or .MinReplicasReporting 1}}
{{- end}}
routes:
{{- range .Routes}}
  - path_prefix: {{q .Prefix}}
    upstream: {{.Upstream}}
{{- if .Host}}
    host: {{q .Host}}
{{- end}}
{{- if .Strip}}
    strip_prefix: true
{{- end}}
{{- end}}
`))

// YAML renders the config.
func (c faultConfig) YAML(t testing.TB) string {
	t.Helper()
	var b strings.Builder
	if err := faultTemplate.Execute(&b, c); err != nil {
		t.Fatalf("fault config template: %v", err)
	}
	return b.String()
}

// newFaultConfig returns a config on fresh ports with one upstream, "api", at target,
// routed from "/", with consecutive_failures 5, an open duration of 1s and no rate
// rules. The store is memory; tests set Store and the Redis fields for redis.
func newFaultConfig(t testing.TB, target string) faultConfig {
	return faultConfig{
		Listen: freeAddr(t), AdminListen: freeAddr(t), Store: "memory", Prefix: "fuse",
		FlushInterval: 100 * time.Millisecond,
		Upstreams: []faultUpstream{{Name: upstream, Target: target, Timeout: 5 * time.Second,
			ConsecutiveFailures: 5, OpenDuration: time.Second}},
		Routes: []faultRoute{{Prefix: "/", Upstream: upstream}},
	}
}

// withPostgres points c at a PostgreSQL database as replica id.
func (c faultConfig) withPostgres(id, url string) faultConfig {
	c.Store, c.ReplicaID, c.PostgresURL = "postgres", id, url
	return c
}

// withRedis points c at a Redis (or a faultproxy in front of one) as replica id.
func (c faultConfig) withRedis(id, url string) faultConfig {
	c.Store, c.ReplicaID, c.RedisURL = "redis", id, url
	return c
}

// fresh returns c on new ports (another replica of the same config).
func (c faultConfig) fresh(t testing.TB, id string) faultConfig {
	c.Listen, c.AdminListen, c.ReplicaID = freeAddr(t), freeAddr(t), id
	c.Upstreams = append([]faultUpstream(nil), c.Upstreams...)
	return c
}

// ---------------------------------------------------------------------------------------
// What clients got.

// failedByProxy reports whether the proxy itself failed the request: the client got no
// answer, or a 5xx that neither the backend sent (its bodies start with {"ok":) nor the
// circuit (X-Fuse-Circuit). Those are the failures a fault in Redis must never cause.
func failedByProxy(r response) bool {
	if r.Err != nil {
		return true
	}
	return r.Status >= 500 && r.Circuit == "" && !strings.HasPrefix(r.Body, `{"ok":`)
}

// failedByBackend reports whether the backend itself answered with a 5xx.
func failedByBackend(r response) bool {
	return r.Err == nil && r.Status >= 500 && r.Circuit == "" && strings.HasPrefix(r.Body, `{"ok":`)
}

// faultStats classifies what clients got.
type faultStats struct {
	Sent, OK, BackendFailed, Rejected, ProxyFailed, Other int
	examples                                              []string
	latencies                                             []time.Duration // of the answered requests
}

func (s *faultStats) add(r response) {
	s.Sent++
	if r.Err == nil && len(s.latencies) < 1<<18 {
		s.latencies = append(s.latencies, r.At.Sub(r.Sent))
	}
	switch {
	case r.OK():
		s.OK++
	case r.Rejected():
		s.Rejected++
	case failedByBackend(r):
		s.BackendFailed++
	case failedByProxy(r):
		s.ProxyFailed++
		s.example(r)
	default:
		s.Other++
		s.example(r)
	}
}

func (s *faultStats) example(r response) {
	if len(s.examples) < 5 {
		s.examples = append(s.examples, r.String())
	}
}

func (s *faultStats) merge(o faultStats) {
	s.Sent += o.Sent
	s.OK += o.OK
	s.BackendFailed += o.BackendFailed
	s.Rejected += o.Rejected
	s.ProxyFailed += o.ProxyFailed
	s.Other += o.Other
	s.latencies = append(s.latencies, o.latencies...)
	for _, e := range o.examples {
		if len(s.examples) < 5 {
			s.examples = append(s.examples, e)
		}
	}
}

func (s faultStats) String() string {
	out := fmt.Sprintf("sent=%d ok=%d backend_5xx=%d rejected=%d proxy_failed=%d other=%d",
		s.Sent, s.OK, s.BackendFailed, s.Rejected, s.ProxyFailed, s.Other)
	if len(s.examples) > 0 {
		out += " e.g. " + strings.Join(s.examples, " | ")
	}
	return out
}

// faultLoader sends GETs from `clients` goroutines, each picking a proxy per request, one
// request every `every`, until Stop (or at most maxFor / maxPerClient requests).
type faultLoader struct {
	stop  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
	mu    sync.Mutex
	stats map[string]*faultStats // by proxy id (or address)
}

const (
	faultMaxLoadFor       = 3 * time.Minute
	faultMaxLoadPerClient = 200000
)

// It is stopped when the test ends at the latest.
func faultLoad(t testing.TB, clients int, every time.Duration, path string, pick func() *Proxy) *faultLoader {
	l := &faultLoader{stop: make(chan struct{}), stats: map[string]*faultStats{}}
	t.Cleanup(func() { l.Stop() })
	start := time.Now()
	for range clients {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; i < faultMaxLoadPerClient && time.Since(start) < faultMaxLoadFor; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				p := pick()
				r := p.Get(path)
				l.record(p, r)
				select {
				case <-l.stop:
					return
				case <-time.After(every):
				}
			}
		}()
	}
	return l
}

func faultProxyKey(p *Proxy) string {
	if p.ID != "" {
		return p.ID
	}
	return p.Addr()
}

func (l *faultLoader) record(p *Proxy, r response) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := faultProxyKey(p)
	if l.stats[k] == nil {
		l.stats[k] = &faultStats{}
	}
	l.stats[k].add(r)
}

// Snapshot returns the counts so far: per proxy and in all.
func (l *faultLoader) Snapshot() (per map[string]faultStats, total faultStats) {
	l.mu.Lock()
	defer l.mu.Unlock()
	per = map[string]faultStats{}
	for k, s := range l.stats {
		c := *s
		c.latencies = slices.Clone(s.latencies)
		c.examples = slices.Clone(s.examples)
		per[k] = c
		total.merge(c)
	}
	return per, total
}

// Stop stops the load, waits for the requests in flight and returns the counts.
func (l *faultLoader) Stop() (per map[string]faultStats, total faultStats) {
	l.once.Do(func() { close(l.stop) })
	l.wg.Wait()
	return l.Snapshot()
}

// ---------------------------------------------------------------------------------------
// Figures.

// faultFigures are what every scenario records for docs/RELIABILITY.md.
type faultFigures struct {
	Sent        int           // requests sent by clients
	ProxyFailed int           // of them, failed by the proxy itself (see failedByProxy)
	ReachedOpen int           // requests that reached an upstream while its circuit was open
	Recover     time.Duration // time to recover, where the scenario has one (0: n/a)
	Extra       map[string]any
}

// record logs the figures (and appends them to $FUSE_E2E_REPORT, see report).
func (f faultFigures) record(t testing.TB, scenario string) {
	t.Helper()
	extra := map[string]any{"requests_sent": f.Sent, "failed_by_proxy": f.ProxyFailed,
		"reached_open_upstream": f.ReachedOpen, "recover_ms": ms(f.Recover)}
	for k, v := range f.Extra {
		extra[k] = v
	}
	report(t, "fault_"+scenario, []time.Duration{f.Recover}, extra)
}

// ---------------------------------------------------------------------------------------
// The admin API and /metrics.

// faultAdmin sends method path to the proxy's admin API with an optional bearer token.
func faultAdmin(t testing.TB, c *http.Client, addr, method, path, token, body string) response {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+addr+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("X-Fuse-Admin", "1") // as the CLI does
	return do(c, req)
}

// faultReadiness is /readyz.
type faultReadiness struct {
	Ready      bool   `json:"ready"`
	Store      string `json:"store"`
	Degraded   bool   `json:"degraded"`
	Protection string `json:"protection"`
	StoreError string `json:"store_error"`
}

func faultReadyz(t testing.TB, p *Proxy, adminAddr, token string) (faultReadiness, int) {
	t.Helper()
	r := faultAdmin(t, p.client, adminAddr, "GET", "/readyz", token, "")
	var rd faultReadiness
	if r.Err != nil {
		t.Fatalf("%s /readyz: %v", p.name, r.Err)
	}
	if err := json.Unmarshal([]byte(r.Body), &rd); err != nil {
		t.Fatalf("%s /readyz %q: %v", p.name, r.Body, err)
	}
	return rd, r.Status
}

// faultMetric returns the value of an unlabelled metric (or the first series of a
// labelled one matching labels, e.g. `upstream="api"`) from /metrics.
func faultMetric(t testing.TB, c *http.Client, adminAddr, name, labels string) float64 {
	t.Helper()
	r := faultAdmin(t, c, adminAddr, "GET", "/metrics", "", "")
	if r.Err != nil || r.Status != http.StatusOK {
		t.Fatalf("GET %s/metrics: %v", adminAddr, r)
	}
	sc := bufio.NewScanner(strings.NewReader(r.Body))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		switch {
		case strings.HasPrefix(rest, " ") && labels == "":
		case strings.HasPrefix(rest, "{") && labels != "" && strings.Contains(rest[:strings.IndexByte(rest, '}')+1], labels):
			rest = rest[strings.IndexByte(rest, '}')+1:]
		default:
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		return v
	}
	t.Fatalf("metric %s{%s} not in /metrics of %s", name, labels, adminAddr)
	return 0
}

// ---------------------------------------------------------------------------------------
// /proc.

// faultPID is the process id of a child process.
func faultPID(p *process) int { return p.cmd.Process.Pid }

// faultRSS is the process's resident set size (VmRSS) in KiB.
func faultRSS(t testing.TB, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read /proc/%d/status: %v", pid, err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS line %q: %v", line, err)
			}
			return n
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// faultFDs counts the process's open file descriptors.
func faultFDs(t testing.TB, pid int) int {
	t.Helper()
	es, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
	if err != nil {
		t.Fatalf("read /proc/%d/fd: %v", pid, err)
	}
	return len(es)
}

// ---------------------------------------------------------------------------------------
// An in-test backend.

// faultBackend is an HTTP server in the test process for behaviours the flaky backend
// lacks. Its handler decides per request; it counts requests and body bytes read.
type faultBackend struct {
	srv      *http.Server
	ln       net.Listener
	requests atomic.Int64
	body     atomic.Int64 // request body bytes read
	paths    sync.Map     // path → *atomic.Int64
}

// startFaultBackend serves handle (after counting) on a free loopback port until the test
// ends. handle writes the response; it may read the body through the counting reader.
func startFaultBackend(t testing.TB, handle func(w http.ResponseWriter, r *http.Request, n int64)) *faultBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &faultBackend{ln: ln}
	b.srv = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := b.requests.Add(1)
		c, _ := b.paths.LoadOrStore(r.URL.Path, new(atomic.Int64))
		c.(*atomic.Int64).Add(1)
		r.Body = faultCountingBody{r.Body, &b.body}
		handle(w, r, n)
	})}
	go func() { _ = b.srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if b.srv.Shutdown(ctx) != nil {
			_ = b.srv.Close()
		}
	})
	return b
}

func (b *faultBackend) URL() string  { return "http://" + b.ln.Addr().String() }
func (b *faultBackend) Addr() string { return b.ln.Addr().String() }

// Paths returns how many requests each path got.
func (b *faultBackend) Paths() map[string]int64 {
	out := map[string]int64{}
	b.paths.Range(func(k, v any) bool {
		out[k.(string)] = v.(*atomic.Int64).Load()
		return true
	})
	return out
}

type faultCountingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c faultCountingBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// faultOK answers like the flaky backend: 200 {"ok":true,"path":...}.
func faultOK(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"ok":true,"path":%q}`+"\n", r.URL.Path)
}

// ---------------------------------------------------------------------------------------
// Raw HTTP.

// faultRaw writes req on a new connection to addr and returns what came back until
// the server closed the connection or timeout passed.
func faultRaw(addr, req string, timeout time.Duration) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, req); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

// faultStatus returns the status code of the first response in raw (0 if none).
func faultStatus(raw string) int {
	line, _, _ := strings.Cut(raw, "\r\n")
	f := strings.Fields(line)
	if len(f) < 2 || !strings.HasPrefix(f[0], "HTTP/") {
		return 0
	}
	n, _ := strconv.Atoi(f[1])
	return n
}

// faultParseResponses parses the HTTP/1.1 responses in raw, in order, with their bodies.
func faultParseResponses(raw string) []response {
	var out []response
	br := bufio.NewReader(strings.NewReader(raw))
	for range 100 {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return out
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		out = append(out, response{Status: resp.StatusCode, Body: string(body), Err: err,
			Circuit: resp.Header.Get("X-Fuse-Circuit")})
	}
	return out
}
