package app

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fuseproxy/fuseproxy/config"
)

func accessLogConfig(t *testing.T, path string) *config.Config {
	t.Helper()
	cfg, err := config.ParseWithEnv("test.yaml", []byte(`listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0}
store: {replica_id: solo}
access_log: {enabled: true, path: "`+path+`"}
upstreams:
  api: {targets: ["http://127.0.0.1:1"]}
routes:
  - upstream: api
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// An access log file that cannot be opened stops serve before it listens, with an
// error naming the key.
func TestAccessLogUnopenableAtStart(t *testing.T) {
	a, err := New(accessLogConfig(t, filepath.Join(t.TempDir(), "missing", "access.log")), Options{})
	if err != nil {
		t.Fatal(err)
	}
	err = a.Run(context.Background())
	if err == nil || !strings.HasPrefix(err.Error(), "access_log.path: ") {
		t.Fatalf("Run: %v, want an access_log.path error", err)
	}
	if p, ad := a.Addrs(); p != "" || ad != "" {
		t.Errorf("listened on %q and %q before failing", p, ad)
	}
}

// A reload to an access log path that cannot be opened fails as a whole: the old config
// and the old file stay in effect.
func TestAccessLogReloadToUnopenablePath(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "access.log")
	a, err := New(accessLogConfig(t, good), Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- a.Run(ctx) }()
	waitUntil(t, "ready", a.Ready)
	old := a.Config()
	err = a.Reload(accessLogConfig(t, filepath.Join(dir, "missing", "access.log")))
	if err == nil || !strings.HasPrefix(err.Error(), "access_log.path: ") {
		t.Errorf("Reload: %v, want an access_log.path error", err)
	}
	if a.Config() != old {
		t.Errorf("the failed reload replaced the config")
	}
	if got := reloadFailures(t, a); got != 1 {
		t.Errorf("%g failed reloads counted, want 1", got)
	}
	cancel()
	if err := <-stopped; err != nil {
		t.Errorf("Run: %v", err)
	}
	if _, err := os.Stat(good); err != nil {
		t.Errorf("the access log file: %v", err)
	}
}
