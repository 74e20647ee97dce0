package proxy

import (
	"bufio"
	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// badThenGood: the first request gets bad(w), the others 200 "good".
func badThenGood(t *testing.T, bad func(w http.ResponseWriter)) (*httptest.Server, *atomic.Int64) {
	var n atomic.Int64
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if n.Add(1) == 1 {
			bad(w)
			return
		}
		w.Header().Set("X-Good", "1")
		_, _ = io.WriteString(w, "good")
	}))
	t.Cleanup(s.Close)
	return s, &n
}

// TestRetryDiscardedAttemptLeaksNothing: a retried attempt's headers, trailers (declared
// or not), body (short, over 64 KiB, with or without a length, flushed, cut short) never
// reach the client, on GET or HEAD. Its 1xx responses do (logged): they were relayed
// before the attempt failed.
func TestRetryDiscardedAttemptLeaksNothing(t *testing.T) {
	cases := map[string]func(w http.ResponseWriter){
		"trailers": func(w http.ResponseWriter) {
			w.Header().Set("Trailer", "X-Bad")
			w.Header().Set("X-Bad-Head", "1")
			w.WriteHeader(503)
			_, _ = io.WriteString(w, "bad")
			w.Header().Set("X-Bad", "1")
		},
		"undeclared trailers": func(w http.ResponseWriter) {
			w.WriteHeader(503)
			_, _ = io.WriteString(w, "bad")
			w.(http.Flusher).Flush()
			w.Header().Set(http.TrailerPrefix+"X-Bad", "1")
		},
		"big body": func(w http.ResponseWriter) {
			w.Header().Set("X-Bad-Head", "1")
			w.WriteHeader(503)
			_, _ = io.WriteString(w, strings.Repeat("b", 1<<20))
		},
		"big body with length": func(w http.ResponseWriter) {
			w.Header().Set("Content-Length", "1048576")
			w.WriteHeader(503)
			_, _ = io.WriteString(w, strings.Repeat("b", 1<<20))
		},
		"short body": func(w http.ResponseWriter) {
			w.Header().Set("Content-Length", "1000")
			w.WriteHeader(503)
			_, _ = io.WriteString(w, "short")
			conn, _, _ := http.NewResponseController(w).Hijack()
			conn.Close()
		},
		"early hints": func(w http.ResponseWriter) {
			w.Header().Set("Link", "</bad.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.Header().Del("Link")
			w.WriteHeader(503)
		},
		"flushed": func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "text/event-stream")
			w.WriteHeader(503)
			for range 100 {
				_, _ = io.WriteString(w, strings.Repeat("e", 1000))
				w.(http.Flusher).Flush()
			}
		},
	}
	for name, bad := range cases {
		t.Run(name, func(t *testing.T) {
			s, n := badThenGood(t, bad)
			f := newFixture(t, single(retrying(t, s.URL)))
			for _, method := range []string{"GET", "HEAD"} {
				n.Store(0)
				conn, err := net.Dial("tcp", f.srv.Listener.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				_, _ = io.WriteString(conn, method+" / HTTP/1.1\r\nHost: x\r\n\r\n")
				br := bufio.NewReader(conn)
				var codes []int
				var resp *http.Response
				for {
					req, _ := http.NewRequest(method, "/", nil)
					resp, err = http.ReadResponse(br, req)
					if err != nil {
						t.Fatal(err)
					}
					codes = append(codes, resp.StatusCode)
					if resp.StatusCode >= 200 {
						break
					}
					t.Logf("%s: informational %d %v", method, resp.StatusCode, resp.Header)
				}
				body, err := io.ReadAll(resp.Body)
				if err != nil {
					t.Fatalf("%s body: %v", method, err)
				}
				want := "good"
				if method == "HEAD" {
					want = ""
				}
				if resp.StatusCode != 200 || string(body) != want || resp.Header.Get("X-Bad-Head") != "" || resp.Trailer.Get("X-Bad") != "" {
					t.Errorf("%s: %v %q header %v trailer %v", method, codes, body, resp.Header, resp.Trailer)
				}
				if len(codes) > 1 {
					t.Logf("%s: codes %v: a discarded attempt's 1xx reached the client", method, codes)
				}
			}
		})
	}
}

