package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// RedisOptions configure a Redis store. The store has no defaults of its own: the
// operator-facing values (Prefix, FlushInterval, DegradeAfter, Timeout) come from the
// config, whose defaults live in config.Default() alone, and NewRedis refuses a zero one
// rather than fill in a second default that could drift from the config's.
type RedisOptions struct {
	Prefix        string        // key prefix (store.redis.prefix)
	ReplicaID     string        // this replica's id, in logs and in the quorum
	FlushInterval time.Duration // how often counts are flushed, jittered ±10 % (store.flush_interval)
	DegradeAfter  int           // consecutive failed exchanges before Redis counts as down (store.redis.degrade_after)
	// Timeout bounds one exchange with Redis (a pipeline round trip, an operator command,
	// the last flush).
	Timeout time.Duration
	Logger  *zap.Logger // nil: no logs
	Hooks   Hooks
	// History bounds each upstream's transition stream (the zero value: no history).
	History HistoryOptions
	// Wall is the wall clock, used only to estimate propagation lag against Redis's
	// clock (logged, and taken off an open period's remaining time as it arrives); tests
	// skew it to show that nothing else depends on it: the lag is measured against an
	// offset learned from the same clock. nil: time.Now.
	Wall func() time.Time
}

// Hooks let the metrics layer watch the store; nil fields are skipped. They are called
// from the store's goroutines and must not block.
type Hooks struct {
	Flush       func(d time.Duration, err error)
	Degraded    func(bool)
	Propagation func(upstream string, lag time.Duration)
	// Resynced is called, from the store's loop, after each resync the loop completes
	// (the one after the subscription at start, after a resubscription, on recovery
	// from degradation): each reads every circuit, and the app gives the memory that
	// leaves back to the OS. It must not block.
	Resynced func()
}

// Redis shares breaker state through Redis. The request path never waits on it: breakers
// decide locally; every FlushInterval the loop sends each circuit's new counts (and polls
// each circuit that is not closed) in one pipeline of scripts that count, decide on
// Redis's clock and answer with the current state; a pub/sub subscription brings other
// replicas' transitions at once. The successes of a quiet circuit (closed, nothing bad in
// its window) change no decision, so they are held, and sent only when the circuit stops
// being quiet (a failure here, or an onset message from another replica) while they are
// still in the window; older ones are dropped. At steady closed state Redis hears from a
// replica only its heartbeat (every 5 flush intervals), and for each busy circuit one
// script every refreshEvery (about 12 hours). After DegradeAfter failed exchanges the store is
// degraded: breakers decide locally from the last shared state until Redis answers again,
// when every circuit is re-read before shared decisions resume.
//
// Redis is also the engine of the PostgreSQL store (Postgres): everything above is the
// same there, only the server the calls go to differs (backend.go).
type Redis struct {
	be      backend // the server: Redis, or PostgreSQL (backend.go)
	o       RedisOptions
	log     *zap.Logger
	channel string // transitions
	// heartbeatKey is the key the heartbeat writes (see heartbeat).
	heartbeatKey string
	onset        string // names of circuits whose quiet window just saw a failure
	// claimOwner is what this store writes into the keys it claims (Claim): the replica
	// id and a random suffix, so that two stores never share a lease even under one id.
	claimOwner string

	mu sync.RWMutex // guards all
	// all are the attached circuits sorted by name (find), replaced by Attach: a slice
	// rather than a map, which took 40 bytes a circuit more.
	all []*circuit

	tallies tallies // shared tallies (tally.go)

	wake chan struct{} // a breaker needs the loop now
	// onsets: an onset message asks the loop to send the held successes within the
	// grace (see onOnset)
	onsets chan struct{}
	resync chan struct{} // the subscription reconnected: re-read everything

	// xmu serialises exchanges with Redis (the loop, Resync, Attach) and guards what they
	// own: failures and each circuit's leases, nextAcquire and warnedCfg.
	xmu      sync.Mutex
	failures int       // consecutive failed exchanges
	stopping bool      // the last flush: take no permits, give back those held
	holding  bool      // the last exchange held some circuit's successes back
	lastOK   time.Time // the last exchange Redis answered

	degraded atomic.Bool
	status   atomic.Pointer[Status]
	offset   atomic.Int64 // Redis clock minus wall clock, ns (lag estimates)
	// offsetKnown: offset was measured (a reply came); only then does an open state's
	// remaining time lose the lag of its delivery (see apply).
	offsetKnown atomic.Bool
	offsetRTT   atomic.Int64 // the round trip offset was learned from, ns
	offsetAt    time.Time    // when (xmu)
	leaseSeq    atomic.Uint64

	// Per-key circuits (keyed.go), attached and detached with traffic: kmu guards keyed
	// and the list with them (kall, built from kbase, the circuits' list, when kdirty).
	kmu      sync.Mutex
	keyed    map[string]*circuit
	kall     []*circuit
	kbase    []*circuit
	kdirty   bool
	krefused atomic.Uint64
	// remembered holds the last published state of keys this replica does not track,
	// while not closed and normal (at most maxRemembered): a key created later starts
	// from it (kmu).
	remembered map[string]rememberedKey
	// kfull holds, per upstream, until when its registry in Redis is taken to be full
	// (a refusal was seen): new keys then decide alone without asking (xmu).
	kfull map[string]time.Time
	// kups are the upstreams with per-key breakers (KeyUpstreams), whose registries a
	// resync reads (kmu).
	kups map[string]KeyCircuit
}

