package config

import (
	"slices"
	"strings"
	"testing"
)

func TestWarnings(t *testing.T) {
	src := `replicas: 3
admin:
  listen: 0.0.0.0:8084
  token: hunter2
store:
  flush_interval: 2s
upstreams:
  a:
    targets: [http://a]
    breaker: {enabled: false}
  b:
    targets: [http://b]
    breaker: {consecutive_failures: 0, failure_rate: 0, min_replicas_reporting: 5}
  c:
    targets: [http://c]
    breaker: {mode: forced_open}
routes:
  - upstream: a
  - {upstream: b, path_prefix: /b/}
  - {upstream: c, path_prefix: /b/c/, methods: [GET]}
`
	got := mustParse(t, src, nil).Warnings()
	want := []string{
		`config.yaml:1: replicas: 3 replicas with the memory store: each keeps its own breaker state (use the redis store to share it)`,
		`config.yaml:4: admin.token: the admin token is written in the config file; prefer env FUSE_ADMIN_TOKEN to keep it out of version control`,
		`config.yaml:6: store.flush_interval: 2s is over 1s: replicas learn of each other's failures late`,
		`config.yaml:10: upstreams.a.breaker.enabled: breaker disabled: failures never open the circuit`,
		`config.yaml:13: upstreams.b.breaker: no trip rule is set (consecutive_failures, failure_rate and slow_call_rate are all 0), so the circuit never opens`,
		`config.yaml:13: upstreams.b.breaker.min_replicas_reporting: 5 is more than replicas (3), so it may never be reached`,
		`config.yaml:16: upstreams.c.breaker.mode: forced_open: every request gets the fallback response`,
		`config.yaml:19: routes[1]: never matches: routes[0] comes first and matches every request it would`,
		`config.yaml:20: routes[2]: never matches: routes[0] comes first and matches every request it would`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestWarningsTokenFromEnvIsFine(t *testing.T) {
	cfg := mustParse(t, minimal+"admin: {listen: \"0.0.0.0:8084\"}\n", map[string]string{"FUSE_ADMIN_TOKEN": "x"})
	if w := cfg.Warnings(); len(w) != 0 {
		t.Errorf("warnings: %q", w)
	}
}

func TestWarningsRedis(t *testing.T) {
	src := minimal + "store:\n  driver: redis\n  redis:\n    url: redis://cache.internal:6379/0\n    tls: {insecure_skip_verify: true}\n"
	got := mustParse(t, src, nil).Warnings()
	want := []string{
		// The password is not in the file, so this sits at the enclosing key's line.
		`config.yaml:8: store.redis.password: redis at "cache.internal" is not on loopback and no password is set`,
		`config.yaml:10: store.redis.tls.insecure_skip_verify: the redis server's certificate is not verified`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	withPassword := minimal + "store:\n  driver: redis\n  redis:\n    url: redis://:pw@cache.internal:6379/0\n"
	if w := mustParse(t, withPassword, nil).Warnings(); len(w) != 0 {
		t.Errorf("warnings: %q", w)
	}
}

func TestCovers(t *testing.T) {
	r := func(host, prefix string, methods ...string) Route {
		return Route{Host: host, PathPrefix: prefix, Methods: methods}
	}
	tests := []struct {
		a, b Route
		want bool
	}{
		{r("", "/"), r("x.com", "/api/", "GET"), true},
		{r("", "/api"), r("", "/api"), true},
		{r("", "/api"), r("", "/apiv2"), false}, // paths match at a segment boundary
		{r("", "/api"), r("", "/api/v2"), true},
		{r("", "/api/"), r("", "/api/v2"), true},
		{r("", "/api/"), r("", "/api/v2"), true},
		{r("", "/api/"), r("", "/api"), false},
		{r("x.com", "/"), r("y.com", "/"), false},
		{r("*.x.com", "/"), r("a.b.x.com", "/"), true},
		{r("*.x.com", "/"), r("*.b.x.com", "/"), true},
		{r("*.x.com", "/"), r("x.com", "/"), false}, // the apex is not covered
		{r("*.x.com", "/"), r("ax.com", "/"), false},
		{r("a.x.com", "/"), r("*.x.com", "/"), false},
		{r("x.com", "/"), r("", "/"), false},
		{r("", "/", "GET"), r("", "/"), false},
		{r("", "/", "GET", "POST"), r("", "/", "POST"), true},
		{r("", "/", "GET"), r("", "/", "POST"), false},
	}
	for _, tt := range tests {
		if got := covers(tt.a, tt.b); got != tt.want {
			t.Errorf("covers(%+v, %+v) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}
