package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
)

// countingBackend answers 200 and counts requests.
func countingBackend(t *testing.T) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(s.Close)
	return s, &n
}

func TestFallback(t *testing.T) {
	t.Run("default JSON", func(t *testing.T) {
		backend, hits := countingBackend(t)
		f := newFixture(t, single(upstreamCfg(t, backend.URL)))

		resp := f.get(t, "", "/")
		wantStatus(t, resp, http.StatusOK)
		if v, ok := resp.Header[HeaderCircuit]; ok {
			t.Errorf("%s on a proxied response: got %q, want none", HeaderCircuit, v)
		}

		f.breakers["svc"].Trip()                           // open for 30 s
		f.clock.Add(17*time.Second + 500*time.Millisecond) // 12.5 s left
		resp = f.get(t, "", "/")
		wantStatus(t, resp, http.StatusServiceUnavailable)
		for _, h := range []struct{ name, want string }{
			{HeaderCircuit, "open"},
			{"Retry-After", "13"},
			{"Content-Type", "application/json"},
		} {
			if got := resp.Header.Get(h.name); got != h.want {
				t.Errorf("%s: got %q, want %q", h.name, got, h.want)
			}
		}
		want := `{"error":"circuit_open","upstream":"svc","state":"open","retry_after_seconds":13}`
		if got := readBody(t, resp); got != want {
			t.Errorf("body: got %s, want %s", got, want)
		}
		if n := hits.Load(); n != 1 {
			t.Errorf("backend hits: got %d, want 1 (the rejection must not reach it)", n)
		}
		wantResults(t, f.rec.snapshot(), Success, Rejected)

		// The last fraction of a second still says 1.
		f.clock.Add(12*time.Second + 400*time.Millisecond)
		if got := f.get(t, "", "/").Header.Get("Retry-After"); got != "1" {
			t.Errorf("Retry-After with 100ms left: got %q, want 1", got)
		}
	})

	t.Run("configured", func(t *testing.T) {
		backend, _ := countingBackend(t)
		html := upstreamCfg(t, backend.URL)
		html.Fallback = config.Fallback{Status: 429, Body: "<h1>busy</h1>",
			Headers: map[string]string{"content-type": "text/html", "x-custom": "yes", "Retry-After": "999"}}
		plain := upstreamCfg(t, backend.URL)
		plain.Fallback = config.Fallback{Status: http.StatusServiceUnavailable, Body: "try later"}
		cfg := &config.Config{
			Upstreams: map[string]*config.Upstream{"html": html, "plain": plain},
			Routes: []config.Route{
				{PathPrefix: "/html", Upstream: "html"},
				{PathPrefix: "/plain", Upstream: "plain"},
			},
		}
		f := newFixture(t, cfg)
		f.breakers["html"].Trip()
		f.breakers["plain"].Trip()

		resp := f.get(t, "", "/html")
		wantStatus(t, resp, http.StatusTooManyRequests)
		for _, h := range []struct{ name, want string }{
			{"Content-Type", "text/html"},
			{"X-Custom", "yes"},
			{"Retry-After", "30"}, // computed, not the configured one
			{HeaderCircuit, "open"},
		} {
			if got := resp.Header.Get(h.name); got != h.want {
				t.Errorf("%s: got %q, want %q", h.name, got, h.want)
			}
		}
		if got := readBody(t, resp); got != "<h1>busy</h1>" {
			t.Errorf("body: got %q, want <h1>busy</h1>", got)
		}

		resp = f.get(t, "", "/plain")
		wantStatus(t, resp, http.StatusServiceUnavailable) // status 0 means 503
		if got := resp.Header.Get("Content-Type"); got != "text/plain; charset=utf-8" {
			t.Errorf("Content-Type: got %q, want text/plain; charset=utf-8", got)
		}
		if got := readBody(t, resp); got != "try later" {
			t.Errorf("body: got %q, want %q", got, "try later")
		}
	})

	t.Run("half-open trial limit", func(t *testing.T) {
		backend := newBlockingBackend(t)
		f := newFixture(t, single(upstreamCfg(t, backend.URL)))
		b := f.breakers["svc"]
		b.Trip()
		f.clock.Add(31 * time.Second) // the open period is over: the next request is a trial

		trial := make(chan *http.Response, 1)
		go func() {
			resp, err := f.client.Get(f.srv.URL + "/")
			if err != nil {
				t.Errorf("trial: %v", err)
				trial <- nil
				return
			}
			trial <- resp
		}()
		recv(t, "the trial to reach the backend", backend.started)

		resp := f.get(t, "", "/")
		wantStatus(t, resp, http.StatusServiceUnavailable)
		if got := resp.Header.Get(HeaderCircuit); got != "half_open" {
			t.Errorf("%s: got %q, want half_open", HeaderCircuit, got)
		}
		if got := resp.Header.Get("Retry-After"); got != "1" {
			t.Errorf("Retry-After: got %q, want 1", got)
		}
		want := `{"error":"circuit_open","upstream":"svc","state":"half_open","retry_after_seconds":1}`
		if got := readBody(t, resp); got != want {
			t.Errorf("body: got %s, want %s", got, want)
		}

		backend.Release()
		if resp := recv(t, "the trial's response", trial); resp != nil {
			wantStatus(t, resp, http.StatusOK)
			resp.Body.Close()
		}
		if st := b.State(); st != breaker.Closed {
			t.Errorf("state after a successful trial: got %v, want closed", st)
		}
	})

	t.Run("forced open", func(t *testing.T) {
		backend, _ := countingBackend(t)
		f := newFixture(t, single(upstreamCfg(t, backend.URL)))
		f.breakers["svc"].SetMode(breaker.ForcedOpen)
		resp := f.get(t, "", "/")
		wantStatus(t, resp, http.StatusServiceUnavailable)
		if got := resp.Header.Get(HeaderCircuit); got != "open" {
			t.Errorf("%s: got %q, want open", HeaderCircuit, got)
		}
		if got := resp.Header.Get("Retry-After"); got != "30" {
			t.Errorf("Retry-After: got %q, want 30 (the open duration)", got)
		}
	})
}

