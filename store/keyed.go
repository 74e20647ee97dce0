package store

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// Per-key circuits (upstreams.<name>.keyed) are circuits like any: the same breaker
// state machine, the same scripts (run after lua/keyed.lua), the same fencing and
// degraded mode. What differs is their number and their life:
//
//   - They come and go with traffic (AttachKey, DetachKey), not with the config.
//   - They cost Redis nothing while quiet: a closed key whose window holds nothing bad
//     in Redis never sends its successes (it keeps how many it dropped, and sends those
//     still in its local window with its first failure, so the rate rules see them). A
//     new key is not read from Redis either: it starts closed and learns the fleet's
//     state from the reply to its first failure, or from a transition published by
//     another replica. An open key is not polled until its open period ends and a
//     request waits for a trial permit. So at steady state (closed, healthy keys) Redis
//     hears nothing of them, however many there are.
//   - They are bounded in Redis: at most MaxKeys per upstream registered, each
//     expiring IdleTTL after its last write (an open key not before its open period
//     ends). A key refused because the registry is full decides on its replica alone.

// KeyCircuit is one key's circuit as a store takes it. Circuit.Breaker may be nil for
// ControlKey and InspectKey (a key this replica does not track).
type KeyCircuit struct {
	Circuit
	// Settings are the key's breaker settings, used when Breaker is nil.
	Settings breaker.Settings
	Upstream string
	MaxKeys  int
	IdleTTL  time.Duration
}

// KeyStore is a store that keeps per-key circuits. Both stores implement it.
type KeyStore interface {
	// AttachKey takes a key's circuit (named config.KeyName); it must not block.
	AttachKey(name string, k KeyCircuit)
	// DetachKey lets it go.
	DetachKey(name string)
	// ControlKey applies an operator's command to a key: fleet-wide with a shared store,
	// also for a key this replica does not track (k then gives its settings).
	ControlKey(ctx context.Context, name string, k KeyCircuit, cmd Command) error
	// InspectKey returns what the store holds for a key.
	InspectKey(ctx context.Context, name string, k KeyCircuit) (map[string]string, error)
	// KeyRefusals counts keys the shared store refused because its registry was full.
	KeyRefusals() uint64
	// KeyUpstreams names the upstreams with per-key breakers, with their keys' settings
	// (Breaker nil), at start and on every reload: a shared store reads their registries
	// when it resyncs, so that a key the fleet holds open or forced is known before this
	// replica tracks it.
	KeyUpstreams(ups map[string]KeyCircuit)
}

var (
	_ KeyStore = (*Memory)(nil)
	_ KeyStore = (*Redis)(nil)
)

// keyedCircuit is the Redis store's part of a key's circuit.
type keyedCircuit struct {
	upstream, registry, member string
	state, leases              string // the key's Redis keys (keyKeys)
	maxKeys                    int
	ttl                        time.Duration
	local                      atomic.Bool // refused by the registry: decides alone
	stored                     bool        // Redis answered for it at least once (xmu)
	dropped                    uint32      // successes not sent while quiet (xmu)
}

//go:embed lua/keyed.lua
var keyedSrc string

var (
	keyFlushScript   = redis.NewScript(prelude + keyedSrc + flushSrc)
	keyAcquireScript = redis.NewScript(prelude + keyedSrc + acquireSrc)
	keyTrialScript   = redis.NewScript(prelude + keyedSrc + trialSrc)
	keyControlScript = redis.NewScript(prelude + keyedSrc + controlSrc)
)

func init() {
	allScripts = append(allScripts, keyFlushScript, keyAcquireScript, keyTrialScript, keyControlScript)
}

// keyKeys returns a key's Redis keys: its state, its leases and its upstream's registry,
// all in the upstream's hash slot; member is the key as the registry holds it.
func keyKeys(prefix, upstream, name string) (state, leases, registry, member string) {
	_, member, _ = strings.Cut(name, "#")
	base := fmt.Sprintf("%s:{%s}:", prefix, upstream)
	return base + "key:" + member + ":state", base + "key:" + member + ":leases", base + "keys", member
}

