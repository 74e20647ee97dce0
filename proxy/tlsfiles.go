package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/fuseproxy/fuseproxy/config"
)

// tlsCheckEvery is how often, at most, a handshake looks whether the TLS files changed.
const tlsCheckEvery = time.Second

// tlsFiles serves an upstream's CA bundle and client certificate from their files (the
// upstream's tls section), read again when they change: a handshake that starts a
// second or more after the last look compares the files' modification times and sizes
// with those last loaded, and reloads what changed. A file that fails to load (being
// rewritten, or broken) leaves the last good one in use and is logged at warn; it is
// tried again at the next look. Only new connections handshake, so a rotation reaches
// pooled connections when they are replaced.
type tlsFiles struct {
	upstream string
	cfg      config.UpstreamTLS
	log      *zap.Logger
	now      func() time.Time

	mu      sync.Mutex
	checked time.Time
	caStamp stamp
	pool    *x509.CertPool
	crtStamp,
	keyStamp stamp
	cert *tls.Certificate
}

// stamp identifies a file's content cheaply: its modification time and size.
type stamp struct {
	mod  time.Time
	size int64
}

func stampOf(path string) (stamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return stamp{}, err
	}
	return stamp{fi.ModTime(), fi.Size()}, nil
}

// newTLSFiles loads the files once; an error here is the config's (validate loads them
// too, so it happens only when they changed in between).
func newTLSFiles(upstream string, c config.UpstreamTLS, log *zap.Logger) (*tlsFiles, error) {
	if log == nil {
		log = zap.NewNop()
	}
	f := &tlsFiles{upstream: upstream, cfg: c, log: log, now: time.Now}
	if c.CAFile != "" {
		st, _ := stampOf(c.CAFile)
		pool, err := config.LoadCAFile(c.CAFile)
		if err != nil {
			return nil, err
		}
		f.pool, f.caStamp = pool, st
	}
	if c.CertFile != "" {
		cs, _ := stampOf(c.CertFile)
		ks, _ := stampOf(c.KeyFile)
		cert, err := config.LoadKeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, err
		}
		f.cert, f.crtStamp, f.keyStamp = &cert, cs, ks
	}
	f.checked = f.now()
	return f, nil
}

// refresh reloads what changed, at most once per tlsCheckEvery. Called with f.mu held.
func (f *tlsFiles) refreshLocked() {
	now := f.now()
	if now.Sub(f.checked) < tlsCheckEvery {
		return
	}
	f.checked = now
	if f.cfg.CAFile != "" {
		if st, err := stampOf(f.cfg.CAFile); err == nil && st != f.caStamp {
			if pool, err := config.LoadCAFile(f.cfg.CAFile); err != nil {
				f.warn("tls.ca_file", err)
			} else {
				f.pool, f.caStamp = pool, st
				f.log.Info("upstream TLS CA bundle reloaded", zap.String("upstream", f.upstream), zap.String("file", f.cfg.CAFile))
			}
		}
	}
	if f.cfg.CertFile != "" {
		cs, err1 := stampOf(f.cfg.CertFile)
		ks, err2 := stampOf(f.cfg.KeyFile)
		if err1 == nil && err2 == nil && (cs != f.crtStamp || ks != f.keyStamp) {
			if cert, err := config.LoadKeyPair(f.cfg.CertFile, f.cfg.KeyFile); err != nil {
				f.warn("tls.cert_file", err) // e.g. the certificate rewritten before its key
			} else {
				f.cert, f.crtStamp, f.keyStamp = &cert, cs, ks
				f.log.Info("upstream TLS client certificate reloaded", zap.String("upstream", f.upstream), zap.String("file", f.cfg.CertFile))
			}
		}
	}
}

func (f *tlsFiles) warn(key string, err error) {
	f.log.Warn("upstream TLS file not reloaded; the last good one stays in use",
		zap.String("upstream", f.upstream), zap.String("key", key), zap.Error(err))
}

// certificate is the client certificate for a handshake.
func (f *tlsFiles) certificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refreshLocked()
	return f.cert, nil
}

// roots is the CA pool for a handshake.
func (f *tlsFiles) roots() *x509.CertPool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refreshLocked()
	return f.pool
}

// verify checks the target's chain against the (reloaded) CA bundle and the name the
// connection sent (tls.server_name, or the target's host).
func (f *tlsFiles) verify(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tls: the upstream sent no certificate")
	}
	opts := x509.VerifyOptions{Roots: f.roots(), DNSName: cs.ServerName, Intermediates: x509.NewCertPool()}
	for _, c := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(opts)
	return err
}

// tlsConfig is the transport's TLS configuration for an upstream's tls section: nil when
// the section is empty (the transport's defaults: system roots, TLS 1.2).
func tlsConfig(upstream string, c config.UpstreamTLS, log *zap.Logger) (*tls.Config, error) {
	if c.CAFile == "" && c.CertFile == "" && c.ServerName == "" && !c.InsecureSkipVerify && c.MinVersion != "1.3" {
		return nil, nil // the transport's defaults: system roots, TLS 1.2 and up
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.ServerName}
	if c.MinVersion == "1.3" {
		tc.MinVersion = tls.VersionTLS13
	}
	if c.CAFile == "" && c.CertFile == "" {
		tc.InsecureSkipVerify = c.InsecureSkipVerify //nolint:gosec // an operator's explicit choice
		return tc, nil
	}
	f, err := newTLSFiles(upstream, c, log)
	if err != nil {
		return nil, err
	}
	if c.CertFile != "" {
		tc.GetClientCertificate = f.certificate
	}
	switch {
	case c.InsecureSkipVerify:
		tc.InsecureSkipVerify = true //nolint:gosec // an operator's explicit choice
	case c.CAFile != "":
		// The standard verification reads a fixed RootCAs; verify against the reloaded
		// bundle instead, with the same checks (chain, validity, name).
		tc.InsecureSkipVerify = true //nolint:gosec // verified in VerifyConnection
		tc.VerifyConnection = f.verify
	}
	return tc, nil
}
