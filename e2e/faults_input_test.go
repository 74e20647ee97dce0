package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// faultInputProxy is one replica (memory store) with two upstreams: "api", the flaky
// backend, routed from /api/ for any host; and "admin", an in-test backend, routed from
// /admin/ for Host admin.internal only. Header limit 4096 bytes, read_header_timeout
// 500ms.
type faultInputProxy struct {
	*Proxy
	cfg     faultConfig
	api     *Backend
	admin   *faultBackend
	apiSeen func() int64
}

const (
	faultHeaderLimit = 4096
	faultHeaderWait  = 500 * time.Millisecond
)

func startFaultInputProxy(t *testing.T, token string) *faultInputProxy {
	t.Helper()
	b := &faultInputProxy{api: startBackend(t)}
	b.admin = startFaultBackend(t, func(w http.ResponseWriter, r *http.Request, _ int64) { faultOK(w, r) })
	cfg := newFaultConfig(t, b.api.URL())
	cfg.AdminToken = token
	cfg.MaxHeaderBytes, cfg.ReadHeaderTimeout = faultHeaderLimit, faultHeaderWait
	cfg.Upstreams = append(cfg.Upstreams, faultUpstream{Name: "admin", Target: b.admin.URL(),
		ConsecutiveFailures: 5, OpenDuration: time.Second})
	cfg.Routes = []faultRoute{{Host: "admin.internal", Prefix: "/admin/", Upstream: "admin"}, {Prefix: "/api/", Upstream: upstream}}
	b.cfg = cfg
	b.Proxy = startProxy(t, cfg.YAML(t))
	b.apiSeen = func() int64 { return b.api.Stats(t).Requests }
	return b
}

// raw sends one raw request (it should ask for Connection: close or be refused) and
// returns the first response's status and the whole answer.
func (b *faultInputProxy) raw(t *testing.T, req string) (int, string) {
	t.Helper()
	out, err := faultRaw(b.Addr(), req, 5*time.Second)
	if out == "" && err != nil {
		t.Fatalf("raw request %.60q: %v", req, err)
	}
	return faultStatus(out), out
}

