package watch

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
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
		})
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

func TestSameContentIsNoChange(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	write(t, path, "a")
	w := start(t, path)
	for range 20 { // rewriting identical content (touching the file) is never a change
		write(t, path, "a")
	}
	write(t, path, "x")
	w.waitFor(t, 1)
	if got := w.count(); got != 1 {
		t.Fatalf("got %d changes, want 1", got)
	}
}