// newKeyCircuit builds the store's view of a key's circuit.
func (r *Redis) newKeyCircuit(name string, k KeyCircuit) *circuit {
	state, leases, registry, member := keyKeys(r.o.Prefix, k.Upstream, name)
	bs := k.Settings
	if k.Breaker != nil {
		bs = k.Breaker.Settings()
	}
	return &circuit{Breaker: k.Breaker, name: name, cfg: r.newConfig(bs, k.Circuit),
		k: &keyedCircuit{upstream: k.Upstream, registry: registry, member: member, state: state, leases: leases,
			maxKeys: k.MaxKeys, ttl: k.IdleTTL}}
}

// AttachKey implements KeyStore. The key starts closed and quiet, deciding with the
// fleet (unless the store is degraded), without a word to Redis.
func (r *Redis) AttachKey(name string, k KeyCircuit) {
	if k.TrialLease <= 0 {
		panic(fmt.Sprintf("store: key %q attached to the Redis store without a TrialLease", name))
	}
	c := r.newKeyCircuit(name, k)
	c.synced.Store(true)
	c.quiet.Store(true)
	c.Breaker.SetWake(r.Wake)
	if !r.degraded.Load() {
		c.Breaker.SetShared(true)
	}
	r.kmu.Lock()
	if r.keyed == nil {
		r.keyed = map[string]*circuit{}
	}
	r.keyed[name] = c
	r.kdirty = true
	rem, known := r.remembered[name]
	delete(r.remembered, name)
	r.kmu.Unlock()
	if known && !r.degraded.Load() {
		// Another replica opened (or an operator forced) the key before this replica
		// saw it: start from that state, its open period shortened by the time since.
		rem.rep.state.OpenRemaining = max(rem.rep.state.OpenRemaining-time.Since(rem.at), 0)
		r.apply(c, rem.rep, false, "remembered")
	}
}

// rememberedKey is a published state of a key this replica does not track.
type rememberedKey struct {
	rep reply
	at  time.Time
}

// maxRemembered bounds the states of untracked keys a replica keeps.
const maxRemembered = 10000

// rememberKey keeps the published state of a key this replica does not track, while it
// is not closed and normal; a closed and normal one is forgotten.
func (r *Redis) rememberKey(name string, rep reply) {
	if !strings.Contains(name, "#") {
		return
	}
	r.kmu.Lock()
	defer r.kmu.Unlock()
	if rep.state.State == breaker.Closed && rep.state.Mode == breaker.Normal {
		delete(r.remembered, name)
		return
	}
	if r.remembered == nil {
		r.remembered = map[string]rememberedKey{}
	}
	if _, ok := r.remembered[name]; ok || len(r.remembered) < maxRemembered {
		r.remembered[name] = rememberedKey{rep: rep, at: time.Now()}
	}
}

// DetachKey implements KeyStore.
func (r *Redis) DetachKey(name string) {
	r.kmu.Lock()
	if c, ok := r.keyed[name]; ok {
		delete(r.keyed, name)
		r.kdirty = true
		c.Breaker.SetWake(nil)
	}
	r.kmu.Unlock()
}

// getKey returns an attached key's circuit.
func (r *Redis) getKey(name string) (*circuit, bool) {
	r.kmu.Lock()
	defer r.kmu.Unlock()
	c, ok := r.keyed[name]
	return c, ok
}

// withKeys returns base followed by every attached key's circuit. The slice is shared
// until the keys or base change: do not modify it.
func (r *Redis) withKeys(base []*circuit) []*circuit {
	r.kmu.Lock()
	defer r.kmu.Unlock()
	if len(r.keyed) == 0 {
		return base
	}
	if r.kdirty || len(r.kbase) != len(base) || len(base) > 0 && &r.kbase[0] != &base[0] {
		all := make([]*circuit, 0, len(base)+len(r.keyed))
		all = append(all, base...)
		for _, c := range r.keyed {
			all = append(all, c)
		}
		r.kall, r.kbase, r.kdirty = all, base, false
	}
	return r.kall
}

