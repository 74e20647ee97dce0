package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// readyTimeout bounds how long a process may take to start serving (a -race binary on a
// busy two-core machine is slow to start).
const readyTimeout = 20 * time.Second

// newHTTPClient returns a client for loopback traffic with its own connection pool,
// closed when the test ends.
func newHTTPClient(t testing.TB) *http.Client {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		MaxIdleConns:        512,
		MaxIdleConnsPerHost: 128,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// response is what the test learned from one request through a proxy.
type response struct {
	Status     int
	Circuit    string // X-Fuse-Circuit: set on rejections by the circuit
	RetryAfter string
	Body       string
	Err        error
	Sent, At   time.Time // when the request left and when the response was read
}

// Rejected reports whether the circuit rejected the request (fallback with X-Fuse-Circuit).
func (r response) Rejected() bool { return r.Err == nil && r.Circuit != "" }

// OK reports whether the backend answered 200 through the proxy.
func (r response) OK() bool { return r.Err == nil && r.Status == http.StatusOK && r.Circuit == "" }

func (r response) String() string {
	if r.Err != nil {
		return "error: " + r.Err.Error()
	}
	s := strconv.Itoa(r.Status)
	if r.Circuit != "" {
		s += " X-Fuse-Circuit=" + r.Circuit + " Retry-After=" + r.RetryAfter
	}
	return s + " " + strings.TrimSpace(r.Body)
}

func doGet(c *http.Client, url string) response {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return response{Sent: time.Now(), At: time.Now(), Err: err}
	}
	return do(c, req)
}

