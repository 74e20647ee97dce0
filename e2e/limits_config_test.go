package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/config"
)

// TestConfigFileLimits: a config file over config.MaxFileSize is refused before it is
// parsed by `validate` and `serve`, with an error naming the file and the limit. Dropped
// onto the watched config of a running replica, an oversize file, a named pipe, /dev/zero
// behind a symbolic link, a dangling symbolic link and a directory are each refused with
// a log line naming the file, and the old config keeps serving; POST /reload answers
// at once with the error (a named pipe used to hang it, and the watcher, until someone
// wrote to the pipe). A valid file afterwards is picked up again.
func TestConfigFileLimits(t *testing.T) {
	backend := startBackend(t)
	cfg := newOpsConfig(t, []opsUpstream{{Name: "api", Target: backend.URL(), ConsecutiveFailures: 5}},
		[]opsRoute{{"/", "api"}})
	valid := cfg.YAML(t)
	limit := strconv.Itoa(config.MaxFileSize)
	// oversize is valid YAML padded by a comment to one byte over the limit.
	oversize := valid + "#" + strings.Repeat("x", config.MaxFileSize-len(valid)-1) + "\n"

	dir := t.TempDir()
	writeFile(t, dir, "big.yaml", oversize)
	for _, args := range [][]string{{"validate", "-config", "big.yaml"}, {"serve", "-config", "big.yaml"}} {
		code, _, stderr := runProcess(t, dir, 30*time.Second, args...)
		if code != 1 || !strings.Contains(stderr, "big.yaml") || !strings.Contains(stderr, "larger than the limit of "+limit+" bytes") {
			t.Errorf("fuseproxy %s on a file over the limit: exit %d, stderr %q; want exit 1 naming the file and the limit", args[0], code, tail(stderr, 5))
		}
	}

	p := startProxy(t, valid)
	p.WaitReady(t, "/x")
	path := p.configPath()
	adm := newAdminAPI(t, cfg.AdminListen)
	reload := func() response {
		req, err := http.NewRequest(http.MethodPost, "http://"+cfg.AdminListen+"/reload", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-Fuse-Admin", "1") // as the CLI does; the admin API refuses a bare command
		return do(adm.client, req)          // the client's 5s timeout bounds a hang
	}
	serving := func(when string) {
		t.Helper()
		if r := p.Get("/x"); !r.OK() {
			t.Fatalf("%s: GET /x got %v, want the backend's 200 under the old config", when, r)
		}
	}
	drop := func(name string, put func(tmp string) error, want string) {
		t.Helper()
		tmp := filepath.Join(filepath.Dir(path), ".next")
		if err := put(tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			if err := os.RemoveAll(path); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
		}
		p.WaitLog(t, 10*time.Second, "the watcher's line for "+name, func(l logLine) bool {
			return l.Msg() == "config file unreadable; the old config keeps serving" &&
				strings.Contains(l.Str("error"), path) && strings.Contains(l.Str("error"), want)
		})
		start := time.Now()
		r := reload()
		if r.Err != nil || r.Status == http.StatusOK || !strings.Contains(r.Body, want) {
			t.Fatalf("%s: POST /reload got %v, want an error saying %q", name, r, want)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%s: POST /reload took %v", name, d)
		}
		serving("after " + name)
	}

	drop("a file over the limit", func(tmp string) error { return os.WriteFile(tmp, []byte(oversize), 0o600) },
		"larger than the limit of "+limit+" bytes")
	drop("a named pipe", func(tmp string) error { return syscall.Mkfifo(tmp, 0o600) }, "not a regular file (a named pipe)")
	drop("/dev/zero behind a link", func(tmp string) error { return os.Symlink("/dev/zero", tmp) }, "not a regular file (a character device)")
	drop("a dangling link", func(tmp string) error { return os.Symlink(filepath.Join(dir, "missing.yaml"), tmp) }, "which does not exist")
	drop("a directory", func(tmp string) error { return os.Mkdir(tmp, 0o700) }, "not a regular file (a directory)")
	if s, _ := adm.reloads(t); s != 0 {
		t.Errorf("%g successful reloads from unreadable files, want 0", s)
	}

	// A valid file with a change is picked up by the watcher again.
	changed := strings.Replace(valid, "consecutive_failures: 5", "consecutive_failures: 6", 1)
	if changed == valid {
		t.Fatal("test config has no consecutive_failures: 5 to change")
	}
	drop2 := filepath.Join(filepath.Dir(path), ".next")
	if err := os.WriteFile(drop2, []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(drop2, path); err != nil {
		t.Fatal(err)
	}
	if !waitFor(10*time.Second, 20*time.Millisecond, func() bool { return adm.Circuit(t, "api").Settings.ConsecutiveFailures == 6 }) {
		t.Fatal("the valid file written after the unreadable ones was not applied within 10s")
	}
	serving("after the valid file")
}