// KeyRefusals implements KeyStore.
func (r *Redis) KeyRefusals() uint64 { return r.krefused.Load() }

// planKey is plan for a key's circuit (see the package comment above).
func (r *Redis) planKey(calls []*call, c *circuit, now time.Time, resync bool) []*call {
	b, k := c.Breaker, c.k
	if k.local.Load() {
		return calls
	}
	st := b.State()
	if !resync && !r.stopping && !b.HasNews() && !c.deciding && !c.retry &&
		(st == breaker.Closed || b.NeedsPermits() == 0) {
		return calls
	}
	if !k.stored && now.Before(r.kfull[k.upstream]) {
		// The registry was full a moment ago: a key it never took decides alone, without
		// a script per new key (a flood of failing keys costs Redis one refusal per
		// upstream and fullBackoff, not one per key).
		r.refuseKey(c)
		return calls
	}
	d, _ := b.TakeDelta()
	good := d.Failures == 0 && d.Slow == 0 && d.Tail == 0 && d.Pause == 0 && d.GatewayTail == 0
	if resync && st == breaker.Closed && !k.stored && good {
		// Redis may hold nothing for it; if it does (opened meanwhile), the key's first
		// failure brings it. Its successes wait as a quiet key's do; a failure counted
		// before the resync goes with it (dropped, the fleet's run of failures would
		// miss it).
		k.dropped = uint32(min(uint64(k.dropped)+uint64(d.Requests), 1<<31))
		return calls
	}
	keys := r.callKeys(c)
	pre := []any{k.maxKeys, k.ttl.Milliseconds(), k.member}
	if tr, ok := b.TakeTrials(); (ok || r.stopping && c.hasLeases()) && !resync {
		args := append(pre[:3:3], r.o.ReplicaID, tr.Generation, tr.Successes, tr.Failures, c.cfg.arg,
			rand.Float64(), r.channel, c.name, tr.Pause.Milliseconds())
		args = r.releaseLeases(args, c, tr)
		calls = append(calls, &call{c: c, script: keyTrialScript, keys: keys, args: args})
	}
	quiet := c.quiet.Load() && st == breaker.Closed && good
	switch {
	case quiet && !resync && !c.deciding && !c.retry:
		k.dropped = uint32(min(uint64(k.dropped)+uint64(d.Requests), 1<<31))
	case d.Requests > 0 || k.dropped > 0 || resync || c.deciding || c.retry || st == breaker.Closed && !k.stored:
		if k.dropped > 0 {
			// The successes dropped while quiet that are still in the local window join
			// the first batch after, as held successes do (they end no run).
			sn := b.Snapshot()
			if d.Requests == 0 {
				d.Generation = sn.Generation
			}
			d.Requests += min(k.dropped, sn.Counts.Requests-min(sn.Counts.Failures, sn.Counts.Requests))
			k.dropped = 0
		}
		calls = append(calls, &call{c: c, script: keyFlushScript, keys: keys, args: append(pre[:3:3],
			r.o.ReplicaID, d.Generation, d.Requests, d.Failures, d.Slow, d.Tail,
			boolArg(d.HadSuccess), c.cfg.arg, c.cfg.hash, rand.Float64(), r.channel, c.name,
			r.onset, r.o.FlushInterval.Milliseconds(), d.GatewayTail, boolArg(d.GatewayEnded), d.Pause.Milliseconds())})
	}
	if resync || r.stopping || now.Before(c.acquireAfter()) {
		return calls
	}
	if want := b.NeedsPermits(); want > 0 {
		base := r.o.ReplicaID + ":" + strconv.FormatUint(r.leaseSeq.Add(1), 10)
		calls = append(calls, &call{c: c, script: keyAcquireScript, keys: keys, args: append(pre[:3:3],
			r.o.ReplicaID, want, c.lease().Milliseconds(), c.cfg.arg, base, r.channel, c.name)})
	}
	return calls
}

