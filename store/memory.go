package store

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// Memory keeps every breaker's state in this process only: the right store for a single
// replica, and the fallback each replica keeps even with a shared store.
type Memory struct {
	replica  string
	mu       sync.RWMutex // guards circuits
	circuits map[string]Circuit
	kmu      sync.Mutex // guards keyed: per-key circuits (keyed.go)
	keyed    map[string]Circuit
	hist     memHistory // transitions (memory_history.go)
}

var _ Store = (*Memory)(nil)

// NewMemory returns a memory store for the replica with the given id.
func NewMemory(replicaID string) *Memory {
	return &Memory{replica: replicaID, circuits: map[string]Circuit{}}
}

// Attach implements Store.
func (m *Memory) Attach(circuits map[string]Circuit) {
	m.mu.Lock()
	m.circuits = circuits
	m.mu.Unlock()
	m.hist.forget(circuits)
}

func (m *Memory) circuit(name string) (Circuit, bool) {
	m.mu.RLock()
	c, ok := m.circuits[name]
	m.mu.RUnlock()
	if !ok {
		return m.key(name)
	}
	return c, ok
}

// Resync implements Store: the memory is the source of truth, there is nothing to re-read.
func (m *Memory) Resync(context.Context) error { return nil }

// Run implements Store: the memory store has no background work.
func (m *Memory) Run(ctx context.Context) error {
	<-ctx.Done()
	return nil
}

// Control implements Store.
func (m *Memory) Control(_ context.Context, name string, cmd Command) error {
	c, ok := m.circuit(name)
	if !ok {
		return unknown(name)
	}
	if err := cmd.validate(); err != nil {
		return err
	}
	apply(c.Breaker, cmd)
	return nil
}

// apply runs an operator command on a local breaker.
func apply(b breaker.Control, cmd Command) {
	switch cmd.Op {
	case OpOpen:
		b.Trip()
	case OpClose:
		b.Close()
	case OpReset:
		b.Reset()
	case OpMode:
		b.SetMode(cmd.Mode)
	}
}

// Status implements Store.
func (m *Memory) Status() Status { return Status{Driver: "memory", ReplicaID: m.replica} }

// Inspect implements Store: the breaker's own snapshot is all the memory store holds.
func (m *Memory) Inspect(_ context.Context, name string) (map[string]string, error) {
	c, ok := m.circuit(name)
	if !ok {
		return nil, unknown(name)
	}
	s := c.Breaker.Snapshot()
	return map[string]string{
		"state":      s.State.String(),
		"mode":       s.Mode.String(),
		"generation": strconv.FormatUint(s.Generation, 10),
		"trips":      strconv.Itoa(s.Trips),
	}, nil
}

// Close implements Store.
func (m *Memory) Close() error { return nil }

// Claim implements Store: a replica alone holds every lease.
// Share implements Store: a replica alone is its own fleet, so there is nothing to share.
func (m *Memory) Share(map[string]Tally) {}

func (m *Memory) Claim(context.Context, string, time.Duration) (bool, error) { return true, nil }
