package admin

import (
	"fmt"
	"net"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/internal/servertls"
)

// CheckListen returns an error naming admin.listen when addr is not host:port, or is
// not a loopback address while token is empty: an admin API without a token must not be
// reachable from other hosts. An empty host (":8084") means every interface and is not
// loopback. config.Validate checks the same; this is the second line of defence.
func CheckListen(addr, token string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("admin.listen %q: %w", addr, err)
	}
	if token == "" && !isLoopback(host) {
		return fmt.Errorf("admin.listen %q is not a loopback address, so an admin token is required (set admin.token or env FUSE_ADMIN_TOKEN)", addr)
	}
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Listen binds the admin listener after CheckListen.
func Listen(addr, token string) (net.Listener, error) {
	if err := CheckListen(addr, token); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin.listen %q: %w", addr, err)
	}
	return ln, nil
}

// ListenTLS wraps the admin listener ln in TLS with admin.tls's certificates (chosen
// by SNI, read again when their files change), offering HTTP/2; without certificates
// it returns ln.
func ListenTLS(ln net.Listener, c config.ListenerTLS, log *zap.Logger) (net.Listener, error) {
	return servertls.Listen(ln, "admin.tls", c, true, log)
}

// NewServer returns the admin listener's http.Server for h, with timeouts fit for a
// small JSON API (a scrape of /metrics included; the dashboard's event streams lift
// them for themselves).
func NewServer(h http.Handler, log *zap.Logger) *http.Server {
	if log == nil {
		log = zap.NewNop()
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          zap.NewStdLog(log.Named("admin")),
	}
	if a, ok := h.(*Handler); ok {
		// The dashboard's event streams end when shutdown begins; Shutdown then waits
		// for their handlers to return.
		srv.RegisterOnShutdown(a.Close)
	}
	return srv
}
