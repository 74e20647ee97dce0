package app

import (
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/proxy"
	"github.com/fuseproxy/fuseproxy/store"
)

// keyOptions wires the proxy's per-key circuits (upstreams.<name>.keyed) to the store,
// which shares them, and to the events, rate-limited per upstream.
func (a *App) keyOptions() proxy.KeyOptions {
	return proxy.KeyOptions{
		Clock: a.clock,
		Observer: func(upstream string) breaker.Observer {
			return a.observer(a.events.KeyObserver(upstream, func() int {
				if u := a.Config().Upstreams[upstream]; u != nil {
					return u.Keyed.EventsPerSecond
				}
				return 0
			}))
		},
		Attach: func(upstream, name string, b *breaker.Breaker) {
			ks, ok := a.store.(store.KeyStore)
			if !ok {
				return
			}
			if k, ok := a.keyCircuit(upstream); ok {
				k.Breaker = b
				ks.AttachKey(name, k)
			}
		},
		Detach: func(name string, _ *breaker.Breaker) {
			if ks, ok := a.store.(store.KeyStore); ok {
				ks.DetachKey(name)
			}
		},
	}
}

// keyCircuit returns what the store needs of an upstream's keys, without a breaker;
// ok is false when the upstream has no per-key breakers.
func (a *App) keyCircuit(upstream string) (store.KeyCircuit, bool) {
	cfg := a.keyCfg.Load()
	if cfg == nil {
		cfg = a.Config()
	}
	u := cfg.Upstreams[upstream]
	if u == nil || !u.Keyed.Enabled() {
		return store.KeyCircuit{}, false
	}
	return store.KeyCircuit{
		Circuit: store.Circuit{MinReplicasReporting: u.Breaker.MinReplicasReporting,
			SettingsHash: keyHash(u), TrialLease: max(u.Timeout, u.ResponseHeaderTimeout) + time.Second},
		Settings: u.Keyed.Settings(u.Breaker),
		Upstream: upstream, MaxKeys: u.Keyed.MaxKeys, IdleTTL: u.Keyed.IdleTTL,
	}, true
}

// keyHash is the settings hash of an upstream's keys: its breaker's, with the keys'
// overrides.
func keyHash(u *config.Upstream) string {
	b := u.Breaker
	s := u.Keyed.Settings(b)
	b.ConsecutiveFailures, b.FailureRate, b.MinimumRequests, b.OpenDuration, b.MaxOpenDuration =
		s.ConsecutiveFailures, s.FailureRate, s.MinimumRequests, s.OpenDuration, s.MaxOpenDuration
	return "k" + b.Hash()
}

// KeyStats returns every keyed upstream's aggregates (metrics, admin API).
func (a *App) KeyStats() []proxy.KeyStats {
	if a.proxy == nil {
		return nil
	}
	return a.proxy.KeyStats()
}

// Keys returns an upstream's keys that are not passing, the longest open first.
func (a *App) Keys(upstream string, limit int) ([]proxy.KeyInfo, bool) {
	return a.proxy.Keys(upstream, limit)
}

// Key returns one key's circuit on this replica.
func (a *App) Key(upstream, key string) (*breaker.Breaker, bool) { return a.proxy.Key(upstream, key) }

// KeyCircuit returns what the store needs to command or inspect a key of upstream that
// this replica may not track; ok is false when the upstream has no per-key breakers.
func (a *App) KeyCircuit(upstream string) (store.KeyCircuit, bool) { return a.keyCircuit(upstream) }

// keyRefusals counts the keys the shared store's registry refused (max_keys).
func (a *App) keyRefusals() uint64 {
	if ks, ok := a.store.(store.KeyStore); ok {
		return ks.KeyRefusals()
	}
	return 0
}

// setKeyUpstreams tells the store which upstreams have per-key breakers (keyCfg's), so
// that its resyncs read their registries.
func (a *App) setKeyUpstreams() {
	ks, ok := a.store.(store.KeyStore)
	if !ok {
		return
	}
	ups := map[string]store.KeyCircuit{}
	for name := range a.keyCfg.Load().Upstreams {
		if k, ok := a.keyCircuit(name); ok {
			ups[name] = k
		}
	}
	ks.KeyUpstreams(ups)
}
