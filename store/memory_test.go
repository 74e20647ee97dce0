package store

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// The memory store's behaviour as a breaker sees it is covered by the shared scenarios
// (scenarios_test.go); these tests cover what only the memory store has.

func TestMemoryStatusResyncRunClose(t *testing.T) {
	t.Parallel()
	m := NewMemory("host-1")
	if st := m.Status(); st != (Status{Driver: "memory", ReplicaID: "host-1"}) {
		t.Fatalf("Status = %+v", st)
	}
	if err := m.Resync(t.Context()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	select {
	case err := <-done:
		t.Fatalf("Run returned %v before its context ended", err)
	default:
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(waitFor):
		t.Fatal("Run did not return after its context ended")
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestMemoryAttachReplacesTheSet(t *testing.T) {
	t.Parallel()
	m := NewMemory("r")
	a := breaker.New("a", longOpen(), breaker.Options{})
	b := breaker.New("b", longOpen(), breaker.Options{})
	m.Attach(map[string]Circuit{"a": {Breaker: a}})
	if err := m.Control(t.Context(), "a", Command{Op: OpOpen}); err != nil {
		t.Fatal(err)
	}
	m.Attach(map[string]Circuit{"b": {Breaker: b}})
	if err := m.Control(t.Context(), "a", Command{Op: OpClose}); !errors.Is(err, ErrUnknownCircuit) {
		t.Fatalf("a forgotten circuit: %v", err)
	}
	if _, err := m.Inspect(t.Context(), "a"); !errors.Is(err, ErrUnknownCircuit) {
		t.Fatalf("Inspect of a forgotten circuit: %v", err)
	}
	if a.State() != breaker.Open || b.State() != breaker.Closed {
		t.Fatalf("states %v/%v", a.State(), b.State())
	}
}

func TestMemoryInspect(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{}
	b := breaker.New(circuitName, baseSettings(), breaker.Options{Clock: clock})
	m := NewMemory("r")
	m.Attach(map[string]Circuit{circuitName: {Breaker: b}})
	for range 3 {
		fail(t, b)
	}
	clock.Advance(time.Second)
	tk, err := b.Allow() // half-open trial
	if err != nil {
		t.Fatal(err)
	}
	b.Done(tk, breaker.Failure, 0) // open again: 2 trips, generation 3
	got, err := m.Inspect(t.Context(), circuitName)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"state": "open", "mode": "normal", "generation": "3", "trips": "2"}
	if len(got) != len(want) {
		t.Fatalf("Inspect = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("Inspect = %v, want %v", got, want)
		}
	}
}

// TestMemoryConcurrentUse runs Attach, Control, Inspect and requests at once (for -race).
func TestMemoryConcurrentUse(t *testing.T) {
	t.Parallel()
	m := NewMemory("r")
	b := breaker.New(circuitName, longOpen(), breaker.Options{})
	set := map[string]Circuit{circuitName: {Breaker: b}}
	m.Attach(set)
	var wg sync.WaitGroup
	ops := []Command{{Op: OpOpen}, {Op: OpClose}, {Op: OpReset}, {Op: OpMode, Mode: breaker.MetricsOnly}}
	for g := range 4 {
		wg.Go(func() {
			for i := range 200 {
				switch g {
				case 0:
					m.Attach(set)
				case 1:
					if err := m.Control(t.Context(), circuitName, ops[i%len(ops)]); err != nil {
						t.Error(err)
						return
					}
				case 2:
					if _, err := m.Inspect(t.Context(), circuitName); err != nil {
						t.Error(err)
						return
					}
				case 3:
					if tk, err := b.Allow(); err == nil {
						b.Done(tk, breaker.Failure, 0)
					}
				}
			}
		})
	}
	wg.Wait()
}
