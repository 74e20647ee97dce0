// Package app assembles a fuseproxy replica from its configuration: breakers, the store
// that shares their state, the proxy and the admin listener; it runs them, reloads them
// and shuts them down in order.
package app

import (
	"fmt"
	"maps"
	"net/url"
	"os"
	"reflect"
	"runtime/debug"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/internal/accesslog"
	"github.com/fuseproxy/fuseproxy/internal/events"
	"github.com/fuseproxy/fuseproxy/internal/health"
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
	// Reload, when set, reloads the config file on each value received (SIGHUP) while
	// Run runs.
	Reload <-chan os.Signal
	// Wall is the wall clock; tests skew it (FUSE_TEST_CLOCK_OFFSET) to show that replicas
	// agree on open periods whatever their clocks say.
	Wall func() time.Time
	// Adjust, when set, changes every config read from the file (at reloads) before it
	// is applied, as Serve does at start (the demo's -listen, -admin, -upstream).
	Adjust func(*config.Config) error
	// ServeGCPercent, when > 0, is the GC percentage Run sets once the replica is built
	// and the memory building it left is given back: Serve builds at StartGCPercent.
	ServeGCPercent int
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
	health  *health.Checker    // active health checks of targets (health_check)
	access  *accesslog.Log     // off until Run opens it; closed when Run returns

	mu sync.RWMutex // guards cfg and breakers (swapped whole on reload)
	// cfg is the config in effect, compacted (config.Compact): its upstreams have no
	// targets and share their settings; the proxy's table holds the rest.
	cfg      *config.Config
	breakers map[string]*breaker.Breaker

	// release asks the background's releaser to give memory back (a shared store's
	// resync read every circuit: releaseAfterResync).
	release chan struct{}

	reloadMu sync.Mutex // one reload at a time
	ready    atomic.Bool
	running  atomic.Bool // Run opened the access log and has not closed it yet
	// keyCfg is the config whose keyed settings keys attached to the store take
	// (keyed.go): the new one from before the proxy switches to it on a reload.
	keyCfg atomic.Pointer[config.Config]

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
	a := &App{opts: o, clock: breaker.SystemClock(), replica: ReplicaID(cfg.Store.ReplicaID),
		release: make(chan struct{}, 1)}
	a.log = o.Logger.With(zap.String("replica", a.replica))
	a.access = accesslog.New(accesslog.Options{Logger: a.log})
	a.metrics = telemetry.New(telemetry.Options{Version: o.Version, Circuits: a.Breakers, AccessLogDropped: a.access.Dropped})
	a.events = events.New(cfg.Events, events.Options{
		Logger: o.Logger, Replica: a.replica, Version: o.Version, Metrics: a.metrics,
	})
	st, err := a.newStore(cfg)
	if err != nil {
		return nil, err
	}
	a.store = st
	kept := cfg.Compact()
	a.cfg, a.breakers = kept, a.buildBreakers(cfg, nil)
	a.keyCfg.Store(kept)
	a.store.Attach(a.circuits(cfg, a.breakers))
	a.setKeyUpstreams()
	a.health = health.New(health.Options{Store: a.store, Logger: a.log, Observe: func(r health.Result) {
		a.metrics.HealthProbe(r.Upstream, r.Target, string(r.Outcome))
	}})
	a.setHealthTargets(checkedTargets(cfg, a.breakers))
	a.metrics.SetUpstreams(upstreamNames(cfg))
	a.metrics.SetKeys(a.KeyStats, a.keyRefusals)
	a.proxy, err = proxy.New(cfg, a.breakers, proxy.Options{Logger: a.log, Recorder: a.metrics, AccessLog: a.access,
		SharedStore: cfg.Store.Driver != "memory", Keys: a.keyOptions()})
	if err != nil {
		return nil, err
	}
	a.shareBudgets()
	return a, nil
}

// shareBudgets hands the retry budgets of the routing table in effect to the store, which
// tells each its replica's share of the fleet (see proxy.RetryBudget).
func (a *App) shareBudgets() {
	ts := map[string]store.Tally{}
	for name, b := range a.proxy.Budgets() {
		ts["retry:"+name] = b
	}
	a.store.Share(ts)
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
		o.Hooks.Resynced = a.releaseAfterResync
		r, err := store.NewRedis(client, o)
		if err != nil { // a nil *Redis must not become a non-nil Store
			return nil, err
		}
		return r, nil
	case "postgres":
		return a.newPostgres(cfg)
	default:
		return store.NewMemory(a.replica).WithHistory(historyOptions(cfg.Store), a.opts.Wall), nil
	}
}