// keyRefused handles a keyed script's reply -1 (the registry is full): the key decides
// on this replica alone from now on. It reports whether the reply was that.
func (r *Redis) keyRefused(cl *call) bool {
	if cl.c == nil || cl.c.k == nil {
		return false
	}
	if v, ok := cl.cmd.Val().(int64); !ok || v != -1 {
		return false
	}
	c := cl.c
	if r.kfull == nil {
		r.kfull = map[string]time.Time{}
	}
	r.kfull[c.k.upstream] = time.Now().Add(fullBackoff)
	r.refuseKey(c)
	// the script was refused, and the keyed script's call did not count as a reply
	c.retry = false
	return true
}

// leaseBaseArg is the index of the lease id base in an acquire call's arguments: a
// keyed script's come after keyed.lua's three.
func leaseBaseArg(c *circuit) int {
	if c.k != nil {
		return 7
	}
	return 4
}

// fullBackoff is how long a replica takes an upstream's registry to be full after a
// refusal.
const fullBackoff = time.Second

// refuseKey makes a key the registry did not take decide on this replica alone.
func (r *Redis) refuseKey(c *circuit) {
	if !c.k.local.Swap(true) {
		r.krefused.Add(1)
		c.Breaker.SetShared(false)
		r.log.Debug("key refused by the shared registry (max_keys reached): it decides on this replica alone",
			zap.String("circuit", c.name))
	}
}

// keyApplied records that Redis holds a key's state (a good reply).
func keyApplied(c *circuit) {
	if c.k != nil {
		c.k.stored = true
	}
}

// ControlKey implements KeyStore: the command runs as one script in Redis (on an
// attached key as Control does; on another, from k's settings) and every replica that
// tracks the key adopts its result.
func (r *Redis) ControlKey(ctx context.Context, name string, k KeyCircuit, cmd Command) error {
	if _, ok := r.getKey(name); ok {
		return r.Control(ctx, name, cmd)
	}
	if err := cmd.validate(); err != nil {
		return err
	}
	c := r.newKeyCircuit(name, k)
	res, err := r.controlKeyRun(ctx, c, cmd)
	if err != nil {
		return err
	}
	if v, ok := res.(int64); ok && v == -1 {
		return fmt.Errorf("key %q: the shared registry of %q is full (max_keys)", name, k.Upstream)
	}
	_, err = decodeReply(res)
	return err
}

// controlKeyRun runs the keyed control script for c.
func (r *Redis) controlKeyRun(ctx context.Context, c *circuit, cmd Command) (any, error) {
	op := [...]string{OpOpen: "open", OpClose: "close", OpReset: "reset", OpMode: "mode"}[cmd.Op]
	ctx, cancel := context.WithTimeout(ctx, r.o.Timeout)
	defer cancel()
	return r.be.eval(ctx, &call{c: c, script: keyControlScript, keys: r.callKeys(c),
		args: []any{c.k.maxKeys, c.k.ttl.Milliseconds(), c.k.member,
			op, int(cmd.Mode), c.cfg.arg, rand.Float64(), r.channel, c.name, r.o.ReplicaID}})
}

// InspectKey implements KeyStore.
func (r *Redis) InspectKey(ctx context.Context, name string, k KeyCircuit) (map[string]string, error) {
	c, ok := r.getKey(name)
	if !ok {
		c = r.newKeyCircuit(name, k)
	}
	ctx, cancel := context.WithTimeout(ctx, r.o.Timeout)
	defer cancel()
	return r.be.inspect(ctx, c, true)
}

// Memory: keys are circuits of this process, tracked by name beside the config's.

// AttachKey implements KeyStore.
func (m *Memory) AttachKey(name string, k KeyCircuit) {
	m.kmu.Lock()
	if m.keyed == nil {
		m.keyed = map[string]Circuit{}
	}
	m.keyed[name] = k.Circuit
	m.kmu.Unlock()
}

// DetachKey implements KeyStore.
func (m *Memory) DetachKey(name string) {
	m.kmu.Lock()
	delete(m.keyed, name)
	m.kmu.Unlock()
}

func (m *Memory) key(name string) (Circuit, bool) {
	m.kmu.Lock()
	defer m.kmu.Unlock()
	c, ok := m.keyed[name]
	return c, ok
}