func TestClassification(t *testing.T) {
	backend := statusBackend(t)
	def := upstreamCfg(t, backend.URL)
	custom := upstreamCfg(t, backend.URL)
	// statuses: [4xx, 5xx], success_statuses: [429]
	for c := 400; c < 600; c++ {
		custom.Failure.FailureStatus.Set(c, c != 429)
	}
	for _, u := range []*config.Upstream{def, custom} {
		u.Breaker.ConsecutiveFailures = 0 // never trip
		u.Breaker.Window, u.Breaker.Buckets = time.Hour, 1
	}
	cfg := &config.Config{
		Upstreams: map[string]*config.Upstream{"def": def, "custom": custom},
		Routes: []config.Route{
			{PathPrefix: "/def/", StripPrefix: true, Upstream: "def"},
			{PathPrefix: "/custom/", StripPrefix: true, Upstream: "custom"},
		},
	}
	f := newFixture(t, cfg)
	for _, tc := range []struct {
		upstream string
		status   int
		want     Result
	}{
		{"def", 200, Success},
		{"def", 404, Success},
		{"def", 429, Success},
		{"def", 500, FailureStatus},
		{"def", 501, Success}, // the default 5xx excludes 501
		{"def", 503, FailureStatus},
		{"custom", 404, FailureStatus},
		{"custom", 429, Success}, // success_statuses beat statuses
		{"custom", 501, FailureStatus},
	} {
		b := f.breakers[tc.upstream]
		before := b.Snapshot().Counts
		n := len(f.rec.snapshot())
		resp := f.get(t, "", "/"+tc.upstream+"/status/"+strconv.Itoa(tc.status))
		wantStatus(t, resp, tc.status)
		got := f.rec.wait(t, n+1)[n]
		if got.result != tc.want || got.upstream != tc.upstream {
			t.Errorf("%s %d: got %v, want %s:%v", tc.upstream, tc.status, got, tc.upstream, tc.want)
		}
		after := b.Snapshot().Counts
		wantFailures := before.Failures
		if tc.want == FailureStatus {
			wantFailures++
		}
		if after.Requests != before.Requests+1 || after.Failures != wantFailures {
			t.Errorf("%s %d: breaker counts got %+v, want %d requests, %d failures",
				tc.upstream, tc.status, after, before.Requests+1, wantFailures)
		}
	}
}