// observer is what a breaker reports its transitions to: obs (the events), and the store
// when it records them from the breakers (the memory store's history; a shared store
// records the fleet's transitions where it makes them).
func (a *App) observer(obs breaker.Observer) breaker.Observer {
	if so, ok := a.store.(breaker.Observer); ok {
		return observers{so, obs}
	}
	return obs
}

// observers reports each transition to each of them in turn.
type observers []breaker.Observer

func (os observers) OnTransition(t breaker.Transition) {
	for _, o := range os {
		o.OnTransition(t)
	}
}

// buildBreakers returns a breaker per upstream whose breaker is enabled and, for an
// upstream with outlier detection and two or more targets, one per target (named
// config.TargetName), keeping the existing breaker (its state and counts) when old has
// one of that name: a reload keeps the state of the targets that remain.
func (a *App) buildBreakers(cfg *config.Config, old map[string]*breaker.Breaker) map[string]*breaker.Breaker {
	out := make(map[string]*breaker.Breaker, len(cfg.Upstreams))
	opts := breaker.Options{Clock: a.clock, Observer: a.observer(a.events)}
	add := func(name string, s breaker.Settings) {
		if b, ok := old[name]; ok {
			b.SetSettings(s)
			out[name] = b
			return
		}
		out[name] = breaker.New(name, s, opts)
	}
	for name, u := range cfg.Upstreams {
		if u.Breaker.Enabled {
			add(name, u.Breaker.Settings())
		}
		if ejects(u) {
			s := u.Outlier.Settings()
			for _, t := range u.TargetURLs {
				add(config.TargetName(name, t), s)
			}
		}
	}
	return out
}

// checkedTargets lists the targets health checks probe: those with a circuit (ejects) of
// upstreams with a health_check path.
func checkedTargets(cfg *config.Config, bs map[string]*breaker.Breaker) []health.Target {
	return health.Targets(cfg.Upstreams, func(name string) breaker.Control {
		if b := bs[name]; b != nil { // a nil *Breaker must not become a non-nil Control
			return b
		}
		return nil
	})
}

// setHealthTargets hands the checked targets to the health checker and to the metrics,
// which drop the probe series of targets no longer checked.
func (a *App) setHealthTargets(ts []health.Target) {
	circuits := make([]string, len(ts))
	for i, t := range ts {
		circuits[i] = t.Circuit
	}
	a.metrics.SetHealthTargets(circuits)
	a.health.Update(ts)
}

// ejects reports whether u's targets have circuits of their own (outlier detection on,
// and more than one target: a single target is never ejected).
func ejects(u *config.Upstream) bool {
	return u.Outlier.Enabled && len(u.TargetURLs) > 1
}

func (a *App) circuits(cfg *config.Config, bs map[string]*breaker.Breaker) map[string]store.Circuit {
	out := make(map[string]store.Circuit, len(bs))
	for name, u := range cfg.Upstreams {
		lease := max(u.Timeout, u.ResponseHeaderTimeout) + time.Second
		if b := bs[name]; b != nil {
			out[name] = store.Circuit{Breaker: b, MinReplicasReporting: u.Breaker.MinReplicasReporting,
				SettingsHash: u.Breaker.Hash(), TrialLease: lease}
		}
		if ejects(u) {
			hash := u.Outlier.Hash()
			for _, t := range u.TargetURLs {
				tn := config.TargetName(name, t)
				out[tn] = store.Circuit{Breaker: bs[tn], MinReplicasReporting: u.Outlier.MinReplicasReporting,
					SettingsHash: hash, TrialLease: lease}
			}
		}
	}
	return out
}

