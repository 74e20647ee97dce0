package store

import (
	"testing"
	"time"
)

// Replicas of the PostgreSQL store sum their tallies through <p>tally, each learning the
// fleet's sums with its own report included; an idle tally sends nothing.
func TestPostgresTalliesSumTheFleet(t *testing.T) {
	f := newPgFleet(t, pgServer(t))
	window := 400 * time.Millisecond
	var reps []*pgReplica
	ts := make([]*fakeTally, 3)
	for i := range ts {
		r := startPgReplica(t, f, "r"+string(rune('0'+i)), replicaConfig{settings: baseSettings(), noRun: true})
		ts[i] = &fakeTally{window: window}
		r.st.Share(map[string]Tally{"retry:api": ts[i]})
		reps = append(reps, r)
	}
	for _, r := range reps {
		r.flushNow(t)
	}
	if _, _, n := ts[0].last(); n != 0 {
		t.Fatalf("an idle tally was reported %d times", n)
	}
	ts[0].set(100, 5, true)
	ts[1].set(200, 0, true)
	ts[2].set(300, 7, true)
	for _, r := range reps {
		r.flushNow(t)
	}
	if fl, own, _ := ts[2].last(); fl != [3]int64{600, 12, 3} || own != 300 {
		t.Errorf("replica 2 learned %v (own %d), want the fleet's 600 requests, 12 retries, 3 replicas (own 300)", fl, own)
	}
}

// Claim through <p>claim: one holder at a time, renewed by it, taken over once it lapsed;
// two stores under one replica id are told apart.
func TestPostgresClaim(t *testing.T) {
	srv := pgServer(t)
	f := newPgFleet(t, srv)
	a, b := newTestPostgres(t, srv.DSN(), f.prefix), newTestPostgres(t, srv.DSN(), f.prefix)
	const ttl = 300 * time.Millisecond
	claim := func(st *Postgres) bool {
		t.Helper()
		ok, err := st.Claim(t.Context(), "api@10.0.0.1:80", ttl)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if !claim(a) || claim(b) || !claim(a) {
		t.Fatal("a free lease not granted to a, granted to b while a holds it, or not renewed by a")
	}
	renewed := time.Now()
	eventually(t, waitFor, "b takes over the lease", func() bool { return claim(b) })
	if since := time.Since(renewed); since < ttl-50*time.Millisecond {
		t.Errorf("b took the lease %v after a's renewal, before its ttl %v", since, ttl)
	}
	if claim(a) {
		t.Error("a: granted the lease b now holds")
	}
}