// circuit is the store's view of one circuit. A replica keeps one per upstream, most of
// them idle: what only some circuits need (trial leases, held successes, a settings
// warning) is in more, allocated at first use, and what circuits of equal settings
// share is in cfg, one value for all of them; the keys are derived from the name when
// a call needs them (keysOf). TestCircuitMemory bounds what an idle one costs.
type circuit struct {
	Breaker breaker.Sync
	name    string
	cfg     *circuitConfig // shared by the circuits of equal settings (Attach)
	epoch   atomic.Int64
	seen    uint64      // newest generation read from Redis in this epoch (amu)
	amu     sync.Mutex  // serialises apply: the loop, pub/sub and Control
	synced  atomic.Bool // read from Redis at least once
	// quiet: the last reply said the circuit is closed with nothing bad in its window, and
	// no message since said otherwise; its successes may then be held (see hold; xmu).
	quiet    atomic.Bool
	deciding bool // the last reply said a rate decision waits: poll again (xmu)
	// retry: the last call for this circuit got no good reply (no answer, or an error
	// reply that is not its own data's): poll it again on the next flush, so that a fault
	// that only its keys meet keeps counting towards degradation, and a heartbeat that
	// works in between does not clear the count (xmu).
	retry bool
	// refreshAt: held successes are sent by then all the same, so that a busy circuit's
	// key in Redis does not expire (see refreshEvery; xmu).
	refreshAt time.Time
	// k is set for a key's circuit (keyed.go).
	k *keyedCircuit
	// more holds what a circuit needs once it has trial permits or held successes (xmu);
	// nil until then (see more).
	more *circuitMore
}

// circuitConfig is what a circuit's settings give the store: one value for all the
// circuits that have the same (Attach interns them).
type circuitConfig struct {
	arg   string        // the settings as the scripts take them (settingsArg)
	hash  string        // Circuit.SettingsHash
	lease time.Duration // Circuit.TrialLease
	// holdFor is how long held successes count (the window, at least a flush interval).
	holdFor time.Duration
}

// circuitMore is the part of a circuit's state that most circuits never need (xmu).
type circuitMore struct {
	leases      []lease   // trial permits held
	refused     []string  // ids of leases granted but refused by the breaker: to release
	nextAcquire time.Time // no permit request before
	pollAt      time.Time // open: the next backstop poll (openQuiet)
	warnedCfg   string    // settings hash last warned about
	// held are the successes held while quiet (their generation and number), in parts of
	// holdFor/holdSpan each, part i counting those since heldSince + i·holdFor/holdSpan;
	// a part leaves the hold once its newest success is holdFor (the window) old
	// (ageHeld).
	held      breaker.Delta
	heldParts [holdSpan + 1]uint32
	heldSince time.Time
}

