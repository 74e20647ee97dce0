package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/internal/admin"
	"github.com/fuseproxy/fuseproxy/store"
)

const cliTestConfig = `
upstreams:
  api:
    targets: ["http://127.0.0.1:1"]
    breaker:
      consecutive_failures: 2
      open_duration: 30s
      jitter: 0
  legacy:
    targets: ["http://127.0.0.1:1"]
    breaker:
      enabled: false
routes:
  - upstream: api
`

// countingStore is a memory store that counts Control calls and can pretend the shared
// store is unreachable.
type countingStore struct {
	*store.Memory
	controls  atomic.Int32
	localOnly atomic.Bool
}

func (s *countingStore) Control(ctx context.Context, name string, c store.Command) error {
	s.controls.Add(1)
	if err := s.Memory.Control(ctx, name, c); err != nil {
		return err
	}
	if s.localOnly.Load() {
		return &store.LocalOnlyError{Err: errors.New("redis: connection refused")}
	}
	return nil
}

// cliBackend is an admin.Backend for the CLI tests.
type cliBackend struct {
	cfg       *config.Config
	breakers  map[string]*breaker.Breaker
	store     *countingStore
	ready     atomic.Bool
	reloadErr error
}

func (f *cliBackend) Breakers() map[string]*breaker.Breaker { return f.breakers }
func (f *cliBackend) Store() store.Store                    { return f.store }
func (f *cliBackend) Config() *config.Config                { return f.cfg }
func (f *cliBackend) ReplicaID() string                     { return "replica-1" }
func (f *cliBackend) Ready() bool                           { return f.ready.Load() }
func (f *cliBackend) ReloadFile() error                     { return f.reloadErr }

// adminServer serves a real admin API over a memory store on loopback.
func adminServer(t *testing.T, token string) (*httptest.Server, *cliBackend) {
	t.Helper()
	cfg, err := config.ParseWithEnv("config.yaml", []byte(cliTestConfig), nil)
	if err != nil {
		t.Fatal(err)
	}
	f := &cliBackend{cfg: cfg, breakers: map[string]*breaker.Breaker{}, store: &countingStore{Memory: store.NewMemory("replica-1").WithHistory(store.HistoryOptions{Retention: time.Hour, MaxEntries: 100}, nil)}}
	b := breaker.New("api", cfg.Upstreams["api"].Breaker.Settings(), breaker.Options{Observer: f.store.Memory})
	f.breakers["api"] = b
	f.store.Attach(map[string]store.Circuit{"api": {Breaker: b}})
	f.ready.Store(true)
	srv := httptest.NewServer(admin.NewHandler(f, admin.Options{Token: token}))
	t.Cleanup(srv.Close)
	// The admin commands read these; the tests set them explicitly.
	t.Setenv("FUSE_ADMIN_URL", "")
	t.Setenv("FUSE_ADMIN_TOKEN", "")
	return srv, f
}

func runCLI(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestCircuitsListTable(t *testing.T) {
	srv, f := adminServer(t, "")
	tk, _ := f.breakers["api"].Allow()
	f.breakers["api"].Done(tk, breaker.Failure, time.Millisecond)
	code, out, errs := runCLI("circuits", "list", "--admin", srv.URL)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	lines := strings.Split(out, "\n")
	if len(lines) < 4 {
		t.Fatalf("output:\n%s", out)
	}
	header := strings.Fields(lines[0])
	wantHeader := []string{"UPSTREAM", "STATE", "MODE", "SOURCE", "REQUESTS", "FAILURES", "SLOW", "FAIL%", "SLOW%", "CONSEC", "TRIPS", "GEN", "OPEN", "LEFT"}
	if strings.Join(header, " ") != strings.Join(wantHeader, " ") {
		t.Errorf("header %q", lines[0])
	}
	if got := strings.Fields(lines[1]); strings.Join(got, " ") != "api closed normal local 1 1 0 100 0 1 0 0 -" {
		t.Errorf("api row %q", lines[1])
	}
	if got := strings.Fields(lines[2]); got[0] != "legacy" || got[1] != "disabled" {
		t.Errorf("legacy row %q", lines[2])
	}
	// Aligned: every column starts at the same offset on every row.
	if strings.Index(lines[0], "STATE") != strings.Index(lines[1], "closed") || strings.Index(lines[1], "closed") != strings.Index(lines[2], "disabled") {
		t.Errorf("columns not aligned:\n%s", out)
	}
	if !strings.Contains(out, "replica replica-1, store memory") {
		t.Errorf("no footer:\n%s", out)
	}
}

func TestCircuitsJSONIsTheAPIAnswer(t *testing.T) {
	srv, _ := adminServer(t, "")
	// Flags may follow the positional arguments.
	code, out, errs := runCLI("circuits", "list", "--json", "--admin", srv.URL)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var l admin.CircuitList
	if err := json.Unmarshal([]byte(out), &l); err != nil || len(l.Circuits) != 2 || l.Replica != "replica-1" {
		t.Fatalf("--json output %q: %v", out, err)
	}
	code, out, _ = runCLI("circuits", "--json", "show", "api", "--admin", srv.URL)
	var d admin.CircuitDetail
	if err := json.Unmarshal([]byte(out), &d); code != 0 || err != nil || d.Settings == nil || d.Settings.OpenDuration != "30s" {
		t.Fatalf("show --json: exit %d, %q: %v", code, out, err)
	}
}

func TestCircuitsShowTable(t *testing.T) {
	srv, _ := adminServer(t, "")
	t.Setenv("FUSE_ADMIN_URL", srv.URL) // the default admin URL
	if code, _, errs := runCLI("circuits", "open", "api"); code != 0 {
		t.Fatalf("open: exit %d: %s", code, errs)
	}
	code, out, errs := runCLI("circuits", "show", "api")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{"upstream          api\n", "state             open\n", "open left         30s of 30s\n",
		"\nsettings\n", "  open_duration           30s\n", "\nstore's view (memory)\n", "  state       open\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("show lacks %q:\n%s", want, out)
		}
	}
}

