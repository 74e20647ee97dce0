package store

import (
	"sync"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// fakeTally is a Tally whose counts the test sets, remembering the last Fleet call.
type fakeTally struct {
	mu       sync.Mutex
	a, b     int64
	active   bool
	window   time.Duration
	fleet    [3]int64 // a, b, replicas
	own      int64
	reported int
}

func (f *fakeTally) set(a, b int64, active bool) {
	f.mu.Lock()
	f.a, f.b, f.active = a, b, active
	f.mu.Unlock()
}

func (f *fakeTally) Counts(time.Time) (int64, int64, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.a, f.b, f.active
}

func (f *fakeTally) Window() time.Duration { return f.window }

func (f *fakeTally) Fleet(a, b int64, replicas int, own int64, _ time.Time) {
	f.mu.Lock()
	f.fleet, f.own = [3]int64{a, b, int64(replicas)}, own
	f.reported++
	f.mu.Unlock()
}

func (f *fakeTally) last() ([3]int64, int64, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fleet, f.own, f.reported
}

// Replicas sum their tallies through Redis: each learns the fleet's sums with its own
// report included; a replica that stops reporting drops out after the window; an idle
// tally costs no command; a foreign value under the key is replaced.
func TestRedisTalliesSumTheFleet(t *testing.T) {
	srv := redistest.Start(t)
	fleet := startFleet(t, srv, 3, replicaConfig{noRun: true})
	window := 400 * time.Millisecond
	ts := make([]*fakeTally, len(fleet))
	for i, r := range fleet {
		ts[i] = &fakeTally{window: window}
		r.st.Share(map[string]Tally{"retry:api": ts[i]})
	}
	// A foreign value under the tally's key does not wedge it.
	if err := srv.Client().Set(t.Context(), "fuse:{tally:retry:api}", "junk", 0).Err(); err != nil {
		t.Fatal(err)
	}
	// Idle: nothing sent.
	before := srv.CommandStats()["evalsha"]
	for _, r := range fleet {
		r.flushNow(t)
	}
	if _, _, n := ts[0].last(); n != 0 {
		t.Fatalf("an idle tally was reported %d times", n)
	}
	ts[0].set(100, 5, true)
	ts[1].set(200, 0, true)
	ts[2].set(300, 7, true)
	for _, r := range fleet {
		r.flushNow(t)
	}
	if got := srv.CommandStats()["evalsha"] - before; got != 3 {
		t.Errorf("%d scripts for three active tallies, want 3", got)
	}
	fl, own, _ := ts[2].last()
	if fl != [3]int64{600, 12, 3} || own != 300 {
		t.Errorf("replica 2 learned %v (own %d), want the fleet's 600 requests, 12 retries, 3 replicas (own 300)", fl, own)
	}
	// Replica 0 goes quiet: after the window its last report no longer counts.
	ts[0].set(100, 5, false)
	deadline := time.Now().Add(5 * time.Second)
	for {
		fleet[2].flushNow(t)
		fleet[1].flushNow(t)
		if fl, _, _ := ts[1].last(); fl == [3]int64{500, 7, 2} {
			break
		}
		if time.Now().After(deadline) {
			fl, _, _ := ts[1].last()
			t.Fatalf("replica 1 still learns %v, want replica 0's report gone: [500 7 2]", fl)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if ttl := srv.Client().PTTL(t.Context(), "fuse:{tally:retry:api}").Val(); ttl <= 0 || ttl > 2*window {
		t.Errorf("tally key TTL %v, want it to expire within 2 windows", ttl)
	}
}