// TestFaultBadInput sends what no well-behaved client sends, to the real binary. Each
// request must be refused by the proxy with the status given, and none may reach an
// upstream; the proxy keeps serving well-formed requests afterwards.
func TestFaultBadInput(t *testing.T) {
	t.Parallel()
	b := startFaultInputProxy(t, "")
	const get = "GET /api/x HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n"
	cases := []struct {
		name, req string
		want      []int // acceptable statuses
	}{
		// Oversized headers.
		{"header over max_header_bytes", get + "X-Big: " + strings.Repeat("a", 64<<10) + "\r\n\r\n", []int{431}},
		{"many headers over max_header_bytes", get + strings.Repeat("X-Many: 0123456789012345678901234567890123456789\r\n", 1000) + "\r\n", []int{431}},
		// Malformed request lines.
		{"no version", "GET /api/x\r\nHost: a\r\n\r\n", []int{400}},
		{"garbage line", "GARBAGE\r\n\r\n", []int{400}},
		{"extra field", "GET /api/x HTTP/1.1 extra\r\nHost: a\r\n\r\n", []int{400}},
		{"bad protocol", "GET /api/x HTP/1.1\r\nHost: a\r\n\r\n", []int{400}},
		{"control char in method", "G\x01T /api/x HTTP/1.1\r\nHost: a\r\n\r\n", []int{400}},
		{"space in path", "GET /api/ x HTTP/1.1\r\nHost: a\r\n\r\n", []int{400}},
		{"empty method", " /api/x HTTP/1.1\r\nHost: a\r\n\r\n", []int{400}},
		{"malformed header line", get + "No colon here\r\n\r\n", []int{400}},
		{"space before colon", get + "X-Bad : 1\r\n\r\n", []int{400}},
		{"NUL in header value", get + "X-Nul: a\x00b\r\n\r\n", []int{400}},
		{"bare LF line ending", "GET /api/x HTTP/1.1\nHost: a\nConnection: close\n\n", []int{200, 400}}, // tolerated by net/http; never smuggled
		// Framing that could be used to smuggle a request past the proxy.
		// (Content-Length with Transfer-Encoding: see TestFaultRequestSmuggling.)
		{"two different Content-Lengths", "POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\nConnection: close\r\n\r\nabcde", []int{400}},
		{"negative Content-Length", "POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\nConnection: close\r\n\r\n", []int{400}},
		{"Content-Length with sign", "POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\nConnection: close\r\n\r\nabcd", []int{400}},
		{"Transfer-Encoding chunked, identity", "POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\nConnection: close\r\n\r\n0\r\n\r\n", []int{400, 501}},
		{"two Transfer-Encodings", "POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n", []int{400, 501}},
		{"Transfer-Encoding gzip", "POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n", []int{400, 501}},
		{"bad chunk size", "POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", []int{400}},
		// Invalid Host headers.
		{"no Host", "GET /api/x HTTP/1.1\r\nConnection: close\r\n\r\n", []int{400}},
		{"two Hosts", "GET /api/x HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n", []int{400}},
		{"space in Host", "GET /api/x HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n", []int{400}},
		{"control char in Host", "GET /api/x HTTP/1.1\r\nHost: a\x01b\r\nConnection: close\r\n\r\n", []int{400}},
		{"slash in Host", "GET /api/x HTTP/1.1\r\nHost: a/b\r\nConnection: close\r\n\r\n", []int{400}},
		// net/http lets an unclosed IPv6 literal through; it matches no host route, so
		// it routes as any host-less request would.
		{"bracket in Host", "GET /api/x HTTP/1.1\r\nHost: [::1\r\nConnection: close\r\n\r\n", []int{400}},
		// Paths that try to leave their route: /api/ must never reach admin's upstream
		// (routed for Host admin.internal only), and every path is matched cleaned.
		{"dot-dot out of /api/", "GET /api/../admin/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", []int{404}},
		{"dot-dot deep", "GET /api/../../../admin/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", []int{404}},
		{"dot then dot-dot", "GET /api/./../admin/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", []int{404}},
		{"encoded dot-dot", "GET /api/%2e%2e/admin/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", []int{400}},
		{"encoded upper dot-dot", "GET /api/%2E%2E/admin/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", []int{400}},
		{"half-encoded dot-dot", "GET /api/.%2e/admin/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", []int{400}},
		{"encoded slash after dot-dot", "GET /api/..%2fadmin/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", []int{400}},
		{"encoded slash dot-dot slash", "GET /api%2f..%2fadmin/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", []int{400, 404}},
		{"backslash dot-dot", "GET /api/..\\admin/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", []int{400}},                                                           // ".." to a backend that splits on backslashes
		{"absolute-form to admin host, path escaping", "GET http://admin.internal/api/../admin/x HTTP/1.1\r\nHost: admin.internal\r\nConnection: close\r\n\r\n", []int{200}}, // exactly /admin/x on admin.internal: its own route
		{"no leading slash", "GET api/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", []int{400}},
		{"asterisk form", "GET * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", []int{400}},
		{"OPTIONS asterisk form", "OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", []int{400}},
		{"CONNECT", "CONNECT admin.internal:80 HTTP/1.1\r\nHost: admin.internal:80\r\nConnection: close\r\n\r\n", []int{400, 405}},
	}
	// Bodies stream: the head of these is forwarded before the body turns out broken, so
	// api's upstream sees the request start; the proxy then answers 400 itself.
	streamed := map[string]bool{"bad chunk size": true}
	apiBefore, adminBefore := b.apiSeen(), b.admin.requests.Load()
	var mu sync.Mutex
	statuses := map[string]int{}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			apiAt, adminAt := b.apiSeen(), b.admin.requests.Load()
			code, out := b.raw(t, c.req)
			mu.Lock()
			statuses[c.name] = code
			mu.Unlock()
			ok := false
			for _, w := range c.want {
				ok = ok || code == w
			}
			if !ok {
				t.Errorf("%s: got %d, want one of %v; answer:\n%.400s", c.name, code, c.want, out)
			}
			rs := faultParseResponses(out)
			apiGot, adminGot := b.apiSeen()-apiAt, b.admin.requests.Load()-adminAt
			switch {
			case code == 200 && strings.Contains(c.name, "admin host"):
				if adminGot != 1 || b.admin.Paths()["/admin/x"] == 0 {
					t.Errorf("%s: admin backend got %d requests %v, want one, for /admin/x", c.name, adminGot, b.admin.Paths())
				}
			case code == 200:
				// Tolerated forms reach api's upstream with a path inside /api/.
				var body struct{ Path string }
				if len(rs) == 0 || json.Unmarshal([]byte(rs[0].Body), &body) != nil || !strings.HasPrefix(body.Path, "/api/") {
					t.Errorf("%s: 200 %v, want api's backend to have seen a path under /api/", c.name, rs)
				}
				if adminGot != 0 {
					t.Errorf("%s: admin's backend got %d requests", c.name, adminGot)
				}
			case streamed[c.name]:
				if apiGot > 1 || adminGot != 0 {
					t.Errorf("%s: refused with %d; the upstreams got %d (api) and %d (admin) requests, want at most the one started", c.name, code, apiGot, adminGot)
				}
			default:
				if apiGot != 0 || adminGot != 0 {
					t.Errorf("%s: refused with %d but the upstreams got %d (api) and %d (admin) requests", c.name, code, apiGot, adminGot)
				}
			}
		})
	}
	if r := b.Get("/api/after"); !r.OK() {
		t.Errorf("a good request after the bad ones: %v, want 200", r)
	}
	t.Logf("statuses: %v; upstream requests: api %d, admin %d", statuses, b.apiSeen()-apiBefore, b.admin.requests.Load()-adminBefore)
	faultFigures{Sent: len(cases) + 1, Extra: map[string]any{"cases": len(cases),
		"admin_backend_reached": b.admin.requests.Load() - adminBefore}}.record(t, "bad_input")
}