func TestCircuitsControl(t *testing.T) {
	srv, f := adminServer(t, "")
	b := f.breakers["api"]
	for _, tc := range []struct {
		args []string
		out  string
		ok   func() bool
	}{
		{[]string{"open", "api"}, "api: open applied this replica; now open, mode normal, generation 1, open for 30s\n", func() bool { return b.State() == breaker.Open }},
		{[]string{"close", "api"}, "api: close applied this replica; now closed, mode normal, generation 2\n", func() bool { return b.State() == breaker.Closed }},
		{[]string{"mode", "api", "metrics_only"}, "api: mode metrics_only applied this replica; now closed, mode metrics_only, generation 3\n", func() bool { return b.Mode() == breaker.MetricsOnly }},
		{[]string{"reset", "api"}, "api: reset applied this replica; now closed, mode normal, generation 4\n", func() bool { return b.Mode() == breaker.Normal }},
	} {
		before := f.store.controls.Load()
		code, out, errs := runCLI(append(append([]string{"circuits"}, tc.args...), "--admin", srv.URL)...)
		if code != 0 || out != tc.out || errs != "" || !tc.ok() {
			t.Errorf("%v: exit %d, out %q, err %q", tc.args, code, out, errs)
		}
		if n := f.store.controls.Load() - before; n != 1 {
			t.Errorf("%v: %d commands reached the store, want 1", tc.args, n)
		}
	}

	// A command that reached this replica only: a warning, still exit 0.
	f.store.localOnly.Store(true)
	code, out, errs := runCLI("circuits", "open", "api", "--admin", srv.URL)
	if code != 0 || !strings.Contains(errs, "warning: applied to this replica only") || !strings.Contains(out, "now open") {
		t.Errorf("local-only: exit %d, out %q, err %q", code, out, errs)
	}

	for _, tc := range []struct {
		args []string
		code int
		err  string
	}{
		{[]string{"circuits", "mode", "api", "sideways"}, 1, `unknown mode "sideways"`},
		{[]string{"circuits", "open", "nope"}, 1, `unknown upstream "nope"`},
		{[]string{"circuits", "open", "legacy"}, 1, "breaker disabled"},
		{[]string{"circuits"}, 2, "Usage:"},
		{[]string{"circuits", "bogus"}, 2, `unknown subcommand "bogus"`},
		{[]string{"circuits", "show"}, 2, "want 1 argument(s), got 0"},
		{[]string{"circuits", "mode", "api"}, 2, "want 2 argument(s), got 1"},
		{[]string{"circuits", "list", "--nope"}, 2, "flag provided but not defined"},
	} {
		code, _, errs := runCLI(append(tc.args, "--admin", srv.URL)...)
		if code != tc.code || !strings.Contains(errs, tc.err) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", tc.args, code, errs, tc.code, tc.err)
		}
	}
	// --json prints the error answer too.
	code, out, _ = runCLI("circuits", "open", "nope", "--json", "--admin", srv.URL)
	if code != 1 || !strings.Contains(out, `"upstream": "nope"`) {
		t.Errorf("--json error: exit %d, %q", code, out)
	}
}

