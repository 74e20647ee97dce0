package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// `fuseproxy -h`, `--help` and `help` print the command overview on stdout and exit 0,
// as a newcomer expects (not serve's flags with exit 2).
func TestHelpPrintsTheOverview(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"-help"}, {"--help"}, {"help"}} {
		code, out, errs := runCLI(args...)
		if code != 0 || out != usage || errs != "" {
			t.Errorf("fuseproxy %s: exit %d, stdout %q, stderr %q; want 0 and the overview on stdout",
				strings.Join(args, " "), code, head(out), head(errs))
		}
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}, {"-version"}} {
		code, out, errs := runCLI(args...)
		if code != 0 || out != "fuseproxy "+version+"\n" || errs != "" {
			t.Errorf("fuseproxy %s: exit %d, stdout %q, stderr %q; want 0 and %q",
				strings.Join(args, " "), code, out, errs, "fuseproxy "+version)
		}
	}
}

// Every command's -h prints its own flags and exits 0; a flag it does not know is still
// a usage error (exit 2).
func TestEveryCommandsHelpExitsZero(t *testing.T) {
	cmds := []struct {
		args []string
		want string // a word of its help
	}{
		{[]string{"-h", "ignored"}, "Usage:"},
		{[]string{"serve", "-h"}, "-log-format"},
		{[]string{"validate", "-h"}, "-config"},
		{[]string{"demo", "-h"}, "-upstream"},
		{[]string{"flaky", "-h"}, "-listen"},
		{[]string{"migrate", "-h"}, "-grants"},
		{[]string{"circuits", "-h"}, "circuits list"},
		{[]string{"circuits", "list", "--help"}, "circuits list"},
		{[]string{"health", "-h"}, "-admin"},
		{[]string{"reload", "-h"}, "-admin"},
	}
	for _, c := range cmds {
		code, out, errs := runCLI(c.args...)
		if code != 0 || !strings.Contains(out+errs, c.want) {
			t.Errorf("fuseproxy %s: exit %d, output %q; want 0 and %q", strings.Join(c.args, " "), code, head(out+errs), c.want)
		}
	}
	for _, args := range [][]string{{"serve", "-nope"}, {"validate", "-nope"}, {"circuits", "list", "--nope"}, {"nope"}} {
		if code, _, _ := runCLI(args...); code != 2 {
			t.Errorf("fuseproxy %s: exit %d, want 2", strings.Join(args, " "), code)
		}
	}
}

func head(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

// Without a config file, serve and validate say where they looked, where that path came
// from and how to give one; with an absolute path (the image's FUSE_CONFIG), how to mount
// it in a container.
func TestMissingConfigIsExplained(t *testing.T) {
	path := filepath.Join(t.TempDir(), "etc", "fuseproxy", "config.yaml")
	t.Setenv("FUSE_CONFIG", path)
	for _, cmd := range [][]string{{}, {"serve"}, {"validate"}} {
		code, _, errs := runCLI(cmd...)
		want := "fuseproxy: no config file at " + path + " ($FUSE_CONFIG): write one (config.example.yaml is a commented start, README lists every key) and name it with -config FILE or $FUSE_CONFIG; in a container, mount it: -v $PWD/config.yaml:" + path + ":ro\n"
		if code != 1 || errs != want {
			t.Errorf("fuseproxy %v: exit %d, stderr %q; want 1 and %q", cmd, code, errs, want)
		}
	}
	code, _, errs := runCLI("validate", "-config", "nope.yaml")
	if want := "no config file at nope.yaml (-config): "; code != 1 || !strings.Contains(errs, want) || strings.Contains(errs, "container") {
		t.Errorf("validate -config nope.yaml: exit %d, stderr %q; want 1 and %q", code, errs, want)
	}
}

// README's Container section quotes what the image prints without a mounted config.
func TestReadmeQuotesTheMissingConfigError(t *testing.T) {
	const image = "/etc/fuseproxy/config.yaml" // the Dockerfile's FUSE_CONFIG
	if _, err := os.Stat(image); err == nil {
		t.Skipf("%s exists on this machine", image)
	}
	t.Setenv("FUSE_CONFIG", image)
	_, _, errs := runCLI("serve")
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	flat := strings.Join(strings.Fields(string(readme)), " ")
	if want := "`" + strings.TrimSpace(errs) + "`"; !strings.Contains(flat, want) {
		t.Errorf("README does not quote the error as the binary prints it:\n%s", want)
	}
}

// demo -upstream takes host:port, a host and a port number, checked before anything
// listens: an empty host would have the flaky upstream listen on every interface and the
// config then refused as if its own target were wrong; a bad port was reported as
// "another demo running?"; port 0 served a demo whose every request failed.
func TestDemoUpstreamAddressChecked(t *testing.T) {
	for _, up := range []string{":0", "127.0.0.1:notaport", "127.0.0.1:8081/x", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000"} {
		// (-listen and -admin are bad too: a demo that got past -upstream ends at once.)
		code, _, errs := runCLI("demo", "-config", "../../config.example.yaml", "-upstream", up, "-listen", "nowhere", "-admin", "nowhere")
		if code != 1 || !strings.Contains(errs, "demo -upstream "+strconv.Quote(up)) || strings.Contains(errs, "another demo") {
			t.Errorf("demo -upstream %q: exit %d, stderr %q; want 1 and an error naming -upstream", up, code, head(errs))
		}
	}
}