// TestFaultSlowLoris opens connections that send their headers a byte every 100ms: the
// proxy must close each at read_header_timeout (500ms), whatever it has read, and keep
// answering other clients meanwhile.
func TestFaultSlowLoris(t *testing.T) {
	t.Parallel()
	b := startFaultInputProxy(t, "")
	const conns = 50
	type result struct {
		closedAfter time.Duration
		sent        int
		err         error
	}
	results := make([]result, conns)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", b.Addr(), 2*time.Second)
			if err != nil {
				results[i].err = err
				return
			}
			defer c.Close()
			began := time.Now()
			req := "GET /api/x HTTP/1.1\r\nHost: a\r\nX-Slow: " + strings.Repeat("s", 200)
			closed := make(chan struct{})
			go func() { // the proxy closing shows as EOF (or a reset) on read
				defer close(closed)
				_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
				_, _ = io.Copy(io.Discard, c)
			}()
			for j := 0; j < len(req); j++ {
				select {
				case <-closed:
					results[i].closedAfter = time.Since(began)
					return
				case <-time.After(100 * time.Millisecond):
				}
				if _, err := c.Write([]byte{req[j]}); err != nil {
					<-closed
					results[i].closedAfter = time.Since(began)
					return
				}
				results[i].sent++
			}
			results[i].err = fmt.Errorf("still open after %d slow bytes", len(req))
		}()
	}
	// Meanwhile other clients are served.
	time.Sleep(200 * time.Millisecond)
	var lat []time.Duration
	for range 20 {
		r := b.Get("/api/meanwhile")
		if !r.OK() {
			t.Errorf("request during the slow-loris: %v, want 200", r)
		}
		lat = append(lat, r.At.Sub(r.Sent))
	}
	wg.Wait()
	var closed []time.Duration
	for i, r := range results {
		if r.err != nil {
			t.Errorf("slow connection %d: %v", i, r.err)
			continue
		}
		closed = append(closed, r.closedAfter)
		if r.closedAfter < faultHeaderWait-50*time.Millisecond || r.closedAfter > faultHeaderWait+time.Second {
			t.Errorf("slow connection %d closed after %v (%d bytes), want at read_header_timeout %v", i, r.closedAfter, r.sent, faultHeaderWait)
		}
	}
	if got := b.apiSeen(); got != 20 {
		t.Errorf("the backend got %d requests, want the 20 normal ones only", got)
	}
	faultFigures{Sent: conns + 20, Extra: map[string]any{"slow_connections": conns,
		"closed_after_p50_ms": ms(percentile(closed, 50)), "closed_after_max_ms": ms(percentile(closed, 100)),
		"read_header_timeout_ms": faultHeaderWait.Milliseconds(), "others_p99_ms": ms(percentile(lat, 99)),
		"took_ms": ms(time.Since(start))}}.record(t, "slow_loris")
}

