// Package watch notices when a file's content changes. It polls (no platform-specific
// notification API, no dependency) and debounces: an editor that truncates, writes and
// renames in several steps produces one change, reported once the content has stayed the
// same for one more poll.
package watch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"os"
	"time"
)

// Watcher watches one file.
type Watcher struct {
	path string
	last []byte // digest of the content last reported (or read at New)
}

// New reads the file's content now, as the reference later changes are measured
// against. Create it before loading the file, so no change slips in between.
func New(path string) *Watcher { return &Watcher{path: path, last: digest(path)} }

// Run calls onChange each time the content changes and then holds still for one
// interval. It returns when ctx ends. A missing or unreadable file is not a change: the
// last content read stays the reference until the file is readable again.
func (w *Watcher) Run(ctx context.Context, interval time.Duration, onChange func()) {
	var pending []byte // content seen changed, waiting to hold still
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		d := digest(w.path)
		switch {
		case d == nil || bytes.Equal(d, w.last):
			pending = nil
		case pending != nil && bytes.Equal(d, pending):
			w.last, pending = d, nil
			onChange()
		default:
			pending = d
		}
	}
}

func digest(path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	sum := sha256.Sum256(b)
	return sum[:]
}
