package store

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// The behaviour a single replica sees does not depend on its store: the same scenarios
// run against the memory store and against a Redis and a PostgreSQL store with one
// replica.

// harness is one replica's store serving one circuit, circuitName.
type harness struct {
	st Store
	b  *breaker.Breaker
	// elapse lets d pass on the clock that times open periods: the memory store's
	// breaker runs on a fake clock; Redis's clock runs by itself (the scenarios poll).
	elapse func(d time.Duration)
	// settle waits until the store has done its background work for what happened so
	// far, so that "nothing changes" can be asserted.
	settle func()
}

type newStore func(t *testing.T, s breaker.Settings) harness

var stores = []struct {
	name string
	new  newStore
}{
	{"memory", newMemoryHarness},
	{"redis", newRedisHarness},
	{"postgres", newPostgresHarness},
}

func newMemoryHarness(t *testing.T, s breaker.Settings) harness {
	clock := &fakeClock{}
	b := breaker.New(circuitName, s, breaker.Options{Clock: clock})
	m := NewMemory("solo")
	m.Attach(map[string]Circuit{circuitName: {Breaker: b}})
	if err := m.Resync(t.Context()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return harness{st: m, b: b, elapse: clock.Advance, settle: func() {}}
}

func newRedisHarness(t *testing.T, s breaker.Settings) harness {
	r := startReplica(t, redistest.Start(t), "solo", replicaConfig{settings: s})
	return harness{st: r.st, b: r.b, elapse: func(time.Duration) {}, settle: func() { r.flushNow(t) }}
}

var scenarios = []struct {
	name string
	run  func(t *testing.T, ns newStore)
}{
	{"consecutive failures trip and the circuit rejects", scenarioTripAndReject},
	{"failure rate trips once the minimum is reached", scenarioFailureRate},
	{"half-open admits one trial and a success closes", scenarioRecovery},
	{"a failed trial reopens for longer", scenarioFailedTrial},
	{"an outcome from before the trip is dropped", scenarioStaleOutcome},
	{"operator commands", scenarioControl},
	{"counts from before a mode change do not trip after it", scenarioModeChangeStartsOver},
	{"inspect and status", scenarioInspect},
}

func TestScenarios(t *testing.T) {
	t.Parallel()
	for _, sc := range scenarios {
		for _, st := range stores {
			t.Run(st.name+"/"+sc.name, func(t *testing.T) {
				t.Parallel()
				sc.run(t, st.new)
			})
		}
	}
}

func waitState(t *testing.T, b *breaker.Breaker, st breaker.State) {
	t.Helper()
	eventually(t, waitFor, "state "+st.String(), func() bool { return b.State() == st })
}

// trial waits until the breaker admits a half-open trial; meanwhile it may only reject.
func trial(t *testing.T, b *breaker.Breaker) breaker.Ticket {
	t.Helper()
	var tk breaker.Ticket
	eventually(t, waitFor, "a trial", func() bool {
		var err error
		tk, err = b.Allow()
		switch {
		case err == nil && !tk.Trial():
			t.Fatalf("admitted a non-trial request while recovering (state %v)", b.State())
		case err != nil && !errors.Is(err, breaker.ErrOpen) && !errors.Is(err, breaker.ErrTooManyTrials):
			t.Fatalf("Allow: %v", err)
		}
		return err == nil
	})
	return tk
}

func scenarioTripAndReject(t *testing.T, ns newStore) {
	s := longOpen() // 3 consecutive failures, open for a minute
	h := ns(t, s)
	fail(t, h.b)
	fail(t, h.b)
	succeed(t, h.b) // the run starts over
	fail(t, h.b)
	fail(t, h.b)
	h.settle()
	if st := h.b.State(); st != breaker.Closed {
		t.Fatalf("%v after a broken run of failures", st)
	}
	fail(t, h.b)
	waitState(t, h.b, breaker.Open)
	for range 100 {
		if _, err := h.b.Allow(); !errors.Is(err, breaker.ErrOpen) {
			t.Fatalf("Allow while open: %v, want ErrOpen", err)
		}
	}
	sn := h.b.Snapshot()
	if sn.Trips != 1 || sn.OpenFor != time.Minute || sn.OpenRemaining <= 0 || h.b.RetryAfter() <= 0 {
		t.Fatalf("snapshot %+v, RetryAfter %v", sn, h.b.RetryAfter())
	}
}

func scenarioFailureRate(t *testing.T, ns newStore) {
	s := longOpen()
	s.ConsecutiveFailures = 0
	s.FailureRate, s.MinimumRequests, s.Window = 50, 6, time.Minute
	h := ns(t, s)
	for range 5 {
		fail(t, h.b) // 100 %, but below the minimum
	}
	h.settle()
	if st := h.b.State(); st != breaker.Closed {
		t.Fatalf("%v below minimum_requests", st)
	}
	succeed(t, h.b) // 5 of 6
	waitState(t, h.b, breaker.Open)
}

func scenarioRecovery(t *testing.T, ns newStore) {
	s := baseSettings() // open 100 ms, one trial, one success closes
	h := ns(t, s)
	for range 3 {
		fail(t, h.b)
	}
	waitState(t, h.b, breaker.Open)
	h.elapse(s.OpenDuration)
	tk := trial(t, h.b)
	for range 10 {
		if _, err := h.b.Allow(); !errors.Is(err, breaker.ErrTooManyTrials) {
			t.Fatalf("a second concurrent trial: %v, want ErrTooManyTrials", err)
		}
	}
	h.b.Done(tk, breaker.Success, time.Millisecond)
	waitState(t, h.b, breaker.Closed)
	if tk, err := h.b.Allow(); err != nil || tk.Trial() {
		t.Fatalf("after recovery: %+v, %v", tk, err)
	}
	if sn := h.b.Snapshot(); sn.Trips != 0 {
		t.Fatalf("trips %d after recovery, want 0", sn.Trips)
	}
}

func scenarioFailedTrial(t *testing.T, ns newStore) {
	s := baseSettings()
	s.BackoffMultiplier, s.MaxOpenDuration = 2, time.Second
	h := ns(t, s)
	for range 3 {
		fail(t, h.b)
	}
	waitState(t, h.b, breaker.Open)
	h.elapse(s.OpenDuration)
	h.b.Done(trial(t, h.b), breaker.Failure, time.Millisecond)
	eventually(t, waitFor, "reopened after the failed trial", func() bool {
		sn := h.b.Snapshot()
		return sn.State == breaker.Open && sn.Trips == 2
	})
	if sn := h.b.Snapshot(); sn.OpenFor != 2*s.OpenDuration {
		t.Fatalf("reopened for %v, want %v", sn.OpenFor, 2*s.OpenDuration)
	}
	h.elapse(2 * s.OpenDuration)
	h.b.Done(trial(t, h.b), breaker.Success, time.Millisecond)
	waitState(t, h.b, breaker.Closed)
}

func scenarioStaleOutcome(t *testing.T, ns newStore) {
	h := ns(t, longOpen())
	slow, err := h.b.Allow()
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		fail(t, h.b)
	}
	waitState(t, h.b, breaker.Open)
	gen := h.b.Snapshot().Generation
	h.b.Done(slow, breaker.Success, time.Second) // admitted before the trip
	h.settle()
	if sn := h.b.Snapshot(); sn.State != breaker.Open || sn.Generation != gen {
		t.Fatalf("after a stale outcome: %v gen %d, want open gen %d", sn.State, sn.Generation, gen)
	}
}

