package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/config"
)

// answerCases are upstream answers with statuses a retry policy lists; each is sent by
// path /case/NAME.
var answerCases = map[string]func(w http.ResponseWriter, r *http.Request){
	"length": func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "5")
		w.Header().Set("X-Up", "1")
		w.WriteHeader(503)
		_, _ = io.WriteString(w, "hello")
	},
	"chunked": func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(503)
		_, _ = io.WriteString(w, strings.Repeat("c", 5000))
		w.(http.Flusher).Flush()
		_, _ = io.WriteString(w, "end")
	},
	"empty": func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(502)
	},
	"trailers": func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-T1, X-T2")
		w.WriteHeader(503)
		_, _ = io.WriteString(w, "body")
		w.Header().Set("X-T1", "a")
		w.Header().Set("X-T2", "b")
	},
	"undeclared": func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(504)
		_, _ = io.WriteString(w, "body")
		w.(http.Flusher).Flush()
		w.Header().Set(http.TrailerPrefix+"X-Late", "z")
	},
	"hop": func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "X-Hop, keep-alive")
		w.Header().Set("X-Hop", "1")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("Proxy-Connection", "x")
		w.Header().Set("Upgrade", "foo")
		w.WriteHeader(503)
		_, _ = io.WriteString(w, "hop")
	},
	"hints": func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</a.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		w.Header().Set("X-Final", "1")
		w.WriteHeader(503)
		_, _ = io.WriteString(w, "after hints")
	},
	"grpc": func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Grpc-Status", "14")
		w.WriteHeader(503)
	},
	"429": func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "3")
		w.WriteHeader(429)
		_, _ = io.WriteString(w, "slow down")
	},
	"broken429": func(w http.ResponseWriter, r *http.Request) { brokenAnswer(w, 429) },
	"broken503": func(w http.ResponseWriter, r *http.Request) { brokenAnswer(w, 503) },
	"gzip": func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(503)
		_, _ = w.Write([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	},
}

// brokenAnswer sends code and a body that breaks off after 4 of 1000 bytes.
func brokenAnswer(w http.ResponseWriter, code int) {
	w.Header().Set("Content-Length", "1000")
	w.WriteHeader(code)
	_, _ = io.WriteString(w, "part")
	w.(http.Flusher).Flush()
	if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
		c.Close()
	}
}

var (
	dateLine    = regexp.MustCompile(`(?m)^Date: .*\r\n`)
	trailerLine = regexp.MustCompile(`(?m)^Trailer: .*\r\n`)
)

// rawAnswer sends raw on a new connection to addr and returns what came back, until a
// final response ended: each response's head as sent (but its Date), then the final
// one's body as read (unchunked: chunk sizes follow the timing of the reads), its
// trailers and the error that ended it, if any.
func rawAnswer(t *testing.T, addr, raw, method string) string {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(waitTimeout))
	_, _ = io.WriteString(conn, raw)
	var buf bytes.Buffer
	br := bufio.NewReader(io.TeeReader(conn, &buf))
	var out strings.Builder
	for {
		req, _ := http.NewRequest(method, "/", nil)
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			return "<no response: " + err.Error() + ">"
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode < 200 {
			continue
		}
		// The heads as sent: up to the final one's blank line.
		raw := buf.String()
		for {
			k := strings.Index(raw, "\r\n\r\n")
			if k < 0 {
				break
			}
			out.WriteString(raw[:k+4])
			if !strings.HasPrefix(raw, "HTTP/1.1 1") {
				break
			}
			raw = raw[k+4:]
		}
		out.Write(body)
		if len(resp.Trailer) > 0 {
			out.WriteString("\n<trailers " + fmt.Sprint(resp.Trailer) + ">")
		}
		if err != nil {
			out.WriteString("\n<body error: " + err.Error() + ">")
		}
		break
	}
	s := dateLine.ReplaceAllString(out.String(), "")
	// ReverseProxy lists declared trailers in map order: sort them.
	return trailerLine.ReplaceAllStringFunc(s, func(l string) string {
		keys := strings.Split(strings.TrimSuffix(strings.TrimPrefix(l, "Trailer: "), "\r\n"), ", ")
		slices.Sort(keys)
		return "Trailer: " + strings.Join(keys, ", ") + "\r\n"
	})
}

