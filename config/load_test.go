package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// env returns a lookup over a fixed environment.
func env(vars map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		v, ok := vars[name]
		return v, ok
	}
}

// parse parses src as config.yaml with a fixed environment.
func parse(t *testing.T, src string, vars map[string]string) (*Config, error) {
	t.Helper()
	return ParseWithEnv("config.yaml", []byte(src), env(vars))
}

// mustParse parses src, failing the test on any error.
func mustParse(t *testing.T, src string, vars map[string]string) *Config {
	t.Helper()
	cfg, err := parse(t, src, vars)
	if err != nil {
		t.Fatalf("unexpected error:\n%v", err)
	}
	return cfg
}

// minimal is the smallest valid config; tests append to it.
const minimal = `upstreams:
  payments:
    targets: [http://10.0.0.5:8080]
routes:
  - upstream: payments
`

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		env  map[string]string
		want string // the whole error text
	}{
		{
			name: "unknown key with suggestion",
			src: `upstreams:
  payments:
    targets: [http://10.0.0.5:8080]
    breaker:
      faillure_rate: 50
routes:
  - upstream: payments
`,
			want: `config.yaml:5: upstreams.payments.breaker.faillure_rate: unknown key (did you mean failure_rate?)`,
		},
		{
			name: "key one level too high",
			src:  minimal + "listen: :80\nupstreams2: {}\n",
			want: `config.yaml:7: upstreams2: unknown key (did you mean upstreams?)`,
		},
		{
			name: "key belongs in a section",
			src: `upstreams:
  payments:
    targets: [http://10.0.0.5:8080]
    failure_rate: 50
routes:
  - upstream: payments
`,
			want: `config.yaml:4: upstreams.payments.failure_rate: unknown key (did you mean breaker.failure_rate?)`,
		},
		{
			name: "unknown key without suggestion",
			src:  minimal + "colour: blue\n",
			want: `config.yaml:6: colour: unknown key`,
		},
		{
			name: "bad duration",
			src: `upstreams:
  payments:
    targets: [http://10.0.0.5:8080]
    breaker:
      window: 3x
routes:
  - upstream: payments
`,
			want: `config.yaml:5: upstreams.payments.breaker.window: invalid duration "3x"`,
		},
		{
			name: "duration without unit",
			src:  minimal + "server:\n  idle_timeout: 30\n",
			want: `config.yaml:7: server.idle_timeout: invalid duration "30" (missing unit, e.g. "30s")`,
		},
		{
			name: "route to missing upstream",
			src: `upstreams:
  payments:
    targets: [http://10.0.0.5:8080]
routes:
  - upstream: payments
  - upstream: paymnts
`,
			want: `config.yaml:6: routes[1].upstream: unknown upstream "paymnts"`,
		},
		{
			name: "route without upstream",
			src:  minimal + "  - path_prefix: /x/\n",
			want: `config.yaml:6: routes[1].upstream: is required`,
		},
		{
			name: "failure_rate out of range",
			src: `upstreams:
  payments:
    targets: [http://10.0.0.5:8080]
    breaker:
      failure_rate: 120
routes:
  - upstream: payments
`,
			want: `config.yaml:5: upstreams.payments.breaker.failure_rate: must be between 0 and 100, got 120`,
		},
		{
			name: "negative count",
			src: `upstreams:
  payments:
    targets: [http://10.0.0.5:8080]
    breaker:
      consecutive_failures: -1
routes:
  - upstream: payments
`,
			want: `config.yaml:5: upstreams.payments.breaker.consecutive_failures: must be >= 0, got -1`,
		},
		{
			name: "access log sample rate out of range",
			src:  minimal + "access_log:\n  enabled: true\n  sample_rate: 1.5\n",
			want: `config.yaml:8: access_log.sample_rate: must be between 0 and 1, got 1.5`,
		},
		{
			name: "access log buffer size",
			src:  minimal + "access_log:\n  buffer_size: 0\n",
			want: `config.yaml:7: access_log.buffer_size: must be >= 4096, got 0`,
		},
		{
			name: "access log path is a directory",
			src:  minimal + "access_log:\n  path: /var/log/\n",
			want: `config.yaml:7: access_log.path: "/var/log/" names a directory: give a file name`,
		},
		{
			name: "access log enabled not a boolean",
			src:  minimal + "access_log:\n  enabled: on\n",
			want: `config.yaml:7: access_log.enabled: expected true or false, got "on"`,
		},
		{
			name: "negative timeout",
			src:  minimal + "server:\n  read_timeout: -1s\n",
			want: `config.yaml:7: server.read_timeout: must be >= 0, got -1s`,
		},
		{
			name: "bad YAML syntax",
			src:  "upstreams:\n  payments:\n    targets: a: b\n",
			want: `config.yaml:3: invalid YAML: mapping values are not allowed in this context`,
		},
		{
			name: "bad YAML without a line",
			src:  "a: *nowhere\n",
			want: `config.yaml: invalid YAML: unknown anchor 'nowhere' referenced`,
		},
		{
			name: "string where integer expected",
			src: `upstreams:
  payments:
    targets: [http://10.0.0.5:8080]
    breaker:
      buckets: ten
routes:
  - upstream: payments
`,
			want: `config.yaml:5: upstreams.payments.breaker.buckets: expected an integer, got "ten"`,
		},
		{
			name: "mapping where list expected",
			src: `upstreams:
  payments:
    targets:
      primary: http://10.0.0.5:8080
routes:
  - upstream: payments
`,
			want: `config.yaml:4: upstreams.payments.targets: expected a list, got a mapping`,
		},
		{
			name: "list where string expected",
			src:  minimal + "listen: [a, b]\n",
			want: `config.yaml:6: listen: expected a string, got a list`,
		},
		{
			name: "scalar where mapping expected",
			src:  minimal + "server: fast\n",
			want: `config.yaml:6: server: expected a mapping, got "fast"`,
		},
		{
			name: "not a boolean",
			src:  minimal + "events:\n  enabled: yes\n",
			want: `config.yaml:7: events.enabled: expected true or false, got "yes"`,
		},
		{
			name: "not a number",
			src: `upstreams:
  payments:
    targets: [http://10.0.0.5:8080]
    breaker: {jitter: .nan}
routes:
  - upstream: payments
`,
			want: `config.yaml:4: upstreams.payments.breaker.jitter: expected a number, got ".nan"`,
		},
		{
			name: "top level is not a mapping",
			src:  "- upstreams\n",
			want: `config.yaml:1: expected a mapping, got a list`,
		},
		{
			name: "duplicate key",
			src: `upstreams:
  payments:
    targets: [http://10.0.0.5:8080]
    breaker:
      window: 10s
      window: 20s
routes:
  - upstream: payments
`,
			want: `config.yaml:6: upstreams.payments.breaker.window: duplicate key (first defined on line 5)`,
		},
		{
			name: "duplicate upstream",
			src:  minimal + "upstreams: {}\n",
			want: `config.yaml:6: upstreams: duplicate key (first defined on line 1)`,
		},
		{
			name: "bad target URL",
			src: `upstreams:
  payments:
    targets: [http://10.0.0.5:8080, "10.0.0.6:8080"]
routes:
  - upstream: payments
`,
			want: `config.yaml:3: upstreams.payments.targets[1]: must be an absolute http:// or https:// URL with a host, got "10.0.0.6:8080"`,
		},
		{
			name: "no targets",
			src:  "upstreams:\n  payments: {}\nroutes:\n  - upstream: payments\n",
			want: `config.yaml:2: upstreams.payments.targets: at least one target is required`,
		},
		{
			name: "bad env var",
			src:  minimal + "store:\n  driver: redis\n",
			env:  map[string]string{"REDIS_PORT": "abc"},
			want: `env REDIS_PORT: invalid integer "abc"`,
		},
		{
			name: "bad bool env var",
			src:  minimal,
			env:  map[string]string{"FUSE_EVENTS_ENABLED": "maybe"},
			want: `env FUSE_EVENTS_ENABLED: invalid boolean "maybe"`,
		},
		{
			name: "Kubernetes service link",
			src:  minimal,
			env:  map[string]string{"FUSE_STORE": "redis", "REDIS_PORT": "tcp://10.96.0.12:6379"},
			want: `env REDIS_PORT: invalid integer "tcp://10.96.0.12:6379" (Kubernetes service links set REDIS_PORT to a URL; set it explicitly or disable enableServiceLinks)`,
		},
		{
			name: "bad value from env",
			src:  minimal,
			env:  map[string]string{"FUSE_STORE": "mongo"},
			want: `store.driver: must be memory, redis or postgres, got "mongo" (set by env FUSE_STORE)`,
		},
		{
			name: "unset variable",
			src: `upstreams:
  payments:
    targets: ["${PAYMENTS_URL}"]
routes:
  - upstream: payments
`,
			want: `config.yaml:3: upstreams.payments.targets[0]: environment variable PAYMENTS_URL is not set (use ${PAYMENTS_URL:-default} to give a default)`,
		},
		{
			name: "unterminated variable",
			src:  minimal + "listen: ${PORT\n",
			want: `config.yaml:6: listen: unterminated "${" (missing "}")`,
		},
		{
			name: "invalid variable reference",
			src:  minimal + "listen: ${PORT-80}\n",
			want: `config.yaml:6: listen: invalid reference ${PORT-80} (want ${NAME} or ${NAME:-default})`,
		},
		{
			name: "expanded value of the wrong type",
			src:  minimal + "replicas: ${REPLICAS}\n",
			env:  map[string]string{"REPLICAS": "three"},
			want: `config.yaml:6: replicas: expected an integer, got "three" (from "${REPLICAS}")`,
		},
		{
			name: "empty file",
			src:  "",
			want: "config.yaml: upstreams: at least one upstream is required\nconfig.yaml: routes: at least one route is required",
		},
		{
			name: "two documents",
			src:  minimal + "---\nlisten: :80\n",
			want: `config.yaml:6: only one YAML document is allowed (remove the second "---")`,
		},
		{
			name: "bad listen address",
			src:  minimal + "listen: 8080\n",
			want: `config.yaml:6: listen: must be host:port, got "8080"`,
		},
		{
			name: "bad listen port",
			src:  minimal + "listen: :http\n",
			want: `config.yaml:6: listen: invalid port "http" in ":http"`,
		},
		{
			name: "public admin without token",
			src:  minimal + "admin:\n  listen: 0.0.0.0:8084\n",
			want: `config.yaml:7: admin.listen: "0.0.0.0:8084" is not a loopback address, so an admin token is required (set admin.token or env FUSE_ADMIN_TOKEN)`,
		},
		{
			name: "bad upstream name",
			src:  "upstreams:\n  pay ments:\n    targets: [http://a]\nroutes:\n  - upstream: pay ments\n",
			want: `config.yaml:2: upstreams.pay ments: invalid upstream name "pay ments": use 1-64 letters, digits, '_', '.' or '-'`,
		},
		{
			name: "inner wildcard",
			src:  minimal + "    host: api.*.example.com\n",
			want: `config.yaml:6: routes[0].host: invalid host "api.*.example.com": the only wildcard allowed is a leading "*."`,
		},
		{
			name: "host with port",
			src:  minimal + "    host: example.com:8080\n",
			want: `config.yaml:6: routes[0].host: invalid host "example.com:8080": want a hostname such as "api.example.com" or "*.example.com"`,
		},
		{
			name: "relative path prefix",
			src:  minimal + "    path_prefix: api/\n",
			want: `config.yaml:6: routes[0].path_prefix: must start with "/", got "api/"`,
		},
		{
			name: "path prefix with a dot-segment",
			src:  minimal + "    path_prefix: /api/../admin\n",
			want: `config.yaml:6: routes[0].path_prefix: must be a clean path (no "." or ".." segment, no "//"): requests are matched cleaned, so "/api/../admin" would never match`,
		},
		{
			name: "target path escaping its base",
			src:  "upstreams:\n  payments:\n    targets: [http://a/tenant/%2e%2e/x]\nroutes:\n  - upstream: payments\n",
			want: `config.yaml:3: upstreams.payments.targets[0]: the path of "http://a/tenant/%2e%2e/x" must be clean: no "." or ".." segment (also not percent-encoded, or before a ";" or "\"), no "//", no "%25"`,
		},
		{
			name: "bad upgrade protocol",
			src:  "upstreams:\n  payments:\n    targets: [http://a]\n    upgrade_protocols: [websocket, \"h2 c\"]\nroutes:\n  - upstream: payments\n",
			want: `config.yaml:4: upstreams.payments.upgrade_protocols[1]: invalid protocol name "h2 c": want a token such as "websocket"`,
		},
		{
			name: "bad trusted proxy",
			src:  minimal + "server:\n  trusted_proxies: [10.0.0.0/8, 10.0.0.1/8, 300.1.2.3, \"fd00::/129\", 192.0.2.10]\n",
			want: `config.yaml:7: server.trusted_proxies[1]: CIDR range "10.0.0.1/8" has bits set past its /8: write "10.0.0.0/8"` + "\n" +
				`config.yaml:7: server.trusted_proxies[2]: invalid address "300.1.2.3": want an IP address such as "192.0.2.10" or a CIDR range such as "10.0.0.0/8"` + "\n" +
				`config.yaml:7: server.trusted_proxies[3]: invalid CIDR range "fd00::/129": want an address range such as "10.0.0.0/8" or an address`,
		},
		{
			name: "bad method",
			src:  minimal + "    methods: [get, \"PO ST\"]\n",
			want: `config.yaml:6: routes[0].methods[1]: invalid HTTP method "PO ST"`,
		},
		{
			name: "bad mode",
			src:  "upstreams:\n  payments:\n    targets: [http://a]\n    breaker: {mode: open}\nroutes:\n  - upstream: payments\n",
			want: `config.yaml:4: upstreams.payments.breaker.mode: must be normal, forced_open, forced_closed or metrics_only, got "open"`,
		},
		{
			name: "bad status class",
			src:  "upstreams:\n  payments:\n    targets: [http://a]\n    failure:\n      statuses: [5xx, 6xx]\nroutes:\n  - upstream: payments\n",
			want: `config.yaml:5: upstreams.payments.failure.statuses[1]: must be a status code (100-599) or a class ("1xx" to "5xx"), got "6xx"`,
		},
		{
			name: "bad fallback status",
			src:  "upstreams:\n  payments:\n    targets: [http://a]\n    fallback: {status: 999}\nroutes:\n  - upstream: payments\n",
			want: `config.yaml:4: upstreams.payments.fallback.status: must be between 100 and 599, got 999`,
		},
		{
			name: "window too short for buckets",
			src:  "upstreams:\n  payments:\n    targets: [http://a]\n    breaker:\n      window: 5ms\nroutes:\n  - upstream: payments\n",
			want: `config.yaml:5: upstreams.payments.breaker.window: must be at least 1ms per bucket (10ms for 10 buckets), got 5ms`,
		},
		{
			name: "defaulted field located at its section",
			src:  "upstreams:\n  payments:\n    targets: [http://a]\n    breaker:\n      open_duration: 10m\nroutes:\n  - upstream: payments\n",
			want: `config.yaml:4: upstreams.payments.breaker.max_open_duration: must be >= open_duration (10m), got 5m`,
		},
		{
			name: "redis URL scheme",
			src:  minimal + "store:\n  driver: redis\n  redis:\n    url: http://:secret@redis:6379\n",
			want: `config.yaml:9: store.redis.url: must be a redis:// or rediss:// URL, got scheme "http"`,
		},
		{
			name: "flush interval too short",
			src:  minimal + "store: {flush_interval: 1ms}\n",
			want: `config.yaml:6: store.flush_interval: must be >= 10ms, got 1ms`,
		},
		{
			name: "history max entries",
			src:  minimal + "store:\n  history:\n    retention: 24h\n    max_entries: 0\n",
			want: `config.yaml:9: store.history.max_entries: must be between 1 and 1000000, got 0`,
		},
		{
			name: "negative history retention",
			src:  minimal + "store:\n  history: {retention: -1h}\n",
			want: `config.yaml:7: store.history.retention: must be >= 0, got -1h`,
		},
		{
			name: "bad webhook",
			src:  minimal + "events:\n  webhooks:\n    - url: /hook\n",
			want: `config.yaml:8: events.webhooks[0].url: must be an absolute http:// or https:// URL with a host, got "/hook"`,
		},
		{
			name: "bad merge",
			src:  minimal + "server:\n  <<: 5\n",
			want: `config.yaml:7: server: merge key "<<" needs a mapping or a list of mappings, got "5"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parse(t, tt.src, tt.env)
			if err == nil {
				t.Fatalf("no error; want\n%s", tt.want)
			}
			if cfg != nil {
				t.Errorf("got a config along with the error")
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("wrong error\n got: %s\nwant: %s", got, tt.want)
			}
			var errs *Errors
			if !errors.As(err, &errs) {
				t.Errorf("error is %T, want *Errors", err)
			}
		})
	}
}

func TestParseCollectsAllErrorsSortedByLine(t *testing.T) {
	src := `listen: 8080
upstreams:
  payments:
    targets: [ftp://a]
    breaker:
      failure_rate: 120
      window: 3x
      bogus: 1
routes:
  - upstream: payments
  - upstream: nope
`
	_, err := parse(t, src, map[string]string{"FUSE_EVENTS_ENABLED": "maybe"})
	var errs *Errors
	if !errors.As(err, &errs) {
		t.Fatalf("error is %T, want *Errors", err)
	}
	var lines []int
	for _, e := range *errs {
		lines = append(lines, e.Line)
	}
	want := []int{1, 4, 6, 7, 8, 11, 0}
	if !slices.Equal(lines, want) {
		t.Fatalf("lines = %v, want %v; errors:\n%v", lines, want, err)
	}
	if (*errs)[6].Path != "env FUSE_EVENTS_ENABLED" {
		t.Errorf("last error = %v, want the env error", (*errs)[6])
	}

	var fe FieldError
	if !errors.As(err, &fe) || fe.Line != 1 || fe.Path != "listen" {
		t.Errorf("errors.As(FieldError) = %+v, want the first error", fe)
	}
}

func TestDecodeErrorSuppressesValidationOfSameField(t *testing.T) {
	// targets failed to decode, so "at least one target is required" would be noise.
	src := "upstreams:\n  payments:\n    targets: http://a\nroutes:\n  - upstream: payments\n"
	_, err := parse(t, src, nil)
	want := `config.yaml:3: upstreams.payments.targets: expected a list, got "http://a"`
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant %s", err, want)
	}
}

func TestParseMinimal(t *testing.T) {
	cfg := mustParse(t, minimal, nil)
	if cfg.Path != "config.yaml" {
		t.Errorf("Path = %q", cfg.Path)
	}
	up := cfg.Upstreams["payments"]
	if len(up.TargetURLs) != 1 || up.TargetURLs[0].Host != "10.0.0.5:8080" {
		t.Errorf("TargetURLs = %v", up.TargetURLs)
	}
	// Everything not in the file is at its default.
	want := DefaultUpstream()
	want.Targets = up.Targets
	want.TargetURLs = up.TargetURLs
	want.Failure.FailureStatus = up.Failure.FailureStatus
	want.Failure.GRPCFailure = 1<<2 | 1<<4 | 1<<8 | 1<<13 | 1<<14 // the default grpc_codes
	if !reflect.DeepEqual(up, want) {
		t.Errorf("upstream = %+v\nwant %+v", up, want)
	}
	if r := cfg.Routes[0]; r.PathPrefix != "/" || r.Host != "" || r.Methods != nil || r.StripPrefix {
		t.Errorf("route = %+v, want defaults", r)
	}
	if w := cfg.Warnings(); len(w) != 0 {
		t.Errorf("warnings: %q", w)
	}
}

func TestNullKeepsDefault(t *testing.T) {
	cfg := mustParse(t, minimal+"listen:\nserver:\n  idle_timeout: ~\n", nil)
	if cfg.Listen != ":8080" || cfg.Server.IdleTimeout != 120*time.Second {
		t.Errorf("listen %q idle %v: want defaults", cfg.Listen, cfg.Server.IdleTimeout)
	}
}

func TestListsReplaceDefaults(t *testing.T) {
	src := "upstreams:\n  payments:\n    targets: [http://a]\n    failure:\n      statuses: [\"503\"]\nroutes:\n  - upstream: payments\n"
	f := mustParse(t, src, nil).Upstreams["payments"].Failure
	if len(f.Statuses) != 1 || !f.FailureStatus.Has(503) || f.FailureStatus.Has(500) {
		t.Errorf("statuses %v: want only 503 to fail", f.Statuses)
	}
}

func TestAliasesAndMergeKeys(t *testing.T) {
	src := `x-breaker: &breaker
  failure_rate: 25
  open_duration: 1m
x-timeouts: &timeouts
  dial_timeout: 1s
  timeout: 9s
upstreams:
  payments:
    <<: *timeouts
    timeout: 3s
    targets: [http://a]
    breaker: *breaker
  search:
    targets: [http://b]
    breaker:
      <<: *breaker
      failure_rate: 75
routes:
  - upstream: payments
  - {upstream: search, path_prefix: /search/}
`
	cfg := mustParse(t, src, nil)
	p, s := cfg.Upstreams["payments"], cfg.Upstreams["search"]
	if p.DialTimeout != time.Second || p.Timeout != 3*time.Second {
		t.Errorf("payments timeouts %v %v: want merged dial 1s, own timeout 3s", p.DialTimeout, p.Timeout)
	}
	if p.Breaker.FailureRate != 25 || p.Breaker.OpenDuration != time.Minute || p.Breaker.Buckets != 10 {
		t.Errorf("payments breaker %+v: want alias on top of defaults", p.Breaker)
	}
	if s.Breaker.FailureRate != 75 || s.Breaker.OpenDuration != time.Minute {
		t.Errorf("search breaker %+v: want merged and overridden", s.Breaker)
	}
}

func TestAliasBombIsBounded(t *testing.T) {
	// Each level merges the previous one nine times: 9^12 entries once expanded.
	var b strings.Builder
	b.WriteString("x-0: &m0 {failure_rate: 1}\n")
	for i := 1; i <= 12; i++ {
		prev := "*m" + strconv.Itoa(i-1)
		fmt.Fprintf(&b, "x-%d: &m%d {<<: [%s]}\n", i, i, strings.Repeat(prev+", ", 8)+prev)
	}
	b.WriteString("upstreams:\n  p:\n    targets: [http://a]\n    breaker: {<<: *m12}\nroutes: [{upstream: p}]\n")
	start := time.Now()
	_, err := parse(t, b.String(), nil)
	want := "config.yaml:1: document too large once aliases are expanded (more than 262144 values beyond the file's own)"
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v, want %s", err, want)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %v", d)
	}
}

func TestExampleConfigLoads(t *testing.T) {
	const path = "../config.example.yaml"
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseWithEnv(path, data, nil)
	if err != nil {
		t.Fatalf("example config does not load:\n%v", err)
	}
	if w := cfg.Warnings(); len(w) != 0 {
		t.Errorf("example config has warnings:\n%s", strings.Join(w, "\n"))
	}
	demo := cfg.Upstreams["demo"]
	if demo == nil || demo.Breaker.MinimumRequests != 10 || demo.Breaker.SuccessThreshold != 2 {
		t.Errorf("demo upstream = %+v", demo)
	}
	if r := cfg.Routes[0]; r.Upstream != "demo" || r.PathPrefix != "/demo/" || !r.StripPrefix {
		t.Errorf("route = %+v", r)
	}

	// And through Load, with the real environment.
	if _, err := Load(path); err != nil {
		t.Errorf("Load: %v", err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("err = %v, want fs.ErrNotExist", err)
	}
}

func TestFieldErrorFormat(t *testing.T) {
	tests := []struct {
		e    FieldError
		want string
	}{
		{FieldError{"c.yaml", 3, "a.b", "bad"}, "c.yaml:3: a.b: bad"},
		{FieldError{"c.yaml", 0, "a.b", "bad"}, "c.yaml: a.b: bad"},
		{FieldError{"", 3, "a.b", "bad"}, "line 3: a.b: bad"},
		{FieldError{"", 0, "env X", "bad"}, "env X: bad"},
		{FieldError{"c.yaml", 3, "", "bad"}, "c.yaml:3: bad"},
	}
	for _, tt := range tests {
		if got := tt.e.Error(); got != tt.want {
			t.Errorf("%+v: got %q, want %q", tt.e, got, tt.want)
		}
	}
}

func TestDuplicateKeyStillValidatesFirstValue(t *testing.T) {
	src := "upstreams:\n  payments:\n    targets: [http://a]\n    breaker: {jitter: 2}\n    breaker: {}\nroutes:\n  - upstream: payments\n"
	_, err := parse(t, src, nil)
	want := "config.yaml:4: upstreams.payments.breaker.jitter: must be between 0 and 1, got 2\n" +
		"config.yaml:5: upstreams.payments.breaker: duplicate key (first defined on line 4)"
	if err == nil || err.Error() != want {
		t.Errorf("err =\n%v\nwant\n%s", err, want)
	}
}

func TestSuggest(t *testing.T) {
	breaker := reflect.TypeFor[Breaker]()
	tests := []struct {
		key  string
		t    reflect.Type
		want string
	}{
		{"faillure_rate", breaker, " (did you mean failure_rate?)"},
		{"failureRate", breaker, " (did you mean failure_rate?)"},
		{"FAILURE-RATE", breaker, " (did you mean failure_rate?)"},
		{"windw", breaker, " (did you mean window?)"},
		{"jitterr", breaker, " (did you mean jitter?)"},
		{"colour", breaker, ""},
		{"uri", reflect.TypeFor[Redis](), " (did you mean url?)"},
		{"xyz", reflect.TypeFor[Redis](), ""},
		{"window", reflect.TypeFor[Upstream](), " (did you mean breaker.window?)"},
		{"lisen", reflect.TypeFor[Config](), " (did you mean listen?)"},
	}
	for _, tt := range tests {
		if got := suggest(tt.key, tt.t); got != tt.want {
			t.Errorf("suggest(%q, %s) = %q, want %q", tt.key, tt.t, got, tt.want)
		}
	}
}