func TestUpstreamErrors(t *testing.T) {
	type check struct {
		status int
		body   string
		result Result
		failed bool // counted as a breaker failure
	}
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, u *config.Upstream) string // returns the target
		want  check
	}{
		{"refused", func(t *testing.T, u *config.Upstream) string { return refusedURL(t) },
			check{502, `{"error":"bad_gateway","upstream":"svc"}`, FailureTransport, true}},
		{"refused, transport errors not counted", func(t *testing.T, u *config.Upstream) string {
			u.Failure.TransportErrors = false
			return refusedURL(t)
		}, check{502, `{"error":"bad_gateway","upstream":"svc"}`, Ignored, false}},
		{"response header timeout", func(t *testing.T, u *config.Upstream) string {
			u.ResponseHeaderTimeout = 50 * time.Millisecond
			return newBlockingBackend(t).URL
		}, check{504, `{"error":"gateway_timeout","upstream":"svc"}`, FailureTimeout, true}},
		{"upstream timeout", func(t *testing.T, u *config.Upstream) string {
			u.Timeout = 50 * time.Millisecond
			return newBlockingBackend(t).URL
		}, check{504, `{"error":"gateway_timeout","upstream":"svc"}`, FailureTimeout, true}},
		{"timeouts not counted", func(t *testing.T, u *config.Upstream) string {
			u.Timeout = 50 * time.Millisecond
			u.Failure.Timeouts = false
			return newBlockingBackend(t).URL
		}, check{504, `{"error":"gateway_timeout","upstream":"svc"}`, Ignored, false}},
		{"connection reset", func(t *testing.T, u *config.Upstream) string {
			s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				conn, _, _ := http.NewResponseController(w).Hijack()
				conn.Close()
			}))
			t.Cleanup(s.Close)
			return s.URL
		}, check{502, `{"error":"bad_gateway","upstream":"svc"}`, FailureTransport, true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := upstreamCfg(t, "http://placeholder")
			target := tc.setup(t, u)
			u = withTarget(t, u, target)
			f := newFixture(t, single(u))
			resp := f.get(t, "", "/")
			wantStatus(t, resp, tc.want.status)
			if got := resp.Header.Get("Content-Type"); got != "application/json" {
				t.Errorf("Content-Type: got %q, want application/json", got)
			}
			if got := readBody(t, resp); got != tc.want.body {
				t.Errorf("body: got %s, want %s", got, tc.want.body)
			}
			wantResults(t, f.rec.wait(t, 1), tc.want.result)
			sn := f.breakers["svc"].Snapshot()
			if wantF := map[bool]uint32{true: 1}[tc.want.failed]; sn.Counts.Failures != wantF || sn.Consecutive != int(wantF) {
				t.Errorf("breaker: got %d failures, %d consecutive, want %d", sn.Counts.Failures, sn.Consecutive, wantF)
			}
		})
	}
}

// withTarget returns u with its one target replaced.
func withTarget(t *testing.T, u *config.Upstream, target string) *config.Upstream {
	t.Helper()
	n := upstreamCfg(t, target)
	n.Breaker, n.Failure, n.Fallback = u.Breaker, u.Failure, u.Fallback
	n.Timeout, n.ResponseHeaderTimeout, n.DialTimeout = u.Timeout, u.ResponseHeaderTimeout, u.DialTimeout
	return n
}

