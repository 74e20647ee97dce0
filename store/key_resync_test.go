package store

import (
	"errors"
	"testing"
	"time"
)

// TestKeyFailureSurvivesAResync: a per-key circuit the database does not hold yet
// (closed, never stored) whose breaker counted a failure when a resync runs (every
// LISTEN or pub/sub (re)connection asks for one, so it races with traffic) sends that
// failure: the resync took the key's counts and dropped them, so a failure counted at
// that moment never reached the fleet (TestPostgresKeys lost replica b's failure this
// way, about one run in four on a busy machine, when b's listener connected late).
func TestKeyFailureSurvivesAResync(t *testing.T) {
	f := newPgFleet(t, pgServer(t))
	a := startPgReplica(t, f, "a", replicaConfig{settings: baseSettings(), noRun: true})
	ka := a.attachKey("acme", 2, time.Minute)
	fail(t, ka)
	a.st.xmu.Lock()
	err := a.st.exchange(t.Context(), a.st.list(), true)
	a.st.xmu.Unlock()
	if err != nil && !errors.Is(err, errIdle) {
		t.Fatal(err)
	}
	m, err := a.st.InspectKey(t.Context(), circuitName+"#acme", KeyCircuit{})
	if err != nil {
		t.Fatal(err)
	}
	if m["consecutive"] != "1" || m["reports"] == "" || m["reports"] == "{}" {
		t.Fatalf("the key's row after a resync: %v, want its failure (consecutive 1, a report)", m)
	}
	// a key with successes alone still costs a resync nothing
	kq := a.attachKey("quiet", 2, time.Minute)
	succeed(t, kq)
	a.st.xmu.Lock()
	err = a.st.exchange(t.Context(), a.st.list(), true)
	a.st.xmu.Unlock()
	if err != nil && !errors.Is(err, errIdle) {
		t.Fatal(err)
	}
	if m, err := a.st.InspectKey(t.Context(), circuitName+"#quiet", KeyCircuit{}); err != nil || m["state"] != "" {
		t.Fatalf("a quiet key's row after a resync: %v, %v; want none", m, err)
	}
}
