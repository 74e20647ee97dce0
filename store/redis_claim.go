package store

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// claimScript takes or renews a lease: KEYS[1] is the lease's key, ARGV[1] the owner,
// ARGV[2] the lease's length in ms. A key that is free or already the owner's is
// (re)set to the owner with a fresh expiry; one held by another owner is left alone.
var claimScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
`)

// ClaimKey is the Redis key of the lease Claim takes on key: "<prefix>:probe:<key>".
// One key per call, so Claim works on Redis Cluster.
func (r *Redis) ClaimKey(key string) string { return claimKey(r.o.Prefix, key) }

func claimKey(prefix, key string) string { return prefix + ":probe:" + key }

// Claim implements Store: one script on the lease's key sets it to this store's owner
// for ttl unless another owner holds it. It is background I/O (bounded by the store's
// Timeout); nothing on the request path calls it. A degraded store answers ErrDegraded
// at once, without asking Redis, and a failed call answers its error: the caller then
// works on its own (see internal/health). Failures here do not count towards
// degradation; the loop and its heartbeat decide that.
func (r *Redis) Claim(ctx context.Context, key string, ttl time.Duration) (bool, error) {
	ms := ttl.Milliseconds()
	if ms <= 0 {
		return false, fmt.Errorf("claim %q: ttl must be at least 1ms, got %s", key, ttl)
	}
	if r.degraded.Load() {
		return false, ErrDegraded
	}
	ctx, cancel := context.WithTimeout(ctx, r.o.Timeout)
	defer cancel()
	ok, err := r.be.claim(ctx, key, r.claimOwner, ms)
	if err != nil {
		return false, fmt.Errorf("claim %q: %w", key, err)
	}
	return ok, nil
}