// TestDoneExactlyOnce sends one request of each kind as a half-open trial: a missing
// Done would leave the trial slot taken, a second one would be reported to the
// Recorder twice (Done and Recorder are reported together). Each row is data: what the
// upstream does, how the client asks, and what the Recorder must hear.
func TestDoneExactlyOnce(t *testing.T) {
	for _, tc := range []struct {
		name    string
		backend doneBackend
		client  doneClient
		path    string
		timeout time.Duration // the upstream's timeout
		status  int           // the status the client gets (0: none)
		want    []Result      // the Recorder calls
	}{
		{"success", statusCodes, clientGet, "/status/200", 0, 200, []Result{Success}},
		{"failure status", statusCodes, clientGet, "/status/500", 0, 500, []Result{FailureStatus}},
		{"refused", refused, clientGet, "/", 0, 502, []Result{FailureTransport}},
		{"timeout", blocking, clientGet, "/", 30 * time.Millisecond, 504, []Result{FailureTimeout}},
		{"client cancel", blocking, clientGivesUp, "/", 0, 0, []Result{Ignored}},
		{"upgrade", switches, clientUpgrade, "/", 0, http.StatusSwitchingProtocols, []Result{Success}},
		// httptest.ResponseRecorder cannot be hijacked: ReverseProxy then calls the
		// ErrorHandler after Hijack was tried.
		{"upgrade refused by a non-hijackable writer", switchesByHandler, clientUpgradeNoHijack, "/", 0, 502, []Result{Success}},
		{"panic before headers", panics, clientAborted, "/", 0, 0, []Result{Ignored}},
		// Reported at the headers, then as a late failure when the body breaks.
		{"body broken after headers", truncates, clientReadsCutBody, "/", 0, 200, []Result{Success, FailureBody}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := upstreamCfg(t, tc.backend.url(t))
			u.Timeout = tc.timeout
			u.UpgradeProtocols = []string{"x"}
			f := newFixture(t, single(u))
			if tc.backend == panics {
				replaceTransport(f.p, roundTripFunc(func(*http.Request) (*http.Response, error) {
					panic(http.ErrAbortHandler)
				}))
			}
			b := f.breakers["svc"]
			b.Trip()
			f.clock.Add(31 * time.Second) // the next request is a half-open trial
			tc.client.send(t, f, tc.path, tc.status)

			wantResults(t, f.rec.wait(t, len(tc.want)), tc.want...)
			eventually(t, "the trial to finish", func() bool { return b.Snapshot().TrialsInFlight == 0 })
			f.srv.Close() // waits for the handler to return
			wantResults(t, f.rec.snapshot(), tc.want...)
			if sn := b.Snapshot(); sn.TrialsInFlight != 0 {
				t.Errorf("trials in flight: got %d, want 0", sn.TrialsInFlight)
			}
		})
	}
}

// doneBackend is what the upstream of a TestDoneExactlyOnce row does.
type doneBackend int

const (
	statusCodes       doneBackend = iota // answers /status/N with N
	refused                              // refuses connections
	blocking                             // never answers
	switches                             // answers 101 on a hijacked connection
	switchesByHandler                    // answers 101 through WriteHeader
	panics                               // the transport panics before any headers
	truncates                            // sends 5 of the 100 bytes it announced, then closes
)

func (k doneBackend) url(t *testing.T) string {
	hijacked := func(raw string) string {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			conn, brw, _ := http.NewResponseController(w).Hijack()
			defer conn.Close()
			_, _ = brw.WriteString(raw)
			_ = brw.Flush()
		}))
		t.Cleanup(s.Close)
		return s.URL
	}
	switch k {
	case refused:
		return refusedURL(t)
	case blocking:
		return newBlockingBackend(t).URL
	case switches:
		return hijacked("HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n")
	case switchesByHandler:
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Connection", "Upgrade")
			w.Header().Set("Upgrade", "x")
			w.WriteHeader(http.StatusSwitchingProtocols)
		}))
		t.Cleanup(s.Close)
		return s.URL
	case truncates:
		return hijacked("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
	default: // statusCodes, panics (its transport is replaced)
		return statusBackend(t).URL
	}
}

