package e2e

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// post sends POST path to a replica's admin API (no token) and returns the answer.
func (a *adminAPI) post(t testing.TB, path, body string) response {
	t.Helper()
	r := faultAdmin(t, a.client, strings.TrimPrefix(a.base, "http://"), http.MethodPost, path, "", body)
	if r.Err != nil {
		t.Fatalf("POST %s: %v", path, r.Err)
	}
	return r
}

// TestAdminSteersTheFleet drives two replica processes sharing one redis-server through
// one replica's admin API only: forcing the circuit open makes every replica reject;
// metrics_only lets traffic through while the metrics and the log say what would have
// been rejected; reset returns every replica to closed.
func TestAdminSteersTheFleet(t *testing.T) {
	backend, redis := startBackend(t), redistest.Start(t)
	var replicas []*Proxy
	var admins []*adminAPI
	for _, id := range []string{"a1", "a2"} {
		c := newConfig(t, backend, "redis", breakerSettings{ConsecutiveFailures: 3,
			OpenDuration: time.Minute, HalfOpenMaxRequests: 1, SuccessThreshold: 1})
		c.RedisURL, c.ReplicaID, c.FlushInterval = redis.URL(), id, 50*time.Millisecond
		replicas = append(replicas, startProxy(t, c.YAML(t)))
		admins = append(admins, newAdminAPI(t, c.AdminListen))
	}
	a, b := admins[0], admins[1]
	everyReplica := func(what string, want func(response) bool) {
		t.Helper()
		for _, p := range replicas {
			if r := pollUntil(p, 5*time.Second, 5*time.Millisecond, want); !want(r) {
				t.Fatalf("%s: %s: last response %v", what, p.ID, r)
			}
		}
	}

	// Forced open through a1: both replicas reject, and the backend sees nothing.
	if r := a.post(t, "/circuits/"+upstream+"/open", ""); r.Status != http.StatusOK {
		t.Fatalf("POST open: got %v, want 200", r)
	}
	everyReplica("after open through a1", response.Rejected)
	before := backend.Stats(t).Requests
	for _, p := range replicas {
		assertRejection(t, p.ID, p.Get("/x"), "open")
	}
	if got := backend.Stats(t).Requests; got != before {
		t.Fatalf("backend received %d requests while the fleet was open, want 0", got-before)
	}

	// Back to closed, then metrics_only through a1: failures trip the circuit for the
	// whole fleet, yet every request still reaches the backend, and a2's metrics and log
	// say what would have been rejected.
	if r := a.post(t, "/circuits/"+upstream+"/reset", ""); r.Status != http.StatusOK {
		t.Fatalf("POST reset: got %v, want 200", r)
	}
	everyReplica("after reset", response.OK)
	if r := a.post(t, "/circuits/"+upstream+"/mode", `{"mode":"metrics_only"}`); r.Status != http.StatusOK {
		t.Fatalf("POST mode metrics_only: got %v, want 200", r)
	}
	// The mode change starts a new generation; a2 learns it by pub/sub. A failure a2
	// counts before that belongs to the old generation, and Redis drops it by design.
	gen := a.Circuit(t, upstream).Generation
	if !waitFor(5*time.Second, 2*time.Millisecond, func() bool { return b.Circuit(t, upstream).Generation == gen }) {
		t.Fatalf("a2 did not reach generation %d of the mode change within 5s", gen)
	}
	backend.Set(t, "fail=on")
	failed := func(r response) bool {
		return r.Err == nil && r.Status == http.StatusServiceUnavailable && r.Circuit == ""
	}
	for i := range 3 {
		if r := replicas[i%2].Get("/fail"); !failed(r) {
			t.Fatalf("failure %d in metrics_only: got %v, want the backend's 503", i, r)
		}
	}
	replicas[1].WaitLog(t, 5*time.Second, "a2's dry-run transition to open", func(l logLine) bool {
		return l.Msg() == "circuit transition" && l.Str("to") == "open" && l.Fields["dry_run"] == true
	})
	const wouldReject = `fuseproxy_requests_would_reject_total{upstream="api"}`
	w0 := b.Metric(t, wouldReject)
	before = backend.Stats(t).Requests
	for range 5 {
		if r := replicas[1].Get("/dry"); !failed(r) {
			t.Fatalf("a2 open in metrics_only: got %v, want the backend's own 503", r)
		}
	}
	if got := backend.Stats(t).Requests - before; got != 5 {
		t.Fatalf("backend received %d of 5 requests in metrics_only, want all", got)
	}
	if got := b.Metric(t, wouldReject) - w0; got != 5 {
		t.Fatalf("%s moved by %v, want 5", wouldReject, got)
	}
	backend.Set(t, "fail=off")

	// Reset through a1: both replicas closed and in normal mode again.
	if r := a.post(t, "/circuits/"+upstream+"/reset", ""); r.Status != http.StatusOK {
		t.Fatalf("POST reset: got %v, want 200", r)
	}
	for i, adm := range admins {
		ok := waitFor(5*time.Second, 5*time.Millisecond, func() bool {
			var c struct{ State, Mode string }
			r := adm.Get("/circuits/" + upstream)
			return json.Unmarshal([]byte(r.Body), &c) == nil && c.State == "closed" && c.Mode == "normal"
		})
		if !ok {
			t.Fatalf("%s after reset: %s", replicas[i].ID, adm.Get("/circuits/"+upstream).Body)
		}
	}
	everyReplica("after reset", response.OK)
}
