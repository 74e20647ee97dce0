package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// TestRetryAfterFleet: with honor_retry_after, one 503 carrying Retry-After: 7 through one
// replica opens the circuit for 7 s (± jitter) on all three: each rejects within the
// agreement bound, still rejects 6 s later, and admits again once the 7 s are over.
func TestRetryAfterFleet(t *testing.T) {
	rd := redistest.Start(t)
	backend := startBackend(t)
	var replicas []*Proxy
	var admins []*adminAPI
	for i := range 3 {
		admin := freeAddr(t)
		replicas = append(replicas, startProxy(t, fmt.Sprintf(`listen: %q
admin: {listen: %q}
log: {format: json, level: info}
store:
  driver: redis
  replica_id: r%d
  flush_interval: 100ms
  redis: {url: %q, prefix: fuse}
upstreams:
  api:
    targets: [%s]
    breaker:
      honor_retry_after: true
      consecutive_failures: 0
      jitter: 0.1
routes:
  - upstream: api
`, freeAddr(t), admin, i+1, rd.URL(), backend.URL())))
		admins = append(admins, newAdminAPI(t, admin))
	}
	msgs := subscribeEvents(t, rd, "fuse:events")
	for _, p := range replicas {
		p.WaitReady(t, "/warm")
	}

	backend.Set(t, "fail=on&retry_after=7")
	r := replicas[0].Get("/x")
	if r.Status != http.StatusServiceUnavailable || r.Circuit != "" || r.RetryAfter != "7" {
		t.Fatalf("the upstream's 503 through r1: %v (Retry-After %q), want it passed on", r, r.RetryAfter)
	}
	m := waitTargetMessage(t, msgs, "api", "open", 5*time.Second)
	if m.Reason != "retry_after" {
		t.Errorf("open with reason %q, want retry_after", m.Reason)
	}
	t0 := m.At
	for i, p := range replicas {
		got := pollUntil(p, 2*time.Second, time.Millisecond, response.Rejected)
		if !got.Rejected() || got.Circuit != "open" {
			t.Fatalf("r%d not rejecting after the fleet opened: %v", i+1, got)
		}
		if lag := got.At.Sub(t0); lag > 160*time.Millisecond {
			t.Errorf("r%d rejected %v after Redis published the open, want <= 1.1·F + RTT", i+1, lag)
		}
		var c struct {
			OpenFor float64 `json:"open_for_seconds"`
			Trips   int     `json:"trips"`
		}
		if err := json.Unmarshal([]byte(admins[i].Get("/circuits/api").Body), &c); err != nil {
			t.Fatal(err)
		}
		if c.OpenFor < 6.3 || c.OpenFor > 7.7 || c.Trips != 0 {
			t.Errorf("r%d: open for %.3fs with %d trips, want 7s ± 10%% and the backoff untouched", i+1, c.OpenFor, c.Trips)
		}
	}
	backend.Set(t, "fail=off&retry_after=")
	time.Sleep(time.Until(t0.Add(6200 * time.Millisecond)))
	for i, p := range replicas {
		if r := p.Get("/still"); !r.Rejected() {
			t.Errorf("r%d admitted a request 6.2s into a 7s pause: %v", i+1, r)
		}
	}
	time.Sleep(time.Until(t0.Add(7800 * time.Millisecond)))
	for i, p := range replicas {
		if r := pollUntil(p, 3*time.Second, 10*time.Millisecond, response.OK); !r.OK() {
			t.Errorf("r%d still not serving after the pause: %v", i+1, r)
		}
	}
}
