package store

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// TestRedisClaim: one holder at a time; the holder renews; another replica gets the
// lease only once the holder's last claim has expired; the key is under the prefix.
func TestRedisClaim(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	newStore := func(id string) *Redis {
		client := redis.NewClient(&redis.Options{Addr: srv.Addr()})
		st := newTestRedis(t, client, RedisOptions{ReplicaID: id, Prefix: "fp"})
		t.Cleanup(func() { _ = st.Close() })
		return st
	}
	// The same replica id twice: the leases must still be told apart.
	a, b := newStore("same"), newStore("same")
	const ttl = 300 * time.Millisecond
	claim := func(st *Redis) bool {
		t.Helper()
		ok, err := st.Claim(ctx, "api@10.0.0.1:80", ttl)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if !claim(a) {
		t.Fatal("a: free lease not granted")
	}
	if claim(b) {
		t.Fatal("b: granted a lease a holds")
	}
	if !claim(a) {
		t.Fatal("a: could not renew its own lease")
	}
	if k := a.ClaimKey("api@10.0.0.1:80"); k != "fp:probe:api@10.0.0.1:80" {
		t.Errorf("claim key %q", k)
	}
	pttl := srv.Client().PTTL(ctx, "fp:probe:api@10.0.0.1:80").Val()
	if pttl <= 0 || pttl > ttl {
		t.Errorf("lease PTTL %v, want (0, %v]", pttl, ttl)
	}
	// a stops renewing: b gets the lease once it expired, not before.
	renewed := time.Now()
	eventually(t, waitFor, "b takes over the lease", func() bool { return claim(b) })
	if since := time.Since(renewed); since < ttl-50*time.Millisecond {
		t.Errorf("b took the lease %v after a's renewal, before its ttl %v", since, ttl)
	}
	if claim(a) {
		t.Error("a: granted the lease b now holds")
	}

	if _, err := a.Claim(ctx, "k", 0); err == nil {
		t.Error("ttl 0 accepted")
	}
	a.degraded.Store(true)
	if ok, err := a.Claim(ctx, "k", ttl); ok || !errors.Is(err, ErrDegraded) {
		t.Errorf("degraded store: Claim = %v, %v; want false, ErrDegraded", ok, err)
	}
	if ok, err := NewMemory("m").Claim(ctx, "k", ttl); !ok || err != nil {
		t.Errorf("memory store: Claim = %v, %v; want true, nil", ok, err)
	}
}
