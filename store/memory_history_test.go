package store

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// wall is a settable wall clock for the memory store's history stamps.
type wall struct {
	mu sync.Mutex
	t  time.Time
}

func (w *wall) now() time.Time          { w.mu.Lock(); defer w.mu.Unlock(); return w.t }
func (w *wall) advance(d time.Duration) { w.mu.Lock(); w.t = w.t.Add(d); w.mu.Unlock() }

// memoryWithHistory is a memory store keeping history, with one breaker "api" that
// reports its transitions to it, on fake clocks.
func memoryWithHistory(o HistoryOptions) (*Memory, *breaker.Breaker, *fakeClock, *wall) {
	w := &wall{t: time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)}
	m := NewMemory("solo").WithHistory(o, w.now)
	clock := &fakeClock{}
	b := breaker.New("api", baseSettings(), breaker.Options{Clock: clock, Observer: m})
	m.Attach(map[string]Circuit{"api": {Breaker: b}})
	return m, b, clock, w
}

// A trip-and-recover cycle leaves exactly its three transitions, once each, newest
// first, with the window at the trip and the generations in sequence.
func TestMemoryHistoryTripAndRecover(t *testing.T) {
	t.Parallel()
	m, b, clock, w := memoryWithHistory(HistoryOptions{Retention: time.Hour, MaxEntries: 10})
	if got, err := m.History(t.Context(), "api", 0); err != nil || len(got) != 0 {
		t.Fatalf("History before any transition = %+v, %v", got, err)
	}
	succeed(t, b)
	for range 3 {
		fail(t, b)
	}
	if b.State() != breaker.Open {
		t.Fatalf("state %v after 3 failures", b.State())
	}
	clock.Advance(100 * time.Millisecond)
	w.advance(100 * time.Millisecond)
	succeed(t, b) // the trial: half-open, then closed
	if b.State() != breaker.Closed {
		t.Fatalf("state %v after a good trial", b.State())
	}

	got, err := m.History(t.Context(), "api", 0)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 12, 3, 12, 0, 0, 100e6, time.UTC)
	want := []Transition{
		{Upstream: "api", From: "half_open", To: "closed", Reason: "trials_succeeded", Generation: 3, Replica: "solo", At: at},
		{Upstream: "api", From: "open", To: "half_open", Reason: "open_timeout", Generation: 2, At: at},
		{Upstream: "api", From: "closed", To: "open", Reason: "consecutive_failures", Requests: 4, Failures: 3,
			Consecutive: 3, Generation: 1, Replica: "solo", At: at.Add(-100 * time.Millisecond)},
	}
	if len(got) != len(want) {
		t.Fatalf("history = %+v, want %d transitions", got, len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("transition %d = %+v\nwant %+v", i, got[i], want[i])
		}
	}
	if got, _ := m.History(t.Context(), "api", 2); len(got) != 2 || got[1].To != "half_open" {
		t.Errorf("History(limit 2) = %+v", got)
	}
	if _, err := m.History(t.Context(), "nope", 0); !errors.Is(err, ErrUnknownCircuit) {
		t.Errorf("History of an unknown circuit: %v", err)
	}

	// A key's circuit (named config.KeyName) goes to its upstream's history, with its key.
	k := breaker.New("api#tenant-7", baseSettings(), breaker.Options{Clock: clock, Observer: m})
	k.Trip()
	got, _ = m.History(t.Context(), "api", 1)
	if len(got) != 1 || got[0].Upstream != "api" || got[0].Key != "tenant-7" || got[0].To != "open" || got[0].Reason != "mode" {
		t.Errorf("a key's trip: %+v", got)
	}
}

// The ring keeps max_entries per circuit; retention hides older entries.
func TestMemoryHistoryBounded(t *testing.T) {
	t.Parallel()
	m, b, _, w := memoryWithHistory(HistoryOptions{Retention: time.Minute, MaxEntries: 3})
	for range 4 {
		b.Trip()
		b.Close()
		w.advance(time.Second)
	}
	got, err := m.History(t.Context(), "api", 0)
	if err != nil || len(got) != 3 || got[0].Generation != 8 || got[2].Generation != 6 {
		t.Fatalf("History = %+v, %v; want generations 8, 7, 6", got, err)
	}
	w.advance(time.Minute - 1500*time.Millisecond) // now 62.5 s: generations 7 and 8 (at 3 s) are within the minute, 6 (at 2 s) is not
	if got, _ := m.History(t.Context(), "api", 0); len(got) != 2 || got[0].Generation != 8 {
		t.Errorf("History after the retention of older ones = %+v, want generations 8 and 7", got)
	}

	off := NewMemory("solo")
	off.Attach(map[string]Circuit{"api": {Breaker: b}})
	if _, err := off.History(t.Context(), "api", 0); !errors.Is(err, ErrHistoryDisabled) {
		t.Errorf("History without WithHistory: %v", err)
	}
}
