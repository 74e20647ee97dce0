package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// rawBackend answers every request with the bytes head, written straight to the
// connection, which it then closes.
func rawBackend(t *testing.T, head string) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("backend hijack: %v", err)
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString(head)
		_ = brw.Flush()
	}))
	t.Cleanup(s.Close)
	return s
}

// TestInvalidUpstreamStatus: a final status outside 100-599 is the upstream's protocol
// error: 502 to the client and a transport failure for the breaker, never a success
// passed through (999 was relayed and counted a success; 099 made net/http panic).
func TestInvalidUpstreamStatus(t *testing.T) {
	for _, status := range []string{"999", "600", "099", "000"} {
		t.Run(status, func(t *testing.T) {
			u := upstreamCfg(t, rawBackend(t, "HTTP/1.1 "+status+" Odd\r\nContent-Length: 2\r\nX-Upstream: yes\r\n\r\nok").URL)
			f := newFixture(t, single(u))
			resp := f.get(t, "", "/")
			wantStatus(t, resp, http.StatusBadGateway)
			if got := resp.Header.Get("X-Upstream"); got != "" {
				t.Errorf("the upstream's headers were passed on: X-Upstream %q", got)
			}
			if got := readBody(t, resp); got != `{"error":"bad_gateway","upstream":"svc"}` {
				t.Errorf("body %q", got)
			}
			wantResults(t, f.rec.wait(t, 1), FailureTransport)
			if c := f.breakers["svc"].Snapshot().Counts; c != (breaker.Counts{Requests: 1, Failures: 1}) {
				t.Errorf("breaker window %+v, want 1 failure", c)
			}
		})
	}
}

// TestInformationalStorm: an upstream that sends a storm of 102 Processing before its
// answer gets at most maxInformational of them relayed; the answer then passes as usual.
func TestInformationalStorm(t *testing.T) {
	const storm = 100_000
	head := strings.Repeat("HTTP/1.1 102 Processing\r\n\r\n", storm) + "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone"
	f := newFixture(t, single(upstreamCfg(t, rawBackend(t, head).URL)))
	conn, err := net.Dial("tcp", f.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(conn)
	informational := 0
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("after %d informational responses: %v", informational, err)
		}
		if resp.StatusCode < 200 {
			resp.Body.Close()
			informational++
			continue
		}
		if body := readBody(t, resp); resp.StatusCode != 200 || body != "done" {
			t.Fatalf("final response %d %q, want 200 done", resp.StatusCode, body)
		}
		break
	}
	if informational != maxInformational {
		t.Errorf("relayed %d informational responses of %d, want %d", informational, storm, maxInformational)
	}
	wantResults(t, f.rec.wait(t, 1), Success)
}

// An informational storm that never ends is bounded by response_header_timeout, which
// 1xx responses do not reset: 504 and a timeout failure.
func TestEndlessInformationalStorm(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		for { // until the proxy gives up and closes the connection
			if _, err := brw.WriteString("HTTP/1.1 102 Processing\r\n\r\n"); err != nil {
				return
			}
			if err := brw.Flush(); err != nil {
				return
			}
		}
	}))
	t.Cleanup(backend.Close)
	u := upstreamCfg(t, backend.URL)
	u.ResponseHeaderTimeout = 200 * time.Millisecond
	f := newFixture(t, single(u))
	resp := f.get(t, "", "/")
	wantStatus(t, resp, http.StatusGatewayTimeout)
	wantResults(t, f.rec.wait(t, 1), FailureTimeout)
}

// TestInformationalKeepsConnectionClose: relaying a 1xx response clears the response
// header map (ReverseProxy does, after each one), which held the Connection: close that
// every answer to a chunked request carries (TestChunkedRequestClosesConnection). An
// upstream's 103 Early Hints, or the 100 Continue a client can ask for itself, must not
// let the bytes after a chunked body be read as the next request.
func TestInformationalKeepsConnectionClose(t *testing.T) {
	for _, tc := range []struct{ name, expect string }{
		{"103 from the upstream", ""},
		{"100 asked for by the client", "Expect: 100-continue\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("Expect") == "" {
					w.Header().Set("Link", "</a.css>; rel=preload")
					w.WriteHeader(http.StatusEarlyHints)
				}
				_, _ = io.Copy(io.Discard, r.Body) // sends 100 Continue when asked
				_, _ = io.WriteString(w, "ok")
			}))
			t.Cleanup(backend.Close)
			f := newFixture(t, single(upstreamCfg(t, backend.URL)))
			smuggled := "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
			raw := "POST /x HTTP/1.1\r\nHost: x\r\n" + tc.expect + "Content-Length: " + strconv.Itoa(5+len(smuggled)) +
				"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled
			resps, bodies, closed := rawExchange(t, f.srv.Listener.Addr().String(), raw)
			var final []int
			for _, r := range resps {
				if r.StatusCode >= 200 {
					final = append(final, r.StatusCode)
				}
			}
			if len(final) != 1 || !closed || !resps[len(resps)-1].Close {
				t.Fatalf("final responses %v (bodies %q), Connection: close %v, closed %v; want one 200, then the connection closed",
					final, bodies, resps[len(resps)-1].Close, closed)
			}
		})
	}
}
