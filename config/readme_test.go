package config

import (
	"os"
	"strings"
	"testing"
	"time"
)

// TestReadmeReference keeps README's configuration reference identical to Reference.
// To refresh it: FUSE_UPDATE_README=1 go test ./config -run TestReadmeReference
func TestReadmeReference(t *testing.T) {
	const start, end = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	i, j := strings.Index(readme, start), strings.Index(readme, end)
	if i < 0 || j < i {
		t.Fatalf("README.md lacks the %q ... %q markers", start, end)
	}
	got, want := readme[i+len(start):j], ReferenceMarkdown()
	if got == want {
		return
	}
	if os.Getenv("FUSE_UPDATE_README") == "1" {
		if err := os.WriteFile("../README.md", []byte(readme[:i+len(start)]+want+readme[j:]), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("README.md's configuration reference is out of date; run FUSE_UPDATE_README=1 go test ./config -run TestReadmeReference")
}

// TestReadmeEjectionExample: README's ejection example is a valid config.
func TestReadmeEjectionExample(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	const start, end = "<!-- ejection-example:start -->\n```yaml\n", "```\n<!-- ejection-example:end -->"
	i, j := strings.Index(s, start), strings.Index(s, end)
	if i < 0 || j < i {
		t.Fatal("README.md lacks the ejection-example markers")
	}
	cfg, err := Parse("README.md", []byte(s[i+len(start):j]))
	if err != nil {
		t.Fatalf("README's ejection example: %v", err)
	}
	u := cfg.Upstreams["payments"]
	if !u.Outlier.Enabled || u.HealthCheck.Path != "/healthz" || u.LoadBalancing != "least_requests" {
		t.Errorf("README's ejection example does not turn on what it shows: %+v", u)
	}
}

// TestReadmeFallbackExample: README's fallback upstream example is a valid config.
func TestReadmeFallbackExample(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "## While a circuit is open")
	if i < 0 {
		t.Fatal("README.md lacks the fallback section")
	}
	start := strings.Index(s[i:], "```yaml\n")
	end := strings.Index(s[i+start+8:], "```")
	if start < 0 || end < 0 {
		t.Fatal("README's fallback section lacks its YAML example")
	}
	cfg, err := Parse("README.md", []byte(s[i+start+8:i+start+8+end]+"routes:\n  - upstream: search\n"))
	if err != nil {
		t.Fatalf("README's fallback example: %v", err)
	}
	if cfg.Upstreams["search"].Fallback.Upstream != "search-cache" {
		t.Error("README's fallback example does not set a fallback upstream")
	}
}

// TestReadmeRetriesExample: README's retries example is a valid config that turns on
// what it shows.
func TestReadmeRetriesExample(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	const start, end = "<!-- retries-example:start -->\n```yaml\n", "```\n<!-- retries-example:end -->"
	i, j := strings.Index(s, start), strings.Index(s, end)
	if i < 0 || j < i {
		t.Fatal("README.md lacks the retries-example markers")
	}
	cfg, err := Parse("README.md", []byte(s[i+len(start):j]))
	if err != nil {
		t.Fatalf("README's retries example: %v", err)
	}
	r := cfg.Upstreams["catalog"].Retries
	if !r.Enabled() || r.BufferBody != 65536 || r.PerTryTimeout != time.Second || r.Budget.Percent != 20 {
		t.Errorf("README's retries example does not turn on what it shows: %+v", r)
	}
}