// do sends req and returns what came back, the body read up to 4 MiB.
func do(c *http.Client, req *http.Request) response {
	r := response{Sent: time.Now()}
	resp, err := c.Do(req)
	if err != nil {
		r.Err, r.At = err, time.Now()
		return r
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	resp.Body.Close()
	r.At = time.Now()
	r.Status, r.Body, r.Err = resp.StatusCode, string(body), err
	r.Circuit = resp.Header.Get("X-Fuse-Circuit")
	r.RetryAfter = resp.Header.Get("Retry-After")
	return r
}

// ---------------------------------------------------------------------------------------
// The flaky backend.

// Backend is a `fuseproxy flaky` process.
type Backend struct {
	*process
	addr   string
	client *http.Client
}

// backendStats is /_flaky/stats.
type backendStats struct {
	Requests    int64 `json:"requests"`
	Failed      int64 `json:"failed"`
	InFlight    int64 `json:"in_flight"`
	MaxInFlight int64 `json:"max_in_flight"`
	Failing     bool  `json:"failing"`
}

// startBackend starts the flaky backend on a free port and waits until it answers.
func startBackend(t testing.TB) *Backend {
	t.Helper()
	return startBackendAt(t, freeAddr(t))
}

// startBackendAt starts a flaky backend process listening on addr (e.g. to bring back
// one that was killed).
func startBackendAt(t testing.TB, addr string) *Backend {
	t.Helper()
	b := &Backend{addr: addr, client: newHTTPClient(t)}
	b.process = startProcess(t, "flaky backend "+addr, "", nil, "flaky", "-listen", addr)
	ok := waitFor(readyTimeout, 10*time.Millisecond, func() bool {
		if b.Exited() {
			return true
		}
		r := doGet(b.client, b.URL()+"/_flaky/stats")
		return r.Err == nil && r.Status == http.StatusOK
	})
	if !ok || b.Exited() {
		t.Fatalf("flaky backend on %s not ready (exit code %d):\n%s", addr, b.ExitCode(), b.Stderr())
	}
	return b
}

// URL is the backend's base URL.
func (b *Backend) URL() string { return "http://" + b.addr }

// Set changes the backend's behaviour, e.g. "fail=on" or "fail=off&latency=200ms".
func (b *Backend) Set(t testing.TB, query string) {
	t.Helper()
	if r := doGet(b.client, b.URL()+"/_flaky/set?"+query); r.Err != nil || r.Status != http.StatusOK {
		t.Fatalf("backend set %s: %v", query, r)
	}
}

// Stats returns the backend's counts.
func (b *Backend) Stats(t testing.TB) backendStats {
	t.Helper()
	r := doGet(b.client, b.URL()+"/_flaky/stats")
	var s backendStats
	if r.Err != nil || r.Status != http.StatusOK {
		t.Fatalf("backend stats: %v", r)
	}
	if err := json.Unmarshal([]byte(r.Body), &s); err != nil {
		t.Fatalf("backend stats %q: %v", r.Body, err)
	}
	return s
}

// Reset makes the backend healthy and zeroes its counts.
func (b *Backend) Reset(t testing.TB) {
	t.Helper()
	if r := doGet(b.client, b.URL()+"/_flaky/reset"); r.Err != nil || r.Status != http.StatusOK {
		t.Fatalf("backend reset: %v", r)
	}
}

// ---------------------------------------------------------------------------------------
// The proxy.

// Proxy is a `fuseproxy serve` process.
type Proxy struct {
	*process
	ID     string // store.replica_id
	addr   string
	client *http.Client
}

// startProxy writes cfgYAML to a temporary file, starts `fuseproxy serve` on it with the
// extra environment ("NAME=value") and waits until it serves (without sending a request
// through it: see WaitReady).
func startProxy(t testing.TB, cfgYAML string, env ...string) *Proxy {
	t.Helper()
	var head struct {
		Listen string `yaml:"listen"`
		Store  struct {
			ReplicaID string `yaml:"replica_id"`
		} `yaml:"store"`
	}
	if err := yaml.Unmarshal([]byte(cfgYAML), &head); err != nil || head.Listen == "" {
		t.Fatalf("startProxy: config without a listen address (%v):\n%s", err, cfgYAML)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "fuseproxy.yaml")
	if err := os.WriteFile(path, []byte(cfgYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ID: head.Store.ReplicaID, addr: head.Listen, client: newHTTPClient(t)}
	name := "proxy " + head.Listen
	if p.ID != "" {
		name = "proxy " + p.ID + " " + head.Listen
	}
	p.process = startProcess(t, name, dir, env, "serve", "-config", path)
	p.WaitReady(t, "")
	return p
}

// Addr is the proxy's listen address.
func (p *Proxy) Addr() string { return p.addr }

// URL is the proxy's base URL.
func (p *Proxy) URL() string { return "http://" + p.addr }

// Get sends GET path through the proxy.
func (p *Proxy) Get(path string) response { return doGet(p.client, p.URL()+path) }

// WaitReady waits until the proxy logged "serving" and accepts TCP connections; with a
// path it then also waits for a GET of that path to be answered (by the backend or the
// fallback). It fails the test if the process exits.
func (p *Proxy) WaitReady(t testing.TB, path string) {
	t.Helper()
	ok := waitFor(readyTimeout, 5*time.Millisecond, func() bool {
		if p.Exited() {
			return true
		}
		if !p.hasLog(func(l logLine) bool { return l.Msg() == "serving" }) {
			return false
		}
		c, err := net.DialTimeout("tcp", p.addr, time.Second)
		if err != nil {
			return false
		}
		c.Close()
		return path == "" || p.Get(path).Err == nil
	})
	if p.Exited() {
		t.Fatalf("%s exited with code %d before serving:\n%s", p.name, p.ExitCode(), tail(p.Stderr(), 50))
	}
	if !ok {
		t.Fatalf("%s not ready within %v:\n%s", p.name, readyTimeout, tail(p.Stderr(), 50))
	}
}

func (p *Proxy) hasLog(match func(logLine) bool) bool {
	for _, l := range p.Logs() {
		if match(l) {
			return true
		}
	}
	return false
}

// LogsWhere returns the log lines that match.
func (p *Proxy) LogsWhere(match func(logLine) bool) []logLine {
	var out []logLine
	for _, l := range p.Logs() {
		if match(l) {
			out = append(out, l)
		}
	}
	return out
}

// Transitions returns the "circuit transition" lines for the upstream.
func (p *Proxy) Transitions(upstream string) []logLine {
	return p.LogsWhere(func(l logLine) bool { return l.Msg() == "circuit transition" && l.Str("upstream") == upstream })
}

// CountTransitionsTo counts the transitions of upstream into state `to`.
func (p *Proxy) CountTransitionsTo(upstream, to string) int {
	n := 0
	for _, l := range p.Transitions(upstream) {
		if l.Str("to") == to {
			n++
		}
	}
	return n
}

// WaitLog waits until a log line matches and returns it.
func (p *Proxy) WaitLog(t testing.TB, timeout time.Duration, what string, match func(logLine) bool) logLine {
	t.Helper()
	var found logLine
	ok := waitFor(timeout, 2*time.Millisecond, func() bool {
		for _, l := range p.Logs() {
			if match(l) {
				found = l
				return true
			}
		}
		return false
	})
	if !ok {
		t.Fatalf("%s: no log line %s within %v; log:\n%s", p.name, what, timeout, tail(p.Stderr(), 40))
	}
	return found
}

// WaitTransitions waits until the proxy has logged at least n transitions of upstream into
// state `to`.
func (p *Proxy) WaitTransitions(t testing.TB, timeout time.Duration, upstream, to string, n int) {
	t.Helper()
	if !waitFor(timeout, 2*time.Millisecond, func() bool { return p.CountTransitionsTo(upstream, to) >= n }) {
		t.Fatalf("%s: got %d transitions of %s to %s within %v, want %d; log:\n%s", p.name,
			p.CountTransitionsTo(upstream, to), upstream, to, timeout, n, tail(p.Stderr(), 40))
	}
}

// ---------------------------------------------------------------------------------------
// Load.

// burst sends n concurrent GETs of path through each proxy and waits for all answers.
func burst(proxies []*Proxy, n int, path string) []response {
	out := make([]response, len(proxies)*n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, p := range proxies {
		for j := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				out[i*n+j] = p.Get(path)
			}()
		}
	}
	close(start)
	wg.Wait()
	return out
}

// tally counts responses by kind.
type tally struct {
	OK, RejectedOpen, RejectedHalfOpen, Other int
	other                                     []string
}

func count(rs []response) tally {
	var c tally
	for _, r := range rs {
		switch {
		case r.OK():
			c.OK++
		case r.Rejected() && r.Circuit == "open":
			c.RejectedOpen++
		case r.Rejected() && r.Circuit == "half_open":
			c.RejectedHalfOpen++
		default:
			c.Other++
			if len(c.other) < 5 {
				c.other = append(c.other, r.String())
			}
		}
	}
	return c
}

func (c tally) String() string {
	s := fmt.Sprintf("ok=%d open=%d half_open=%d other=%d", c.OK, c.RejectedOpen, c.RejectedHalfOpen, c.Other)
	if len(c.other) > 0 {
		s += " e.g. " + strings.Join(c.other, " | ")
	}
	return s
}

// roundRobin hands out proxies in turn; safe for concurrent use.
type roundRobin struct {
	proxies []*Proxy
	n       atomic.Uint64
}

func (r *roundRobin) Next() *Proxy {
	return r.proxies[int((r.n.Add(1)-1)%uint64(len(r.proxies)))]
}

// assertRejection checks that r is a fallback from a circuit in state `state`.
func assertRejection(t testing.TB, who string, r response, state string) {
	t.Helper()
	if r.Err != nil || r.Status != http.StatusServiceUnavailable || r.Circuit != state {
		t.Fatalf("%s: got %v, want 503 with X-Fuse-Circuit: %s", who, r, state)
	}
	if n, err := strconv.Atoi(r.RetryAfter); err != nil || n < 0 {
		t.Fatalf("%s: got Retry-After %q, want a number of seconds", who, r.RetryAfter)
	}
}
