package e2e

import (
	"strings"
	"testing"
	"text/template"
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
	Listen        string
	AdminListen   string
	ReplicaID     string
	Backend       string // base URL of the flaky backend
	Store         string // memory | redis
	RedisURL      string
	Prefix        string
	FlushInterval time.Duration
	Breaker       breakerSettings
}

var configTemplate = template.Must(template.New("config").Parse(`# written by the e2e tests
listen: "{{.Listen}}"
admin:
  listen: "{{.AdminListen}}"
log:
  format: json
  level: info
server:
  shutdown_timeout: 3s
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
  {{.Upstream}}:
    targets: ["{{.Backend}}"]
    timeout: 5s
    breaker:
      consecutive_failures: {{.Breaker.ConsecutiveFailures}}
      failure_rate: {{.Breaker.FailureRate}}
      open_duration: {{.Breaker.OpenDuration}}
      backoff_multiplier: 1
      jitter: {{.Breaker.Jitter}}
      half_open_max_requests: {{.Breaker.HalfOpenMaxRequests}}
      success_threshold: {{.Breaker.SuccessThreshold}}
routes:
  - path_prefix: /
    upstream: {{.Upstream}}
`))

// YAML renders the config.
func (c proxyConfig) YAML(t testing.TB) string {
	t.Helper()
	var b strings.Builder
	data := struct {
		proxyConfig
		Upstream string
	}{c, upstream}
	if err := configTemplate.Execute(&b, data); err != nil {
		t.Fatalf("config template: %v", err)
	}
	return b.String()
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
