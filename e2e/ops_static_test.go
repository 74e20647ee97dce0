package e2e

import (
	"bufio"
	"bytes"
	"context"
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/config"
)

// moduleRoot is the module's root directory (this package lives in <root>/e2e).
func moduleRoot(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root %s: %v", root, err)
	}
	return root
}

// ---------------------------------------------------------------------------------------
// The Dockerfile, parsed.

// dockerInstr is one Dockerfile instruction, continuation lines joined.
type dockerInstr struct {
	Cmd   string // upper case: FROM, RUN, ...
	Args  string
	Line  int // where it starts
	Stage int // 0-based build stage
}

func parseDockerfile(t testing.TB, path string) []dockerInstr {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []dockerInstr
	stage := -1
	var cur strings.Builder
	start := 0
	flush := func() {
		s := strings.TrimSpace(cur.String())
		cur.Reset()
		if s == "" {
			return
		}
		cmd, args, _ := strings.Cut(s, " ")
		cmd = strings.ToUpper(cmd)
		if cmd == "FROM" {
			stage++
		}
		out = append(out, dockerInstr{Cmd: cmd, Args: strings.TrimSpace(args), Line: start, Stage: stage})
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue // comments (also between continuation lines) and blank lines
		}
		if cur.Len() == 0 {
			start = n
		}
		if body, ok := strings.CutSuffix(strings.TrimRight(line, " \t"), "\\"); ok {
			cur.WriteString(body + " ")
			continue
		}
		cur.WriteString(line)
		flush()
	}
	flush()
	return out
}

// shellWords splits a shell command line into words, honouring single and double quotes
// (enough for a Dockerfile RUN line; no expansions but those the caller does).
func shellWords(t testing.TB, s string) []string {
	t.Helper()
	var words []string
	var w strings.Builder
	inWord := false
	var quote rune
	for _, r := range s {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				w.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t' || r == '\n':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		case strings.ContainsRune("|&;<>()`", r):
			t.Fatalf("shellWords: %q needs a real shell (found %q)", s, r)
		default:
			w.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		t.Fatalf("shellWords: unbalanced quote in %q", s)
	}
	if inWord {
		words = append(words, w.String())
	}
	return words
}

// dockerBuild is the Dockerfile's `go build` step.
type dockerBuild struct {
	Env    []string // VAR=value words before the command
	Args   []string // after "go build"
	Output string   // the -o value
	Line   int
}

