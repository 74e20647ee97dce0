package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The operations tests (ops_*_test.go) describe their configs with opsConfig: several
// upstreams and routes, the shutdown timeout and the upstream timeout. It renders through
// the fault tests' builder (faultConfig).

// opsUpstream is one upstream of an opsConfig.
type opsUpstream struct {
	Name                string
	Target              string // base URL
	Timeout             time.Duration
	ConsecutiveFailures int
	FailureRate         float64
	OpenDuration        time.Duration
}

// opsRoute sends requests whose path starts with Prefix to Upstream.
type opsRoute struct {
	Prefix   string
	Upstream string
}

// opsConfig is one replica's config for the operations tests.
type opsConfig struct {
	Listen          string
	AdminListen     string
	ShutdownTimeout time.Duration
	Store           string // memory | redis
	ReplicaID       string
	RedisURL        string
	Prefix          string
	FlushInterval   time.Duration
	Upstreams       []opsUpstream
	Routes          []opsRoute // the first matching prefix wins: put "/" last
}

// newOpsConfig returns a memory-store config on fresh loopback ports, shutdown timeout
// 3 s, with the given upstreams and routes.
func newOpsConfig(t testing.TB, ups []opsUpstream, routes []opsRoute) opsConfig {
	for i := range ups {
		if ups[i].Timeout == 0 {
			ups[i].Timeout = 30 * time.Second
		}
		if ups[i].OpenDuration == 0 {
			ups[i].OpenDuration = time.Minute
		}
	}
	return opsConfig{
		Listen: freeAddr(t), AdminListen: freeAddr(t), ShutdownTimeout: 3 * time.Second,
		Store: "memory", Prefix: "fuse", FlushInterval: 100 * time.Millisecond,
		Upstreams: ups, Routes: routes,
	}
}

// YAML renders the config.
func (c opsConfig) YAML(t testing.TB) string {
	t.Helper()
	fc := faultConfig{
		Listen: c.Listen, AdminListen: c.AdminListen, ReplicaID: c.ReplicaID,
		ShutdownTimeout: c.ShutdownTimeout, Store: c.Store, RedisURL: c.RedisURL,
		Prefix: c.Prefix, FlushInterval: c.FlushInterval,
	}
	for _, u := range c.Upstreams {
		fc.Upstreams = append(fc.Upstreams, faultUpstream{Name: u.Name, Target: u.Target,
			Timeout: u.Timeout, ConsecutiveFailures: u.ConsecutiveFailures,
			FailureRate: u.FailureRate, OpenDuration: u.OpenDuration})
	}
	for _, r := range c.Routes {
		fc.Routes = append(fc.Routes, faultRoute{Prefix: r.Prefix, Upstream: r.Upstream})
	}
	return fc.YAML(t)
}

// upstream returns a pointer to the named upstream, to change it before rendering again.
func (c *opsConfig) upstream(t testing.TB, name string) *opsUpstream {
	t.Helper()
	for i := range c.Upstreams {
		if c.Upstreams[i].Name == name {
			return &c.Upstreams[i]
		}
	}
	t.Fatalf("ops config has no upstream %q", name)
	return nil
}

// lineOf returns the 1-based line of the first occurrence of needle in text, or 0.
func lineOf(text, needle string) int {
	i := strings.Index(text, needle)
	if i < 0 {
		return 0
	}
	return 1 + strings.Count(text[:i], "\n")
}

// replaceFile replaces path's content the way editors save: write a temporary file in
// the same directory, then rename it over path (atomic: a reader sees the old content or
// the new, never a partial file).
func replaceFile(t testing.TB, path, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".swp")
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// configPath is the file startProxy wrote the proxy's config to.
func (p *Proxy) configPath() string { return filepath.Join(p.cmd.Dir, "fuseproxy.yaml") }