// x returns the circuit's circuitMore, allocating it at first use. xmu is held.
func (c *circuit) x() *circuitMore {
	if c.more == nil {
		c.more = &circuitMore{}
	}
	return c.more
}

// heldRequests returns the number of successes held. xmu is held.
func (c *circuit) heldRequests() uint32 {
	if c.more == nil {
		return 0
	}
	return c.more.held.Requests
}

// hasLeases reports whether the circuit holds trial permits' leases. xmu is held.
func (c *circuit) hasLeases() bool { return c.more != nil && len(c.more.leases) > 0 }

// acquireAfter returns the time before which no permit is asked for. xmu is held.
func (c *circuit) acquireAfter() time.Time {
	if c.more == nil {
		return time.Time{}
	}
	return c.more.nextAcquire
}

// lease returns how long a trial permit's lease lasts in Redis.
func (c *circuit) lease() time.Duration { return c.cfg.lease }

// keysOf returns the circuit's keys in Redis: its state and its trial leases.
func (c *circuit) keysOf(prefix string) (state, leases string) {
	if c.k != nil {
		return c.k.state, c.k.leases
	}
	return keys(prefix, c.name)
}

// callKeys returns the keys a circuit's call names (a key's circuit's registry too).
func (r *Redis) callKeys(c *circuit) []string {
	state, leases := c.keysOf(r.o.Prefix)
	if c.k != nil {
		return []string{state, leases, c.k.registry}
	}
	return []string{state, leases}
}

// lease is a trial permit held by this replica: its id in the leases set, and the
// generation of the half-open period it belongs to.
type lease struct {
	gen uint64
	id  string
}

var _ Store = (*Redis)(nil)

// NewRedis returns a Redis store using client; it owns the client from then on (and
// closes it when the options are refused).
func NewRedis(client redis.UniversalClient, o RedisOptions) (*Redis, error) {
	if err := o.check(); err != nil {
		_ = client.Close()
		return nil, err
	}
	return newEngine(&redisBackend{client: client, prefix: o.Prefix}, o,
		o.Prefix+":events", o.Prefix+":onset", o.Prefix+":heartbeat:"+o.ReplicaID), nil
}

// newEngine returns the shared store's engine on be: channel and onset are the names of
// the transitions' and onsets' channels, heartbeat what the heartbeat's call names.
func newEngine(be backend, o RedisOptions, channel, onset, heartbeat string) *Redis {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Wall == nil {
		o.Wall = time.Now
	}
	r := &Redis{
		be: be, o: o, log: o.Logger.With(zap.String("store", be.driver())),
		channel: channel, onset: onset, heartbeatKey: heartbeat,
		claimOwner: o.ReplicaID + "/" + strconv.FormatUint(rand.Uint64(), 36),
		wake:       make(chan struct{}, 1), resync: make(chan struct{}, 1), onsets: make(chan struct{}, 1),
	}
	r.status.Store(&Status{Driver: be.driver(), ReplicaID: o.ReplicaID})
	return r
}

// check refuses the zero (or negative) values the store has no default for.
func (o RedisOptions) check() error { return o.checkFor("redis") }

func (o RedisOptions) checkFor(driver string) error {
	var missing []string
	if o.Prefix == "" {
		missing = append(missing, "Prefix")
	}
	if o.FlushInterval <= 0 {
		missing = append(missing, "FlushInterval")
	}
	if o.DegradeAfter <= 0 {
		missing = append(missing, "DegradeAfter")
	}
	if o.Timeout <= 0 {
		missing = append(missing, "Timeout")
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s store: options %s must be set (more than 0)", driver, strings.Join(missing, ", "))
	}
	return nil
}