// dockerfileBuild finds the RUN line that builds fuseproxy and splits it.
func dockerfileBuild(t testing.TB, instrs []dockerInstr) dockerBuild {
	t.Helper()
	for _, in := range instrs {
		if in.Cmd != "RUN" || !strings.Contains(in.Args, "go build") {
			continue
		}
		words := shellWords(t, in.Args)
		b := dockerBuild{Line: in.Line}
		i := 0
		for ; i < len(words) && regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`).MatchString(words[i]); i++ {
			b.Env = append(b.Env, words[i])
		}
		if len(words) < i+2 || words[i] != "go" || words[i+1] != "build" {
			t.Fatalf("Dockerfile:%d: RUN %s: want [VAR=value ...] go build ...", in.Line, in.Args)
		}
		b.Args = words[i+2:]
		if j := slices.Index(b.Args, "-o"); j >= 0 && j+1 < len(b.Args) {
			b.Output = b.Args[j+1]
		}
		return b
	}
	t.Fatalf("Dockerfile: no RUN ... go build line")
	return dockerBuild{}
}

// TestOpsDockerfile checks the Dockerfile and .dockerignore without a container engine:
// a multi-stage build of a static binary (CGO_ENABLED=0, -trimpath, version stamped)
// into a runtime stage that runs as a non-root user, exposes 8080 and 8084, checks health
// with `fuseproxy health` (exec form: the image has no shell), reads its config from
// /etc/fuseproxy/config.yaml, and whose default config is valid and matches the ports and
// the health check's admin URL.
func TestOpsDockerfile(t *testing.T) {
	root := moduleRoot(t)
	instrs := parseDockerfile(t, filepath.Join(root, "Dockerfile"))
	const bin = "/usr/local/bin/fuseproxy"
	const cfgPath = "/etc/fuseproxy/config.yaml"

	var froms []dockerInstr
	for _, in := range instrs {
		if in.Cmd == "FROM" {
			froms = append(froms, in)
		}
	}
	if len(froms) < 2 {
		t.Fatalf("Dockerfile: %d stages, want a multi-stage build (build, then runtime)", len(froms))
	}
	last := len(froms) - 1
	runtime := func(cmd string) []dockerInstr {
		var out []dockerInstr
		for _, in := range instrs {
			if in.Stage == last && in.Cmd == cmd {
				out = append(out, in)
			}
		}
		return out
	}
	one := func(cmd string) dockerInstr {
		t.Helper()
		ins := runtime(cmd)
		if len(ins) != 1 {
			t.Fatalf("Dockerfile runtime stage: %d %s instructions, want 1", len(ins), cmd)
		}
		return ins[0]
	}
	execForm := func(in dockerInstr, s string) []string {
		t.Helper()
		var v []string
		if err := json.Unmarshal([]byte(s), &v); err != nil {
			t.Fatalf("Dockerfile:%d: %s %s: want the exec form (a JSON array; the image has no shell): %v", in.Line, in.Cmd, s, err)
		}
		return v
	}

	// The build stage: the static build, whose output the runtime stage copies.
	build := dockerfileBuild(t, instrs)
	if !slices.Contains(build.Env, "CGO_ENABLED=0") || !slices.Contains(build.Args, "-trimpath") ||
		!slices.Contains(build.Args, "./cmd/fuseproxy") || build.Output == "" {
		t.Errorf("Dockerfile:%d: go build env %v args %v: want CGO_ENABLED=0, -trimpath, -o and ./cmd/fuseproxy", build.Line, build.Env, build.Args)
	}
	if j := slices.Index(build.Args, "-ldflags"); j < 0 || j+1 >= len(build.Args) ||
		!strings.Contains(build.Args[j+1], "-X main.version=${VERSION}") || !strings.Contains(build.Args[j+1], "-s -w") {
		t.Errorf("Dockerfile:%d: go build args %v: want -ldflags \"-s -w -X main.version=${VERSION}\"", build.Line, build.Args)
	}
	copied := false
	for _, in := range runtime("COPY") {
		f := strings.Fields(in.Args)
		if len(f) == 3 && strings.HasPrefix(f[0], "--from=") && f[1] == build.Output && f[2] == bin {
			copied = true
		}
	}
	if !copied {
		t.Errorf("Dockerfile: the runtime stage does not COPY --from=<build> %s %s", build.Output, bin)
	}

	// Non-root.
	user := one("USER")
	uid, gid, _ := strings.Cut(user.Args, ":")
	for _, id := range []string{uid, gid} {
		if id == "0" || id == "root" {
			t.Errorf("Dockerfile:%d: USER %s: want a non-root user and group", user.Line, user.Args)
		}
	}
	if uid == "" {
		t.Errorf("Dockerfile:%d: USER without a user", user.Line)
	}

	// Ports.
	var ports []string
	for _, in := range runtime("EXPOSE") {
		ports = append(ports, strings.Fields(in.Args)...)
	}
	for i, p := range ports {
		ports[i] = strings.TrimSuffix(p, "/tcp")
	}

	// Health check.
	hc := one("HEALTHCHECK")
	_, hcCmd, ok := strings.Cut(hc.Args, " CMD ")
	if !ok {
		t.Fatalf("Dockerfile:%d: HEALTHCHECK %s: no CMD", hc.Line, hc.Args)
	}
	if got := execForm(hc, strings.TrimSpace(hcCmd)); !slices.Equal(got, []string{bin, "health"}) {
		t.Errorf("Dockerfile:%d: HEALTHCHECK CMD %q, want [%q \"health\"]", hc.Line, got, bin)
	}
	if ep := one("ENTRYPOINT"); !slices.Equal(execForm(ep, ep.Args), []string{bin}) {
		t.Errorf("Dockerfile:%d: ENTRYPOINT %s, want [%q]", ep.Line, ep.Args, bin)
	}

	// Environment and config: the image bakes no config (a demo's would listen for an
	// upstream on 127.0.0.1:8081 and log for humans); FUSE_CONFIG names where to mount
	// one, and without it the binary exits 1 saying so.
	env := map[string]string{}
	for _, in := range runtime("ENV") {
		for _, kv := range shellWords(t, in.Args) {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = v
		}
	}
	if env["FUSE_CONFIG"] != cfgPath {
		t.Errorf("Dockerfile: ENV FUSE_CONFIG=%q, want %s", env["FUSE_CONFIG"], cfgPath)
	}
	for _, in := range runtime("COPY") {
		if f := strings.Fields(in.Args); len(f) == 2 && f[1] == cfgPath {
			t.Errorf("Dockerfile:%d: COPY %s: the image must not bake a config in; operators mount theirs", in.Line, in.Args)
		}
	}
	cmdInstr := one("CMD")
	cmdArgs := execForm(cmdInstr, cmdInstr.Args)
	missing := filepath.Join(t.TempDir(), strings.TrimPrefix(cfgPath, "/"))
	p := startProcess(t, "fuseproxy without a config", "", []string{"FUSE_CONFIG=" + missing}, cmdArgs...)
	code, ok := p.Wait(30 * time.Second)
	if !ok {
		p.Kill()
		t.Fatalf("the image's command %v without a config did not exit", cmdArgs)
	}
	if want := "no config file at " + missing + " ($FUSE_CONFIG)"; code != 1 || !strings.Contains(p.Stderr(), want) ||
		!strings.Contains(p.Stderr(), "mount it: -v $PWD/config.yaml:"+missing+":ro") {
		t.Errorf("the image's command %v without a config: exit %d, stderr %q; want 1, %q and how to mount one", cmdArgs, code, p.Stderr(), want)
	}
	// The exposed ports are the default listeners', and the health check asks the
	// default admin listener.
	def := config.Default()
	if _, port, _ := net.SplitHostPort(def.Listen); !slices.Contains(ports, port) {
		t.Errorf("Dockerfile: EXPOSE %v lacks the proxy's default port %s", ports, port)
	}
	if _, port, _ := net.SplitHostPort(def.Admin.Listen); !slices.Contains(ports, port) {
		t.Errorf("Dockerfile: EXPOSE %v lacks the admin API's default port %s", ports, port)
	}
	if want := "http://" + def.Admin.Listen; env["FUSE_ADMIN_URL"] != want {
		t.Errorf("Dockerfile: ENV FUSE_ADMIN_URL=%q, want %q (the default admin.listen), or the HEALTHCHECK asks the wrong address",
			env["FUSE_ADMIN_URL"], want)
	}

	// OCI labels, the version the build stamps among them.
	labels := map[string]string{}
	for _, in := range runtime("LABEL") {
		for _, kv := range shellWords(t, in.Args) {
			k, v, _ := strings.Cut(kv, "=")
			labels[k] = v
		}
	}
	for _, k := range []string{"title", "description", "source", "url", "documentation", "version", "revision"} {
		if labels["org.opencontainers.image."+k] == "" {
			t.Errorf("Dockerfile: no LABEL org.opencontainers.image.%s", k)
		}
	}
	if v := labels["org.opencontainers.image.version"]; v != "${VERSION}" {
		t.Errorf("Dockerfile: LABEL org.opencontainers.image.version=%q, want ${VERSION} (what -X main.version stamps)", v)
	}
	var runtimeArgs []string
	for _, in := range runtime("ARG") {
		runtimeArgs = append(runtimeArgs, strings.SplitN(in.Args, "=", 2)[0])
	}
	for _, a := range []string{"VERSION", "REVISION"} {
		if !slices.Contains(runtimeArgs, a) {
			t.Errorf("Dockerfile: the runtime stage declares no ARG %s, so its labels would be empty", a)
		}
	}

	// .dockerignore keeps .git (and the tests) out of the context, but not the build's
	// inputs.
	ignore, err := os.ReadFile(filepath.Join(root, ".dockerignore"))
	if err != nil {
		t.Fatalf(".dockerignore: %v", err)
	}
	var patterns []string
	for _, l := range strings.Split(string(ignore), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			patterns = append(patterns, l)
		}
	}
	ignored := func(path string) bool {
		out := false
		for _, p := range patterns {
			neg := strings.HasPrefix(p, "!")
			p = strings.TrimPrefix(strings.TrimPrefix(p, "!"), "/")
			if dockerignoreMatch(p, path) {
				out = !neg
			}
		}
		return out
	}
	for _, p := range []string{".git", ".git/config"} {
		if !ignored(p) {
			t.Errorf(".dockerignore %v does not exclude %s", patterns, p)
		}
	}
	for _, p := range []string{"go.mod", "go.sum", "cmd/fuseproxy/main.go", "config/load.go"} {
		if ignored(p) {
			t.Errorf(".dockerignore %v excludes %s, which the build needs", patterns, p)
		}
	}
}

// dockerignoreMatch reports whether a .dockerignore pattern excludes path (slash
// separated, relative to the context): the pattern matches the path or one of its parent
// directories; "**/" matches any number of directories.
func dockerignoreMatch(pattern, path string) bool {
	parts := strings.Split(path, "/")
	for i := 1; i <= len(parts); i++ {
		prefix := strings.Join(parts[:i], "/")
		if ok, _ := filepath.Match(pattern, prefix); ok {
			return true
		}
		if rest, ok := strings.CutPrefix(pattern, "**/"); ok {
			for j := range i {
				if ok, _ := filepath.Match(rest, strings.Join(parts[j:i], "/")); ok {
					return true
				}
			}
		}
	}
	return false
}

// ---------------------------------------------------------------------------------------
// The static binary.

// TestStaticBinaryAsDockerfileBuildsIt builds fuseproxy with the Dockerfile's own `go
// build` line (parsed from the file, VERSION=e2e-static, output in a temporary
// directory), checks that the result is a static, stripped, trimmed ELF with the version
// stamped, and runs a representative part of this suite against it as a subprocess
// `go test` with FUSE_E2E_BINARY (so every test there starts that binary instead of the
// one TestMain built). It does nothing when FUSE_E2E_BINARY is already set (the
// subprocess itself, or a run against a prebuilt binary) or with -short.
func TestStaticBinaryAsDockerfileBuildsIt(t *testing.T) {
	if os.Getenv("FUSE_E2E_BINARY") != "" {
		t.Skip("FUSE_E2E_BINARY is set: this run already tests a prebuilt binary")
	}
	if testing.Short() {
		t.Skip("-short: builds a binary and runs part of the suite again")
	}
	const version = "e2e-static"
	root := moduleRoot(t)
	build := dockerfileBuild(t, parseDockerfile(t, filepath.Join(root, "Dockerfile")))
	out := filepath.Join(t.TempDir(), "fuseproxy")
	args := []string{"build"}
	for _, a := range build.Args {
		switch a {
		case build.Output:
			a = out
		default:
			a = strings.NewReplacer("${VERSION}", version, "$VERSION", version).Replace(a)
		}
		if strings.Contains(a, "$") {
			t.Fatalf("Dockerfile:%d: go build argument %q uses a variable this test does not know", build.Line, a)
		}
		args = append(args, a)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), build.Env...)
	start := time.Now()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s go %s: %v\n%s", strings.Join(build.Env, " "), strings.Join(args, " "), err, b)
	}
	t.Logf("built as Dockerfile:%d does in %v: %s go %s", build.Line, time.Since(start).Round(time.Millisecond),
		strings.Join(build.Env, " "), strings.Join(args, " "))

	// Static: no program interpreter, no shared libraries; stripped (-s).
	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("%s has a %v program header: not statically linked", out, p.Type)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("%s needs shared libraries %v", out, libs)
	}
	if f.Section(".symtab") != nil {
		t.Errorf("%s has a symbol table: not stripped (-s)", out)
	}
	f.Close()
	// Built as asked: the build settings the Go toolchain recorded in the binary.
	bi, err := buildinfo.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	// (With -trimpath the toolchain leaves -ldflags out; `version` below shows its -X.)
	if settings["CGO_ENABLED"] != "0" || settings["-trimpath"] != "true" {
		t.Errorf("build settings recorded in the binary: CGO_ENABLED=%q -trimpath=%q, want 0 and true",
			settings["CGO_ENABLED"], settings["-trimpath"])
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(data, []byte(root+string(filepath.Separator))) {
		t.Errorf("%s contains the build directory %s: not built with -trimpath", out, root)
	}
	v, err := exec.Command(out, "version").Output()
	if got := strings.TrimSpace(string(v)); err != nil || got != "fuseproxy "+version {
		t.Fatalf("%s version: %q, %v; want \"fuseproxy %s\"", out, got, err, version)
	}

	// The suite, against that binary: every e2e test (the circuit's life on both stores,
	// the fleet, the admin API, operations, the CLI) but the fault suite, which exercises
	// the same binary for minutes more.
	const subset, skip = `.`, `^TestFault`
	cmd = exec.CommandContext(ctx, "go", "test", "-count=1", "-timeout=6m", "-v", "-run", subset, "-skip", skip, "./e2e/")
	cmd.Dir = root
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FUSE_E2E_RACE=") && !strings.HasPrefix(kv, "FUSE_E2E_BINARY=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "FUSE_E2E_BINARY="+out)
	start = time.Now()
	b, err := cmd.CombinedOutput()
	took := time.Since(start)
	var passed, failures []string
	failLine := regexp.MustCompile(`^\s*(--- FAIL|panic:|\S+_test\.go:\d+: )`)
	for l := range strings.Lines(string(b)) {
		if s, ok := strings.CutPrefix(strings.TrimSpace(l), "--- PASS: "); ok && !strings.Contains(s, "/") {
			passed = append(passed, strings.Fields(s)[0])
		}
		if failLine.MatchString(l) && !strings.Contains(l, "FIGURE") {
			failures = append(failures, l)
		}
	}
	if err != nil {
		t.Fatalf("go test -run '%s' -skip '%s' ./e2e/ with FUSE_E2E_BINARY=%s: %v (after %v)\nfailures:\n%s\nlast lines:\n%s",
			subset, skip, out, err, took, strings.Join(failures, ""), tail(string(b), 80))
	}
	if !strings.Contains(string(b), "e2e: testing prebuilt binary "+out) || len(passed) < 16 {
		t.Fatalf("the subprocess did not test %s (%d top-level tests passed):\n%s", out, len(passed), tail(string(b), 60))
	}
	t.Logf("go test against the static binary passed in %v: %s", took.Round(time.Millisecond), strings.Join(passed, " "))
}