func TestAdminCommandsToken(t *testing.T) {
	srv, _ := adminServer(t, "tok-123")
	code, _, errs := runCLI("circuits", "list", "--admin", srv.URL)
	if code != 1 || !strings.Contains(errs, "admin API answered 401: unauthorized (set --token or FUSE_ADMIN_TOKEN)") {
		t.Errorf("without a token: exit %d, %q", code, errs)
	}
	if code, _, errs := runCLI("circuits", "list", "--admin", srv.URL, "--token", "tok-123"); code != 0 {
		t.Errorf("--token: exit %d, %q", code, errs)
	}
	t.Setenv("FUSE_ADMIN_TOKEN", "tok-123")
	if code, _, errs := runCLI("health", "--admin", srv.URL); code != 0 {
		t.Errorf("FUSE_ADMIN_TOKEN: exit %d, %q", code, errs)
	}
	// health needs the token too: a 401 is not ready.
	t.Setenv("FUSE_ADMIN_TOKEN", "wrong")
	if code, _, _ := runCLI("health", "--admin", srv.URL); code != 1 {
		t.Errorf("health with a wrong token: exit %d", code)
	}
}

// TestAdminTokenAsWritten: the CLI reads its token as the server does (config.CleanToken):
// a FUSE_ADMIN_TOKEN with the trailing newline of a secret made from a file works (it
// used to fail every command, the image's HEALTHCHECK included, with "invalid header
// field value"), and a control character inside is an error naming where it came from.
func TestAdminTokenAsWritten(t *testing.T) {
	srv, _ := adminServer(t, "tok-123")
	t.Setenv("FUSE_ADMIN_TOKEN", "tok-123\n")
	if code, out, errs := runCLI("health", "--admin", srv.URL); code != 0 {
		t.Errorf("health with FUSE_ADMIN_TOKEN ending in a newline: exit %d, %q %q", code, out, errs)
	}
	if code, _, errs := runCLI("circuits", "open", "api", "--admin", srv.URL); code != 0 {
		t.Errorf("circuits open with FUSE_ADMIN_TOKEN ending in a newline: exit %d, %q", code, errs)
	}
	if code, _, errs := runCLI("reload", "--admin", srv.URL, "--token", " tok-123\r\n"); code != 0 {
		t.Errorf("reload with --token in blanks: exit %d, %q", code, errs)
	}
	t.Setenv("FUSE_ADMIN_TOKEN", "tok\n-123")
	if code, _, errs := runCLI("circuits", "list", "--admin", srv.URL); code != 1 || !strings.Contains(errs, "env FUSE_ADMIN_TOKEN: the token has a control character ('\\n') at byte 3") {
		t.Errorf("FUSE_ADMIN_TOKEN with a newline inside: exit %d, %q", code, errs)
	}
	if code, _, errs := runCLI("health", "--admin", srv.URL, "--token", "tok\x01"); code != 1 || !strings.Contains(errs, "--token: the token has a control character") {
		t.Errorf("--token with a control character: exit %d, %q", code, errs)
	}
}

func TestHealth(t *testing.T) {
	srv, f := adminServer(t, "")
	code, out, errs := runCLI("health", "--admin", srv.URL)
	if code != 0 || out != "ready: serving (replica replica-1, store memory, protection local)\n" {
		t.Errorf("ready: exit %d, out %q, err %q", code, out, errs)
	}
	code, out, _ = runCLI("health", "--json", "--admin", strings.TrimPrefix(srv.URL, "http://")) // no scheme: http
	var r admin.Readiness
	if err := json.Unmarshal([]byte(out), &r); code != 0 || err != nil || !r.Ready {
		t.Errorf("--json: exit %d, %q", code, out)
	}
	f.ready.Store(false)
	code, out, errs = runCLI("health", "--admin", srv.URL)
	if code != 1 || !strings.Contains(out, "not ready: not serving") || !strings.Contains(errs, "not ready") {
		t.Errorf("not ready: exit %d, out %q, err %q", code, out, errs)
	}
	srv.Close()
	code, _, errs = runCLI("health", "--admin", srv.URL)
	if code != 1 || !strings.Contains(errs, "connection refused") {
		t.Errorf("admin down: exit %d, err %q", code, errs)
	}
	if code, _, _ := runCLI("health", "extra"); code != 2 {
		t.Errorf("health with an argument: exit %d, want 2", code)
	}
}

func TestReloadCommand(t *testing.T) {
	srv, f := adminServer(t, "")
	code, out, errs := runCLI("reload", "--admin", srv.URL)
	if code != 0 || out != "reloaded config.yaml: 2 upstreams\n" {
		t.Errorf("reload: exit %d, out %q, err %q", code, out, errs)
	}
	f.reloadErr = errors.New("config.yaml:4: upstreams.api.targets: must not be empty")
	code, _, errs = runCLI("reload", "--admin", srv.URL)
	if code != 1 || !strings.Contains(errs, "reload failed; the old config keeps serving: config.yaml:4: upstreams.api.targets") {
		t.Errorf("failed reload: exit %d, err %q", code, errs)
	}
}

func TestUsageListsAdminCommands(t *testing.T) {
	_, out, _ := runCLI("help")
	for _, want := range []string{"fuseproxy circuits list", "fuseproxy health", "fuseproxy reload", "FUSE_ADMIN_URL"} {
		if !strings.Contains(out, want) {
			t.Errorf("usage lacks %q", want)
		}
	}
}
