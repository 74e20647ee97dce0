package watch

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/fuseproxy/fuseproxy/config"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// watcher runs File in the background and counts changes.
type watcher struct {
	mu      sync.Mutex
	changes int
	cancel  context.CancelFunc
	done    chan struct{}
}

func start(t *testing.T, path string) *watcher {
	ctx, cancel := context.WithCancel(context.Background())
	w := &watcher{cancel: cancel, done: make(chan struct{})}
	fw := New(path)
	go func() {
		defer close(w.done)
		fw.Run(ctx, 5*time.Millisecond, func() {
			w.mu.Lock()
			w.changes++
			w.mu.Unlock()
		}, nil)
	}()
	t.Cleanup(func() { cancel(); <-w.done })
	return w
}

func (w *watcher) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.changes
}

func (w *watcher) waitFor(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for w.count() < n {
		if time.Now().After(deadline) {
			t.Fatalf("got %d changes, want %d", w.count(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestReportsEachChangeOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	write(t, path, "a")
	w := start(t, path)
	write(t, path, "b")
	w.waitFor(t, 1)
	// Renaming a new file over the old one (what many editors do) is a change too.
	tmp := path + ".tmp"
	write(t, tmp, "c")
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, 2)
	// Removing the file is not a change; it coming back with the same content is not one
	// either, and with new content it is.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	write(t, path, "c")
	write(t, path, "d")
	w.waitFor(t, 3)
	// Holding still for many polls reports nothing more.
	before := w.count()
	deadline := time.Now().Add(100 * time.Millisecond)
	for time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := w.count(); got != before {
		t.Fatalf("got %d changes while the file held still, want %d", got, before)
	}
}

// Rewriting identical content (touching the file) is never a change, however the polls
// fall: the test polls by hand, twice after each write (a change is reported on the
// second poll that sees it), so a touch reported as a change fails it.
func TestSameContentIsNoChange(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	write(t, path, "a")
	w := New(path)
	changes := 0
	poll := func() { w.poll(func() { changes++ }, func(err error) { t.Fatalf("onError: %v", err) }) }
	for i := range 20 {
		write(t, path, "a")
		poll()
		poll()
		if changes != 0 {
			t.Fatalf("identical write %d reported as a change", i+1)
		}
	}
	write(t, path, "x")
	poll()
	if changes != 0 {
		t.Fatalf("a change reported before it held still for a poll")
	}
	poll()
	poll()
	if changes != 1 {
		t.Fatalf("got %d changes after writing new content, want 1", changes)
	}
}

// TestUnreadableFileIsReportedNotBlocking: a named pipe, a directory, a device, a
// dangling symbolic link or a file over config.MaxFileSize put at the watched path
// neither blocks the watcher nor counts as a change; each is reported to onError once
// (not every poll), and the watcher goes on: a readable file with new content is a
// change again.
func TestUnreadableFileIsReportedNotBlocking(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	write(t, path, "a")

	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var errs []error
	changes := 0
	done := make(chan struct{})
	fw := New(path)
	go func() {
		defer close(done)
		fw.Run(ctx, 5*time.Millisecond, func() {
			mu.Lock()
			changes++
			mu.Unlock()
		}, func(err error) {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		})
	}()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			// Unblock a watcher stuck opening the pipe, then fail.
			if f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
				_ = f.Close()
			}
			<-done
			t.Fatal("the watcher did not stop within 5s of its context ending")
		}
	}
	t.Cleanup(stop)
	reported := func() []error {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(errs)
	}
	// waitReported waits until the last error reported wraps want and names the path.
	waitReported := func(want error, what string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			errs := reported()
			if n := len(errs); n > 0 && errors.Is(errs[n-1], want) {
				if !strings.Contains(errs[n-1].Error(), path) {
					t.Fatalf("%s: reported %q, which does not name %s", what, errs[n-1], path)
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no error wrapping %v reported within 5s; reported: %v", what, want, errs)
			}
			time.Sleep(time.Millisecond)
		}
	}
	// put replaces the watched path with what make creates at tmp, by a rename where it
	// can, so that the path is missing as briefly as possible.
	tmp := filepath.Join(dir, "next")
	put := func(make func(tmp string) error) {
		t.Helper()
		if err := make(tmp); err != nil {
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
	}

	put(func(p string) error { return syscall.Mkfifo(p, 0o600) })
	waitReported(config.ErrNotRegular, "named pipe")
	put(func(p string) error { return os.Symlink("/dev/zero", p) })
	waitReported(config.ErrNotRegular, "/dev/zero through a link")
	put(func(p string) error { return os.Symlink(filepath.Join(dir, "missing.yaml"), p) })
	waitReported(fs.ErrNotExist, "dangling link")
	put(func(p string) error { return os.WriteFile(p, make([]byte, config.MaxFileSize+1), 0o600) })
	waitReported(config.ErrFileTooLarge, "file over the limit")
	put(func(p string) error { return os.Mkdir(p, 0o700) })
	waitReported(config.ErrNotRegular, "directory")

	// The same problem lasting is reported once, not every poll.
	n := len(reported())
	time.Sleep(50 * time.Millisecond)
	if got := len(reported()); got != n {
		t.Fatalf("%d more errors reported while one problem lasted 10 polls, want none: %v", got-n, reported()[n:])
	}
	mu.Lock()
	unreadableChanges := changes
	mu.Unlock()
	if unreadableChanges != 0 {
		t.Fatalf("%d changes reported for unreadable files, want 0", unreadableChanges)
	}
	put(func(p string) error { return os.WriteFile(p, []byte("b"), 0o600) })
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := changes
		mu.Unlock()
		if n == 1 {
			break
		}
		if n > 1 || time.Now().After(deadline) {
			t.Fatalf("%d changes after the file became readable with new content, want 1", n)
		}
		time.Sleep(time.Millisecond)
	}
	stop()
}

// A problem that lasts is reported once, and again only when it changes or after the
// file was readable in between; polled by hand, so the count does not depend on timing.
func TestLastingProblemReportedOnce(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	write(t, path, "a")
	w := New(path)
	var errs []error
	poll := func(n int) {
		for range n {
			w.poll(func() {}, func(err error) { errs = append(errs, err) })
		}
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	poll(10)
	if len(errs) != 1 || !errors.Is(errs[0], fs.ErrNotExist) {
		t.Fatalf("a missing file over 10 polls: reported %v, want one not-exist error", errs)
	}
	if err := os.Mkdir(path, 0o700); err != nil { // another problem
		t.Fatal(err)
	}
	poll(10)
	if len(errs) != 2 || !errors.Is(errs[1], config.ErrNotRegular) {
		t.Fatalf("then a directory over 10 polls: reported %v, want a second, not-regular error", errs)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	write(t, path, "a") // readable again
	poll(1)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	poll(10)
	if len(errs) != 3 {
		t.Fatalf("missing again after a readable poll: %d reports, want 3: %v", len(errs), errs)
	}
}