// ---------------------------------------------------------------------------------------
// The health check.

// TestOpsHealthCommand: the image's HEALTHCHECK, `fuseproxy health`, asks the admin API
// at FUSE_ADMIN_URL and exits 0 while the replica serves, 1 once shutdown began (while an
// in-flight request still drains) and 1 when nothing answers.
func TestOpsHealthCommand(t *testing.T) {
	backend := startBackend(t)
	cfg := newOpsConfig(t, []opsUpstream{{Name: upstream, Target: backend.URL(), ConsecutiveFailures: 5}}, []opsRoute{{"/", upstream}})
	cfg.ShutdownTimeout = 20 * time.Second
	p := startProxy(t, cfg.YAML(t))
	env := []string{"FUSE_ADMIN_URL=http://" + cfg.AdminListen}
	health := func(when string) (int, string) {
		t.Helper()
		h := startProcess(t, "fuseproxy health ("+when+")", "", env, "health")
		code, ok := h.Wait(30 * time.Second)
		if !ok {
			h.Kill()
			t.Fatalf("fuseproxy health (%s) did not exit", when)
		}
		return code, h.stdout.String() + h.Stderr()
	}

	if code, out := health("serving"); code != 0 || !strings.Contains(out, "ready: serving") {
		t.Errorf("fuseproxy health while serving: exit %d, output %q; want 0 and \"ready: serving\"", code, out)
	}

	// Draining: a slow request keeps the process alive after SIGTERM.
	backend.Set(t, "latency=2s")
	done := make(chan response, 1)
	go func() { done <- p.Get("/slow") }()
	if !waitFor(10*time.Second, 2*time.Millisecond, func() bool { return backend.Stats(t).InFlight == 1 }) {
		t.Fatalf("the slow request did not reach the backend")
	}
	p.Signal(syscall.SIGTERM)
	code, out := health("draining")
	if p.Exited() {
		t.Fatalf("the proxy exited before the health check ran: the test proves nothing")
	}
	if code != 1 || !strings.Contains(out, "not ready") {
		t.Errorf("fuseproxy health while draining: exit %d, output %q; want 1 and \"not ready\"", code, out)
	}
	if r := <-done; !r.OK() {
		t.Errorf("the request in flight at SIGTERM: %v, want 200", r)
	}
	if code, ok := p.Wait(15 * time.Second); !ok || code != 0 {
		t.Fatalf("proxy after SIGTERM: exit %d (exited %t), want 0", code, ok)
	}

	if code, out := health("stopped"); code != 1 || !strings.Contains(out, "not ready") {
		t.Errorf("fuseproxy health with the replica gone: exit %d, output %q; want 1 and \"not ready\"", code, out)
	}
}

