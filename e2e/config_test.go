package e2e

import (
	"testing"
	"time"
)

// upstream is the name of the one upstream every test config has; routes send "/" to it.
const upstream = "api"

// breakerSettings are the breaker keys a test chooses; zero values are written as zero
// (a zero threshold disables its rule).
type breakerSettings struct {
	ConsecutiveFailures int
	FailureRate         float64
	OpenDuration        time.Duration
	Jitter              float64
	HalfOpenMaxRequests int
	SuccessThreshold    int
}

// proxyConfig is one replica's config.
type proxyConfig struct {
	Listen      string
	AdminListen string
	ReplicaID   string
	Backend     string // base URL of the flaky backend
	Store       string // memory | redis | postgres
	RedisURL    string
	PostgresURL string
	// ClusterAddrs, or SentinelMaster and SentinelAddrs, replace RedisURL when set.
	ClusterAddrs   []string
	SentinelMaster string
	SentinelAddrs  []string
	Prefix         string
	FlushInterval  time.Duration
	Breaker        breakerSettings
}

// YAML renders the config: the one upstream, routed from "/", with a 5 s timeout.
func (c proxyConfig) YAML(t testing.TB) string {
	t.Helper()
	b := c.Breaker
	return faultConfig{
		Listen: c.Listen, AdminListen: c.AdminListen, ReplicaID: c.ReplicaID,
		Store: c.Store, RedisURL: c.RedisURL, PostgresURL: c.PostgresURL, Prefix: c.Prefix, FlushInterval: c.FlushInterval,
		ClusterAddrs: c.ClusterAddrs, SentinelMaster: c.SentinelMaster, SentinelAddrs: c.SentinelAddrs,
		Upstreams: []faultUpstream{{Name: upstream, Target: c.Backend, Timeout: 5 * time.Second,
			ConsecutiveFailures: b.ConsecutiveFailures, FailureRate: b.FailureRate,
			OpenDuration: b.OpenDuration, Jitter: b.Jitter,
			HalfOpenMaxRequests: b.HalfOpenMaxRequests, SuccessThreshold: b.SuccessThreshold}},
		Routes: []faultRoute{{Prefix: "/", Upstream: upstream}},
	}.YAML(t)
}

// newConfig returns a config for a replica on fresh ports in front of backend.
func newConfig(t testing.TB, backend *Backend, store string, b breakerSettings) proxyConfig {
	return proxyConfig{
		Listen:        freeAddr(t),
		AdminListen:   freeAddr(t),
		Backend:       backend.URL(),
		Store:         store,
		Prefix:        "fuse",
		FlushInterval: 100 * time.Millisecond,
		Breaker:       b,
	}
}