// faultSeen is what an in-test upstream received.
type faultSeen struct {
	Method, Path  string
	ContentLength []string // the Content-Length header as received
	Chunked       bool     // Transfer-Encoding: chunked as received
	Body          string
}

// faultRecordingBackend is an upstream that records every request it receives, body included.
func faultRecordingBackend(t *testing.T) (*faultBackend, func() []faultSeen) {
	var mu sync.Mutex
	var seen []faultSeen
	b := startFaultBackend(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		mu.Lock()
		seen = append(seen, faultSeen{Method: r.Method, Path: r.URL.Path, ContentLength: r.Header["Content-Length"],
			Chunked: len(r.TransferEncoding) > 0, Body: string(body)})
		mu.Unlock()
		faultOK(w, r)
	})
	return b, func() []faultSeen {
		mu.Lock()
		defer mu.Unlock()
		return append([]faultSeen(nil), seen...)
	}
}

// TestFaultRequestSmuggling sends requests framed by both Content-Length and
// Transfer-Encoding, with a second request hidden where one of the two framings puts
// the body; neither asks for the connection to be closed. net/http drops Content-Length
// and decodes the chunked body (RFC 9112 §6.3) before the proxy sees the request, so the
// proxy cannot refuse it with 400; RFC 9112 §6.1 allows processing it by
// Transfer-Encoding alone, provided the server closes the connection after responding.
// So: exactly one response, 200, saying Connection: close; then the proxy closes the
// connection (the bytes after the chunked body are never answered as a request); and
// the upstream receives the request exactly as the proxy parsed it, never with both
// headers, never the hidden request on its own.
func TestFaultRequestSmuggling(t *testing.T) {
	t.Parallel()
	backend, seen := faultRecordingBackend(t)
	p := startProxy(t, newFaultConfig(t, backend.URL()).YAML(t))
	hidden := "GET /api/smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
	cases := []struct {
		name, req string
		upstream  []string // what the upstream must receive (path:body per request)
	}{
		{"CL.TE: a request after the empty chunked body",
			"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: " + fmt.Sprint(5+len(hidden)) + "\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + hidden,
			[]string{"/api/x:"}},
		{"TE.CL: a request inside the chunked body",
			"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" +
				fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(hidden), hidden),
			[]string{"/api/x:" + hidden}},
	}
	var outcomes []string
	for _, c := range cases {
		before := len(seen())
		out, err := faultRaw(p.Addr(), c.req, 5*time.Second)
		if out == "" && err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		// faultRaw reads to EOF: an error here is its deadline, the connection kept open.
		closed := err == nil
		rs := faultParseResponses(out)
		head, _, _ := strings.Cut(out, "\r\n\r\n")
		saysClose := strings.Contains(head+"\r\n", "\r\nConnection: close\r\n")
		got := seen()[before:]
		var gotS []string
		for _, s := range got {
			gotS = append(gotS, s.Path+":"+s.Body)
			if len(s.ContentLength) > 0 && s.Chunked {
				t.Errorf("%s: the upstream received %s %s with both Content-Length %v and Transfer-Encoding", c.name, s.Method, s.Path, s.ContentLength)
			}
		}
		outcomes = append(outcomes, fmt.Sprintf("%s: %d responses, first %d, Connection: close %v, closed %v",
			c.name, len(rs), faultStatus(out), saysClose, closed))
		if len(rs) != 1 || rs[0].Status != http.StatusOK {
			t.Errorf("%s: got %.300q, want exactly one response, 200 (the hidden request never answered)", c.name, out)
		}
		if !saysClose {
			t.Errorf("%s: the response does not say Connection: close", c.name)
		}
		if !closed {
			t.Errorf("%s: the proxy kept the connection open after responding (%v), want it closed (RFC 9112 §6.1)", c.name, err)
		}
		if strings.Join(gotS, "|") != strings.Join(c.upstream, "|") {
			t.Errorf("%s: the upstream received %q, want %q (each request as the proxy parsed it)", c.name, gotS, c.upstream)
		}
	}
	t.Logf("outcomes: %v", outcomes)
	faultFigures{Sent: len(cases), Extra: map[string]any{"outcomes": outcomes}}.record(t, "request_smuggling")
}

