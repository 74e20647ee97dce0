package app

import (
	"net"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/store"
)

// The Redis store takes every value from here, and these from the config: the defaults
// are config.Default()'s alone (see TestRedisStoreDefaultsAreTheConfigs).

// redisOptions translates the store's config into the Redis store's tolerances; the
// caller adds the replica's id, logger, clock and hooks.
func redisOptions(s config.Store) store.RedisOptions {
	return store.RedisOptions{
		Prefix:        s.Redis.Prefix,
		FlushInterval: s.FlushInterval,
		DegradeAfter:  s.Redis.DegradeAfter,
		Timeout:       exchangeTimeout(s.Redis),
		History:       historyOptions(s),
	}
}

// historyOptions are store.history's bounds, for every store.
func historyOptions(s config.Store) store.HistoryOptions {
	return store.HistoryOptions{Retention: s.History.Retention, MaxEntries: s.History.MaxEntries}
}

// exchangeTimeout bounds one exchange with Redis (a flush's round trip, a resync's, an
// operator command): a new connection's dial, then writing the pipeline and reading its
// replies. 450 ms at the defaults.
func exchangeTimeout(c config.Redis) time.Duration {
	return c.DialTimeout + c.ReadTimeout + c.WriteTimeout
}

// redisClientOptions translates store.redis into the Redis client's options; log
// receives the client library's own messages.
func redisClientOptions(c config.Redis, log *zap.Logger) store.RedisClientOptions {
	return store.RedisClientOptions{
		URL: c.URL, Addr: net.JoinHostPort(c.Host, strconv.Itoa(c.Port)),
		Username: c.Username, Password: c.Password, DB: c.DB,
		TLS: store.RedisTLS{Enabled: c.TLS.Enabled, CAFile: c.TLS.CAFile, CertFile: c.TLS.CertFile,
			KeyFile: c.TLS.KeyFile, ServerName: c.TLS.ServerName, InsecureSkipVerify: c.TLS.InsecureSkipVerify},
		PoolSize:    c.PoolSize,
		DialTimeout: c.DialTimeout, ReadTimeout: c.ReadTimeout, WriteTimeout: c.WriteTimeout,
		SentinelMaster: c.SentinelMaster, SentinelAddrs: c.SentinelAddrs, SentinelPassword: c.SentinelPassword,
		ClusterAddrs: c.ClusterAddrs,
		Logger:       log,
	}
}
