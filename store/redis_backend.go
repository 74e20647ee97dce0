package store

import (
	"context"
	"errors"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// redisBackend is the Redis store's server: scripts by EVALSHA in pipelines (run, in
// redis_exchange.go), pub/sub (listen, in redis_pubsub.go).
type redisBackend struct {
	client redis.UniversalClient
	prefix string
}

func (b *redisBackend) driver() string { return "redis" }
func (b *redisBackend) pipeline() int  { return maxPipeline }

func (b *redisBackend) eval(ctx context.Context, cl *call) (any, error) {
	return cl.script.Run(ctx, b.client, cl.keys, cl.args...).Result()
}

// inspect returns a circuit's hash with its trial leases ("id@expiry,..."), or (key) a
// key's hash with its time to live.
func (b *redisBackend) inspect(ctx context.Context, c *circuit, key bool) (map[string]string, error) {
	state, leases := c.keysOf(b.prefix)
	pipe := b.client.Pipeline()
	h := pipe.HGetAll(ctx, state)
	var l *redis.ZSliceCmd
	var ttl *redis.DurationCmd
	if key {
		ttl = pipe.PTTL(ctx, state)
	} else {
		l = pipe.ZRangeWithScores(ctx, leases, 0, -1)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	out := h.Val()
	if out == nil {
		out = map[string]string{}
	}
	if key {
		out["key"] = state
		if d := ttl.Val(); d > 0 {
			out["ttl_ms"] = strconv.FormatInt(d.Milliseconds(), 10)
		}
		return out, nil
	}
	var ls []string
	for _, z := range l.Val() {
		ls = append(ls, z.Member.(string)+"@"+strconv.FormatFloat(z.Score, 'f', 0, 64))
	}
	out["leases"] = strings.Join(ls, ",")
	out["key"] = state
	return out, nil
}

func (b *redisBackend) claim(ctx context.Context, key, owner string, ms int64) (bool, error) {
	n, err := claimScript.Run(ctx, b.client, []string{claimKey(b.prefix, key)}, owner, ms).Int()
	return n == 1, err
}

func (b *redisBackend) members(ctx context.Context, _, registry string, n int) ([]string, error) {
	return b.client.ZRange(ctx, registry, 0, int64(n)-1).Result()
}

// failed: a Redis Cluster client learns a new master (a failover) only from a MOVED
// reply or its periodic reload (every 10 s); a master that is gone answers neither: ask
// for a reload now (asynchronous, at most one per 200 ms).
func (b *redisBackend) failed() {
	if cc, ok := b.client.(*redis.ClusterClient); ok {
		cc.ReloadState(context.Background())
	}
}

func (b *redisBackend) close() error { return b.client.Close() }
