// Package app assembles a fuseproxy replica from its configuration: breakers, the store
// that shares their state, the proxy and the admin listener; it runs them, reloads them
// and shuts them down in order.
package app

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/internal/admin"
	"github.com/fuseproxy/fuseproxy/internal/events"
	"github.com/fuseproxy/fuseproxy/internal/telemetry"
	"github.com/fuseproxy/fuseproxy/internal/watch"
	"github.com/fuseproxy/fuseproxy/proxy"
	"github.com/fuseproxy/fuseproxy/store"
)

// Options are what the CLI hands the app besides the config.
type Options struct {
	Logger  *zap.Logger
	Version string
	// Watch, when set, watches the config file (create it before loading the file, so no
	// change slips in between): it is polled every WatchInterval and reloaded when its
	// content changes and holds still. SIGHUP and POST /reload reload it regardless.
	Watch         *watch.Watcher
	WatchInterval time.Duration
	// Wall is the wall clock; tests skew it (FUSE_TEST_CLOCK_OFFSET) to show that replicas
	// agree on open periods whatever their clocks say.
	Wall func() time.Time
}

// App is one running replica.
type App struct {
	log     *zap.Logger
	opts    Options
	clock   breaker.Clock
	replica string
	store   store.Store
	proxy   *proxy.Proxy
	metrics *telemetry.Metrics
	events  *events.Dispatcher // every breaker's observer

	mu       sync.RWMutex // guards cfg and breakers (swapped whole on reload)
	cfg      *config.Config
	breakers map[string]*breaker.Breaker

	reloadMu sync.Mutex // one reload at a time
	ready    atomic.Bool

	proxyAddr, adminAddr atomic.Pointer[string] // bound addresses, once Run listens
}

// New builds a replica from a validated config. Nothing listens until Run.
func New(cfg *config.Config, o Options) (*App, error) {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Wall == nil {
		o.Wall = time.Now
	}
	a := &App{opts: o, clock: breaker.SystemClock(), replica: ReplicaID(cfg.Store.ReplicaID)}
	a.log = o.Logger.With(zap.String("replica", a.replica))
	a.metrics = telemetry.New(telemetry.Options{Version: o.Version, Circuits: a.Breakers})
	a.events = events.New(cfg.Events, events.Options{
		Logger: o.Logger, Replica: a.replica, Version: o.Version, Metrics: a.metrics,
	})
	st, err := a.newStore(cfg)
	if err != nil {
		return nil, err
	}
	a.store = st
	a.cfg, a.breakers = cfg, a.buildBreakers(cfg, nil)
	a.store.Attach(a.circuits(cfg, a.breakers))
	a.metrics.SetUpstreams(upstreamNames(cfg))
	a.proxy, err = proxy.New(cfg, a.breakers, proxy.Options{Logger: a.log, Recorder: a.metrics})
	if err != nil {
		return nil, err
	}
	return a, nil
}

// ReplicaID returns the configured id, or host-pid.
func ReplicaID(configured string) string {
	if configured != "" {
		return configured
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "fuseproxy"
	}
	return host + "-" + strconv.Itoa(os.Getpid())
}

func (a *App) newStore(cfg *config.Config) (store.Store, error) {
	switch cfg.Store.Driver {
	case "redis":
		client, err := store.NewRedisClient(redisClientOptions(cfg.Store.Redis, a.log))
		if err != nil {
			// The store names the key under store.redis (url, tls.ca_file, ...).
			return nil, fmt.Errorf("store.redis.%w", err)
		}
		o := redisOptions(cfg.Store)
		o.ReplicaID, o.Logger, o.Wall, o.Hooks = a.replica, a.log, a.opts.Wall, a.metrics.StoreHooks()
		r, err := store.NewRedis(client, o)
		if err != nil { // a nil *Redis must not become a non-nil Store
			return nil, err
		}
		return r, nil
	default:
		return store.NewMemory(a.replica), nil
	}
}

// buildBreakers returns a breaker per upstream whose breaker is enabled, keeping the
// existing breaker (its state and counts) when old has one of that name.
func (a *App) buildBreakers(cfg *config.Config, old map[string]*breaker.Breaker) map[string]*breaker.Breaker {
	out := make(map[string]*breaker.Breaker, len(cfg.Upstreams))
	opts := breaker.Options{Clock: a.clock, Observer: a.events}
	for name, u := range cfg.Upstreams {
		if !u.Breaker.Enabled {
			continue
		}
		s := u.Breaker.Settings()
		if b, ok := old[name]; ok {
			b.SetSettings(s)
			out[name] = b
			continue
		}
		out[name] = breaker.New(name, s, opts)
	}
	return out
}

