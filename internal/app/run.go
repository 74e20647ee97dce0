package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/internal/admin"
	"github.com/fuseproxy/fuseproxy/internal/servertls"
)

// Run serves until ctx ends, then shuts down gracefully: not ready at once, stop
// accepting, finish in-flight requests and streams (upgraded connections included) up to
// the shutdown timeout and close those still open, flush the last counts to the store
// and close it. The admin listener is bound before the proxy's and closed
// after it, so /readyz reports the shutdown while requests drain.
func (a *App) Run(ctx context.Context) error {
	cfg := a.Config()
	if err := a.prepareStore(ctx, cfg); err != nil {
		return err
	}
	if err := a.startAccessLog(cfg); err != nil {
		return err
	}
	defer a.stopAccessLog()
	proxyLn, adminLn, err := a.listen(cfg)
	if err != nil {
		return err
	}
	adm, dash := a.serveAdmin(cfg, adminLn)
	a.resyncStore(ctx)
	releaseMemory() // what building the replica left behind
	if p := a.opts.ServeGCPercent; p > 0 {
		debug.SetGCPercent(p)
	}
	bg := a.startBackground(cfg)
	bg.start(dash.Run) // the dashboard's history and its agreement with the store
	prx, ups := a.serveProxy(cfg, proxyLn)
	err = a.serveUntil(ctx, cfg, prx, adm)
	a.drain(cfg, prx, ups)
	bg.stop() // the store loop flushes the last counts as it stops
	return a.shutdown(err, adm)
}

// startAccessLog opens the access log of the config in effect (a file is created if
// missing); Reload reconfigures it from then on.
func (a *App) startAccessLog(cfg *config.Config) error {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	if err := a.access.Configure(cfg.AccessLog); err != nil {
		return err
	}
	a.running.Store(true)
	return nil
}

// stopAccessLog writes what the access log has queued and closes its file, once the
// proxy has drained.
func (a *App) stopAccessLog() {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	a.running.Store(false)
	if err := a.access.Close(); err != nil {
		a.log.Warn("closing the access log", zap.Error(err))
	}
}