// TestSetAsideAnswerServedAsTheAttemptWould: an answer whose status is retried, served
// because no retry may follow (here: the budget is spent), reaches the client byte for
// byte as the attempt's ReverseProxy sends it with retries off: status, headers
// (hop-by-hop removed), Content-Length or chunking, trailers declared or not, HEAD,
// 1xx before it, Connection: close for a chunked request, and its account (Recorder).
func TestSetAsideAnswerServedAsTheAttemptWould(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		name := strings.TrimPrefix(r.URL.Path, "/case/")
		answerCases[name](w, r)
	}))
	// A new connection per request: the two proxies' pools would otherwise reuse
	// connections the backend closes in their own timing (a POST on one is a 502).
	backend.Config.SetKeepAlivesEnabled(false)
	t.Cleanup(backend.Close)
	off := upstreamCfg(t, backend.URL)
	on := retrying(t, backend.URL)
	on.Breaker = off.Breaker
	on.Retries.Statuses = []int{429, 502, 503, 504}
	on.Retries.Methods = append(on.Retries.Methods, "POST")
	on.Retries.BufferBody = 64
	on.Retries.Budget = config.RetryBudget{Window: 10 * time.Second} // no room: never retried
	off.Breaker.ConsecutiveFailures, on.Breaker.ConsecutiveFailures = 1000, 1000
	fOff, fOn := newFixture(t, single(off)), newFixture(t, single(on))
	for name := range answerCases {
		for _, req := range []struct{ method, raw string }{
			{"GET", "GET /case/" + name + " HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n"},
			{"HEAD", "HEAD /case/" + name + " HTTP/1.1\r\nHost: x\r\n\r\n"},
			{"POST", "POST /case/" + name + " HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"},
			{"POST", "POST /case/" + name + " HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + strings.Repeat("b", 100)},
		} {
			nOff, nOn := len(fOff.rec.snapshot()), len(fOn.rec.snapshot())
			want := rawAnswer(t, fOff.srv.Listener.Addr().String(), req.raw, req.method)
			got := rawAnswer(t, fOn.srv.Listener.Addr().String(), req.raw, req.method)
			if got != want {
				t.Errorf("%s %s:\nretries off: %q\nset aside:   %q", req.method, name, want, got)
			}
			cOff := fOff.rec.wait(t, nOff+1)[nOff:]
			cOn := fOn.rec.wait(t, nOn+1)[nOn:]
			if !slices.Equal(cOff, cOn) {
				t.Errorf("%s %s: recorded %v with retries off, %v set aside", req.method, name, cOff, cOn)
			}
			if _, denied := fOn.rec.retryCount(); denied == 0 && req.method != "POST" {
				t.Fatalf("%s %s: no retry was due: the set-aside path was not taken", req.method, name)
			}
			if sOff, sOn := fOff.breakers["svc"].Snapshot().Counts, fOn.breakers["svc"].Snapshot().Counts; sOff != sOn {
				t.Errorf("%s %s: breaker counts %+v with retries off, %+v set aside", req.method, name, sOff, sOn)
			}
		}
	}
}

// TestSetAsideEventStreamFlushed: an event stream with a retried status, served because
// no retry may follow, is flushed event by event as the attempt's ReverseProxy would: the
// client reads the first event while the upstream waits for it to do so.
func TestSetAsideEventStreamFlushed(t *testing.T) {
	got := make(chan struct{})
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Content-Length", "20")
		w.WriteHeader(503)
		_, _ = io.WriteString(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-got:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "data: 2\n\n")
	}))
	t.Cleanup(backend.Close)
	u := retrying(t, backend.URL)
	u.Retries.Budget = config.RetryBudget{Window: 10 * time.Second} // no room: never retried
	f := newFixture(t, single(u))
	resp := f.get(t, "", "/events")
	wantStatus(t, resp, 503)
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "data: one\n" {
		t.Fatalf("first event: %q, %v", line, err)
	}
	close(got)
	if rest, _ := io.ReadAll(br); string(rest) != "\ndata: 2\n\n" {
		t.Errorf("rest %q", rest)
	}
	if _, denied := f.rec.retryCount(); denied != 1 {
		t.Errorf("denied %d, want 1: the set-aside path was not taken", denied)
	}
}

