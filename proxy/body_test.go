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
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// How cutBackend breaks a response off after its headers and 5 body bytes.
const (
	cutReset   = "reset"   // RST, in a Content-Length body
	cutClose   = "close"   // FIN, in a Content-Length body
	cutChunked = "chunked" // FIN, in a chunked body (no terminating chunk)
	cutNone    = ""        // no cut: the whole body
)

// cutBackend answers every request with status and "hello" as the first 5 bytes of its
// body, then breaks the connection off as *cut says (read at each request).
func cutBackend(t *testing.T, status int, cut *atomic.Value) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		how, _ := cut.Load().(string)
		if how != cutChunked {
			w.Header().Set("Content-Length", "10")
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, "hello")
		if how == cutNone {
			_, _ = io.WriteString(w, "world")
			return
		}
		rc := http.NewResponseController(w)
		_ = rc.Flush()
		conn, _, err := rc.Hijack()
		if err != nil {
			t.Errorf("backend hijack: %v", err)
			return
		}
		if how == cutReset {
			_ = conn.(*net.TCPConn).SetLinger(0)
		}
		conn.Close()
	}))
	t.Cleanup(s.Close)
	return s
}

func cutHow(how string) *atomic.Value {
	var v atomic.Value
	v.Store(how)
	return &v
}

// wantBrokenBody sends a GET through the proxy and expects the response to break: an
// error from the request or from reading its body, never a short body passed as whole.
func wantBrokenBody(t *testing.T, f *fixture) {
	t.Helper()
	resp, err := f.client.Get(f.srv.URL + "/cut")
	if err == nil {
		var body []byte
		body, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Fatalf("got status %d and a complete body %q, want the body broken", resp.StatusCode, body)
		}
	}
}

// TestUpstreamBodyCutCountsAsFailure: an upstream that sends its headers and then breaks
// the body off fails the request after all. The Success reported at the headers is
// followed by FailureBody, the breaker counts a failure for each, and three in a row
// open the circuit (the fixture's consecutive_failures).
func TestUpstreamBodyCutCountsAsFailure(t *testing.T) {
	for _, how := range []string{cutReset, cutClose, cutChunked} {
		t.Run(how, func(t *testing.T) {
			f := newFixture(t, single(upstreamCfg(t, cutBackend(t, http.StatusOK, cutHow(how)).URL)))
			b := f.breakers["svc"]
			for i := range 3 {
				wantBrokenBody(t, f)
				want := breaker.Counts{Requests: uint32(i + 1), Failures: uint32(i + 1)}
				if sn := b.Snapshot(); i < 2 && (sn.Counts != want || sn.State != breaker.Closed) {
					t.Fatalf("after %d cut bodies: %v, window %+v, want closed, %+v", i+1, sn.State, sn.Counts, want)
				}
			}
			wantResults(t, f.rec.wait(t, 6), Success, FailureBody, Success, FailureBody, Success, FailureBody)
			if st := b.State(); st != breaker.Open {
				t.Fatalf("after 3 cut bodies the circuit is %v, want open", st)
			}
			resp := f.get(t, "", "/after")
			wantStatus(t, resp, http.StatusServiceUnavailable)
			if got := resp.Header.Get(HeaderCircuit); got != "open" {
				t.Errorf("%s: got %q, want open", HeaderCircuit, got)
			}
		})
	}
}

