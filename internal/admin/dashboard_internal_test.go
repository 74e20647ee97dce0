package admin

import (
	"errors"
	"fmt"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
)

// TestAgreement reads store.Inspect's answers: the Redis hash (numbers) against this
// replica's snapshot, an empty hash, an error, and the memory store's own fields.
func TestAgreement(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	open := breaker.Snapshot{State: breaker.Open, Mode: breaker.Normal, Generation: 7}
	closed := breaker.Snapshot{State: breaker.Closed, Mode: breaker.Normal}
	for _, tc := range []struct {
		name string
		s    breaker.Snapshot
		raw  map[string]string
		err  error
		want Agreement
	}{
		{"redis agrees", open, map[string]string{"st": "1", "md": "0", "gen": "7", "r:a2": "1", "r:a1": "2", "leases": ""},
			nil, Agreement{Agrees: true, State: "open", Mode: "normal", Generation: 7, Reporting: []string{"a1", "a2"}}},
		{"redis ahead", open, map[string]string{"st": "2", "md": "0", "gen": "8"},
			nil, Agreement{State: "half_open", Mode: "normal", Generation: 8}},
		{"redis forced", open, map[string]string{"st": "1", "md": "1", "gen": "7"},
			nil, Agreement{State: "open", Mode: "forced_open", Generation: 7}},
		{"redis garbage", open, map[string]string{"st": "9", "md": "0", "gen": "7"},
			nil, Agreement{State: "unknown(9)", Mode: "normal", Generation: 7}},
		{"redis empty, closed", closed, map[string]string{"leases": "", "key": "k"}, nil, Agreement{Empty: true, Agrees: true}},
		{"redis empty, open", open, map[string]string{"leases": ""}, nil, Agreement{Empty: true}},
		{"unreadable", open, nil, errors.New("dial tcp: refused"), Agreement{Error: "dial tcp: refused"}},
		{"memory", open, map[string]string{"state": "open", "mode": "normal", "generation": "7", "trips": "1"},
			nil, Agreement{Agrees: true, State: "open", Mode: "normal", Generation: 7}},
	} {
		got := agreement(tc.s, breaker.Settings{Window: 10 * time.Second, Buckets: 10}, tc.raw, tc.err, now)
		tc.want.Checked = "2026-01-02T03:04:05Z"
		if g, w := got, tc.want; g.Agrees != w.Agrees || g.Empty != w.Empty || g.State != w.State || g.Mode != w.Mode ||
			g.Generation != w.Generation || g.Error != w.Error || g.Checked != w.Checked || len(g.Reporting) != len(w.Reporting) ||
			(len(w.Reporting) > 0 && g.Reporting[0] != w.Reporting[0]) {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

// TestStoreWindow sums the live buckets of the Redis hash only: those of the last
// window by the clock, as the scripts count them.
func TestStoreWindow(t *testing.T) {
	now := time.UnixMilli(1_000_500) // bucket 1000 of 1 s buckets
	set := breaker.Settings{Window: 10 * time.Second, Buckets: 10}
	raw := map[string]string{
		"b:1000": "5 2 1", "b:991": "10 1 0", // live: the current bucket and the oldest
		"b:990": "100 100 0", "b:1001": "7 7 7", // stale, and from a clock ahead
		"b:x": "1 1 1", "b:995": "1 2", "st": "0", "r:a1": "5",
	}
	got := storeWindow(raw, set, now)
	if *got != (breaker.Counts{Requests: 15, Failures: 3, Slow: 1}) {
		t.Errorf("storeWindow: %+v, want 15 requests, 3 failures, 1 slow", *got)
	}
}

// TestRing keeps the last n samples, oldest first, of a circuit sampled from the start
// and of one sampled from round 5 on.
func TestRing(t *testing.T) {
	h := newHistory(3)
	if got := h.list("a"); got != nil {
		t.Fatalf("a circuit never sampled: %v", got)
	}
	for i := range 7 {
		h.startRound(int64(i))
		h.add("a", Sample{At: int64(i), State: "closed", Requests: i % 2})
		if i >= 4 {
			h.add("late", Sample{At: int64(i), State: "closed"})
		}
		got := h.list("a")
		want := min(i+1, 3)
		if len(got) != want || got[len(got)-1].At != int64(i) || got[0].At != int64(i+1-want) {
			t.Fatalf("after %d rounds: %v", i+1, got)
		}
		for _, s := range got {
			if s.Requests != int(s.At%2) {
				t.Fatalf("after %d rounds: %v", i+1, got)
			}
		}
		if got := h.tail("a", 1); len(got) != 1 || got[0].At != int64(i) {
			t.Fatalf("tail 1 after %d rounds: %v", i+1, got)
		}
		if i >= 4 {
			if got := h.list("late"); len(got) != min(i-3, 3) || got[len(got)-1].At != int64(i) {
				t.Fatalf("the late circuit after %d rounds: %v", i+1, got)
			}
		}
	}
}

// TestRingPacks: a sample comes back as it went in (the failure rate as the dashboard
// rounds it, to hundredths; requests saturate at 2^32-1); an idle circuit holds no
// samples of its own until one is not idle.
func TestRingPacks(t *testing.T) {
	h := newHistory(8)
	in := []Sample{
		{At: 1796300000123, State: "closed", Requests: 0, FailureRate: 0},
		{At: 1796300005123, State: "open", Requests: 3, FailureRate: 66.67},
		{At: 1796300010123, State: "half_open", Requests: 1 << 31, FailureRate: 100},
		{At: -5, State: "closed", Requests: 7, FailureRate: 12.34},
		{At: 0, State: "open", Requests: 1 << 40, FailureRate: 0.01},
	}
	for i, s := range in {
		h.startRound(s.At)
		h.add("c", s)
		h.add("idle", Sample{At: s.At, State: "closed"})
		if r := h.rings["c"]; (r.buf == nil) != (i == 0) {
			t.Fatalf("round %d: ring allocated %v", i, r.buf != nil)
		}
	}
	got := h.list("c")
	in[4].Requests = 1<<32 - 1
	if !slices.Equal(got, in) {
		t.Fatalf("got %v, want %v", got, in)
	}
	if h.rings["idle"].buf != nil || len(h.list("idle")) != len(in) || h.list("idle")[1] != (Sample{At: in[1].At, State: "closed"}) {
		t.Fatalf("idle circuit: %+v, %v", h.rings["idle"], h.list("idle"))
	}
}

// namesBackend is a Backend of n upstreams, each with its own circuit and one target's.
type namesBackend struct {
	Backend
	cfg      *config.Config
	breakers map[string]*breaker.Breaker
}

func (b namesBackend) Config() *config.Config                { return b.cfg }
func (b namesBackend) Breakers() map[string]*breaker.Breaker { return b.breakers }

func newNamesBackend(n int) namesBackend {
	b := namesBackend{cfg: &config.Config{Upstreams: map[string]*config.Upstream{}}, breakers: map[string]*breaker.Breaker{}}
	for i := range n {
		name := fmt.Sprintf("up%06d", i)
		b.cfg.Upstreams[name] = &config.Upstream{}
		b.breakers[name] = nil
		b.breakers[name+"@10.0.0.1:80"] = nil
	}
	return b
}

// TestNamesScale: the circuits' names, which every open event stream reads every 50 ms
// (the fingerprint), cost about n log n: eight times the circuits cost well under 30
// times as much (a quadratic merge, as before, cost 64 times: with 20,000 circuits, a
// quarter of a second per call, one stream then kept a core busy).
func TestNamesScale(t *testing.T) {
	cost := func(n int) time.Duration {
		h := &Handler{b: newNamesBackend(n)}
		if got := h.names(); len(got) != 2*n || !slices.IsSorted(got) {
			t.Fatalf("names of %d upstreams: %d names, sorted %v", n, len(got), slices.IsSorted(got))
		}
		// The best of 9 (after a collection): on a loaded machine one call in a few
		// is descheduled or assists the collector (CI saw x34 with the best of 3).
		runtime.GC()
		best := time.Duration(1 << 62)
		for range 9 {
			start := time.Now()
			h.names()
			best = min(best, time.Since(start))
		}
		return best
	}
	small, large := cost(1000), cost(8000)
	t.Logf("names: 2,000 circuits %v, 16,000 circuits %v (x%.1f)", small, large, float64(large)/float64(small))
	if large > 30*small {
		t.Errorf("names: 16,000 circuits cost %v, 2,000 cost %v: more than 30 times as much for 8 times the circuits", large, small)
	}
}