// faultGenReader yields n bytes of a repeating pattern without holding more than one chunk.
type faultGenReader struct{ left int64 }

func (g *faultGenReader) Read(p []byte) (int, error) {
	if g.left <= 0 {
		return 0, io.EOF
	}
	n := min(int64(len(p)), g.left)
	for i := range p[:n] {
		p[i] = byte('a' + i%26)
	}
	g.left -= n
	return int(n), nil
}

// TestFaultHugeBody streams a 512 MiB request body (chunked, from a generator) through
// the proxy to an upstream that reads and discards it: every byte arrives, and the
// proxy's resident memory (VmRSS) never grows by more than 100 MiB: bodies stream, they
// are not buffered.
func TestFaultHugeBody(t *testing.T) {
	t.Parallel()
	size := int64(512 << 20)
	backend := startFaultBackend(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
		_, _ = io.Copy(io.Discard, r.Body)
		faultOK(w, r)
	})
	cfg := newFaultConfig(t, backend.URL())
	cfg.Upstreams[0].Timeout = 0 // none: the upload takes as long as it takes
	p := startProxy(t, cfg.YAML(t))
	if r := p.Get("/warm"); !r.OK() {
		t.Fatalf("warm-up: %v", r)
	}
	pid := faultPID(p.process)
	base := faultRSS(t, pid)
	var peak, samples atomic.Int64
	peak.Store(base)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 100000; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if rss := faultRSS(t, pid); rss > peak.Load() {
				peak.Store(rss)
			}
			samples.Add(1)
		}
	}()
	req, err := http.NewRequest("POST", p.URL()+"/upload", &faultGenReader{left: size})
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = -1 // chunked: streamed from the generator
	c := &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{Proxy: nil}}
	start := time.Now()
	resp, err := c.Do(req)
	took := time.Since(start)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatalf("upload of %d MiB: %v", size>>20, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	growth := peak.Load() - base
	t.Logf("%d MiB streamed in %v (%.0f MiB/s); proxy RSS %d KiB at start, peak %d KiB (+%d KiB) over %d samples",
		size>>20, took.Round(time.Millisecond), float64(size>>20)/took.Seconds(), base, peak.Load(), growth, samples.Load())
	if samples.Load() < 10 {
		t.Errorf("RSS sampled %d times only", samples.Load())
	}
	if resp.StatusCode != http.StatusOK {
		t.Errorf("upload: got %d, want 200", resp.StatusCode)
	}
	if got := backend.body.Load(); got != size {
		t.Errorf("the upstream read %d body bytes, want %d", got, size)
	}
	if growth > 100<<10 {
		t.Errorf("the proxy's RSS grew by %d MiB during the upload, want < 100 MiB (the body must stream)", growth>>10)
	}
	faultFigures{Sent: 2, Extra: map[string]any{"body_mib": size >> 20, "took_ms": ms(took),
		"mib_per_s": float64(size>>20) / took.Seconds(), "rss_start_kib": base, "rss_growth_kib": growth, "rss_samples": samples.Load()}}.record(t, "huge_body")
}