// TestSetAsideAnswerOfTheFallbackUpstreamMarked: the fallback upstream's answer with a
// retried status, served because its budget is spent, is marked as the fallback's
// (X-Fuse-Circuit, X-Fuse-Fallback) with Connection: close for a chunked request, and the
// upstream's own marks from behind another fuseproxy are dropped, as on the direct path.
func TestSetAsideAnswerOfTheFallbackUpstreamMarked(t *testing.T) {
	primary := newScriptBackend(t, 503)
	cache := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set(HeaderFallback, "spoofed")
		w.Header().Set(HeaderLimit, "spoofed")
		w.WriteHeader(503)
		_, _ = io.WriteString(w, "cache down")
	}))
	t.Cleanup(cache.Close)
	svc := upstreamCfg(t, primary.URL)
	svc.Breaker.ConsecutiveFailures = 1
	svc.Fallback.Upstream = "cache"
	c := retrying(t, cache.URL)
	c.Retries.Budget = config.RetryBudget{Window: 10 * time.Second} // no room: never retried
	c.Retries.Methods = append(c.Retries.Methods, "POST")
	c.Retries.BufferBody = 64
	f := newFixture(t, &config.Config{
		Upstreams: map[string]*config.Upstream{"svc": svc, "cache": c},
		Routes:    []config.Route{{PathPrefix: "/", Upstream: "svc"}},
	})
	readBody(t, f.get(t, "", "/x")) // opens svc
	got := rawAnswer(t, f.srv.Listener.Addr().String(),
		"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", "POST")
	want := "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 10\r\nContent-Type: text/plain; charset=utf-8\r\n" +
		HeaderCircuit + ": open\r\n" + HeaderFallback + ": cache\r\n\r\ncache down"
	if got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	if _, denied := f.rec.retryCount(); denied != 1 {
		t.Errorf("denied %d, want 1: the set-aside path was not taken", denied)
	}
}

// TestSetAsideAnswerClientGoneMidBody: a client that goes away while a set-aside answer
// is served (a 429, a success for the breaker) is not the upstream's failure: no
// FailureBody, no late failure, the target's in-flight count back to 0.
func TestSetAsideAnswerClientGoneMidBody(t *testing.T) {
	started := make(chan struct{})
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(429)
		_, _ = io.WriteString(w, "first")
		w.(http.Flusher).Flush()
		close(started)
		<-r.Context().Done()
	}))
	t.Cleanup(backend.Close)
	other := newScriptBackend(t, 429)
	u := retrying(t, backend.URL, other.URL)
	u.LoadBalancing = "least_requests"
	u.Retries.Statuses = []int{429}
	u.Retries.Budget = config.RetryBudget{Window: 10 * time.Second} // no room: never retried
	f := newFixture(t, single(u))
	// least_requests: the first pick is the stalling backend, the other one looking busy.
	busy := f.p.table.Load().upstreams["svc"].targets[1]
	busy.inflight.Add(1)
	defer busy.inflight.Add(-1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, f.srv.URL+"/x", nil)
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	recv(t, "the backend's first bytes", started)
	buf := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "first" {
		t.Fatalf("read %q, %v", buf, err)
	}
	cancel()
	resp.Body.Close()
	tg := f.p.table.Load().upstreams["svc"].targets[0]
	eventually(t, "the request to end", func() bool { return tg.inflight.Load() == 0 })
	wantResults(t, f.rec.snapshot(), Success)
	if c := f.breakers["svc"].Snapshot().Counts; c.Failures != 0 {
		t.Errorf("breaker counts %+v: the client's abort counted as the upstream's failure", c)
	}
	if _, denied := f.rec.retryCount(); denied != 1 {
		t.Errorf("denied %d, want 1: the set-aside path was not taken", denied)
	}
}