// Reload swaps in a new validated config: in-flight requests finish on the old routes,
// existing circuits keep their state and counts under the new thresholds, removed
// upstreams are dropped (with their metric series) and new ones start closed (or adopt
// the shared state). Events settings apply at once except queue_size; admin.listen,
// admin.token and admin.allowed_hosts need a restart.
func (a *App) Reload(cfg *config.Config) (err error) {
	if p := a.opts.ServeGCPercent; p > 0 { // the new tables are built as at start
		debug.SetGCPercent(StartGCPercent)
	}
	defer func() {
		if err == nil {
			releaseMemory() // the old tables and what building the new ones left behind
		}
		if p := a.opts.ServeGCPercent; p > 0 {
			debug.SetGCPercent(p)
		}
	}() // last: after the reload is counted and the lock released
	defer func() { a.metrics.Reloaded(err) }()
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	a.mu.RLock()
	old, oldCfg := a.breakers, a.cfg
	a.mu.RUnlock()
	if a.running.Load() {
		if err := a.access.Configure(cfg.AccessLog); err != nil {
			return err
		}
		defer func() {
			if err != nil {
				_ = a.access.Configure(oldCfg.AccessLog) // best effort: the old sink back
			}
		}()
	}
	bs := a.buildBreakers(cfg, old)
	// Requests routed by either table are counted while the proxy switches over.
	both := upstreamNames(oldCfg)
	maps.Copy(both, upstreamNames(cfg))
	a.metrics.SetUpstreams(both)
	kept := cfg.Compact()
	a.keyCfg.Store(kept) // keys the new table hands to the store take the new settings
	if err := a.proxy.Update(cfg, bs); err != nil {
		a.keyCfg.Store(oldCfg)
		a.metrics.SetUpstreams(upstreamNames(oldCfg))
		return err
	}
	a.metrics.SetUpstreams(upstreamNames(cfg))
	a.store.Attach(a.circuits(cfg, bs))
	a.shareBudgets()
	a.setKeyUpstreams()
	a.setHealthTargets(checkedTargets(cfg, bs))
	var gone []string
	for name := range old {
		if _, ok := bs[name]; !ok {
			gone = append(gone, name)
		}
	}
	a.metrics.ForgetTargets(gone)
	a.events.Update(cfg.Events)
	a.mu.Lock()
	a.cfg, a.breakers = kept, bs
	a.mu.Unlock()
	if na, oa := cfg.Admin, oldCfg.Admin; na.Listen != oa.Listen || na.Token != oa.Token || !slices.Equal(na.AllowedHosts, oa.AllowedHosts) {
		a.log.Warn("admin.listen, admin.token and admin.allowed_hosts changes take effect at the next restart")
	}
	if ns, olds := cfg.Server, oldCfg.Server; ns.HTTP2 != olds.HTTP2 || ns.H2C != olds.H2C ||
		!reflect.DeepEqual(ns.TLS, olds.TLS) || !reflect.DeepEqual(cfg.Admin.TLS, oldCfg.Admin.TLS) {
		// The certificate files themselves are read again when they change (servertls).
		a.log.Warn("server.tls, server.http2, server.h2c and admin.tls changes take effect at the next restart")
	}
	if cfg.Events.QueueSize != oldCfg.Events.QueueSize {
		a.log.Warn("events.queue_size changes take effect at the next restart")
	}
	a.log.Info("config reloaded", zap.String("path", cfg.Path), zap.Int("upstreams", len(cfg.Upstreams)))
	return nil
}

// ReloadFile re-reads the config file in effect and applies it (POST /reload). On error
// the old config keeps serving, and the error says why. The attempt is counted in the
// metrics either way; reporting a failure is the caller's: the admin API answers and
// logs it, the file watch and SIGHUP log it (reloadFrom).
func (a *App) ReloadFile() error {
	path := a.Config().Path
	cfg, err := loadAdjusted(path, a.opts.Adjust)
	if err != nil {
		a.metrics.Reloaded(err)
		return err
	}
	if err := a.Reload(cfg); err != nil {
		return fmt.Errorf("reload %s: %w", path, err)
	}
	return nil
}

// reloadFrom reloads the config file for a trigger that has no one to answer (the file
// watch, SIGHUP), and logs a failure: the old config keeps serving.
func (a *App) reloadFrom(trigger string) {
	if err := a.ReloadFile(); err != nil {
		a.log.Error("config reload failed; the old config keeps serving", zap.String("trigger", trigger), zap.Error(err))
	}
}

// upstreamNames maps each upstream's name to whether its breaker is enabled.
func upstreamNames(cfg *config.Config) map[string]bool {
	names := make(map[string]bool, len(cfg.Upstreams))
	for name, u := range cfg.Upstreams {
		names[name] = u.Breaker.Enabled
	}
	return names
}

// Config returns the config in effect, compacted (config.Compact): its upstreams hold
// their settings but not their targets (see Targets).
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

// Targets returns the targets of the named upstream in effect, in config order (nil for
// an unknown upstream): the compacted config in effect has none (admin.TargetBackend).
func (a *App) Targets(upstream string) []*url.URL { return a.proxy.Targets(upstream) }

// Budgets returns the retry budgets of the upstreams that retry (admin.BudgetBackend).
func (a *App) Budgets() map[string]*proxy.RetryBudget { return a.proxy.Budgets() }

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
