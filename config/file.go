package config

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// MaxFileSize is the largest config file Load (and the config watcher) reads, in bytes:
// 8 MiB. Parsing YAML costs about 30 times the file's size in memory (a 50 MB file took
// 1.65 GB), so a file dropped by mistake, or by an attacker, onto a watched path must not
// be parsed whole; 10,000 upstreams with a route each, written out in full, take about
// 2 MiB, so real configs stay far below it.
const MaxFileSize = 8 << 20

// ErrFileTooLarge is wrapped by the error of a config file larger than MaxFileSize.
var ErrFileTooLarge = errors.New("config file too large")

// ErrNotRegular is wrapped by the error of a config path that is not a regular file
// (after following symbolic links): a directory, a named pipe, a device, a socket.
var ErrNotRegular = errors.New("not a regular file")

// ReadFile reads the config file at path, as Load does: it must be a regular file once
// symbolic links are followed, and at most MaxFileSize bytes. It opens the file without
// blocking and checks the opened file itself, so a named pipe or a device put at the path
// (even between a check and the open) is refused at once instead of blocking the caller
// until someone writes to it, or feeding it forever (/dev/zero). At most MaxFileSize+1
// bytes are read, whatever size the file claims or grows to meanwhile.
//
// Errors name the path: "config: open x.yaml: no such file or directory" (with the
// link's target for a dangling symbolic link), "config: x.yaml: not a regular file (a
// named pipe)", "config: x.yaml: config file too large: larger than the limit of
// 8388608 bytes (8 MiB)". errors.Is works with fs.ErrNotExist, ErrNotRegular and
// ErrFileTooLarge.
func ReadFile(path string) ([]byte, error) {
	f, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	// The size from Stat is a hint: the file can grow until it is read.
	return readLimited(f, path)
}

// Digest returns the SHA-256 of the config file at path, which it reads as ReadFile
// does (the same checks, the same errors) but in 32 KiB pieces: the config watcher polls
// the file every second, and reading a file of 10,000 upstreams whole (1.5 MB) each time
// kept an idle replica's heap growing by 3 MB a second, to its next collection.
func Digest(path string) ([]byte, error) {
	f, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	h := sha256.New()
	n, err := io.CopyBuffer(h, io.LimitReader(f, MaxFileSize+1), make([]byte, 32<<10))
	if err != nil {
		return nil, fmt.Errorf("config: read %s: %w", path, err)
	}
	if n > MaxFileSize {
		return nil, tooLarge(path)
	}
	return h.Sum(nil), nil
}

// openRegular opens the config file at path without blocking and checks that it is a
// regular file of at most MaxFileSize bytes (see ReadFile).
func openRegular(path string) (*os.File, error) {
	f, err := openNonBlocking(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			if target, lerr := os.Readlink(path); lerr == nil {
				return nil, fmt.Errorf("config: %w (a symbolic link to %s, which does not exist)", err, target)
			}
		}
		return nil, fmt.Errorf("config: %w", err)
	}
	info, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("config: %w", err)
	}
	if !info.Mode().IsRegular() {
		_ = f.Close()
		return nil, fmt.Errorf("config: %s: %w (%s)", path, ErrNotRegular, describeMode(info.Mode()))
	}
	if info.Size() > MaxFileSize {
		_ = f.Close()
		return nil, tooLarge(path)
	}
	return f, nil
}

// readLimited reads r to its end, but at most MaxFileSize+1 bytes: more is an error.
func readLimited(r io.Reader, path string) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("config: read %s: %w", path, err)
	}
	if len(data) > MaxFileSize {
		return nil, tooLarge(path)
	}
	return data, nil
}

func tooLarge(path string) error {
	return fmt.Errorf("config: %s: %w: larger than the limit of %d bytes (%d MiB)", path, ErrFileTooLarge, MaxFileSize, MaxFileSize>>20)
}

// describeMode names the kind of a file that is not regular.
func describeMode(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a device"
	}
	return "mode " + m.String()
}