// ControlKey implements KeyStore: on this replica's key only.
func (m *Memory) ControlKey(_ context.Context, name string, _ KeyCircuit, cmd Command) error {
	c, ok := m.key(name)
	if !ok {
		return unknown(name)
	}
	if err := cmd.validate(); err != nil {
		return err
	}
	apply(c.Breaker, cmd)
	return nil
}

// InspectKey implements KeyStore.
func (m *Memory) InspectKey(_ context.Context, name string, _ KeyCircuit) (map[string]string, error) {
	c, ok := m.key(name)
	if !ok {
		return nil, unknown(name)
	}
	s := c.Breaker.Snapshot()
	return map[string]string{"state": s.State.String(), "mode": s.Mode.String(),
		"generation": strconv.FormatUint(s.Generation, 10), "trips": strconv.Itoa(s.Trips)}, nil
}

// KeyRefusals implements KeyStore: the memory store refuses no key.
func (m *Memory) KeyRefusals() uint64 { return 0 }

// KeyUpstreams implements KeyStore: the memory store notes the upstreams, whose history
// holds their keys' transitions.
func (m *Memory) KeyUpstreams(ups map[string]KeyCircuit) {
	kups := make(map[string]bool, len(ups))
	for name := range ups {
		kups[name] = true
	}
	m.hist.mu.Lock()
	m.hist.kups = kups
	m.hist.mu.Unlock()
}

// KeyUpstreams implements KeyStore.
func (r *Redis) KeyUpstreams(ups map[string]KeyCircuit) {
	r.kmu.Lock()
	r.kups = ups
	r.kmu.Unlock()
}

// readRegistries polls every key registered in Redis for a keyed upstream that this
// replica does not track, and remembers those not closed and normal (rememberKey): a
// replica that starts (or reconnects) while the fleet holds a key open, or an operator
// forced it, starts that key from it. Best effort: a failure is logged, and the key is
// then learnt from its first failure or its next transition, as without it. xmu is held.
func (r *Redis) readRegistries(ctx context.Context) {
	r.kmu.Lock()
	ups := r.kups
	r.kmu.Unlock()
	for up, k := range ups {
		if err := r.readRegistry(ctx, up, k); err != nil {
			r.log.Warn("reading the registry of keys failed; keys the fleet holds open are learnt from their next failure",
				zap.String("upstream", up), zap.Error(err))
		}
	}
}

func (r *Redis) readRegistry(ctx context.Context, up string, k KeyCircuit) error {
	_, _, registry, _ := keyKeys(r.o.Prefix, up, up+"#")
	rctx, cancel := context.WithTimeout(ctx, r.o.Timeout)
	members, err := r.be.members(rctx, up, registry, max(k.MaxKeys, 1))
	cancel()
	if err != nil {
		return err
	}
	var calls []*call
	for _, m := range members {
		name := up + "#" + m
		if _, tracked := r.getKey(name); tracked {
			continue
		}
		c := r.newKeyCircuit(name, k)
		calls = append(calls, &call{c: c, script: keyFlushScript, keys: r.callKeys(c),
			args: []any{c.k.maxKeys, c.k.ttl.Milliseconds(), c.k.member, r.o.ReplicaID, 0, 0, 0, 0, 0, 0,
				c.cfg.arg, k.SettingsHash, rand.Float64(), r.channel, c.name, r.onset,
				r.o.FlushInterval.Milliseconds(), 0, 0, 0}})
	}
	for i, n := 0, r.be.pipeline(); i < len(calls); i += n {
		chunk := calls[i:min(i+n, len(calls))]
		rctx, cancel := context.WithTimeout(ctx, r.o.Timeout)
		err := r.be.run(rctx, chunk)
		cancel()
		var rerr redis.Error
		if err != nil && !errors.As(err, &rerr) {
			return err
		}
		for _, cl := range chunk {
			if cl.cmd.Err() != nil {
				continue
			}
			if rep, err := decodeReply(cl.cmd.Val()); err == nil {
				r.rememberKey(cl.c.name, rep)
			}
		}
	}
	return nil
}
