package store

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// TestResyncedHook: the loop's resync after the subscription is confirmed (every
// circuit read again) calls Hooks.Resynced once it completes, which the app uses to give
// that resync's garbage back to the OS; a Resync called directly does not.
func TestResyncedHook(t *testing.T) {
	srv := redistest.Start(t)
	client, err := NewRedisClient(RedisClientOptions{URL: srv.URL(), PoolSize: 4,
		DialTimeout: 250 * time.Millisecond, ReadTimeout: time.Second, WriteTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var resynced atomic.Int64
	st := newTestRedis(t, client, RedisOptions{ReplicaID: "r1", FlushInterval: 20 * time.Millisecond,
		Hooks: Hooks{Resynced: func() { resynced.Add(1) }}})
	b := breaker.New(circuitName, breaker.Settings{ConsecutiveFailures: 5}, breaker.Options{})
	st.Attach(map[string]Circuit{circuitName: {Breaker: b, SettingsHash: "h", TrialLease: 10 * time.Second}})
	if err := st.Resync(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := resynced.Load(); n != 0 {
		t.Fatalf("Resync called the hook %d times, want 0 (only the loop's resyncs call it)", n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = st.Run(ctx)
	}()
	defer func() {
		cancel()
		<-done
		_ = st.Close()
	}()
	eventually(t, waitFor, "the loop's resync calling Resynced", func() bool { return resynced.Load() >= 1 })
}