// TestRetryExpectContinueBufferedBody: a PUT with Expect: 100-continue and a body of exactly
// buffer_body bytes, chunked or not, whose first attempt fails after the upstream said
// 100 Continue and read the body: the second attempt gets the whole body again.
func TestRetryExpectContinueBufferedBody(t *testing.T) {
	var bodies []string
	var n atomic.Int64
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body) // sends 100 Continue
		bodies = append(bodies, string(b))
		if n.Add(1)%2 == 1 {
			w.WriteHeader(503)
			return
		}
		_, _ = io.WriteString(w, "good")
	}))
	t.Cleanup(s.Close)
	u := retrying(t, s.URL)
	u.Retries.BufferBody = 8
	f := newFixture(t, single(u))
	for _, chunked := range []bool{false, true} {
		bodies = nil
		conn, err := net.Dial("tcp", f.srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		head := "PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
		if chunked {
			head += "Transfer-Encoding: chunked\r\n\r\n"
		} else {
			head += "Content-Length: 8\r\n\r\n"
		}
		_, _ = io.WriteString(conn, head)
		br := bufio.NewReader(conn)
		var codes []int
		sent := false
		for {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			codes = append(codes, resp.StatusCode)
			if resp.StatusCode == 100 && !sent {
				sent = true
				if chunked {
					_, _ = io.WriteString(conn, "8\r\n12345678\r\n0\r\n\r\n")
				} else {
					_, _ = io.WriteString(conn, "12345678")
				}
				continue
			}
			if resp.StatusCode >= 200 {
				b, _ := io.ReadAll(resp.Body)
				if resp.StatusCode != 200 || string(b) != "good" {
					t.Errorf("chunked %v: %v %q", chunked, codes, b)
				}
				break
			}
		}
		if len(bodies) != 2 || bodies[0] != "12345678" || bodies[1] != "12345678" {
			t.Errorf("chunked %v: upstream got %q", chunked, bodies)
		}
		t.Logf("chunked %v: client saw %v", chunked, codes)
	}
}

// TestRetryUpgradeAfterAFailedAttempt: an upgrade request whose first attempt got a 503
// is retried, and the second attempt's 101 takes the connection over: the tunnel works,
// and the client saw nothing of the first attempt.
func TestRetryUpgradeAfterAFailedAttempt(t *testing.T) {
	var n atomic.Int64
	ws := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			w.Header().Set("X-Bad", "1")
			w.WriteHeader(503)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		_ = brw.Flush()
		line, _ := brw.ReadString('\n')
		_, _ = brw.WriteString("echo " + line)
		_ = brw.Flush()
	}))
	t.Cleanup(ws.Close)
	f := newFixture(t, single(retrying(t, ws.URL)))
	conn, err := net.Dial("tcp", f.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = io.WriteString(conn, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 || resp.Header.Get("X-Bad") != "" {
		t.Fatalf("got %d %v, want a clean 101", resp.StatusCode, resp.Header)
	}
	_, _ = io.WriteString(conn, "ping\n")
	if line, _ := br.ReadString('\n'); line != "echo ping\n" {
		t.Errorf("tunnel answered %q", line)
	}
	if n.Load() != 2 {
		t.Errorf("%d attempts, want 2", n.Load())
	}
}

// TestRetryOnTheFallbackUpstream: while svc's circuit is open its fallback upstream
// serves, with its own retries: its failed attempt is dropped, the retry's answer goes
// out marked as the fallback's, and svc's circuit is not asked again.
func TestRetryOnTheFallbackUpstream(t *testing.T) {
	primary := newScriptBackend(t, 503)
	ca, cb := newScriptBackend(t, 503), newScriptBackend(t, 200)
	svc := retrying(t, primary.URL)
	svc.Breaker.ConsecutiveFailures = 1
	svc.Fallback.Upstream = "cache"
	c := retrying(t, ca.URL, cb.URL)
	cfg := &config.Config{
		Upstreams: map[string]*config.Upstream{"svc": svc, "cache": c},
		Routes:    []config.Route{{PathPrefix: "/", Upstream: "svc"}},
	}
	f := newFixture(t, cfg)
	readBody(t, f.get(t, "", "/x")) // svc: 503, retried (no other target), 503... opens
	if s := f.breakers["svc"].State(); s != breaker.Open {
		t.Fatalf("svc %v, want open", s)
	}
	hits := primary.hits.Load()
	resp := f.get(t, "", "/x")
	wantStatus(t, resp, 200)
	readBody(t, resp)
	if resp.Header.Get(HeaderFallback) != "cache" || resp.Header.Get("X-Attempt-Of") != cb.URL {
		t.Errorf("headers %v: want the cache's second target's answer, marked", resp.Header)
	}
	if primary.hits.Load() != hits || ca.hits.Load() != 1 || cb.hits.Load() != 1 {
		t.Errorf("hits primary +%d, cache a %d, cache b %d; want 0, 1, 1", primary.hits.Load()-hits, ca.hits.Load(), cb.hits.Load())
	}
}

// TestRetryReloadInFlight: a reload that turns retries off (and changes the budget)
// while a request is in its first attempt: the request finishes on the table it started
// with, its retry included; the next request is sent once.
func TestRetryReloadInFlight(t *testing.T) {
	release := make(chan struct{})
	var n atomic.Int64
	a := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			<-release
		}
		w.WriteHeader(503)
	}))
	t.Cleanup(a.Close)
	b := newScriptBackend(t, 200)
	u := retrying(t, a.URL, b.URL)
	f := newFixture(t, single(u))
	done := make(chan int, 1)
	go func() {
		resp, err := f.client.Get(f.srv.URL + "/x")
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	for n.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	u2 := retrying(t, a.URL, b.URL)
	u2.Retries.Attempts = 1
	if err := f.p.Update(single(u2), f.breakers); err != nil {
		t.Fatal(err)
	}
	if len(f.p.Budgets()) != 0 {
		t.Errorf("budgets %v after retries were turned off", f.p.Budgets())
	}
	close(release)
	if code := <-done; code != 200 {
		t.Errorf("in-flight request: %d, want 200 (retried under the table it started on)", code)
	}
	resp := f.get(t, "", "/x") // round robin: a again
	readBody(t, resp)
	if resp.StatusCode != 503 || b.hits.Load() != 1 {
		t.Errorf("after the reload: %d, b hits %d; want a's 503, sent once", resp.StatusCode, b.hits.Load())
	}
}