// TestFaultAdminAuth tries every admin mutation (open, close, reset, mode, flush,
// reload) without a token and with wrong ones: each gets 401 {"error":"unauthorized"}
// with WWW-Authenticate: Bearer, and nothing changes: the circuit's state, mode and
// generation, the traffic, and no "admin command", flush or reload is logged. Then the
// right token opens the circuit, which shows the endpoints were real.
func TestFaultAdminAuth(t *testing.T) {
	t.Parallel()
	const token = "s3cret-t0ken"
	b := startFaultInputProxy(t, token)
	admin := b.cfg.AdminListen
	do := func(method, path, auth, body string) response {
		req, err := http.NewRequest(method, "http://"+admin+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		r := response{Sent: time.Now()}
		resp, err := b.client.Do(req)
		if err != nil {
			r.Err = err
			return r
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		r.Status, r.Body, r.RetryAfter = resp.StatusCode, string(data), resp.Header.Get("WWW-Authenticate")
		return r
	}
	circuit := func() map[string]any {
		r := do("GET", "/circuits/api", "Bearer "+token, "")
		var m map[string]any
		if r.Status != http.StatusOK || json.Unmarshal([]byte(r.Body), &m) != nil {
			t.Fatalf("GET /circuits/api with the token: %v", r)
		}
		return map[string]any{"state": m["state"], "mode": m["mode"], "generation": m["generation"], "trips": m["trips"]}
	}
	before := circuit()
	mutations := []struct{ path, body string }{
		{"/circuits/api/open", ""}, {"/circuits/api/close", ""}, {"/circuits/api/reset", ""},
		{"/circuits/api/mode", `{"mode":"forced_open"}`}, {"/circuits/api/mode?mode=forced_open", ""},
		{"/flush", ""}, {"/reload", ""},
	}
	auths := []string{"", "Bearer wrong", "Bearer " + token + "x", "Bearer " + token[:len(token)-1],
		"Basic " + token, token, "Bearer", "Bearer ", "bearer WRONG", "Token " + token}
	attempts := 0
	for _, m := range mutations {
		for _, a := range auths {
			attempts++
			r := do("POST", m.path, a, m.body)
			if r.Err != nil || r.Status != http.StatusUnauthorized || !strings.Contains(r.Body, `"unauthorized"`) || r.RetryAfter != "Bearer" {
				t.Errorf("POST %s with Authorization %q: got %v (WWW-Authenticate %q), want 401 unauthorized", m.path, a, r, r.RetryAfter)
			}
		}
		// A token in the query string is not a token.
		attempts++
		if r := do("POST", m.path+"?token="+token+"&access_token="+token, "", m.body); r.Status != http.StatusUnauthorized {
			t.Errorf("POST %s with the token in the query: got %v, want 401", m.path, r)
		}
	}
	if after := circuit(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("circuit after %d unauthorized mutations: %v, want unchanged %v", attempts, after, before)
	}
	if r := b.Get("/api/after"); !r.OK() {
		t.Errorf("traffic after the unauthorized mutations: %v, want 200", r)
	}
	for _, msg := range []string{"admin command", "admin flush", "config reloaded", "config reload failed"} {
		if l := b.LogsWhere(msgPrefix(msg)); len(l) > 0 {
			t.Errorf("logged %q after unauthorized requests only: %v", msg, l[0])
		}
	}
	// The right token works (so the refusals above were the token's doing).
	if r := do("POST", "/circuits/api/open", "Bearer "+token, ""); r.Status != http.StatusOK {
		t.Fatalf("POST /circuits/api/open with the token: %v, want 200", r)
	}
	if r := b.Get("/api/x"); !r.Rejected() {
		t.Errorf("after an authorized open: %v, want a rejection", r)
	}
	if r := do("POST", "/circuits/api/reset", "Bearer "+token, ""); r.Status != http.StatusOK {
		t.Errorf("POST /circuits/api/reset with the token: %v, want 200", r)
	}
	faultFigures{Sent: attempts + 3, Extra: map[string]any{"unauthorized_attempts": attempts,
		"mutations": len(mutations), "auth_variants": len(auths) + 1}}.record(t, "admin_auth")
}
