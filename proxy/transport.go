package proxy

import (
	"crypto/tls"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/fuseproxy/fuseproxy/config"
)

// Transport settings that the configuration does not expose.
const (
	dialKeepAlive         = 30 * time.Second
	idleConnTimeout       = 90 * time.Second
	tlsHandshakeTimeout   = 10 * time.Second
	expectContinueTimeout = time.Second
	copyBufferSize        = 32 << 10
)

// transportKey is everything an upstream's *http.Transport is built from. Upstreams with
// equal keys share one transport and its pool of connections (their idle limits are
// then shared too), and Update keeps a transport, with its pooled connections, while
// some upstream still has its key.
type transportKey struct {
	dialTimeout           time.Duration
	responseHeaderTimeout time.Duration
	maxIdlePerHost        int
	targets               string // the targets' URLs joined by spaces
	tls                   config.UpstreamTLS
	h2c                   bool
}

func newTransportKey(u *config.Upstream, targets []*url.URL) transportKey {
	var sb strings.Builder
	for i, t := range targets {
		if i > 0 {
			sb.WriteByte(' ')
		}
		sb.WriteString(t.String())
	}
	idle := u.MaxIdleConnsPerHost // config.DefaultUpstream holds the default
	// retries.per_try_timeout bounds every attempt's wait for its response headers: the
	// transport's own timer does it, with no per-request cost.
	header := u.ResponseHeaderTimeout
	if pt := u.Retries.PerTryTimeout; u.Retries.Enabled() && pt > 0 && (header == 0 || pt < header) {
		header = pt
	}
	return transportKey{
		dialTimeout:           u.DialTimeout,
		responseHeaderTimeout: header,
		maxIdlePerHost:        idle,
		targets:               sb.String(),
		tls:                   u.TLS,
		h2c:                   u.H2C,
	}
}

// newTransport returns the tuned transport the upstreams with key k share.
//
// Environment proxies (HTTP_PROXY) are not used: targets are dialled directly.
// Compression is disabled so that bodies pass through as the upstream encoded them.
// HTTP/2 is attempted for https targets (by ALPN); http targets get HTTP/1.1, or
// cleartext HTTP/2 with prior knowledge and nothing else when the upstream says h2c.
//
// The TLS settings are the upstream's tls section (tlsConfig): an error loading its files
// is returned.
func newTransport(k transportKey, targets []*url.URL, upstream string, log *zap.Logger) (*http.Transport, error) {
	h2 := false
	for _, t := range targets {
		h2 = h2 || t.Scheme == "https"
	}
	var tc *tls.Config
	if h2 {
		var err error
		if tc, err = tlsConfig(upstream, k.tls, log); err != nil {
			return nil, err
		}
	}
	d := &net.Dialer{Timeout: k.dialTimeout, KeepAlive: dialKeepAlive}
	var protocols *http.Protocols
	if k.h2c {
		protocols = new(http.Protocols)
		protocols.SetUnencryptedHTTP2(true)
	}
	return &http.Transport{
		Protocols:             protocols,
		TLSClientConfig:       tc,
		Proxy:                 nil,
		DialContext:           d.DialContext,
		ForceAttemptHTTP2:     h2,
		MaxIdleConns:          k.maxIdlePerHost * max(len(targets), 1),
		MaxIdleConnsPerHost:   k.maxIdlePerHost,
		IdleConnTimeout:       idleConnTimeout,
		TLSHandshakeTimeout:   tlsHandshakeTimeout,
		ResponseHeaderTimeout: k.responseHeaderTimeout,
		ExpectContinueTimeout: expectContinueTimeout,
		DisableCompression:    true,
	}, nil
}

// bufferPool lends the 32 KiB buffers ReverseProxy copies bodies through.
// It implements httputil.BufferPool without allocating: the pool holds array pointers,
// and a returned slice converts back to its array pointer.
type bufferPool struct {
	pool sync.Pool // of *[copyBufferSize]byte
}

func (p *bufferPool) Get() []byte {
	if b, ok := p.pool.Get().(*[copyBufferSize]byte); ok {
		return b[:]
	}
	return new([copyBufferSize]byte)[:]
}

func (p *bufferPool) Put(b []byte) {
	if cap(b) < copyBufferSize {
		return
	}
	p.pool.Put((*[copyBufferSize]byte)(b[:copyBufferSize]))
}