func (a *App) circuits(cfg *config.Config, bs map[string]*breaker.Breaker) map[string]store.Circuit {
	out := make(map[string]store.Circuit, len(bs))
	for name, b := range bs {
		u := cfg.Upstreams[name]
		lease := max(u.Timeout, u.ResponseHeaderTimeout) + time.Second
		out[name] = store.Circuit{Breaker: b, MinReplicasReporting: u.Breaker.MinReplicasReporting,
			SettingsHash: u.Breaker.Hash(), TrialLease: lease}
	}
	return out
}

// Reload swaps in a new validated config: in-flight requests finish on the old routes,
// existing circuits keep their state and counts under the new thresholds, removed
// upstreams are dropped (with their metric series) and new ones start closed (or adopt
// the shared state). Events settings apply at once except queue_size; admin.listen,
// admin.token and admin.allowed_hosts need a restart.
func (a *App) Reload(cfg *config.Config) (err error) {
	defer func() { a.metrics.Reloaded(err) }()
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	a.mu.RLock()
	old, oldCfg := a.breakers, a.cfg
	a.mu.RUnlock()
	bs := a.buildBreakers(cfg, old)
	// Requests routed by either table are counted while the proxy switches over.
	both := upstreamNames(oldCfg)
	maps.Copy(both, upstreamNames(cfg))
	a.metrics.SetUpstreams(both)
	if err := a.proxy.Update(cfg, bs); err != nil {
		a.metrics.SetUpstreams(upstreamNames(oldCfg))
		return err
	}
	a.metrics.SetUpstreams(upstreamNames(cfg))
	a.store.Attach(a.circuits(cfg, bs))
	a.events.Update(cfg.Events)
	a.mu.Lock()
	a.cfg, a.breakers = cfg, bs
	a.mu.Unlock()
	if na, oa := cfg.Admin, oldCfg.Admin; na.Listen != oa.Listen || na.Token != oa.Token || !slices.Equal(na.AllowedHosts, oa.AllowedHosts) {
		a.log.Warn("admin.listen, admin.token and admin.allowed_hosts changes take effect at the next restart")
	}
	if cfg.Events.QueueSize != oldCfg.Events.QueueSize {
		a.log.Warn("events.queue_size changes take effect at the next restart")
	}
	a.log.Info("config reloaded", zap.String("path", cfg.Path), zap.Int("upstreams", len(cfg.Upstreams)))
	return nil
}

// ReloadFile re-reads the config file in effect and applies it (SIGHUP, POST /reload).
// On error the old config keeps serving, and the error says why.
func (a *App) ReloadFile() error {
	path := a.Config().Path
	cfg, err := config.Load(path)
	if err != nil {
		a.metrics.Reloaded(err)
		a.log.Error("config reload failed; the old config keeps serving", zap.Error(err))
		return err
	}
	if err := a.Reload(cfg); err != nil {
		a.log.Error("config reload failed; the old config keeps serving", zap.Error(err))
		return fmt.Errorf("reload %s: %w", path, err)
	}
	return nil
}

// upstreamNames maps each upstream's name to whether its breaker is enabled.
func upstreamNames(cfg *config.Config) map[string]bool {
	names := make(map[string]bool, len(cfg.Upstreams))
	for name, u := range cfg.Upstreams {
		names[name] = u.Breaker.Enabled
	}
	return names
}

// Config returns the config in effect.
func (a *App) Config() *config.Config {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.cfg
}

// Breakers returns the circuits in effect (do not modify the map).
func (a *App) Breakers() map[string]*breaker.Breaker {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.breakers
}

// Store returns the store.
func (a *App) Store() store.Store { return a.store }

// ReplicaID returns this replica's id.
func (a *App) ReplicaID() string { return a.replica }

// Ready reports whether the replica takes traffic (false before serving and once shutdown
// began).
func (a *App) Ready() bool { return a.ready.Load() }

// Metrics returns the replica's instrumentation (its registry serves /metrics).
func (a *App) Metrics() *telemetry.Metrics { return a.metrics }

// Addrs returns the addresses the proxy and the admin API listen on, once Run has bound
// them (empty before).
func (a *App) Addrs() (proxyAddr, adminAddr string) {
	if p := a.proxyAddr.Load(); p != nil {
		proxyAddr = *p
	}
	if p := a.adminAddr.Load(); p != nil {
		adminAddr = *p
	}
	return proxyAddr, adminAddr
}