// Wake asks the loop to run now: a breaker's trial finished, or it waits for permits.
// It never blocks. Attach gives it to every circuit's breaker (breaker.Sync.SetWake).
func (r *Redis) Wake() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Attach implements Store. Circuits already attached keep their store-side view; new ones
// are read from Redis on the loop's next turn, taking decisions locally until then.
func (r *Redis) Attach(circuits map[string]Circuit) {
	requireLeases(circuits)
	next := make([]*circuit, 0, len(circuits))
	r.xmu.Lock()
	defer r.xmu.Unlock()
	r.mu.Lock()
	wake := r.Wake // one func value for every breaker
	configs := map[configKey]*circuitConfig{}
	for name, c := range circuits {
		c.Breaker.SetWake(wake)
		bs := c.Breaker.Settings()
		ck := configKey{bs, c.MinReplicasReporting, c.SettingsHash, c.TrialLease}
		cfg := configs[ck]
		if cfg == nil {
			cfg = r.newConfig(bs, c)
			configs[ck] = cfg
		}
		sc := &circuit{Breaker: c.Breaker, name: name, cfg: cfg}
		if old, ok := find(r.all, name); ok && old.Breaker == c.Breaker {
			sc.epoch.Store(old.epoch.Load())
			sc.synced.Store(old.synced.Load())
			old.amu.Lock()
			sc.seen = old.seen
			old.amu.Unlock()
			if old.more != nil {
				m := *old.more
				sc.more = &m
			}
			sc.refreshAt = old.refreshAt
			sc.quiet.Store(old.quiet.Load())
		}
		next = append(next, sc)
	}
	slices.SortFunc(next, func(a, b *circuit) int { return strings.Compare(a.name, b.name) })
	r.all = next
	r.mu.Unlock()
	r.requestResync()
}

// configKey identifies a circuitConfig: circuits attached with equal keys share one.
type configKey struct {
	settings    breaker.Settings
	minReplicas int
	hash        string
	lease       time.Duration
}

// newConfig returns the store's view of a circuit's settings bs.
func (r *Redis) newConfig(bs breaker.Settings, c Circuit) *circuitConfig {
	return &circuitConfig{arg: settingsArg(bs, c.MinReplicasReporting) + r.o.History.arg(), hash: c.SettingsHash,
		lease: c.TrialLease, holdFor: max(bs.Window, r.o.FlushInterval)}
}

// requireLeases panics on a circuit without a TrialLease, which has no default either:
// a bug in the caller, caught before the store changes rather than at the circuit's
// first half-open period.
func requireLeases(circuits map[string]Circuit) {
	for name, c := range circuits {
		if c.TrialLease <= 0 {
			panic(fmt.Sprintf("store: circuit %q attached to the Redis store without a TrialLease", name))
		}
	}
}

func (r *Redis) requestResync() {
	select {
	case r.resync <- struct{}{}:
	default:
	}
}

// list returns every attached circuit. The slice is shared: do not modify it.
func (r *Redis) list() []*circuit {
	r.mu.RLock()
	all := r.all
	r.mu.RUnlock()
	return r.withKeys(all)
}

func (r *Redis) get(name string) (*circuit, bool) {
	r.mu.RLock()
	c, ok := find(r.all, name)
	r.mu.RUnlock()
	if !ok {
		return r.getKey(name)
	}
	return c, ok
}

// find returns the circuit named name in all, sorted by name.
func find(all []*circuit, name string) (*circuit, bool) {
	i, ok := slices.BinarySearchFunc(all, name, func(c *circuit, name string) int { return strings.Compare(c.name, name) })
	if !ok {
		return nil, false
	}
	return all[i], true
}

// Status implements Store.
func (r *Redis) Status() Status { return *r.status.Load() }

// Run implements Store: the flush loop and the subscription, until ctx ends; then a last
// flush of the counts not yet sent.
func (r *Redis) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.be.listen(ctx, r)
	}()
	r.loop(ctx)
	wg.Wait()
	final, cancel := context.WithTimeout(context.Background(), r.o.Timeout)
	defer cancel()
	r.xmu.Lock()
	defer r.xmu.Unlock()
	r.stopping = true
	defer func() { r.stopping = false }()
	if !r.degraded.Load() {
		if err := r.exchange(final, r.list(), false); err != nil && !errors.Is(err, errIdle) {
			r.log.Warn("last flush failed", zap.Error(err))
		}
	}
	return nil
}

// Close implements Store.
func (r *Redis) Close() error { return r.be.close() }
