package accesslog

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/proxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var at = time.Date(2026, 12, 3, 12, 0, 0, 123e6, time.UTC)

func sample() *proxy.Access {
	return &proxy.Access{Route: 2, Upstream: "api", Target: "10.0.0.5:8080", Method: "GET", Path: "/v1/items",
		Status: 200, Duration: 1234567 * time.Nanosecond, Bytes: 64, Circuit: breaker.Closed, Breaker: true,
		Attempts: 1, Outcome: proxy.Success}
}

func TestAppendLine(t *testing.T) {
	got := string(AppendLine(nil, at, sample()))
	want := `{"time":"2026-12-03T12:00:00.123Z","route":2,"upstream":"api","target":"10.0.0.5:8080","method":"GET","path":"/v1/items","status":200,"duration_ms":1.234,"bytes":64,"circuit":"closed","attempts":1,"outcome":"success"}` + "\n"
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	a := sample()
	a.Breaker, a.BodyBroken, a.WouldReject = false, true, true
	got = string(AppendLine(nil, at, a))
	if !strings.Contains(got, `"circuit":"disabled"`) || !strings.HasSuffix(got, `"outcome":"success","body_broken":true,"would_reject":true}`+"\n") {
		t.Errorf("got %s", got)
	}
}

// Whatever a client puts in the path, the line stays one valid JSON object whose path
// decodes to the path (invalid UTF-8 as U+FFFD).
func TestAppendLineEscapes(t *testing.T) {
	for _, p := range []string{"/a\"b\\c", "/new\nline\r\t", "/\x00\x1f\x7f", "/é/😀", "/bad\xff\xfe", "/</script>&"} {
		a := sample()
		a.Path = p
		line := AppendLine(nil, at, a)
		if bytes.Count(line, []byte("\n")) != 1 {
			t.Errorf("%q: line has %d newlines", p, bytes.Count(line, []byte("\n")))
		}
		var v map[string]any
		if err := json.Unmarshal(line, &v); err != nil {
			t.Fatalf("%q: %v: %s", p, err, line)
		}
		if want := string([]rune(p)); v["path"] != want { // each invalid byte a U+FFFD
			t.Errorf("path %q decodes to %q, want %q", p, v["path"], want)
		}
	}
}

// syncBuffer is a goroutine-safe bytes.Buffer.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func on(path string) config.AccessLog {
	return config.AccessLog{Enabled: true, Path: path, SampleRate: 1, BufferSize: 1 << 20}
}

func TestOffByDefaultAndStderr(t *testing.T) {
	var stderr, stdout syncBuffer
	l := New(Options{Stderr: &stderr, Stdout: &stdout, Now: func() time.Time { return at }})
	if l.Sample() {
		t.Fatal("a new Log samples")
	}
	l.Log(sample()) // off: nothing
	for _, path := range []string{"", "stderr"} {
		if err := l.Configure(on(path)); err != nil {
			t.Fatal(err)
		}
		if !l.Sample() {
			t.Fatal("sample_rate 1 did not sample")
		}
		l.Log(sample())
	}
	if err := l.Configure(on("stdout")); err != nil {
		t.Fatal(err)
	}
	l.Log(sample())
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	line := string(AppendLine(nil, at, sample()))
	if got := stderr.String(); got != line+line {
		t.Errorf("stderr: %q, want two lines", got)
	}
	if got := stdout.String(); got != line {
		t.Errorf("stdout: %q, want one line", got)
	}
	if l.Sample() {
		t.Error("a closed Log samples")
	}
}

// openFDs counts this process's open descriptors on path.
func openFDs(t *testing.T, path string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	n := 0
	for _, e := range ents {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && target == path {
			n++
		}
	}
	return n
}