// doneClient is how the client of a TestDoneExactlyOnce row asks, and what it checks.
type doneClient int

const (
	clientGet             doneClient = iota // a GET that gets the row's status
	clientGivesUp                           // a GET the client gives up on after 30 ms
	clientUpgrade                           // a raw upgrade request for protocol x
	clientUpgradeNoHijack                   // the same through a ResponseRecorder
	clientAborted                           // a GET whose connection the proxy aborts
	clientReadsCutBody                      // a GET whose body must arrive cut short
)

func (c doneClient) send(t *testing.T, f *fixture, path string, status int) {
	t.Helper()
	switch c {
	case clientGet:
		wantStatus(t, f.get(t, "", path), status)
	case clientGivesUp:
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, f.srv.URL+path, nil)
		if resp, err := f.client.Do(req); err == nil {
			resp.Body.Close()
			t.Fatalf("got a response, want the client's deadline")
		}
	case clientUpgrade:
		resp := rawRequest(t, f.srv.Listener.Addr().String(),
			"GET "+path+" HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n")
		wantStatus(t, resp, status)
	case clientUpgradeNoHijack:
		req := httptest.NewRequest(http.MethodGet, path, nil)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "x")
		w := httptest.NewRecorder()
		f.p.ServeHTTP(w, req)
		if w.Code != status {
			t.Errorf("status: got %d, want %d", w.Code, status)
		}
	case clientAborted:
		if resp, err := f.client.Get(f.srv.URL + path); err == nil {
			resp.Body.Close()
			t.Fatalf("got a response, want the connection aborted")
		}
	case clientReadsCutBody:
		// ReverseProxy aborts the response with http.ErrAbortHandler: the connection
		// closes, before or after the buffered headers went out.
		resp, err := f.client.Get(f.srv.URL + path)
		if err != nil {
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != status {
			t.Errorf("status: got %d, want %d", resp.StatusCode, status)
		}
		if _, err := io.ReadAll(resp.Body); err == nil {
			t.Errorf("reading the body: got no error, want it cut short")
		}
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// replaceTransport points every route of p's table at rt, publishing the change through
// the table pointer so that requests see it.
func replaceTransport(p *Proxy, rt http.RoundTripper) {
	old := p.table.Load()
	var routes []*route
	for _, l := range [][]*route{old.routes.any.routes} {
		for _, r := range l {
			c := &route{index: r.index, host: r.host, prefix: r.prefix, methods: r.methods, strip: r.strip,
				up: r.up, trusted: r.trusted}
			var rps []*httputil.ReverseProxy
			for _, orig := range p.routeProxies(r) {
				rp := *orig
				rp.Transport = rt
				rps = append(rps, &rp)
			}
			c.rps.Store(&rps)
			routes = append(routes, c)
		}
	}
	p.table.Store(&table{routes: newRouteIndex(routes), upstreams: old.upstreams})
}

func TestMetricsOnly(t *testing.T) {
	backend, hits := countingBackend(t)
	u := upstreamCfg(t, backend.URL)
	u.Breaker.Mode = "metrics_only"
	f := newFixture(t, single(u))
	b := f.breakers["svc"]
	b.Trip()

	resp := f.get(t, "", "/")
	wantStatus(t, resp, http.StatusOK)
	if v := resp.Header.Get(HeaderCircuit); v != "" {
		t.Errorf("%s: got %q, want none (the request was admitted)", HeaderCircuit, v)
	}
	if hits.Load() != 1 {
		t.Errorf("backend hits: got %d, want 1", hits.Load())
	}
	wantResults(t, f.rec.wait(t, 2), Success, WouldReject)
	if sn := b.Snapshot(); sn.State != breaker.Open || sn.Counts.Requests != 0 {
		t.Errorf("breaker: got %v with %d requests, want open with 0 (would-reject outcomes change nothing)",
			sn.State, sn.Counts.Requests)
	}
}

func TestNoBreaker(t *testing.T) {
	backend, _ := countingBackend(t)
	u := upstreamCfg(t, backend.URL)
	u.Breaker.Enabled = false
	f := newFixture(t, single(u))
	if _, ok := f.breakers["svc"]; ok {
		t.Fatal("fixture made a breaker for a disabled one")
	}
	wantStatus(t, f.get(t, "", "/"), http.StatusOK)
	wantResults(t, f.rec.wait(t, 1), Success)
}

// TestInvalidUpgradeIsClientError: an unprintable Upgrade is the client's mistake.
func TestInvalidUpgradeIsClientError(t *testing.T) {
	backend, hits := countingBackend(t)
	f := newFixture(t, single(upstreamCfg(t, backend.URL)))
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header["Upgrade"] = []string{"bad\x7f"}
	w := httptest.NewRecorder()
	f.p.ServeHTTP(w, req)
	if w.Code != http.StatusBadRequest || hits.Load() != 0 {
		t.Errorf("got status %d, %d backend hits, want 400 and 0", w.Code, hits.Load())
	}
	if got := f.rec.snapshot(); len(got) != 0 {
		t.Errorf("recorder: got %v, want nothing", got)
	}
}

// Test1xxPassesThrough checks that informational responses do not count as the outcome.
func Test1xxPassesThrough(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</app.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.WriteHeader(http.StatusInternalServerError)
	}))
	t.Cleanup(backend.Close)
	f := newFixture(t, single(upstreamCfg(t, backend.URL)))
	conn, err := net.Dial("tcp", f.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(conn)
	var codes []int
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		codes = append(codes, resp.StatusCode)
		if resp.StatusCode >= 200 {
			break
		}
	}
	if len(codes) != 2 || codes[0] != 103 || codes[1] != 500 {
		t.Errorf("statuses: got %v, want [103 500]", codes)
	}
	wantResults(t, f.rec.wait(t, 1), FailureStatus)
}

