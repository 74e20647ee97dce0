package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAdminTokenWithNewline runs the real binary with FUSE_ADMIN_TOKEN as a Kubernetes
// secret made from a file gives it (a trailing newline): the API takes the token as
// written without it, and `fuseproxy health` (the image's HEALTHCHECK) with the same
// variable exits 0. A newline inside the token stops the start with an error naming the
// variable.
func TestAdminTokenWithNewline(t *testing.T) {
	t.Parallel()
	backend := startBackend(t)
	cfg := newFaultConfig(t, backend.URL())
	startProxy(t, cfg.YAML(t), "FUSE_ADMIN_TOKEN=s3cret\n")
	admin := newAdminAPI(t, cfg.AdminListen)
	if r := faultAdmin(t, admin.client, cfg.AdminListen, "GET", "/circuits", "s3cret", ""); r.Status != http.StatusOK {
		t.Errorf("GET /circuits with the token: %v, want 200", r)
	}
	if r := faultAdmin(t, admin.client, cfg.AdminListen, "GET", "/circuits", "", ""); r.Status != http.StatusUnauthorized {
		t.Errorf("GET /circuits without a token: %v, want 401", r)
	}
	for _, args := range [][]string{{"health"}, {"circuits", "open", upstream}, {"circuits", "reset", upstream}} {
		h := startProcess(t, "fuseproxy "+strings.Join(args, " "), "", []string{"FUSE_ADMIN_TOKEN=s3cret\n"},
			append(args, "--admin", cfg.AdminListen)...)
		if code, ok := h.Wait(30 * time.Second); !ok || code != 0 {
			t.Errorf("fuseproxy %s with FUSE_ADMIN_TOKEN ending in a newline: exit %d\n%s%s",
				strings.Join(args, " "), code, h.stdout.String(), h.Stderr())
		}
	}

	// On fresh ports, so that only the token can stop it.
	path := filepath.Join(t.TempDir(), "fuseproxy.yaml")
	if err := os.WriteFile(path, []byte(cfg.fresh(t, "").YAML(t)), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := startProcess(t, "proxy with a bad token", "", []string{"FUSE_ADMIN_TOKEN=s3c\nret"},
		"serve", "-config", path)
	code, ok := bad.Wait(30 * time.Second)
	const want = `admin.token: the token has a control character ('\n') at byte 3; a bearer token must be printable (set by env FUSE_ADMIN_TOKEN)`
	if !ok || code == 0 || !strings.Contains(bad.Stderr(), want) {
		t.Errorf("serve with a newline inside FUSE_ADMIN_TOKEN: exit %d (exited %v), stderr:\n%s\nwant it to contain %s", code, ok, bad.Stderr(), want)
	}
}