// TestDockerfileBuilderIsGoModsGo: the image is built with exactly the Go release go.mod
// names (its toolchain line, else its go line), not whatever 1.x a floating tag means
// on the day of the build.
func TestDockerfileBuilderIsGoModsGo(t *testing.T) {
	root := moduleRoot(t)
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	var goLine, toolchain string
	for l := range strings.Lines(string(mod)) {
		f := strings.Fields(l)
		switch {
		case len(f) == 2 && f[0] == "go":
			goLine = f[1]
		case len(f) == 2 && f[0] == "toolchain":
			toolchain = strings.TrimPrefix(f[1], "go")
		}
	}
	want := goLine
	if toolchain != "" {
		want = toolchain
	}
	if strings.Count(want, ".") != 2 {
		t.Fatalf("go.mod names Go %q: want a full release (1.26.8) the builder image can be pinned to", want)
	}
	var builders int
	for _, in := range parseDockerfile(t, filepath.Join(root, "Dockerfile")) {
		image := strings.Fields(in.Args)
		if in.Cmd != "FROM" || len(image) == 0 || !strings.HasPrefix(image[0], "golang:") {
			continue
		}
		builders++
		tag := strings.TrimPrefix(image[0], "golang:")
		version, _, _ := strings.Cut(tag, "-")
		if version != want {
			t.Errorf("Dockerfile:%d: FROM %s builds with Go %q, go.mod names %s", in.Line, image[0], version, want)
		}
	}
	if builders == 0 {
		t.Fatal("Dockerfile: no golang builder stage")
	}
}
