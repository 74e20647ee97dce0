package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/internal/testutil/testca"
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

// readmeBlock returns the YAML between README's <!-- name:start --> and <!-- name:end -->.
func readmeBlock(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	start, end := "<!-- "+name+":start -->\n```yaml\n", "```\n<!-- "+name+":end -->"
	i, j := strings.Index(s, start), strings.Index(s, end)
	if i < 0 || j < i {
		t.Fatalf("README.md lacks the %s markers", name)
	}
	return s[i+len(start) : j]
}

// README's TLS, h2c and gRPC examples are valid configs that turn on what they show.
// The TLS example's files are made for the test (validate loads them).
func TestReadmeProtocolExamples(t *testing.T) {
	dir := t.TempDir()
	ca := testca.New(t, "internal CA")
	for _, name := range []string{"api", "partners", "admin"} {
		ca.IssueFiles(t, dir, name, name+".example.com", []string{name + ".example.com"})
	}
	testca.WriteFile(t, filepath.Join(dir, "internal-ca.pem"), ca.PEM)
	src := strings.ReplaceAll(readmeBlock(t, "tls-example"), "/etc/fuseproxy/tls/", dir+"/")
	cfg, err := Parse("README.md", []byte(src))
	if err != nil {
		t.Fatalf("README's TLS example: %v", err)
	}
	if len(cfg.Server.TLS.Certificates) != 2 || !cfg.Server.HTTP2 || !cfg.Admin.TLS.Enabled() || cfg.Upstreams["payments"].TLS.CAFile == "" {
		t.Errorf("README's TLS example does not turn on what it shows: %+v %+v", cfg.Server, cfg.Admin)
	}

	cfg, err = Parse("README.md", []byte(readmeBlock(t, "h2c-example")))
	if err != nil {
		t.Fatalf("README's h2c example: %v", err)
	}
	if !cfg.Server.H2C || !cfg.Upstreams["inventory"].H2C {
		t.Errorf("README's h2c example does not turn h2c on: %+v", cfg.Server)
	}

	cfg, err = Parse("README.md", []byte(readmeBlock(t, "grpc-example")))
	if err != nil {
		t.Fatalf("README's gRPC example: %v", err)
	}
	if u := cfg.Upstreams["inventory"]; !u.H2C || u.Failure.GRPCFailure != 1<<14|1<<4|1<<13 {
		t.Errorf("README's gRPC example: h2c %v, failing codes %b", u.H2C, u.Failure.GRPCFailure)
	}
}

// TestReadmeRetriesExample: README's retries example is a valid config that turns on
// what it shows.
func TestReadmeRetriesExample(t *testing.T) {
	cfg, err := Parse("README.md", []byte(readmeBlock(t, "retries-example")))
	if err != nil {
		t.Fatalf("README's retries example: %v", err)
	}
	r := cfg.Upstreams["catalog"].Retries
	if !r.Enabled() || r.BufferBody != 65536 || r.PerTryTimeout != time.Second || r.Budget.Percent != 20 {
		t.Errorf("README's retries example does not turn on what it shows: %+v", r)
	}
}
