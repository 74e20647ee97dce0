// Package compose holds the compose example's checks: no container engine runs on the
// build machines, so the example is checked statically here and its topology is
// exercised with processes in e2e.
package compose

import (
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/fuseproxy/fuseproxy/config"
)

// resolved is the compose file as docker-compose itself resolves it.
func resolved(t *testing.T) map[string]any {
	t.Helper()
	bin, err := exec.LookPath("docker-compose")
	if err != nil {
		t.Fatal("docker-compose not found: apt-get install -y docker-compose")
	}
	out, err := exec.Command(bin, "-f", "docker-compose.yml", "config").CombinedOutput()
	if err != nil {
		t.Fatalf("docker-compose config rejected docker-compose.yml: %v\n%s", err, out)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(out, &doc); err != nil {
		t.Fatalf("docker-compose config printed unparsable YAML: %v", err)
	}
	return doc
}

func TestComposeFileIsValid(t *testing.T) {
	services, _ := resolved(t)["services"].(map[string]any)
	var names []string
	for name := range services {
		names = append(names, name)
	}
	sort.Strings(names)
	want := []string{"fuseproxy-1", "fuseproxy-2", "fuseproxy-3", "lb", "redis", "upstream"}
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Fatalf("services: got %v, want %v", names, want)
	}
	ids := map[string]bool{}
	for _, name := range want[:3] {
		svc := services[name].(map[string]any)
		env, _ := svc["environment"].(map[string]any)
		id, _ := env["FUSE_REPLICA_ID"].(string)
		if id != name || ids[id] {
			t.Errorf("%s: FUSE_REPLICA_ID %q, want a unique %q", name, id, name)
		}
		ids[id] = true
		if tok, _ := env["FUSE_ADMIN_TOKEN"].(string); tok == "" {
			t.Errorf("%s: no FUSE_ADMIN_TOKEN, but its admin listener is not on loopback", name)
		}
	}
}

// The load balancer sends traffic to exactly the replicas compose runs.
func TestLoadBalancerListsEveryReplica(t *testing.T) {
	b, err := os.ReadFile("nginx.conf")
	if err != nil {
		t.Fatal(err)
	}
	got := regexp.MustCompile(`server (fuseproxy-\d):8080;`).FindAllStringSubmatch(string(b), -1)
	if len(got) != 3 || got[0][1] != "fuseproxy-1" || got[1][1] != "fuseproxy-2" || got[2][1] != "fuseproxy-3" {
		t.Fatalf("nginx.conf upstream servers: got %v, want fuseproxy-1..3:8080", got)
	}
}

// The replicas' config is valid with the environment compose gives them.
func TestReplicaConfigValidates(t *testing.T) {
	data, err := os.ReadFile("fuseproxy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"FUSE_ADMIN_TOKEN": "change-me", "FUSE_REPLICA_ID": "fuseproxy-1"}
	cfg, err := config.ParseWithEnv("fuseproxy.yaml", data, func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	})
	if err != nil {
		t.Fatalf("fuseproxy.yaml: %v", err)
	}
	if cfg.Store.Driver != "redis" || cfg.Store.Redis.URL != "redis://redis:6379/0" {
		t.Fatalf("store: got %s %s, want redis at redis://redis:6379/0", cfg.Store.Driver, cfg.Store.Redis.URL)
	}
	if cfg.Admin.Token != "change-me" {
		t.Fatalf("admin token from FUSE_ADMIN_TOKEN: got %q", cfg.Admin.Token)
	}
}
