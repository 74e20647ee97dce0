package proxy

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/fuseproxy/fuseproxy/config"
)

// A failed connection to an upstream is logged at warn level (what a newcomer's
// default info level shows), at most once per upstream every 10 s, with the number of
// failures left out since the previous line; the others stay at debug level.
func TestUpstreamErrorsLoggedAtWarnRateLimited(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	var mu sync.Mutex
	now := time.Unix(1_000_000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }

	u := upstreamCfg(t, refusedURL(t))
	u.Breaker.Enabled = false // every request reaches the dead target
	p, err := New(single(u), nil, Options{Logger: zap.New(core), Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	get := func() {
		t.Helper()
		rw := httptest.NewRecorder()
		p.ServeHTTP(rw, httptest.NewRequest(http.MethodGet, "/x", nil))
		if rw.Code != http.StatusBadGateway {
			t.Fatalf("status %d, want 502", rw.Code)
		}
	}
	warns := func() []observer.LoggedEntry {
		return logs.FilterMessage("upstream request failed").FilterLevelExact(zapcore.WarnLevel).AllUntimed()
	}

	for range 5 {
		get()
	}
	if w := warns(); len(w) != 1 {
		t.Fatalf("after 5 failures within 10 s: %d warn lines, want 1", len(w))
	}
	first := warns()[0].ContextMap()
	if first["upstream"] != "svc" || first["status"] != int64(502) || first["suppressed"] != int64(0) || first["error"] == "" {
		t.Errorf("first line %v: want upstream svc, status 502, suppressed 0 and the error", first)
	}
	advance(9 * time.Second)
	get()
	if w := warns(); len(w) != 1 {
		t.Fatalf("9 s later: %d warn lines, want still 1", len(w))
	}
	advance(time.Second)
	get()
	w := warns()
	if len(w) != 2 {
		t.Fatalf("10 s later: %d warn lines, want 2", len(w))
	}
	if got := w[1].ContextMap()["suppressed"]; got != int64(5) {
		t.Errorf("second line: suppressed %v, want 5 (4 + 1 failures since the first line)", got)
	}
	if n := logs.Len(); n != 2 {
		t.Errorf("%d lines at info level and above, want the 2 warn lines", n)
	}
}

// The rate limit's memory is one entry per configured upstream that failed: an update
// forgets the upstreams it removes (a config that renames its upstreams at every
// reload kept an entry per name ever used), and keeps the others' limits.
func TestUpstreamErrorLogForgetsRemovedUpstreams(t *testing.T) {
	cfg := func() *config.Config {
		u := upstreamCfg(t, refusedURL(t))
		u.Breaker.Enabled = false
		return single(u)
	}
	p, err := New(cfg(), nil, Options{Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	now := time.Unix(1_000_000, 0)
	p.upErrs.log(p.log, now, "svc", 502, nil)
	p.upErrs.log(p.log, now, "gone", 502, nil)
	if err := p.Update(cfg(), nil); err != nil {
		t.Fatal(err)
	}
	p.upErrs.mu.Lock()
	defer p.upErrs.mu.Unlock()
	if _, ok := p.upErrs.last["gone"]; ok || len(p.upErrs.last) != 1 {
		t.Errorf("after an update without upstream gone: %v, want only svc's entry", p.upErrs.last)
	}
}
