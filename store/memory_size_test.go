package store

import (
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// maxCircuitHeap bounds the live heap the shared stores' engine keeps per idle circuit
// (issue #19 goal 5: a replica with 10,000 upstreams idles in 40 MiB): its circuit (128
// bytes) and its place in the sorted list (8). Before the circuit's rarely used state
// went behind a pointer, its settings were shared and its keys derived when needed, it
// was about 590 bytes.
const maxCircuitHeap = 200

// TestCircuitMemory: 10,000 idle circuits attached to a shared store and read once by a
// resync (as at start) cost the store at most maxCircuitHeap bytes of live heap each,
// the breakers (the caller's) and the connections (a store's, not a circuit's)
// excluded. Both backends: the engine is the same, a backend must keep nothing per
// circuit. Not parallel: it reads the process's heap.
func TestCircuitMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("10,000 circuits")
	}
	const n = 10_000
	circuits := func() map[string]Circuit {
		cs := make(map[string]Circuit, n)
		for i := range n {
			name := "u" + strconv.Itoa(i)
			cs[name] = Circuit{Breaker: breaker.New(name, longOpen(), breaker.Options{}), SettingsHash: "h",
				TrialLease: 10 * time.Second}
		}
		return cs
	}
	measure := func(t *testing.T, st *Redis) {
		cs := circuits()
		// the connections first: a resync of nothing dials none, so one circuit is read
		// before the baseline (and detached again)
		for name, c := range cs {
			st.Attach(map[string]Circuit{name: c})
			break
		}
		if err := st.Resync(t.Context()); err != nil {
			t.Fatal(err)
		}
		st.Attach(nil)
		h0 := liveHeap()
		st.Attach(cs)
		if err := st.Resync(t.Context()); err != nil {
			t.Fatal(err)
		}
		h1 := liveHeap()
		runtime.KeepAlive(cs)
		for _, c := range st.list() {
			if !c.synced.Load() || c.more != nil {
				t.Fatalf("%s after the resync: synced %v, more %v; want read, and nothing more allocated",
					c.name, c.synced.Load(), c.more)
			}
		}
		per := (float64(h1) - float64(h0)) / n
		t.Logf("%.0f bytes of live heap per idle circuit (%.2f MiB for %d)", per, (float64(h1)-float64(h0))/(1<<20), n)
		if per > maxCircuitHeap {
			t.Errorf("the store keeps %.0f bytes per idle circuit, want at most %d", per, maxCircuitHeap)
		}
	}
	t.Run("redis", func(t *testing.T) {
		srv := redistest.Start(t)
		client, err := NewRedisClient(RedisClientOptions{URL: srv.URL(), PoolSize: 4})
		if err != nil {
			t.Fatal(err)
		}
		st := newTestRedis(t, client, RedisOptions{ReplicaID: "r", Timeout: 5 * time.Second})
		t.Cleanup(func() { st.Close() })
		measure(t, st)
	})
	t.Run("postgres", func(t *testing.T) {
		f := newPgFleet(t, pgServer(t))
		pool, err := NewPostgresPool(PostgresClientOptions{URL: f.srv.DSN(), PoolSize: 4})
		if err != nil {
			t.Fatal(err)
		}
		st, err := NewPostgres(pool, PostgresOptions{Prefix: f.prefix, ReplicaID: "r", FlushInterval: 100 * time.Millisecond,
			DegradeAfter: 3, Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		measure(t, st.Redis)
	})
}

// liveHeap returns the bytes of live heap after a full collection.
func liveHeap() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC() // the second cycle frees what the first one's finalizers released
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}
