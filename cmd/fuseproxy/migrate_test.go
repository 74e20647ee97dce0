package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/fuseproxy/fuseproxy/internal/testutil/pgtest"
	"github.com/fuseproxy/fuseproxy/store"
)

// `fuseproxy migrate` creates the postgres store's schema once (a second run finds it up
// to date), whatever store.driver says, and -grants prints a runtime role's rights.
func TestMigrate(t *testing.T) {
	srv := pgtest.Start(t)
	path := filepath.Join(t.TempDir(), "config.yaml")
	cfg := "upstreams:\n  api:\n    targets: [\"http://127.0.0.1:1\"]\nroutes:\n  - upstream: api\n" +
		"store:\n  driver: database\n  postgres:\n    url: " + srv.DSN() + "\n    prefix: m_\n"
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	v := store.PostgresSchemaVersion()
	code, out, errs := runCLI("migrate", "-config", path)
	if code != 0 || !strings.HasPrefix(out, "schema public, prefix m_: applied version 1") ||
		!strings.HasSuffix(out, "now at version "+itoa(v)+"\n") {
		t.Fatalf("first migrate: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	code, out, errs = runCLI("migrate", "-config", path, "-grants", "fuse_rt")
	if code != 0 || !strings.HasPrefix(out, "schema public, prefix m_: up to date (version "+itoa(v)+")\n") ||
		!strings.Contains(out, `GRANT CONNECT ON DATABASE "postgres" TO "fuse_rt";`) ||
		!strings.Contains(out, `GRANT EXECUTE ON FUNCTION "public"."m_flush"(text, text[]) TO "fuse_rt";`) {
		t.Fatalf("second migrate: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	// the grants work: a role with only them runs the store's functions
	srv.Exec(`CREATE ROLE fuse_rt LOGIN`)
	for _, g := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
		srv.Exec(strings.TrimSuffix(g, ";"))
	}
	conn := srv.Conn(srv.DSNFor("fuse_rt", "postgres"))
	var reply []string
	if err := conn.QueryRow(t.Context(), `SELECT m_heartbeat('r1', ARRAY['5000'])`).Scan(&reply); err != nil || len(reply) != 1 || reply[0] != "1" {
		t.Fatalf("heartbeat as the runtime role: %v %v", reply, err)
	}
	if _, err := conn.Exec(t.Context(), `DELETE FROM m_heartbeats`); err == nil {
		t.Fatal("the runtime role may write a table directly")
	}
	// a database that cannot be reached: an error, exit 1
	srv.Kill()
	if code, _, errs := runCLI("migrate", "-config", path); code != 1 || !strings.Contains(errs, "fuseproxy: ") {
		t.Fatalf("migrate against a dead server: exit %d, stderr %q", code, errs)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