// listen binds the admin API's address, then the proxy's, and records both for Addrs.
func (a *App) listen(cfg *config.Config) (proxyLn, adminLn net.Listener, err error) {
	adminLn, err = admin.Listen(cfg.Admin.Listen, cfg.Admin.Token)
	if err != nil {
		return nil, nil, err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		_ = adminLn.Close()
		return nil, nil, fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	proxyAddr, adminAddr := ln.Addr().String(), adminLn.Addr().String()
	ln = newLimitListener(ln, cfg.Server.MaxConnections, a.metrics.ConnectionsOpened, a.metrics.ConnectionRejected)
	// TLS above the connection cap: a connection past it is reset before any handshake.
	tlsLn, err := servertls.Listen(ln, "server.tls", cfg.Server.TLS, cfg.Server.HTTP2, a.log)
	var tlsAdmin net.Listener
	if err == nil {
		tlsAdmin, err = admin.ListenTLS(adminLn, cfg.Admin.TLS, a.log)
	}
	if err != nil {
		_ = ln.Close()
		_ = adminLn.Close()
		return nil, nil, err
	}
	ln, adminLn = tlsLn, tlsAdmin
	a.proxyAddr.Store(&proxyAddr)
	a.adminAddr.Store(&adminAddr)
	return ln, adminLn, nil
}

// protocols is what the proxy listener serves: HTTP/1.1 always; HTTP/2 over TLS (by
// ALPN) unless server.http2 is off; cleartext HTTP/2 with prior knowledge only with
// server.h2c. Without it, a client's h2c preface is refused (net/http answers its
// "PRI *" request line with an error and closes the connection).
func protocols(s config.Server) *http.Protocols {
	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetHTTP2(s.HTTP2)
	p.SetUnencryptedHTTP2(s.H2C)
	return p
}

// serveAdmin starts the admin API on its listener; the caller runs the handler's Run.
func (a *App) serveAdmin(cfg *config.Config, ln net.Listener) (*server, *admin.Handler) {
	h := admin.NewHandler(a, admin.Options{
		Token: cfg.Admin.Token, AllowedHosts: cfg.Admin.AllowedHosts, Gatherer: a.metrics.Registry(), Logger: a.log,
	})
	s := startServer(admin.NewServer(h, a.log), ln)
	a.log.Info("admin API listening", zap.String("listen", s.addr), zap.Bool("token", cfg.Admin.Token != ""))
	return s, h
}

// resyncStore reads the shared state once before the proxy serves, for at most 2 s; an
// unreachable store is not fatal: the breakers decide locally until it answers.
func (a *App) resyncStore(ctx context.Context) {
	syncCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := a.store.Resync(syncCtx); err != nil {
		a.log.Warn("store not reachable at start; breakers decide locally until it is", zap.Error(err))
	}
}

// startBackground starts what runs beside the servers until the proxy has drained: the
// store's loop, the event dispatcher and the config watch.
func (a *App) startBackground(cfg *config.Config) *background {
	bg := newBackground()
	bg.start(func(ctx context.Context) { _ = a.store.Run(ctx) })
	bg.start(a.releaser)
	bg.start(func(ctx context.Context) { _ = a.health.Run(ctx) })
	a.events.Start()
	a.watchConfig(bg, cfg.Path)
	return bg
}

// watchConfig reloads the config file when its content changes (Options.Watch) and on
// each value from Options.Reload (SIGHUP), until bg stops.
func (a *App) watchConfig(bg *background, path string) {
	if w := a.opts.Watch; w != nil && a.opts.WatchInterval > 0 {
		bg.start(func(ctx context.Context) {
			w.Run(ctx, a.opts.WatchInterval, func() {
				a.log.Info("config file changed; reloading", zap.String("path", path))
				a.reloadFrom("watch")
			}, func(err error) {
				// Every failure to read the watched file is a line: a file that cannot be
				// read is never loaded, and the old config keeps serving.
				a.metrics.Reloaded(err)
				a.log.Error("config file unreadable; the old config keeps serving", zap.String("path", path), zap.Error(err))
			})
		})
	}
	if sig := a.opts.Reload; sig != nil {
		bg.start(func(ctx context.Context) {
			for {
				select {
				case <-ctx.Done():
					return
				case <-sig:
					a.reloadFrom("signal")
				}
			}
		})
	}
}

// serveProxy starts the proxy's http.Server on its listener; the upgrades it returns
// track the connections the proxy hijacked, which the server does not.
func (a *App) serveProxy(cfg *config.Config, ln net.Listener) (*server, *upgrades) {
	ups := newUpgrades()
	srv := &http.Server{
		Handler: bodyLimits{timeout: cfg.Server.BodyReadTimeout, minRate: cfg.Server.BodyMinRate,
			readTimeout: cfg.Server.ReadTimeout}.wrap(ups.wrap(a.proxy)),
		ConnContext:       ups.connContext,
		ReadHeaderTimeout: cfg.Server.ReadHeaderTimeout,
		ReadTimeout:       cfg.Server.ReadTimeout,
		WriteTimeout:      cfg.Server.WriteTimeout,
		IdleTimeout:       cfg.Server.IdleTimeout,
		MaxHeaderBytes:    cfg.Server.MaxHeaderBytes,
		Protocols:         protocols(cfg.Server),
		ErrorLog:          zap.NewStdLog(a.log.Named("http")),
		// "OPTIONS *" goes to the proxy like any request, which refuses the asterisk
		// form with 400, instead of net/http's own 200.
		DisableGeneralOptionsHandler: true,
	}
	return startServer(srv, ln), ups
}

// serveUntil reports ready until ctx ends or a listener fails, and returns that failure.
func (a *App) serveUntil(ctx context.Context, cfg *config.Config, prx, adm *server) error {
	a.ready.Store(true)
	a.log.Info("serving", zap.String("listen", prx.addr), zap.String("store", cfg.Store.Driver),
		zap.String("version", a.opts.Version))
	defer a.ready.Store(false)
	select {
	case <-ctx.Done():
		return nil
	case <-prx.done:
		return prx.err
	case <-adm.done:
		return fmt.Errorf("admin listener %s: %w", adm.addr, adm.err)
	}
}

// drain stops accepting and lets in-flight requests and upgraded connections finish, up
// to the shutdown timeout; it closes those still open then.
func (a *App) drain(cfg *config.Config, prx *server, ups *upgrades) {
	a.log.Info("shutting down", zap.Duration("timeout", cfg.Server.ShutdownTimeout))
	shCtx, cancel := context.WithTimeout(context.Background(), cfg.Server.ShutdownTimeout)
	defer cancel()
	if err := prx.srv.Shutdown(shCtx); err != nil {
		a.log.Warn("in-flight requests cut at the shutdown deadline", zap.Error(err))
		_ = prx.srv.Close()
	}
	<-prx.done
	// Upgraded connections (WebSockets) are the proxy's, not the server's: Shutdown did not
	// wait for them. They get the rest of the shutdown timeout too, then are closed.
	if !ups.wait(shCtx) {
		n := ups.closeAll()
		a.log.Warn("upgraded connections (WebSockets) cut at the shutdown deadline", zap.Int("connections", n))
		upCtx, upCancel := context.WithTimeout(context.Background(), time.Second)
		_ = ups.wait(upCtx) // their handlers return once the connections are closed
		upCancel()
	}
}

// shutdown closes what the drained proxy leaves: the proxy's transports, the webhook
// queue, the admin API (last: /readyz said 503 while the proxy drained) and the store.
// err is why serving stopped; an admin listener that failed meanwhile is reported if
// nothing else is.
func (a *App) shutdown(err error, adm *server) error {
	a.proxy.Close()
	evCtx, evCancel := context.WithTimeout(context.Background(), eventsDrainTimeout)
	if eerr := a.events.Close(evCtx); eerr != nil {
		a.log.Warn("webhook deliveries cut at shutdown", zap.Error(eerr))
	}
	evCancel()
	adCtx, adCancel := context.WithTimeout(context.Background(), 2*time.Second)
	if aerr := adm.srv.Shutdown(adCtx); aerr != nil {
		_ = adm.srv.Close()
	}
	adCancel()
	<-adm.done
	if !errors.Is(adm.err, http.ErrServerClosed) && err == nil {
		err = fmt.Errorf("admin listener %s: %w", adm.addr, adm.err)
	}
	if cerr := a.store.Close(); cerr != nil {
		a.log.Warn("closing store", zap.Error(cerr))
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	a.log.Info("stopped")
	return err
}

// eventsDrainTimeout bounds how long shutdown waits for queued webhook deliveries.
const eventsDrainTimeout = 5 * time.Second

// server is an http.Server serving one listener in its own goroutine.
type server struct {
	srv  *http.Server
	addr string
	done chan struct{} // closed when Serve returned
	err  error         // what Serve returned, once done is closed
}

func startServer(srv *http.Server, ln net.Listener) *server {
	s := &server{srv: srv, addr: ln.Addr().String(), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		s.err = srv.Serve(ln)
	}()
	return s
}

// background is a set of goroutines that run until stop, which ends their context and
// waits for them.
type background struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newBackground() *background {
	ctx, cancel := context.WithCancel(context.Background())
	return &background{ctx: ctx, cancel: cancel}
}

func (b *background) start(f func(ctx context.Context)) {
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		f(b.ctx)
	}()
}

func (b *background) stop() {
	b.cancel()
	b.wg.Wait()
}
