package e2e

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestOpsValidateRiskySettings: `fuseproxy validate` warns about valid but risky settings
// (exit 0, "warning: file:line: field: ..." on stdout) and refuses unsafe ones (exit 1,
// "file:line: field: ..." on stderr): the memory store with replicas: 3 is a warning;
// an admin API on loopback without a token is fine; off loopback without a token it is
// an error (and `serve` refuses to start), with a token from the environment it is fine,
// with a token written in the file it is a warning.
func TestOpsValidateRiskySettings(t *testing.T) {
	dir := t.TempDir()
	// render writes a config with the given admin listener and extra top-level lines
	// (before the admin block) and returns its name and the line of `mark`, if given.
	render := func(name, adminListen, extra, adminExtra, mark string) (file string, line int) {
		text := fmt.Sprintf(`listen: "127.0.0.1:18080"
%sadmin:
  listen: "%s"
%supstreams:
  x:
    targets: ["http://127.0.0.1:18081"]
    breaker:
      consecutive_failures: 5
routes:
  - path_prefix: /
    upstream: x
`, extra, adminListen, adminExtra)
		writeFile(t, dir, name, text)
		if mark != "" {
			line = lineOf(text, mark)
		}
		return name, line
	}
	type want struct {
		code   int
		stdout []string // substrings of stdout
		stderr []string // substrings of stderr
		clean  bool     // no "warning:" at all
	}
	check := func(t *testing.T, file string, env []string, w want) {
		t.Helper()
		p := startProcess(t, "fuseproxy validate "+file, dir, env, "validate", "-config", file)
		code, ok := p.Wait(30 * time.Second)
		if !ok {
			p.Kill()
			t.Fatalf("validate %s did not exit", file)
		}
		stdout, stderr := p.stdout.String(), p.Stderr()
		bad := code != w.code
		for _, s := range w.stdout {
			bad = bad || !strings.Contains(stdout, s)
		}
		for _, s := range w.stderr {
			bad = bad || !strings.Contains(stderr, s)
		}
		if w.clean && strings.Contains(stdout+stderr, "warning") {
			bad = true
		}
		if bad {
			t.Errorf("validate %s (env %v): exit %d\nstdout: %s\nstderr: %s\nwant exit %d, stdout with %q, stderr with %q, no warning: %t",
				file, env, code, stdout, stderr, w.code, w.stdout, w.stderr, w.clean)
		}
	}

	t.Run("loopback admin without token is fine", func(t *testing.T) {
		f, _ := render("loopback.yaml", "127.0.0.1:8084", "", "", "")
		check(t, f, nil, want{code: 0, stdout: []string{f + ": ok"}, clean: true})
		f, _ = render("localhost.yaml", "localhost:8084", "", "", "")
		check(t, f, nil, want{code: 0, stdout: []string{f + ": ok"}, clean: true})
	})
	t.Run("memory store with replicas 3 warns", func(t *testing.T) {
		f, line := render("replicas.yaml", "127.0.0.1:8084", "replicas: 3\nstore:\n  driver: memory\n", "", "replicas: 3")
		check(t, f, nil, want{code: 0, stdout: []string{
			"warning: " + f + ":" + strconv.Itoa(line) + ": replicas: 3 replicas with the memory store",
			f + ": ok",
		}})
	})
	for _, addr := range []string{"0.0.0.0:8084", ":8084", "10.1.2.3:8084"} {
		t.Run("admin on "+addr+" without token is an error", func(t *testing.T) {
			f, line := render("public.yaml", addr, "", "", "listen: \""+addr)
			errText := fmt.Sprintf("%s:%d: admin.listen: %q is not a loopback address, so an admin token is required", f, line, addr)
			check(t, f, nil, want{code: 1, stderr: []string{errText}})
			// The same with a token from the environment: fine, nothing to warn about.
			check(t, f, []string{"FUSE_ADMIN_TOKEN=s3cret-from-env"}, want{code: 0, stdout: []string{f + ": ok"}, clean: true})
		})
	}
	t.Run("admin token in the file warns", func(t *testing.T) {
		f, line := render("token.yaml", "0.0.0.0:8084", "", "  token: s3cret-in-file\n", "token: s3cret")
		check(t, f, nil, want{code: 0, stdout: []string{
			"warning: " + f + ":" + strconv.Itoa(line) + ": admin.token: the admin token is written in the config file",
		}})
	})
	t.Run("serve refuses a public admin without token", func(t *testing.T) {
		f, line := render("serve-public.yaml", "0.0.0.0:"+strconv.Itoa(freePort(t)), "", "", "admin:")
		p := startProcess(t, "fuseproxy serve "+f, dir, nil, "serve", "-config", f)
		code, ok := p.Wait(30 * time.Second)
		if !ok {
			p.Kill()
			t.Fatalf("serve with a public admin listener without token is still running")
		}
		want := fmt.Sprintf("%s:%d: admin.listen:", f, line+1)
		if code != 1 || !strings.Contains(p.Stderr(), want) || !strings.Contains(p.Stderr(), "admin token is required") {
			t.Errorf("serve: exit %d, stderr %q; want exit 1 and %q ... admin token is required", code, p.Stderr(), want)
		}
	})
}
