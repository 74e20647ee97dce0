package main

import (
	"bytes"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/internal/admin"
	"github.com/fuseproxy/fuseproxy/internal/app"
)

// readmeBlock returns the text between README's <!-- name:start --> and <!-- name:end -->
// markers, without the code fence.
func readmeBlock(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	start, end := "<!-- "+name+":start -->\n", "<!-- "+name+":end -->"
	i, j := strings.Index(s, start), strings.Index(s, end)
	if i < 0 || j < i {
		t.Fatalf("README.md lacks the %s markers", name)
	}
	block := strings.TrimSpace(s[i+len(start) : j])
	block = strings.TrimPrefix(block, "```")
	block = strings.TrimSuffix(block, "```")
	return strings.TrimLeft(block, "\n")
}

// TestTargetsCommand runs `fuseproxy targets eject` and `fuseproxy targets` against the
// admin API of a real app, and checks README's sample is their output.
func TestTargetsCommand(t *testing.T) {
	cfg, err := config.Parse("config.yaml", []byte(`store:
  replica_id: demo
upstreams:
  payments:
    targets: [http://127.0.0.1:8081, http://127.0.0.1:8082, http://127.0.0.1:8083]
    outlier_detection:
      enabled: true
routes:
  - upstream: payments
`))
	if err != nil {
		t.Fatal(err)
	}
	a, err := app.New(cfg, app.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(admin.NewHandler(a, admin.Options{}))
	defer srv.Close()

	var out bytes.Buffer
	for _, args := range [][]string{
		{"targets", "eject", "payments", "127.0.0.1:8082"},
		{"targets"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(append(args, "--admin", srv.URL), &stdout, &stderr); code != 0 {
			t.Fatalf("fuseproxy %s: exit %d: %s", strings.Join(args, " "), code, stderr.String())
		}
		out.WriteString("$ fuseproxy " + strings.Join(args, " ") + "\n" + stdout.String())
	}
	if b := a.Breakers()["payments@127.0.0.1:8082"]; b == nil || b.Passing() {
		t.Fatal("targets eject did not eject the target")
	}
	if got, want := out.String(), readmeBlock(t, "targets-list"); got != want {
		t.Errorf("README's targets sample is not the command's output:\n--- got\n%s--- README\n%s", got, want)
	}

	var stdout, stderr bytes.Buffer
	if code := run([]string{"targets", "restore", "payments", "127.0.0.1:8082", "--admin", srv.URL}, &stdout, &stderr); code != 0 {
		t.Fatalf("targets restore: exit %d: %s", code, stderr.String())
	}
	if !a.Breakers()["payments@127.0.0.1:8082"].Passing() {
		t.Error("targets restore did not bring the target back")
	}
}