// Run serves until ctx ends, then shuts down gracefully: not ready at once, stop
// accepting, finish in-flight requests and streams (upgraded connections included) up to
// the shutdown timeout and close those still open, flush the last counts to the store
// and close it. The admin listener is bound before the proxy's and closed
// after it, so /readyz reports the shutdown while requests drain.
func (a *App) Run(ctx context.Context) error {
	cfg := a.Config()
	adminLn, err := admin.Listen(cfg.Admin.Listen, cfg.Admin.Token)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		_ = adminLn.Close()
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	proxyAddr, adminAddr := ln.Addr().String(), adminLn.Addr().String()
	ln = newLimitListener(ln, cfg.Server.MaxConnections, a.metrics.ConnectionsOpened, a.metrics.ConnectionRejected)
	a.proxyAddr.Store(&proxyAddr)
	a.adminAddr.Store(&adminAddr)

	adminSrv := admin.NewServer(admin.NewHandler(a, admin.Options{
		Token: cfg.Admin.Token, AllowedHosts: cfg.Admin.AllowedHosts, Gatherer: a.metrics.Registry(), Logger: a.log,
	}), a.log)
	adminErr := make(chan error, 1)
	go func() { adminErr <- adminSrv.Serve(adminLn) }()
	a.log.Info("admin API listening", zap.String("listen", adminAddr), zap.Bool("token", cfg.Admin.Token != ""))

	syncCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
	if err := a.store.Resync(syncCtx); err != nil {
		a.log.Warn("store not reachable at start; breakers decide locally until it is", zap.Error(err))
	}
	cancel()

	storeCtx, stopStore := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = a.store.Run(storeCtx)
	}()
	a.events.Start()
	if w := a.opts.Watch; w != nil && a.opts.WatchInterval > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.Run(storeCtx, a.opts.WatchInterval, func() {
				a.log.Info("config file changed; reloading", zap.String("path", cfg.Path))
				_ = a.ReloadFile()
			}, func(err error) {
				// Every failure to read the watched file is a line: a file that cannot be
				// read is never loaded, and the old config keeps serving.
				a.metrics.Reloaded(err)
				a.log.Error("config file unreadable; the old config keeps serving", zap.String("path", cfg.Path), zap.Error(err))
			})
		}()
	}

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
		ErrorLog:          zap.NewStdLog(a.log.Named("http")),
		// "OPTIONS *" goes to the proxy like any request, which refuses the asterisk
		// form with 400, instead of net/http's own 200.
		DisableGeneralOptionsHandler: true,
	}
	serveErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		serveErr <- srv.Serve(ln)
	}()
	a.ready.Store(true)
	a.log.Info("serving", zap.String("listen", proxyAddr), zap.String("store", cfg.Store.Driver),
		zap.String("version", a.opts.Version))

	adminStopped := false
	select {
	case <-ctx.Done():
		err = nil
	case err = <-serveErr:
	case aerr := <-adminErr:
		adminStopped, err = true, fmt.Errorf("admin listener %s: %w", adminAddr, aerr)
	}
	a.ready.Store(false)
	a.log.Info("shutting down", zap.Duration("timeout", cfg.Server.ShutdownTimeout))
	shCtx, cancel := context.WithTimeout(context.Background(), cfg.Server.ShutdownTimeout)
	defer cancel()
	if serr := srv.Shutdown(shCtx); serr != nil {
		a.log.Warn("in-flight requests cut at the shutdown deadline", zap.Error(serr))
		_ = srv.Close()
	}
	// Upgraded connections (WebSockets) are the proxy's, not the server's: Shutdown did not
	// wait for them. They get the rest of the shutdown timeout too, then are closed.
	if !ups.wait(shCtx) {
		n := ups.closeAll()
		a.log.Warn("upgraded connections (WebSockets) cut at the shutdown deadline", zap.Int("connections", n))
		upCtx, upCancel := context.WithTimeout(context.Background(), time.Second)
		_ = ups.wait(upCtx) // their handlers return once the connections are closed
		upCancel()
	}
	stopStore()
	wg.Wait()
	a.proxy.Close()
	evCtx, evCancel := context.WithTimeout(context.Background(), eventsDrainTimeout)
	if eerr := a.events.Close(evCtx); eerr != nil {
		a.log.Warn("webhook deliveries cut at shutdown", zap.Error(eerr))
	}
	evCancel()
	// The admin API goes last: /readyz said 503 while the proxy drained.
	adCtx, adCancel := context.WithTimeout(context.Background(), 2*time.Second)
	if aerr := adminSrv.Shutdown(adCtx); aerr != nil {
		_ = adminSrv.Close()
	}
	adCancel()
	if !adminStopped {
		if aerr := <-adminErr; !errors.Is(aerr, http.ErrServerClosed) && err == nil {
			err = fmt.Errorf("admin listener %s: %w", adminAddr, aerr)
		}
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