// TestClientBodyErrors: a request body that cannot be read is the client's problem.
func TestClientBodyErrors(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	t.Cleanup(backend.Close)
	u := upstreamCfg(t, backend.URL)
	u.Breaker.ConsecutiveFailures = 1
	f := newFixture(t, single(u))

	for _, tc := range []struct {
		name string
		body func(w http.ResponseWriter) io.ReadCloser
		want int
	}{
		{"read error", func(http.ResponseWriter) io.ReadCloser {
			return io.NopCloser(io.MultiReader(strings.NewReader("part"), errReader{io.ErrUnexpectedEOF}))
		}, http.StatusBadRequest},
		{"too large", func(w http.ResponseWriter) io.ReadCloser {
			return http.MaxBytesReader(w, io.NopCloser(strings.NewReader(strings.Repeat("x", 100))), 10)
		}, http.StatusRequestEntityTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodPost, "/upload", nil)
			req.Body, req.ContentLength = tc.body(w), 100
			n := len(f.rec.snapshot())
			f.p.ServeHTTP(w, req)
			if w.Code != tc.want {
				t.Errorf("status: got %d, want %d (body %s)", w.Code, tc.want, w.Body)
			}
			wantResults(t, f.rec.snapshot()[n:], Ignored)
			if sn := f.breakers["svc"].Snapshot(); sn.Counts.Requests != 0 || sn.State != breaker.Closed {
				t.Errorf("breaker: got %v with %d requests, want closed with 0", sn.State, sn.Counts.Requests)
			}
		})
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func ExampleResult_String() {
	for _, r := range Results() {
		fmt.Print(r, " ")
	}
	// Output: success failure_status failure_transport failure_timeout rejected ignored rejected_concurrency failure_body would_reject
}