func scenarioControl(t *testing.T, ns newStore) {
	h := ns(t, longOpen())
	ctx := t.Context()
	control := func(c Command) {
		t.Helper()
		if err := h.st.Control(ctx, circuitName, c); err != nil {
			t.Fatalf("Control(%+v): %v", c, err)
		}
	}
	control(Command{Op: OpOpen})
	if _, err := h.b.Allow(); h.b.State() != breaker.Open || !errors.Is(err, breaker.ErrOpen) {
		t.Fatalf("after open: %v, %v", h.b.State(), err)
	}
	control(Command{Op: OpClose})
	if h.b.State() != breaker.Closed || h.b.Snapshot().Trips != 0 {
		t.Fatalf("after close: %+v", h.b.Snapshot())
	}
	succeed(t, h.b)

	control(Command{Op: OpMode, Mode: breaker.ForcedOpen})
	if _, err := h.b.Allow(); h.b.Mode() != breaker.ForcedOpen || !errors.Is(err, breaker.ErrOpen) {
		t.Fatalf("forced open: mode %v, %v", h.b.Mode(), err)
	}
	control(Command{Op: OpMode, Mode: breaker.ForcedClosed})
	for range 10 {
		fail(t, h.b)
	}
	h.settle()
	if h.b.State() != breaker.Closed {
		t.Fatalf("forced closed tripped: %v", h.b.State())
	}
	control(Command{Op: OpMode, Mode: breaker.MetricsOnly})
	control(Command{Op: OpOpen})
	tk, err := h.b.Allow()
	if err != nil || !tk.WouldReject() {
		t.Fatalf("metrics-only while open: %+v, %v; want admitted and marked", tk, err)
	}
	control(Command{Op: OpReset})
	if sn := h.b.Snapshot(); sn.State != breaker.Closed || sn.Mode != breaker.Normal || sn.Trips != 0 {
		t.Fatalf("after reset: %+v", sn)
	}
	succeed(t, h.b)

	if err := h.st.Control(ctx, "nope", Command{Op: OpOpen}); !errors.Is(err, ErrUnknownCircuit) {
		t.Fatalf("unknown circuit: %v", err)
	}
	for _, bad := range []Command{{}, {Op: OpMode + 1}, {Op: OpMode, Mode: breaker.Mode(4)}} {
		if err := h.st.Control(ctx, circuitName, bad); err == nil {
			t.Fatalf("Control(%+v) accepted", bad)
		}
	}
	if sn := h.b.Snapshot(); sn.State != breaker.Closed || sn.Mode != breaker.Normal {
		t.Fatalf("an invalid command changed the breaker: %+v", sn)
	}
}