type captureLog struct {
	mu  sync.Mutex
	got []Access
}

func (c *captureLog) Sample() bool { return true }
func (c *captureLog) Log(a *Access) {
	c.mu.Lock()
	c.got = append(c.got, *a)
	c.mu.Unlock()
}

// TestRetryAccessLogAttempts: the access log's attempts count the requests sent to a
// target, and its target is the one that answered.
func TestRetryAccessLogAttempts(t *testing.T) {
	a, b := newScriptBackend(t, 503), newScriptBackend(t, 200)
	f := newFixture(t, single(retrying(t, a.URL, b.URL)))
	al := &captureLog{}
	p, err := New(f.cfg, f.breakers, Options{Recorder: f.rec, AccessLog: al})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	for range 2 { // a (503, retried on b), then b
		resp, err := http.Get(srv.URL + "/x")
		if err != nil {
			t.Fatal(err)
		}
		readBody(t, resp)
	}
	al.mu.Lock()
	defer al.mu.Unlock()
	bHost := strings.TrimPrefix(b.URL, "http://")
	if len(al.got) != 2 || al.got[0].Attempts != 2 || al.got[0].Target != bHost || al.got[0].Status != 200 ||
		al.got[1].Attempts != 1 {
		t.Errorf("access log %+v, want attempts 2 (target %s) then 1", al.got, bHost)
	}
}

// TestRetryClientBodyErrorsWhileBuffering: a body that breaks off (or is too large)
// while it is read ahead for a retry is the client's problem, as when streamed: 400 or
// 413, nothing sent, nothing counted against the circuits; a body that breaks off after
// buffer_body bytes (streamed) likewise, sent once at most.
func TestRetryClientBodyErrorsWhileBuffering(t *testing.T) {
	backend := newScriptBackend(t, 503)
	u := retrying(t, backend.URL)
	u.Retries.BufferBody = 64
	u.Breaker.ConsecutiveFailures = 1
	f := newFixture(t, single(u))
	for _, tc := range []struct {
		name string
		body func(w http.ResponseWriter) io.ReadCloser
		cl   int64
		want int
		sent int64
	}{
		{"read error", func(http.ResponseWriter) io.ReadCloser {
			return io.NopCloser(io.MultiReader(strings.NewReader("part"), errReader{io.ErrUnexpectedEOF}))
		}, 30, http.StatusBadRequest, 0},
		{"too large", func(w http.ResponseWriter) io.ReadCloser {
			return http.MaxBytesReader(w, io.NopCloser(strings.NewReader(strings.Repeat("x", 100))), 10)
		}, -1, http.StatusRequestEntityTooLarge, 0},
		{"read error past buffer_body", func(http.ResponseWriter) io.ReadCloser {
			return io.NopCloser(io.MultiReader(strings.NewReader(strings.Repeat("p", 100)), errReader{io.ErrUnexpectedEOF}))
		}, -1, http.StatusBadRequest, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hits := backend.hits.Load()
			w := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodPut, "/upload", nil)
			req.Body, req.ContentLength = tc.body(w), tc.cl
			n := len(f.rec.snapshot())
			f.p.ServeHTTP(w, req)
			if w.Code != tc.want {
				t.Errorf("status: got %d, want %d (body %s)", w.Code, tc.want, w.Body)
			}
			wantResults(t, f.rec.snapshot()[n:], Ignored)
			if sn := f.breakers["svc"].Snapshot(); sn.Counts.Requests != 0 || sn.State != breaker.Closed {
				t.Errorf("breaker: got %v with %d requests, want closed with 0", sn.State, sn.Counts.Requests)
			}
			if got := backend.hits.Load() - hits; got > tc.sent {
				t.Errorf("backend got %d requests, want at most %d", got, tc.sent)
			}
			if r, _ := f.rec.retryCount(); r != 0 {
				t.Errorf("%d retries", r)
			}
		})
	}
}
