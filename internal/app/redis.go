package app

import (
	"net"
	"strconv"

	"go.uber.org/zap"

	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/store"
)

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
