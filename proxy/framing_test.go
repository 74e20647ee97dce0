package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/config"
)

// seenRequest is what framingBackend received.
type seenRequest struct {
	path          string
	contentLength []string // the Content-Length header as received
	chunked       bool     // the body came with Transfer-Encoding: chunked
	body          string
}

func (s seenRequest) String() string { return s.path + ":" + s.body }

// framingBackend records every request it receives, body included, and answers 200 "ok".
func framingBackend(t *testing.T) (*httptest.Server, func() []seenRequest) {
	t.Helper()
	var mu sync.Mutex
	var seen []seenRequest
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		mu.Lock()
		seen = append(seen, seenRequest{path: r.URL.Path, contentLength: r.Header["Content-Length"],
			chunked: len(r.TransferEncoding) > 0, body: string(body)})
		mu.Unlock()
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(s.Close)
	return s, func() []seenRequest {
		mu.Lock()
		defer mu.Unlock()
		return append([]seenRequest(nil), seen...)
	}
}

// rawExchange writes raw to a new connection to addr and reads every response the proxy
// sends on it. closed reports whether the proxy closed the connection (EOF) within
// waitTimeout; a connection still open then is closed by the test.
func rawExchange(t *testing.T, addr, raw string) (resps []*http.Response, bodies []string, closed bool) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(waitTimeout))
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	for {
		if _, err := br.Peek(1); err != nil {
			// EOF between responses: the proxy closed the connection. A timeout: it kept
			// the connection open, waiting for another request.
			closed = errors.Is(err, io.EOF)
			if !closed && !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("read after response %d: %v", len(resps), err)
			}
			return resps, bodies, closed
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("read response %d: %v", len(resps)+1, err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("read body of response %d: %v", len(resps)+1, err)
		}
		resps = append(resps, resp)
		bodies = append(bodies, string(b))
	}
}

// TestChunkedRequestClosesConnection sends requests whose body is chunked (with and
// without a Content-Length beside Transfer-Encoding; net/http drops the Content-Length
// before the handler runs, RFC 9112 §6.3), each followed on the same connection by the
// bytes of another request. RFC 9112 §6.1: the server must close the connection after
// responding to a request with both headers. Every answer, proxied or the proxy's own,
// must carry Connection: close and be the last thing on the connection: the bytes after
// the chunked body are never answered as a request, and never reach the upstream.
func TestChunkedRequestClosesConnection(t *testing.T) {
	backend, seen := framingBackend(t)
	u := upstreamCfg(t, backend.URL)
	cfg := &config.Config{
		Upstreams: map[string]*config.Upstream{"api": u, "shut": upstreamCfg(t, backend.URL)},
		Routes: []config.Route{
			{PathPrefix: "/api/", Upstream: "api"},
			{PathPrefix: "/shut/", Upstream: "shut"},
		},
	}
	f := newFixture(t, cfg)
	f.breakers["shut"].Trip()
	addr := f.srv.Listener.Addr().String()

	smuggled := "GET /api/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
	bothHeaders := func(path string) string {
		return "POST " + path + " HTTP/1.1\r\nHost: x\r\nContent-Length: " + fmt.Sprint(5+len(smuggled)) +
			"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled
	}
	for _, tc := range []struct {
		name, raw string
		status    int
		upstream  []string // what the upstream must have received (path:body)
	}{
		{"CL.TE: a request after the empty chunked body", bothHeaders("/api/x"), 200, []string{"/api/x:"}},
		{"TE.CL: a request inside the chunked body",
			"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" +
				fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(smuggled), smuggled),
			200, []string{"/api/x:" + smuggled}},
		{"chunked alone, then a pipelined request",
			"POST /api/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + smuggled,
			200, []string{"/api/x:hello"}},
		{"no route", bothHeaders("/nowhere"), http.StatusNotFound, nil},
		{"circuit open (fallback)", bothHeaders("/shut/x"), http.StatusServiceUnavailable, nil},
		{"refused before routing", bothHeaders("/api/%2e%2e/x"), http.StatusBadRequest, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(seen())
			resps, bodies, closed := rawExchange(t, addr, tc.raw)
			if len(resps) != 1 {
				t.Fatalf("got %d responses %q, want exactly 1 (the bytes after the chunked body must not be answered)", len(resps), bodies)
			}
			if resps[0].StatusCode != tc.status {
				t.Errorf("status: got %d, want %d (body %q)", resps[0].StatusCode, tc.status, bodies[0])
			}
			if !resps[0].Close { // http.ReadResponse consumes the Connection: close header
				t.Errorf("the response does not say Connection: close")
			}
			if !closed {
				t.Errorf("the connection stayed open after the response, want it closed (RFC 9112 §6.1)")
			}
			got := seen()[before:]
			var gotS []string
			for _, s := range got {
				gotS = append(gotS, s.String())
				if len(s.contentLength) > 0 && s.chunked {
					t.Errorf("the upstream received %s with both Content-Length %v and Transfer-Encoding", s.path, s.contentLength)
				}
			}
			if strings.Join(gotS, "|") != strings.Join(tc.upstream, "|") {
				t.Errorf("the upstream received %q, want %q", gotS, tc.upstream)
			}
		})
	}

	// A request framed by Content-Length alone keeps the connection: both pipelined
	// requests are answered.
	t.Run("Content-Length alone keeps the connection", func(t *testing.T) {
		raw := "POST /api/one HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc" +
			"GET /api/two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
		resps, bodies, closed := rawExchange(t, addr, raw)
		if len(resps) != 2 || !closed {
			t.Fatalf("got %d responses %q (closed %v), want 2, then the close the second asked for", len(resps), bodies, closed)
		}
		if resps[0].Close {
			t.Errorf("the first response closes the connection, want keep-alive")
		}
	})
}