// A cut body does not count when the headers were a failure already, or when the
// failure settings leave transport errors out.
func TestUpstreamBodyCutNotCountedTwice(t *testing.T) {
	t.Run("failure status", func(t *testing.T) {
		f := newFixture(t, single(upstreamCfg(t, cutBackend(t, http.StatusServiceUnavailable, cutHow(cutReset)).URL)))
		wantBrokenBody(t, f)
		wantResults(t, f.rec.wait(t, 1), FailureStatus)
		if c := f.breakers["svc"].Snapshot().Counts; c != (breaker.Counts{Requests: 1, Failures: 1}) {
			t.Errorf("window %+v, want the one failure", c)
		}
	})
	t.Run("transport errors excluded", func(t *testing.T) {
		u := upstreamCfg(t, cutBackend(t, http.StatusOK, cutHow(cutReset)).URL)
		u.Failure.TransportErrors = false
		u.Breaker.ConsecutiveFailures = 1
		f := newFixture(t, single(u))
		wantBrokenBody(t, f)
		wantBrokenBody(t, f)
		wantResults(t, f.rec.wait(t, 2), Success, Success)
		if sn := f.breakers["svc"].Snapshot(); sn.Counts != (breaker.Counts{Requests: 2}) || sn.State != breaker.Closed {
			t.Errorf("breaker %v, window %+v; want closed, 2 successes", sn.State, sn.Counts)
		}
	})
}

// A half-open trial whose body breaks off is a failed trial: the circuit opens again,
// although the trial's headers had counted as a success (and freed its slot).
func TestUpstreamBodyCutFailsTrial(t *testing.T) {
	how := cutHow(cutReset)
	u := upstreamCfg(t, cutBackend(t, http.StatusOK, how).URL)
	u.Breaker.SuccessThreshold = 2
	f := newFixture(t, single(u))
	b := f.breakers["svc"]
	b.Trip()
	f.clock.Add(30 * time.Second)

	wantBrokenBody(t, f)
	wantResults(t, f.rec.wait(t, 2), Success, FailureBody)
	if sn := b.Snapshot(); sn.State != breaker.Open || sn.Trips != 2 {
		t.Fatalf("after a trial with a cut body: %v with %d trips, want open again (2 trips)", sn.State, sn.Trips)
	}

	// Whole bodies close it.
	how.Store(cutNone)
	f.clock.Add(time.Minute)
	for range 2 {
		if got := readBody(t, f.get(t, "", "/whole")); got != "helloworld" {
			t.Fatalf("body %q, want helloworld", got)
		}
	}
	if st := b.State(); st != breaker.Closed {
		t.Fatalf("after 2 whole trials: %v, want closed", st)
	}
}

// TestClientGoneMidBodyNotCounted: a client that goes away while the body streams is not
// the upstream's failure, whether the upstream was idle or still sending.
func TestClientGoneMidBodyNotCounted(t *testing.T) {
	for _, busy := range []bool{false, true} {
		name := "upstream idle"
		if busy {
			name = "upstream sending"
		}
		t.Run(name, func(t *testing.T) {
			upstreamDone := make(chan struct{})
			backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				defer close(upstreamDone)
				_, _ = io.WriteString(w, "first\n")
				rc := http.NewResponseController(w)
				_ = rc.Flush()
				for {
					select {
					case <-r.Context().Done(): // the proxy gave up the upstream request
						return
					case <-time.After(time.Millisecond):
					}
					if busy {
						_, _ = io.WriteString(w, strings.Repeat("x", 1024))
						_ = rc.Flush()
					}
				}
			}))
			t.Cleanup(backend.Close)
			u := upstreamCfg(t, backend.URL)
			u.Breaker.ConsecutiveFailures = 1
			f := newFixture(t, single(u))
			// Served through a wrapper that tells when the proxy's handler is over.
			handlerDone := make(chan struct{})
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				defer close(handlerDone)
				f.p.ServeHTTP(w, r)
			}))
			t.Cleanup(srv.Close)

			conn, err := net.Dial("tcp", srv.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.WriteString(conn, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatal(err)
			}
			line, err := bufio.NewReader(resp.Body).ReadString('\n')
			if err != nil || line != "first\n" {
				t.Fatalf("first line %q, %v", line, err)
			}
			conn.Close()
			recv(t, "the proxy's handler to end", handlerDone)
			recv(t, "the upstream request to end", upstreamDone)

			wantResults(t, f.rec.snapshot(), Success)
			if sn := f.breakers["svc"].Snapshot(); sn.Counts != (breaker.Counts{Requests: 1}) || sn.State != breaker.Closed {
				t.Errorf("breaker %v, window %+v; want closed, 1 success", sn.State, sn.Counts)
			}
		})
	}
}