// A file sink appends; a reload to another path opens the new file and closes the old
// one once its lines are written; Close closes the file.
func TestFileReopenedOnPathChangeAndClosed(t *testing.T) {
	dir := t.TempDir()
	first, second := filepath.Join(dir, "a.log"), filepath.Join(dir, "b.log")
	if err := os.WriteFile(first, []byte("kept\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l := New(Options{Now: func() time.Time { return at }})
	if err := l.Configure(on(first)); err != nil {
		t.Fatal(err)
	}
	l.Log(sample())
	if n := openFDs(t, first); n != 1 {
		t.Errorf("%d descriptors on the first file, want 1", n)
	}
	c := on(first)
	c.SampleRate = 0.5 // same path: same sink
	if err := l.Configure(c); err != nil {
		t.Fatal(err)
	}
	if n := openFDs(t, first); n != 1 {
		t.Errorf("same path reconfigured: %d descriptors on the file, want 1", n)
	}
	if err := l.Configure(on(second)); err != nil {
		t.Fatal(err)
	}
	if n := openFDs(t, first); n != 0 {
		t.Errorf("after the path changed, %d descriptors still on the old file", n)
	}
	l.Log(sample())
	l.Log(sample())
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if n := openFDs(t, second); n != 0 {
		t.Errorf("after Close, %d descriptors on the file", n)
	}
	line := string(AppendLine(nil, at, sample()))
	for path, want := range map[string]string{first: "kept\n" + line, second: line + line} {
		b, err := os.ReadFile(path)
		if err != nil || string(b) != want {
			t.Errorf("%s: %q %v, want %q", filepath.Base(path), b, err, want)
		}
	}
}

func TestUnopenableFileKeepsTheOldSink(t *testing.T) {
	var stderr syncBuffer
	l := New(Options{Stderr: &stderr})
	defer l.Close()
	if err := l.Configure(on("")); err != nil {
		t.Fatal(err)
	}
	err := l.Configure(on(filepath.Join(t.TempDir(), "missing", "x.log")))
	if err == nil || !strings.HasPrefix(err.Error(), "access_log.path: ") {
		t.Fatalf("Configure with a missing directory: %v", err)
	}
	if err := l.Configure(on(t.TempDir())); err == nil {
		t.Fatal("Configure with a directory as the file succeeded")
	}
	l.Log(sample())
	l.Close()
	if !strings.Contains(stderr.String(), `"upstream":"api"`) {
		t.Errorf("the old sink stopped: %q", stderr.String())
	}
}

// blockedWriter blocks every Write until release is closed, and says when one started.
type blockedWriter struct {
	started chan struct{}
	release chan struct{}
	n       int
}

func (w *blockedWriter) Write(p []byte) (int, error) {
	select {
	case w.started <- struct{}{}:
	default:
	}
	<-w.release
	w.n++
	return len(p), nil
}

// A writer stuck on the disk never blocks Log: the pending buffer fills, and further
// lines are dropped and counted.
func TestFullBufferDropsAndCounts(t *testing.T) {
	w := &blockedWriter{started: make(chan struct{}, 1), release: make(chan struct{})}
	l := New(Options{Stderr: w, Now: func() time.Time { return at }})
	c := on("")
	c.BufferSize = 2 * len(AppendLine(nil, at, sample())) // two lines
	if err := l.Configure(c); err != nil {
		t.Fatal(err)
	}
	l.Log(sample()) // taken by the writer at its next tick, which blocks in Write
	<-w.started
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 10 { // 2 fit the buffer, 8 are dropped
			l.Log(sample())
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Log blocked behind a stuck writer")
	}
	if got := l.Dropped(); got != 8 {
		t.Errorf("Dropped() = %d, want 8", got)
	}
	close(w.release)
	l.Close()
}

func TestSampleRate(t *testing.T) {
	l := New(Options{Stderr: &syncBuffer{}})
	defer l.Close()
	for _, rate := range []float64{0, 0.25, 1} {
		c := on("")
		c.SampleRate = rate
		if err := l.Configure(c); err != nil {
			t.Fatal(err)
		}
		n := 0
		const draws = 20000
		for range draws {
			if l.Sample() {
				n++
			}
		}
		// 20,000 draws at 0.25: the standard deviation is 61; 600 is ten of them.
		if got := float64(n); got < rate*draws-600 || got > rate*draws+600 {
			t.Errorf("sample_rate %v: %d of %d sampled", rate, n, draws)
		}
	}
}

// BenchmarkLog is the access log's own cost on the request path: sampling, formatting
// one line and appending it to the pending buffer, from two goroutines (the writer
// goroutine writes to io.Discard meanwhile, with a buffer large enough that no line is
// dropped at this rate: a dropped line would cost less than a logged one).
func BenchmarkLog(b *testing.B) {
	l := New(Options{Stderr: io.Discard})
	defer l.Close()
	c := on("")
	c.BufferSize = 256 << 20
	if err := l.Configure(c); err != nil {
		b.Fatal(err)
	}
	a := sample()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if l.Sample() {
				l.Log(a)
			}
		}
	})
	b.StopTimer()
	l.Close()
	b.ReportMetric(float64(l.Dropped())/float64(b.N), "dropped/op")
}
