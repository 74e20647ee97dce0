package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestSwitchRefusedAsReverseProxyWould: a 101 whose Upgrade only Unicode case folding
// matches the protocol asked for ("websoc\u212Aet", a Kelvin sign) is refused by
// ReverseProxy after ModifyResponse: checkStatus must refuse it first, so that the
// upstream's connection is closed rather than leaked, with or without retries (each
// retry of it leaked one more). Held already: an Upgrade that is not printable ASCII, a
// Connection naming "upgrade" only once Unicode spaces are trimmed (the transport does
// not take it for a switch) or with a control character (refused by the transport).
func TestSwitchRefusedAsReverseProxyWould(t *testing.T) {
	for _, proto := range []string{"Connection: Upgrade\r\nUpgrade: websoc\u212Aet", "Connection: Upgrade\r\nUpgrade: websocket\x7f",
		"Connection: Upgrade\r\nUpgrade: websocket\u00e9", "Connection: Upgrade\u00a0\r\nUpgrade: websocket",
		"Connection: \vUpgrade\r\nUpgrade: websocket"} {
		for _, retries := range []bool{false, true} {
			closed := make(chan struct{}, 8)
			backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				conn, rw, err := http.NewResponseController(w).Hijack()
				if err != nil {
					return
				}
				_, _ = rw.WriteString("HTTP/1.1 101 Switching Protocols\r\n" + proto + "\r\n\r\n")
				_ = rw.Flush()
				_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
				if _, err := conn.Read(make([]byte, 1)); err == io.EOF {
					closed <- struct{}{}
				}
				conn.Close()
			}))
			u := upstreamCfg(t, backend.URL)
			attempts := 1
			if retries {
				u = retrying(t, backend.URL)
				attempts = u.Retries.Attempts
			}
			f := newFixture(t, single(u))
			req, _ := http.NewRequest(http.MethodGet, f.srv.URL+"/ws", nil)
			req.Header.Set("Connection", "Upgrade")
			req.Header.Set("Upgrade", "websocket")
			resp := f.do(t, req)
			if resp.StatusCode != http.StatusBadGateway {
				t.Errorf("%q retries %v: status %d, want 502", proto, retries, resp.StatusCode)
			}
			readBody(t, resp)
			for i := range attempts {
				select {
				case <-closed:
				case <-time.After(2 * time.Second):
					t.Errorf("%q retries %v: attempt %d: the upstream's connection was left open", proto, retries, i+1)
				}
			}
			backend.Close()
		}
	}
}

// TestRetryStatusOutOfRange: a status outside 100-599 is the upstream's protocol error:
// with retries it is retried as a reset (each attempt's connection closed, none leaked),
// and the client gets the proxy's 502 once the attempts are spent, counted once.
func TestRetryStatusOutOfRange(t *testing.T) {
	for _, code := range []string{"600", "999"} {
		closed := make(chan struct{}, 8)
		backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			conn, rw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			_, _ = rw.WriteString("HTTP/1.1 " + code + " Odd\r\nContent-Length: 2\r\n\r\nok")
			_ = rw.Flush()
			_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
			if _, err := conn.Read(make([]byte, 1)); err == io.EOF {
				closed <- struct{}{}
			}
			conn.Close()
		}))
		u := retrying(t, backend.URL)
		f := newFixture(t, single(u))
		resp := f.get(t, "", "/x")
		readBody(t, resp)
		if resp.StatusCode != http.StatusBadGateway {
			t.Errorf("%s: status %d, want 502", code, resp.StatusCode)
		}
		for i := range u.Retries.Attempts {
			select {
			case <-closed:
			case <-time.After(2 * time.Second):
				t.Errorf("%s: attempt %d: the upstream's connection was left open", code, i+1)
			}
		}
		wantResults(t, f.rec.snapshot(), FailureTransport)
		if r, _ := f.rec.retryCount(); r != u.Retries.Attempts-1 {
			t.Errorf("%s: %d retries, want %d", code, r, u.Retries.Attempts-1)
		}
		backend.Close()
	}
}
