// Package servertls is the TLS of fuseproxy's own listeners (server.tls, admin.tls):
// certificates chosen by the client's SNI name and read again when their files change,
// a minimum version, and ALPN for HTTP/2.
package servertls

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/fuseproxy/fuseproxy/config"
)

// CheckEvery is how often, at most, a handshake looks whether the files changed.
const CheckEvery = time.Second

// Certs serves a listener's certificates from their files. A handshake that starts
// CheckEvery or more after the last look compares the files' modification times and
// sizes with those last loaded and reloads the pairs that changed; the look is made by
// one handshake at a time, the others meanwhile use the certificates in effect. A pair
// that fails to load (unreadable, or a certificate rewritten before its key) keeps the
// last good one in use, is logged at warn, and is tried again at the next look.
type Certs struct {
	key   string // "server.tls" or "admin.tls", for the log
	files []config.Certificate
	log   *zap.Logger
	now   func() time.Time

	current   atomic.Pointer[[]*tls.Certificate] // by position in files
	checked   atomic.Int64                       // unix nanoseconds of the last look
	mu        sync.Mutex                         // one look at a time; guards stamps
	stamps    []stamp                            // of cert and key file, by position
	failed    []stamp                            // of the files as they last failed to load
	hasFailed []bool                             // failed is set
}

type stamp struct {
	crtMod, keyMod   time.Time
	crtSize, keySize int64
}

func stampOf(c config.Certificate) (stamp, error) {
	ci, err := os.Stat(c.CertFile)
	if err != nil {
		return stamp{}, err
	}
	ki, err := os.Stat(c.KeyFile)
	if err != nil {
		return stamp{}, err
	}
	return stamp{ci.ModTime(), ki.ModTime(), ci.Size(), ki.Size()}, nil
}

// New loads every pair once; an error names the setting (key.certificates[i]).
func New(key string, c config.ListenerTLS, log *zap.Logger) (*Certs, error) {
	if len(c.Certificates) == 0 {
		return nil, errors.New(key + ": no certificates")
	}
	if log == nil {
		log = zap.NewNop()
	}
	s := &Certs{key: key, files: c.Certificates, log: log, now: time.Now, stamps: make([]stamp, len(c.Certificates)),
		failed: make([]stamp, len(c.Certificates)), hasFailed: make([]bool, len(c.Certificates))}
	certs := make([]*tls.Certificate, len(c.Certificates))
	for i, f := range c.Certificates {
		st, _ := stampOf(f)
		cert, err := config.LoadKeyPair(f.CertFile, f.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("%s.certificates[%d]: %w", key, i, err)
		}
		certs[i], s.stamps[i] = &cert, st
	}
	s.current.Store(&certs)
	s.checked.Store(s.now().UnixNano())
	return s, nil
}

// refresh reloads the pairs whose files changed, at most once per CheckEvery.
func (s *Certs) refresh() {
	now := s.now().UnixNano()
	last := s.checked.Load()
	if now-last < int64(CheckEvery) || !s.mu.TryLock() {
		return
	}
	defer s.mu.Unlock()
	if !s.checked.CompareAndSwap(last, now) {
		return
	}
	cur := *s.current.Load()
	var next []*tls.Certificate
	for i, f := range s.files {
		st, err := stampOf(f)
		if st == s.stamps[i] || s.hasFailed[i] && st == s.failed[i] {
			continue
		}
		if err == nil {
			var cert tls.Certificate
			if cert, err = config.LoadKeyPair(f.CertFile, f.KeyFile); err == nil {
				if next == nil {
					next = append([]*tls.Certificate(nil), cur...)
				}
				next[i], s.stamps[i], s.hasFailed[i] = &cert, st, false
				s.log.Info("listener TLS certificate reloaded", zap.String("key", s.key), zap.Int("certificate", i),
					zap.String("cert_file", f.CertFile))
				continue
			}
		}
		// Said once per change of the files, not at every look; loaded again when
		// they change again (the second half of a rotation).
		s.failed[i], s.hasFailed[i] = st, true
		s.warn(i, f, err)
	}
	if next != nil {
		s.current.Store(&next)
	}
}

func (s *Certs) warn(i int, f config.Certificate, err error) {
	s.log.Warn("listener TLS certificate not reloaded; the last good one stays in use",
		zap.String("key", s.key), zap.Int("certificate", i), zap.String("cert_file", f.CertFile), zap.Error(err))
}

// GetCertificate is the tls.Config's: the first certificate valid for the client's
// SNI name (and its signature and curve preferences), else the first one.
func (s *Certs) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.refresh()
	certs := *s.current.Load()
	if len(certs) > 1 {
		for _, c := range certs {
			if hello.SupportsCertificate(c) == nil {
				return c, nil
			}
		}
	}
	return certs[0], nil
}

// Config returns the TLS configuration of a listener with these certificates: the
// minimum version c.MinVersion, and ALPN offering h2 when http2 is set, then http/1.1.
func (s *Certs) Config(c config.ListenerTLS, http2 bool) *tls.Config {
	tc := &tls.Config{GetCertificate: s.GetCertificate, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}
	if c.MinVersion == "1.3" {
		tc.MinVersion = tls.VersionTLS13
	}
	if http2 {
		tc.NextProtos = []string{"h2", "http/1.1"}
	}
	return tc
}

// Listen wraps ln in TLS with c's certificates (key names the setting for errors and
// the log), offering HTTP/2 when http2 is set. c without certificates returns ln.
func Listen(ln net.Listener, key string, c config.ListenerTLS, http2 bool, log *zap.Logger) (net.Listener, error) {
	if !c.Enabled() {
		return ln, nil
	}
	s, err := New(key, c, log)
	if err != nil {
		return nil, err
	}
	return tls.NewListener(ln, s.Config(c, http2)), nil
}
