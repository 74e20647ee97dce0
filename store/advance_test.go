package store

import (
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// A replica with traffic for an open circuit gets a trial permit in advance, for the
// half-open period that follows: its first request after the open period is admitted as
// a trial with no exchange in between, and the permit counts against the fleet-wide
// half-open maximum (another replica gets none), in Redis before and after the period
// ends. The replicas' exchanges are driven by the test (noRun).
func TestRedisAdvancePermit(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := baseSettings()
	s.OpenDuration = 300 * time.Millisecond
	rc := replicaConfig{settings: s, lease: time.Minute, flush: 50 * time.Millisecond, noRun: true} // lead 150 ms
	fleet := startFleet(t, srv, 2, rc)
	a, b := fleet[0], fleet[1]
	if err := a.st.Control(t.Context(), circuitName, Command{Op: OpOpen}); err != nil {
		t.Fatal(err)
	}
	resync(t, b)
	for _, r := range fleet {
		if _, err := r.b.Allow(); err == nil { // the replicas' traffic: rejected, but seen
			t.Fatalf("%s admitted a request while open", r.id)
		}
	}
	// Outside the lead nobody asks; inside it, a asks first and gets the only slot.
	a.flushNow(t)
	if sn := a.b.Snapshot(); sn.OpenRemaining > 150*time.Millisecond && sn.Permits != 0 {
		t.Fatalf("a got a permit %v before the end of the open period", sn.OpenRemaining)
	}
	eventually(t, waitFor, "a's permit in advance", func() bool {
		a.flushNow(t)
		return a.b.Snapshot().Permits == 1
	})
	if sn := a.b.Snapshot(); sn.State != breaker.Open || sn.OpenRemaining == 0 {
		t.Fatalf("a got its permit %v, want it while the circuit is still open", sn)
	}
	b.flushNow(t)
	if sn := b.b.Snapshot(); sn.Permits != 0 {
		t.Fatalf("b got %d permits while a holds the only slot in advance", sn.Permits)
	}
	leases := func() int64 {
		n, err := srv.Client().ZCard(t.Context(), "fuse:{api}:leases").Result()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := leases(); n != 1 {
		t.Fatalf("%d leases in Redis, want 1", n)
	}

	// The first request after the open period is a trial at once.
	var trial breaker.Ticket
	eventually(t, waitFor, "a's first request after the open period", func() bool {
		if a.b.Snapshot().OpenRemaining > 0 {
			return false
		}
		tk, err := a.b.Allow()
		if err != nil || !tk.Trial() {
			t.Fatalf("a's first request after the open period: %+v, %v; want a trial", tk, err)
		}
		trial = tk
		return true
	})
	// b's requests wait: the slot is taken fleet-wide, before and after Redis learns that
	// the open period ended.
	for range 3 {
		if tk, err := b.b.Allow(); err == nil {
			t.Fatalf("b admitted %+v while a's trial holds the only slot", tk)
		}
		b.flushNow(t)
		a.flushNow(t)
	}
	if n := leases(); n != 1 {
		t.Fatalf("%d leases in Redis during a's trial, want 1", n)
	}
	// Redis ends the open period when a, half-open, next flushes (its own end of the
	// period is Redis's, or a little after; a few milliseconds on a busy machine).
	eventually(t, waitFor, "Redis half-open after a's flush", func() bool {
		a.flushNow(t)
		st, _ := srv.Client().HGet(t.Context(), "fuse:{api}:state", "st").Result()
		return st == "2"
	})
	a.b.Done(trial, breaker.Success, time.Millisecond)
	a.flushNow(t)
	resync(t, b)
	allIn(t, breaker.Closed, a, b)
}

// A permit granted in advance that the replica's traffic does not use goes back one
// flush interval after the open period ends, so another replica's requests get the slot.
func TestRedisAdvancePermitGoesBackUnused(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := baseSettings()
	s.OpenDuration = 200 * time.Millisecond
	rc := replicaConfig{settings: s, lease: time.Minute, flush: 50 * time.Millisecond, noRun: true}
	fleet := startFleet(t, srv, 2, rc)
	a, b := fleet[0], fleet[1]
	if err := a.st.Control(t.Context(), circuitName, Command{Op: OpOpen}); err != nil {
		t.Fatal(err)
	}
	resync(t, b)
	if _, err := a.b.Allow(); err == nil {
		t.Fatal("a admitted a request while open")
	}
	eventually(t, waitFor, "a's permit in advance", func() bool {
		a.flushNow(t)
		return a.b.Snapshot().Permits == 1
	})
	// a's traffic stops; b's arrives after the open period.
	var got breaker.Ticket
	eventually(t, waitFor, "b's trial", func() bool {
		a.flushNow(t)
		tk, err := b.b.Allow()
		b.flushNow(t)
		if err == nil {
			got = tk
			return true
		}
		return false
	})
	if !got.Trial() {
		t.Fatalf("b's request: %+v, want a trial", got)
	}
	if sn := a.b.Snapshot(); sn.Permits != 0 {
		t.Fatalf("a still holds %d permits", sn.Permits)
	}
}
