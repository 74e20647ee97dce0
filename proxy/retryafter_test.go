package proxy

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

func TestRetryAfterParse(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		v    []string
		want time.Duration
	}{
		{nil, 0},
		{[]string{"7"}, 7 * time.Second},
		{[]string{" 7 "}, 7 * time.Second},
		{[]string{"0"}, 0},
		{[]string{"-1"}, 0},
		{[]string{"7s"}, 0},
		{[]string{"1.5"}, 0},
		{[]string{"99999999999999999999"}, 0}, // not a uint64
		{[]string{"9999999999"}, maxPause},
		{[]string{"7", "8"}, 0},
		{[]string{"Thu, 03 Dec 2026 12:00:30 GMT"}, 30 * time.Second},
		{[]string{"Thursday, 03-Dec-26 12:01:00 GMT"}, time.Minute},
		{[]string{"Thu, 03 Dec 2026 11:59:00 GMT"}, 0},
	} {
		if got := retryAfter(c.v, now); got != c.want {
			t.Errorf("retryAfter(%q) = %v, want %v", c.v, got, c.want)
		}
	}
}

// honor_retry_after: a 503 or 429 carrying Retry-After opens the circuit for that long;
// the answer itself reaches the client.
func TestRetryAfterOpensTheCircuit(t *testing.T) {
	for _, c := range []struct {
		name   string
		honor  bool
		status int
		header string
		want   breaker.State
	}{
		{"503 honoured", true, 503, "7", breaker.Open},
		{"429 honoured though not a failure status", true, 429, "7", breaker.Open},
		{"off by default", false, 503, "7", breaker.Closed},
		{"200 with Retry-After", true, 200, "7", breaker.Closed},
		{"malformed", true, 503, "soon", breaker.Closed},
	} {
		t.Run(c.name, func(t *testing.T) {
			backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Retry-After", c.header)
				w.WriteHeader(c.status)
			}))
			t.Cleanup(backend.Close)
			u := upstreamCfg(t, backend.URL)
			u.Breaker.HonorRetryAfter = c.honor
			u.Breaker.MaxOpenDuration = time.Minute
			f := newFixture(t, single(u))
			resp := f.get(t, "h.example", "/")
			wantStatus(t, resp, c.status)
			if resp.Header.Get("Retry-After") != c.header || resp.Header.Get(HeaderCircuit) != "" {
				t.Errorf("the upstream's answer was not passed on as it was: %v", resp.Header)
			}
			b := f.breakers["svc"]
			s := b.Snapshot()
			if s.State != c.want {
				t.Fatalf("circuit %v, want %v", s.State, c.want)
			}
			if c.want != breaker.Open {
				return
			}
			if s.OpenFor != 7*time.Second || s.Trips != 0 {
				t.Errorf("open for %v with %d trips, want 7s and the backoff untouched", s.OpenFor, s.Trips)
			}
			resp = f.get(t, "h.example", "/")
			wantStatus(t, resp, 503)
			if resp.Header.Get(HeaderCircuit) != "open" || resp.Header.Get("Retry-After") != "7" {
				t.Errorf("rejection: %v, want X-Fuse-Circuit open and Retry-After 7", resp.Header)
			}
		})
	}
}
