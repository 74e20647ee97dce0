package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ---------------------------------------------------------------------------------------
// The admin API, seen from outside.

// admin is a client of one replica's admin API.
type adminAPI struct {
	base   string
	client *http.Client
}

func newAdminAPI(t testing.TB, addr string) *adminAPI {
	c := newHTTPClient(t)
	c.Timeout = 5 * time.Second
	return &adminAPI{base: "http://" + addr, client: c}
}

// Get returns the status and body of GET path.
func (a *adminAPI) Get(path string) response { return doGet(a.client, a.base+path) }

// circuitView is the part of GET /circuits/{name} the tests look at.
type circuitView struct {
	Name       string `json:"name"`
	State      string `json:"state"`
	Generation uint64 `json:"generation"`
	Settings   *struct {
		ConsecutiveFailures int     `json:"consecutive_failures"`
		FailureRate         float64 `json:"failure_rate"`
		OpenDuration        string  `json:"open_duration"`
	} `json:"settings"`
}

// Circuit returns GET /circuits/{name}.
func (a *adminAPI) Circuit(t testing.TB, name string) circuitView {
	t.Helper()
	r := a.Get("/circuits/" + name)
	if r.Err != nil || r.Status != http.StatusOK {
		t.Fatalf("GET /circuits/%s: %v", name, r)
	}
	var c circuitView
	if err := json.Unmarshal([]byte(r.Body), &c); err != nil || c.Settings == nil {
		t.Fatalf("GET /circuits/%s: %v in %q", name, err, r.Body)
	}
	return c
}

// Metric returns the value of the sample whose name and labels are exactly series (as
// written in the text format, e.g. `fuseproxy_config_reloads_total{result="failure"}`),
// 0 when absent.
func (a *adminAPI) Metric(t testing.TB, series string) float64 {
	t.Helper()
	r := a.Get("/metrics")
	if r.Err != nil || r.Status != http.StatusOK {
		t.Fatalf("GET /metrics: %v", r)
	}
	sc := bufio.NewScanner(strings.NewReader(r.Body))
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(strings.Fields(rest)[0], 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			return v
		}
	}
	return 0
}

// reloads returns fuseproxy_config_reloads_total by result.
func (a *adminAPI) reloads(t testing.TB) (success, failure float64) {
	t.Helper()
	return a.Metric(t, `fuseproxy_config_reloads_total{result="success"}`),
		a.Metric(t, `fuseproxy_config_reloads_total{result="failure"}`)
}

// ---------------------------------------------------------------------------------------
// Steady load.

// load is a few client goroutines sending GETs through a proxy in a loop, every response
// kept, until Stop (or a hard limit, so a test that forgets to stop it stays bounded).
type load struct {
	stop    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	rs      []response
	stopped bool
}

// startLoad starts workers goroutines sending GET path through p, each waiting pause
// between requests; they stop at Stop, after limit, or when the test ends.
func startLoad(t testing.TB, p *Proxy, workers int, path string, pause, limit time.Duration) *load {
	l := &load{stop: make(chan struct{})}
	deadline := time.Now().Add(limit)
	for range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for time.Now().Before(deadline) {
				select {
				case <-l.stop:
					return
				default:
				}
				r := p.Get(path)
				l.mu.Lock()
				l.rs = append(l.rs, r)
				l.mu.Unlock()
				if pause > 0 {
					time.Sleep(pause)
				}
			}
		}()
	}
	t.Cleanup(func() { l.Stop() })
	return l
}

// Count is the number of responses so far.
func (l *load) Count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.rs)
}

// Stop stops the workers, waits for their last requests and returns every response.
func (l *load) Stop() []response {
	l.mu.Lock()
	if !l.stopped {
		l.stopped = true
		close(l.stop)
	}
	l.mu.Unlock()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]response(nil), l.rs...)
}

// ---------------------------------------------------------------------------------------
// Connections.

// refused reports whether a TCP connection to addr is refused now (nobody listens). A
// connection that succeeds is closed at once.
func refused(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
	if err == nil {
		c.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// sumBuckets adds up the "b:<k>" window buckets ("requests failures slow") of a Redis
// state hash.
func sumBuckets(t testing.TB, h map[string]string) (requests, failures, slow int) {
	t.Helper()
	for f, v := range h {
		if !strings.HasPrefix(f, "b:") {
			continue
		}
		parts := strings.Fields(v)
		if len(parts) != 3 {
			t.Fatalf("bucket %s = %q, want \"requests failures slow\"", f, v)
		}
		n := make([]int, 3)
		for i, p := range parts {
			x, err := strconv.Atoi(p)
			if err != nil {
				t.Fatalf("bucket %s = %q: %v", f, v, err)
			}
			n[i] = x
		}
		requests, failures, slow = requests+n[0], failures+n[1], slow+n[2]
	}
	return requests, failures, slow
}
