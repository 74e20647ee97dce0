package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
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