// inspectedState reads the state out of Inspect's map: the memory store shows the
// breaker's snapshot ("state": "open"), the PostgreSQL store its row (likewise), the Redis
// store its hash ("st": "1").
func inspectedState(t *testing.T, m map[string]string) breaker.State {
	t.Helper()
	if v, ok := m["state"]; ok {
		st, err := breaker.ParseState(v)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	n, err := strconv.Atoi(m["st"])
	if err != nil {
		t.Fatalf("Inspect = %v: no state", m)
	}
	return breaker.State(n)
}

func scenarioInspect(t *testing.T, ns newStore) {
	h := ns(t, longOpen())
	ctx := t.Context()
	if err := h.st.Control(ctx, circuitName, Command{Op: OpOpen}); err != nil {
		t.Fatal(err)
	}
	m, err := h.st.Inspect(ctx, circuitName)
	if err != nil {
		t.Fatal(err)
	}
	if st := inspectedState(t, m); st != breaker.Open {
		t.Fatalf("Inspect shows %v (%v), want open", st, m)
	}
	if m["generation"] != "1" && m["gen"] != "1" {
		t.Fatalf("Inspect = %v, want generation 1", m)
	}
	if _, err := h.st.Inspect(ctx, "nope"); !errors.Is(err, ErrUnknownCircuit) {
		t.Fatalf("Inspect(nope): %v", err)
	}
	if st := h.st.Status(); st.Degraded || st.ReplicaID != "solo" || st.Driver == "" {
		t.Fatalf("Status = %+v", st)
	}
}

func scenarioModeChangeStartsOver(t *testing.T, ns newStore) {
	h := ns(t, longOpen()) // 3 consecutive failures trip
	if err := h.st.Control(t.Context(), circuitName, Command{Op: OpMode, Mode: breaker.ForcedClosed}); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		fail(t, h.b) // the breaker is disabled: these are counted, but trip nothing
	}
	h.settle()
	if err := h.st.Control(t.Context(), circuitName, Command{Op: OpMode, Mode: breaker.Normal}); err != nil {
		t.Fatal(err)
	}
	fail(t, h.b)
	fail(t, h.b)
	h.settle()
	if st := h.b.State(); st != breaker.Closed {
		t.Fatalf("%v after 2 failures in normal mode: the forced-closed period's counts still count", st)
	}
	fail(t, h.b)
	waitState(t, h.b, breaker.Open)
}
