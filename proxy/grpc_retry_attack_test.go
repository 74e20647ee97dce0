package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fuseproxy/fuseproxy/config"
)

// TestGRPCRetriedStatus: a gRPC call (a POST, listed, its message buffered) answered
// with an HTTP 503 carrying grpc-status 14 in its headers is retried on the other target
// and succeeds; with the budget spent it is served as it came through the set-aside path,
// and the client gets what it gets with retries off: UNAVAILABLE and the upstream's
// message, counted once as a FailureStatus.
func TestGRPCRetriedStatus(t *testing.T) {
	var hits atomic.Int64
	down := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Grpc-Status", "14")
		w.Header().Set("Grpc-Message", "down for maintenance")
		w.WriteHeader(503)
	}))
	down.Config.Protocols = new(http.Protocols)
	down.Config.Protocols.SetUnencryptedHTTP2(true)
	down.Start()
	t.Cleanup(down.Close)
	up := newGRPCBackend(t)
	upURL := "http://" + up.ln.Addr().String()
	mk := func(retries bool, budget config.RetryBudget) *config.Upstream {
		u := h2cUpstream(t, down.URL)
		u.Targets = append(u.Targets, upURL)
		u2 := h2cUpstream(t, upURL)
		u.TargetURLs = append(u.TargetURLs, u2.TargetURLs...)
		if retries {
			r := retrying(t, down.URL).Retries
			r.Methods = append(r.Methods, "POST")
			r.BufferBody = 1024
			r.Budget = budget
			u.Retries = r
		}
		return u
	}
	// Retried: the other target answers.
	f := newGRPCFixture(t, mk(true, config.RetryBudget{Percent: 100, MinPerSecond: 1000, Window: 10 * time.Second}))
	if err := f.check(""); err != nil {
		t.Fatalf("retried call: %v", err)
	}
	wantResults(t, f.rec.snapshot(), Success)
	if r, _ := f.rec.retryCount(); r != 1 || hits.Load() != 1 {
		t.Errorf("%d retries, %d calls to the failing target; want 1 and 1", r, hits.Load())
	}
	// Not retried (the budget is spent, or retries are off): served as it came.
	var errs [2]error
	for i, retries := range []bool{false, true} {
		f := newGRPCFixture(t, mk(retries, config.RetryBudget{Window: 10 * time.Second}))
		errs[i] = f.check("")
		wantResults(t, f.rec.snapshot(), FailureStatus)
		if c := f.rec.snapshot()[0].status; c != 503 {
			t.Errorf("retries %v: status %d recorded, want 503", retries, c)
		}
		if _, denied := f.rec.retryCount(); retries && denied != 1 {
			t.Errorf("denied %d, want 1: the set-aside path was not taken", denied)
		}
	}
	if status.Code(errs[0]) != codes.Unavailable || errs[1] == nil || errs[0].Error() != errs[1].Error() {
		t.Errorf("retries off: %v; set aside: %v", errs[0], errs[1])
	}
}
