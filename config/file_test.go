package config

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const minimalConfig = "upstreams:\n  a: {targets: [\"http://127.0.0.1:1\"]}\nroutes:\n  - {upstream: a}\n"

// loadWithin runs Load(path) and fails the test if it has not returned within a few
// seconds (a named pipe used to block it until someone wrote to the pipe).
func loadWithin(t *testing.T, path string) error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := Load(path)
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		// Unblock the stuck Load so the goroutine ends: a writer opens the pipe.
		if f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			_ = f.Close()
		}
		<-done
		t.Fatalf("Load(%s) blocked for 5s", path)
		return nil
	}
}

// TestLoadRefusesWhatIsNotARegularFile: Load opens only regular files. A named pipe, a
// directory, a device (through a symbolic link), a socket and a dangling symbolic link
// are refused at once with an error naming the path and what it is; none blocks, none
// is read (the devices are endless).
func TestLoadRefusesWhatIsNotARegularFile(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo.yaml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	subdir := filepath.Join(dir, "dir.yaml")
	if err := os.Mkdir(subdir, 0o700); err != nil {
		t.Fatal(err)
	}
	link := func(name, target string) string {
		p := filepath.Join(dir, name)
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct {
		name, path string
		is         error
		want       []string
	}{
		{"named pipe", fifo, ErrNotRegular, []string{fifo, "not a regular file", "named pipe"}},
		{"named pipe through a link", link("fifolink.yaml", fifo), ErrNotRegular, []string{"fifolink.yaml", "named pipe"}},
		{"directory", subdir, ErrNotRegular, []string{subdir, "not a regular file", "a directory"}},
		{"/dev/zero through a link", link("zero.yaml", "/dev/zero"), ErrNotRegular, []string{"zero.yaml", "character device"}},
		{"/dev/urandom through a link", link("urandom.yaml", "/dev/urandom"), ErrNotRegular, []string{"urandom.yaml", "character device"}},
		{"dangling link", link("dangling.yaml", filepath.Join(dir, "missing.yaml")), fs.ErrNotExist, []string{"dangling.yaml", "symbolic link to", "missing.yaml", "does not exist"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := os.Stat(c.path); c.is == ErrNotRegular && err != nil {
				t.Skipf("%s: %v", c.path, err)
			}
			err := loadWithin(t, c.path)
			if !errors.Is(err, c.is) {
				t.Fatalf("Load(%s) = %v, want an error wrapping %v", c.path, err, c.is)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Load(%s) error %q lacks %q", c.path, err, w)
				}
			}
		})
	}
}

// TestLoadRefusesAFileOverTheLimit: a file over MaxFileSize is refused before it is
// parsed, with an error naming the file and the limit; one at the limit is read.
func TestLoadRefusesAFileOverTheLimit(t *testing.T) {
	dir := t.TempDir()
	// Valid YAML padded with a comment to the size wanted.
	padded := func(name string, size int) string {
		body := minimalConfig + "#"
		p := filepath.Join(dir, name)
		data := body + strings.Repeat("x", size-len(body)-1) + "\n"
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	atLimit := padded("at.yaml", MaxFileSize)
	if _, err := Load(atLimit); err != nil {
		t.Fatalf("Load of a file of exactly MaxFileSize bytes: %v", err)
	}
	over := padded("over.yaml", MaxFileSize+1)
	_, err := Load(over)
	if !errors.Is(err, ErrFileTooLarge) {
		t.Fatalf("Load of a file of MaxFileSize+1 bytes = %v, want ErrFileTooLarge", err)
	}
	for _, w := range []string{over, "larger than the limit of " + strconv.Itoa(MaxFileSize) + " bytes"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
}

// endless is an endless reader (a file that keeps growing), counting what was read.
type endless struct{ n int }

func (e *endless) Read(p []byte) (int, error) {
	e.n += len(p)
	return len(p), nil
}

// TestReadLimitedStopsAtTheLimit: the limit holds whatever size Stat reported at the
// open: a file growing while it is read is refused after MaxFileSize+1 bytes.
func TestReadLimitedStopsAtTheLimit(t *testing.T) {
	src := &endless{}
	_, err := readLimited(src, "growing.yaml")
	if !errors.Is(err, ErrFileTooLarge) || !strings.Contains(err.Error(), "growing.yaml: config file too large: larger than the limit") {
		t.Fatalf("readLimited of an endless file = %v, want ErrFileTooLarge naming the file", err)
	}
	if src.n > MaxFileSize+1 {
		t.Errorf("read %d bytes of an endless file, want at most %d", src.n, MaxFileSize+1)
	}
}

// TestLoadManyValuesWithoutAliases: a file within the size limit with more values than
// the alias allowance (300,000 list entries, 1.2 MB) loads: only values reached through
// aliases count against it (the message used to blame aliases for a file without any).
func TestLoadManyValuesWithoutAliases(t *testing.T) {
	const n = 300_000
	data := "upstreams:\n  a:\n    targets: [\"http://127.0.0.1:1\"]\n" +
		"    failure: {success_statuses: [" + strings.Repeat("200, ", n-1) + "200]}\nroutes:\n  - {upstream: a}\n"
	p := filepath.Join(t.TempDir(), "many.yaml")
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(p)
	if err != nil {
		t.Fatalf("Load of %d bytes with %d values and no alias: %v", len(data), n, err)
	}
	if got := len(cfg.Upstreams["a"].Failure.SuccessStatuses); got != n {
		t.Fatalf("%d success statuses decoded, want %d", got, n)
	}
}

// TestDigest: Digest hashes what ReadFile reads, with its checks and errors, and
// allocates nothing of the file's size (the watcher polls it every second).
func TestDigest(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "c.yaml")
	data := []byte(minimalConfig + "#" + strings.Repeat("x", 1<<20) + "\n")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := Digest(p)
	if want := sha256.Sum256(data); err != nil || !bytes.Equal(got, want[:]) {
		t.Fatalf("Digest = %x, %v; want %x", got, err, want)
	}
	if allocs := testing.AllocsPerRun(5, func() { _, _ = Digest(p) }); allocs > 20 {
		t.Errorf("Digest of a 1 MiB file: %.0f allocations", allocs)
	}
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	_, _ = Digest(p)
	runtime.ReadMemStats(&ms1)
	if n := ms1.TotalAlloc - ms0.TotalAlloc; n > 128<<10 {
		t.Errorf("Digest of a 1 MiB file allocated %d bytes, want < 128 KiB", n)
	}
	if _, err := Digest(dir); !errors.Is(err, ErrNotRegular) {
		t.Errorf("Digest of a directory = %v, want ErrNotRegular", err)
	}
	if _, err := Digest(filepath.Join(dir, "missing.yaml")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Digest of a missing file = %v, want fs.ErrNotExist", err)
	}
}
