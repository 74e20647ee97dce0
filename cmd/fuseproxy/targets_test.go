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

// targets eject and restore find a target however the config spells it: an IPv6
// address (brackets and colons through the admin API's path), a host in capitals, a
// default port left out.
func TestTargetsCommandSpellings(t *testing.T) {
	cfg, err := config.Parse("config.yaml", []byte(`upstreams:
  payments:
    targets: ["http://[::1]:8081", "http://Backend.Example", "https://[2001:DB8::1]", "http://[fe80::1%25eth0]:8082"]
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
	for _, c := range []struct{ arg, circuit string }{
		{"[::1]:8081", "payments@[::1]:8081"},
		{"Backend.Example:80", "payments@backend.example:80"},
		{"[2001:DB8::1]:443", "payments@[2001:db8::1]:443"},
		{"[fe80::1%eth0]:8082", "payments@[fe80::1%eth0]:8082"},
	} {
		b := a.Breakers()[c.circuit]
		if b == nil {
			t.Fatalf("no circuit %s", c.circuit)
		}
		var stdout, stderr bytes.Buffer
		if code := run([]string{"targets", "eject", "payments", c.arg, "--admin", srv.URL}, &stdout, &stderr); code != 0 {
			t.Errorf("targets eject payments %s: exit %d: %s", c.arg, code, stderr.String())
			continue
		}
		if b.Passing() {
			t.Errorf("targets eject payments %s did not eject %s", c.arg, c.circuit)
		}
		if code := run([]string{"targets", "restore", "payments", c.arg, "--admin", srv.URL}, &stdout, &stderr); code != 0 || !b.Passing() {
			t.Errorf("targets restore payments %s: exit %d, passing %v: %s", c.arg, code, b.Passing(), stderr.String())
		}
	}
}

// A target whose ejection is past max_ejection_percent serves, and the list says so.
func TestTargetsListPastCap(t *testing.T) {
	cfg, err := config.Parse("config.yaml", []byte(`upstreams:
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
	a.Breakers()["payments@127.0.0.1:8081"].Trip()
	a.Breakers()["payments@127.0.0.1:8083"].Trip()
	srv := httptest.NewServer(admin.NewHandler(a, admin.Options{}))
	defer srv.Close()
	var stdout, stderr bytes.Buffer
	if code := run([]string{"targets", "--admin", srv.URL}, &stdout, &stderr); code != 0 {
		t.Fatalf("targets: exit %d: %s", code, stderr.String())
	}
	for _, want := range []string{"127.0.0.1:8081  ejected ", "127.0.0.1:8082  healthy ", "127.0.0.1:8083  past-cap"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("targets list lacks %q:\n%s", want, stdout.String())
		}
	}
}
