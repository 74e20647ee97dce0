package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"text/template"
	"time"
)

// The operations tests (ops_*_test.go) need knobs the shared config builder
// (config_test.go) does not have: several upstreams and routes, the shutdown timeout and
// the upstream timeout. opsConfig is their own small builder.

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

var opsTemplate = template.Must(template.New("ops").Parse(`# written by the e2e operations tests
listen: "{{.Listen}}"
admin:
  listen: "{{.AdminListen}}"
log:
  format: json
  level: info
server:
  shutdown_timeout: {{.ShutdownTimeout}}
store:
  driver: {{.Store}}
{{- if .ReplicaID}}
  replica_id: {{.ReplicaID}}
{{- end}}
{{- if eq .Store "redis"}}
  flush_interval: {{.FlushInterval}}
  redis:
    url: "{{.RedisURL}}"
    prefix: {{.Prefix}}
{{- end}}
upstreams:
{{- range .Upstreams}}
  {{.Name}}:
    targets: ["{{.Target}}"]
    timeout: {{.Timeout}}
    breaker:
      consecutive_failures: {{.ConsecutiveFailures}}
      failure_rate: {{.FailureRate}}
      open_duration: {{.OpenDuration}}
      backoff_multiplier: 1
      jitter: 0
{{- end}}
routes:
{{- range .Routes}}
  - path_prefix: {{.Prefix}}
    upstream: {{.Upstream}}
{{- end}}
`))

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
	var b strings.Builder
	if err := opsTemplate.Execute(&b, c); err != nil {
		t.Fatalf("ops config template: %v", err)
	}
	return b.String()
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
