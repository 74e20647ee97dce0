package store

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// RedisClientOptions say how to reach Redis: a single node (URL, or Addr), Sentinel
// (SentinelMaster and SentinelAddrs) or Cluster (ClusterAddrs). The caller fills every
// field it wants; the store adds no defaults of its own. Errors name a field by its key
// under store.redis in the config (url, tls.ca_file, ...), so that the caller can prefix
// the key's place.
type RedisClientOptions struct {
	URL      string // redis:// or rediss:// URL; replaces Addr, Username, Password and DB
	Addr     string // host:port of a single node
	Username string // overrides the URL's when set
	Password string // overrides the URL's when set
	DB       int
	TLS      RedisTLS
	PoolSize int // 0: the client library's default

	DialTimeout, ReadTimeout, WriteTimeout time.Duration

	SentinelMaster   string
	SentinelAddrs    []string
	SentinelPassword string
	ClusterAddrs     []string

	// Logger receives the client library's own messages at Debug level (see
	// routeClientLogs); nil leaves them where the library prints them.
	Logger *zap.Logger
}

// RedisTLS configures TLS to Redis. TLS is on when any field is set or the URL is
// rediss://, and then every field applies.
type RedisTLS struct {
	Enabled            bool
	CAFile             string // PEM CA bundle; empty means the system roots
	CertFile, KeyFile  string // PEM client certificate and its key, for mutual TLS
	ServerName         string // name to verify; empty means the host connected to
	InsecureSkipVerify bool
}

// NewRedisClient builds a client for a single node, Sentinel or Cluster, all behind
// redis.UniversalClient so the configuration keeps its shape as a deployment grows.
func NewRedisClient(c RedisClientOptions) (redis.UniversalClient, error) {
	if c.Logger != nil {
		routeClientLogs(c.Logger)
	}
	o := &redis.UniversalOptions{
		Addrs:        []string{c.Addr},
		Username:     c.Username,
		Password:     c.Password,
		DB:           c.DB,
		PoolSize:     c.PoolSize,
		DialTimeout:  c.DialTimeout,
		ReadTimeout:  c.ReadTimeout,
		WriteTimeout: c.WriteTimeout,
		// The flush loop is its own retry: a failed flush is counted towards degradation
		// and the next one carries on, so a command is never retried behind its back.
		// Nor is a dial (go-redis dials 5 times, 100 ms apart, by default).
		MaxRetries:    -1,
		DialerRetries: 1,
		// RedisOptions.Timeout bounds each exchange through its context; go-redis ignores
		// context deadlines on reads and writes unless told otherwise.
		ContextTimeoutEnabled: true,
		ClientName:            "fuseproxy",
	}
	if c.URL != "" {
		u, err := redis.ParseURL(c.URL)
		if err != nil {
			return nil, fmt.Errorf("url: %w", err)
		}
		o.Addrs = []string{u.Addr}
		o.Username, o.Password, o.DB, o.TLSConfig = u.Username, u.Password, u.DB, u.TLSConfig
		if c.Username != "" {
			o.Username = c.Username
		}
		if c.Password != "" {
			o.Password = c.Password
		}
	}
	// Every tls key applies, whether TLS is on through a rediss:// URL, through enabled or
	// through the key itself (any tls key set turns TLS on).
	if o.TLSConfig != nil || c.TLS != (RedisTLS{}) {
		tc, err := tlsConfig(c.TLS, o.TLSConfig)
		if err != nil {
			return nil, err
		}
		o.TLSConfig = tc
	}
	switch {
	case c.SentinelMaster != "":
		o.MasterName = c.SentinelMaster
		o.Addrs = c.SentinelAddrs
		o.SentinelPassword = c.SentinelPassword
	case len(c.ClusterAddrs) > 0:
		o.Addrs = c.ClusterAddrs
		o.IsClusterMode = true
		o.DB = 0
	}
	return redis.NewUniversalClient(o), nil
}

// tlsConfig applies the tls keys to base (a rediss:// URL's, which names its host as the
// server name; nil otherwise: then the name verified is the host each connection dials).
func tlsConfig(c RedisTLS, base *tls.Config) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if base != nil {
		tc = base.Clone()
	}
	if c.ServerName != "" {
		tc.ServerName = c.ServerName
	}
	if c.InsecureSkipVerify {
		tc.InsecureSkipVerify = true //nolint:gosec // an operator's explicit choice
	}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tls.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls.ca_file: no certificate in %s", c.CAFile)
		}
		tc.RootCAs = pool
	}
	if c.CertFile != "" || c.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tls.cert_file/key_file: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}
