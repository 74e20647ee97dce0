// Package watch notices when a file's content changes. It polls (no platform-specific
// notification API, no dependency) and debounces: an editor that truncates, writes and
// renames in several steps produces one change, reported once the content has stayed the
// same for one more poll. The file is read with config.ReadFile: only a regular file of at
// most config.MaxFileSize bytes is read, so a named pipe, a device or a huge file at the
// path neither blocks the watcher nor costs memory; each such failure is reported.
package watch

import (
	"bytes"
	"context"
	"time"

	"github.com/fuseproxy/fuseproxy/config"
)

// Watcher watches one file.
type Watcher struct {
	path    string
	last    []byte // digest of the content last reported (or read at New)
	pending []byte // content seen changed, waiting to hold still for one more poll
	lastErr string // the failure last reported, "" when the last read worked
}

// New reads the file's content now, as the reference later changes are measured
// against. Create it before loading the file, so no change slips in between.
func New(path string) *Watcher {
	d, _ := digest(path)
	return &Watcher{path: path, last: d}
}

// Run calls onChange each time the content changes and then holds still for one
// interval. It returns when ctx ends. A file that cannot be read (missing, a dangling
// symbolic link, not a regular file, larger than config.MaxFileSize) is not a change:
// the last content read stays the reference until the file is readable again. Such a
// failure is passed to onError (when not nil) once, and again only when the error
// changes or after the file was readable in between, so a lasting problem is reported
// without repeating it every poll.
func (w *Watcher) Run(ctx context.Context, interval time.Duration, onChange func(), onError func(error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		w.poll(onChange, onError)
	}
}

// poll reads the file once and decides (Run's loop body).
func (w *Watcher) poll(onChange func(), onError func(error)) {
	d, err := digest(w.path)
	if err != nil {
		if msg := err.Error(); msg != w.lastErr && onError != nil {
			onError(err)
			w.lastErr = msg
		}
	} else {
		w.lastErr = ""
	}
	switch {
	case d == nil || bytes.Equal(d, w.last):
		w.pending = nil
	case w.pending != nil && bytes.Equal(d, w.pending):
		w.last, w.pending = d, nil
		onChange()
	default:
		w.pending = d
	}
}

func digest(path string) ([]byte, error) {
	return config.Digest(path)
}
