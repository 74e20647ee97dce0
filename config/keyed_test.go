package config

import (
	"os"
	"strings"
	"testing"
	"time"
)

// Every keyed error names its file:line and key.
func TestKeyedErrors(t *testing.T) {
	head := "upstreams:\n  api:\n    targets: [http://10.0.0.5:8080]\n"
	tail := "routes:\n  - upstream: api\n"
	for _, tt := range []struct{ src, want string }{
		{"    keyed:\n      from: [header:X-Tenant-ID, cookie:id]\n",
			`config.yaml:5: upstreams.api.keyed.from[1]: must be "header:NAME", "path:N", "query:NAME" or "host", got "cookie:id"`},
		{"    keyed:\n      from: [path:0]\n",
			`config.yaml:5: upstreams.api.keyed.from[0]: path:N needs a segment number 1-64, got "path:0"`},
		{"    keyed:\n      from: [\"header:X Tenant\"]\n",
			`config.yaml:5: upstreams.api.keyed.from[0]: header:NAME needs a header name, got "header:X Tenant"`},
		{"    keyed:\n      from: [host]\n      max_keys: 0\n",
			`config.yaml:6: upstreams.api.keyed.max_keys: must be between 1 and 1000000, got 0`},
		{"    keyed:\n      from: [host]\n      idle_ttl: 10ms\n",
			`config.yaml:6: upstreams.api.keyed.idle_ttl: must be at least 1s, got 10ms`},
		{"    keyed:\n      from: [host]\n      failure_rate: 120\n",
			`config.yaml:6: upstreams.api.keyed.failure_rate: must be between 0 and 100, got 120`},
		{"    breaker: {enabled: false}\n    keyed:\n      from: [host]\n",
			`config.yaml:6: upstreams.api.keyed.from: per-key breakers use the upstream's breaker settings: set breaker.enabled: true`},
	} {
		_, err := parse(t, head+tt.src+tail, nil)
		if err == nil || err.Error() != tt.want {
			t.Errorf("%s\n got: %v\nwant: %s", strings.TrimSpace(tt.src), err, tt.want)
		}
	}
}

func TestKeyedParsedAndSettings(t *testing.T) {
	src := "upstreams:\n  api:\n    targets: [http://10.0.0.5:8080]\n    keyed:\n      from: [header:x-tenant-id, path:2, query:region, host]\n      consecutive_failures: 3\n      open_duration: 10s\nroutes:\n  - upstream: api\n"
	cfg, err := parse(t, src, nil)
	if err != nil {
		t.Fatal(err)
	}
	k := cfg.Upstreams["api"].Keyed
	want := []KeySource{{Kind: KeyHeader, Name: "X-Tenant-Id"}, {Kind: KeyPath, Segment: 2}, {Kind: KeyQuery, Name: "region"}, {Kind: KeyHost}}
	if len(k.Sources) != len(want) {
		t.Fatalf("Sources = %+v", k.Sources)
	}
	for i := range want {
		if k.Sources[i] != want[i] {
			t.Errorf("Sources[%d] = %+v, want %+v", i, k.Sources[i], want[i])
		}
	}
	s := k.Settings(cfg.Upstreams["api"].Breaker)
	if s.ConsecutiveFailures != 3 || s.OpenDuration != 10*time.Second || s.FailureRate != 50 || s.MinimumRequests != 20 {
		t.Errorf("Settings = %+v", s)
	}
}

func TestKeyNameRoundTrip(t *testing.T) {
	for _, key := range []string{"acme", "a b", "x#y{z}", "100%", "t|eu-1", "\x00\xff", ""} {
		name := KeyName("api", key)
		if strings.ContainsAny(name[4:], " {}#\x00") {
			t.Errorf("KeyName(%q) = %q holds a reserved character", key, name)
		}
		up, got, ok := SplitKeyName(name)
		if !ok || up != "api" || got != key {
			t.Errorf("SplitKeyName(%q) = %q, %q, %v; want api, %q", name, up, got, ok, key)
		}
	}
}

// TestReadmeKeyedExample: README's per-key breakers example is a valid config that turns
// on what it shows.
func TestReadmeKeyedExample(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	const start, end = "<!-- keyed-example:start -->\n```yaml\n", "```\n<!-- keyed-example:end -->"
	i, j := strings.Index(s, start), strings.Index(s, end)
	if i < 0 || j < i {
		t.Fatal("README.md lacks the keyed-example markers")
	}
	cfg, err := Parse("README.md", []byte(s[i+len(start):j]))
	if err != nil {
		t.Fatalf("README's keyed example: %v", err)
	}
	u := cfg.Upstreams["api"]
	k := u.Keyed
	if !k.Enabled() || len(k.Sources) != 1 || k.Sources[0] != (KeySource{Kind: KeyHeader, Name: "X-Tenant-Id"}) ||
		k.MaxKeys != 10000 || k.DefaultKey != "" || k.Settings(u.Breaker).ConsecutiveFailures != 5 {
		t.Errorf("README's keyed example does not turn on what it shows: %+v", k)
	}
	for _, row := range []string{"| `Fuse::for($tenant)`", "| `->boundary($region)`"} {
		if !strings.Contains(s, row) {
			t.Errorf("README's Fuse table lacks the row %s", row)
		}
	}
}
