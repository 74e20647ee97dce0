package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// RedisOptions configure a Redis store.
type RedisOptions struct {
	Prefix        string        // key prefix; "fuse" when empty
	ReplicaID     string        // this replica's id, in logs and in the quorum
	FlushInterval time.Duration // how often counts are flushed (jittered ±10 %); 100 ms when zero
	DegradeAfter  int           // consecutive failed exchanges before Redis counts as down; 3 when zero
	// Timeout bounds one exchange with Redis; 500 ms when zero.
	Timeout time.Duration
	Logger  *zap.Logger
	Hooks   Hooks
	// Wall is the wall clock, used only to estimate propagation lag against Redis's
	// clock; tests skew it to show that nothing else depends on it.
	Wall func() time.Time
}

// Hooks let the metrics layer watch the store; nil fields are skipped. They are called
// from the store's goroutines and must not block.
type Hooks struct {
	Flush       func(d time.Duration, err error)
	Degraded    func(bool)
	Propagation func(upstream string, lag time.Duration)
}

// Redis shares breaker state through Redis. The request path never waits on it: breakers
// decide locally; every FlushInterval the loop sends each circuit's new counts (and polls
// each circuit that is not closed) in one pipeline of scripts that count, decide on
// Redis's clock and answer with the current state; a pub/sub subscription brings other
// replicas' transitions at once. The successes of a quiet circuit (closed, nothing bad in
// its window) change no decision, so they are held and sent once per window, or at once
// when the circuit stops being quiet (a failure here, or an onset message from another
// replica): at steady closed state Redis hears from a replica about once per window. After DegradeAfter failed exchanges the store is
// degraded: breakers decide locally from the last shared state until Redis answers again,
// when every circuit is re-read before shared decisions resume.
type Redis struct {
	client  redis.UniversalClient
	o       RedisOptions
	log     *zap.Logger
	channel string // transitions
	// heartbeatKey is the key the heartbeat writes (see heartbeat).
	heartbeatKey string
	onset        string // names of circuits whose quiet window just saw a failure

	mu       sync.RWMutex // guards circuits and all
	circuits map[string]*circuit
	all      []*circuit // the circuits' values, rebuilt by Attach (list)

	wake   chan struct{} // a breaker needs the loop now
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
	offset   atomic.Int64 // Redis clock minus wall clock, ns (lag estimates only)
	leaseSeq atomic.Uint64
}

// circuit is the store's view of one circuit.
type circuit struct {
	Circuit
	name, key, leaseKey, settings string
	epoch                         atomic.Int64
	synced                        atomic.Bool // read from Redis at least once
	amu                           sync.Mutex  // serialises apply: the loop, pub/sub and Control
	seen                          uint64      // newest generation read from Redis in this epoch (amu)
	leases                        []lease     // trial permits held (xmu)
	nextAcquire                   time.Time   // no permit request before (xmu)
	warnedCfg                     string      // settings hash last warned about (xmu)
	// quiet: the last reply said the circuit is closed with nothing bad in its window, and
	// no message since said otherwise; its successes may then be held (in held, since
	// heldSince, for at most holdFor; xmu).
	quiet    atomic.Bool
	deciding bool // the last reply said a rate decision waits: poll again (xmu)
	// retry: the last call for this circuit got no good reply (no answer, or an error
	// reply that is not its own data's): poll it again on the next flush, so that a fault
	// that only its keys meet keeps counting towards degradation, and a heartbeat that
	// works in between does not clear the count (xmu).
	retry     bool
	held      breaker.Delta
	heldSince time.Time
	holdFor   time.Duration
}

// lease returns how long a trial permit's lease lasts in Redis.
func (c *circuit) lease() time.Duration {
	if c.TrialLease <= 0 {
		return 30 * time.Second
	}
	return c.TrialLease
}

// lease is a trial permit held by this replica: its id in the leases set, and the
// generation of the half-open period it belongs to.
type lease struct {
	gen uint64
	id  string
}

var _ Store = (*Redis)(nil)

// NewRedis returns a Redis store using client; it owns the client from then on.
func NewRedis(client redis.UniversalClient, o RedisOptions) *Redis {
	if o.Prefix == "" {
		o.Prefix = "fuse"
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = 100 * time.Millisecond
	}
	if o.DegradeAfter <= 0 {
		o.DegradeAfter = 3
	}
	if o.Timeout <= 0 {
		o.Timeout = 500 * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Wall == nil {
		o.Wall = time.Now
	}
	r := &Redis{
		client: client, o: o, log: o.Logger.With(zap.String("store", "redis")),
		channel: o.Prefix + ":events", onset: o.Prefix + ":onset",
		heartbeatKey: o.Prefix + ":heartbeat:" + o.ReplicaID,
		circuits:     map[string]*circuit{},
		wake:         make(chan struct{}, 1), resync: make(chan struct{}, 1),
	}
	r.status.Store(&Status{Driver: "redis", ReplicaID: o.ReplicaID})
	return r
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
	next := make(map[string]*circuit, len(circuits))
	r.xmu.Lock()
	defer r.xmu.Unlock()
	r.mu.Lock()
	for name, c := range circuits {
		state, leases := keys(r.o.Prefix, name)
		c.Breaker.SetWake(r.Wake)
		bs := c.Breaker.Settings()
		sc := &circuit{Circuit: c, name: name, key: state, leaseKey: leases,
			settings: settingsArg(bs, c.MinReplicasReporting), holdFor: max(bs.Window, r.o.FlushInterval)}
		if old, ok := r.circuits[name]; ok && old.Breaker == c.Breaker {
			sc.epoch.Store(old.epoch.Load())
			sc.synced.Store(old.synced.Load())
			old.amu.Lock()
			sc.seen = old.seen
			old.amu.Unlock()
			sc.leases, sc.nextAcquire, sc.warnedCfg = old.leases, old.nextAcquire, old.warnedCfg
			sc.held, sc.heldSince = old.held, old.heldSince
			sc.quiet.Store(old.quiet.Load())
		}
		next[name] = sc
	}
	r.circuits = next
	r.all = make([]*circuit, 0, len(next))
	for _, c := range next {
		r.all = append(r.all, c)
	}
	r.mu.Unlock()
	r.requestResync()
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
	defer r.mu.RUnlock()
	return r.all
}

func (r *Redis) get(name string) (*circuit, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	c, ok := r.circuits[name]
	return c, ok
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
		r.subscribe(ctx)
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

// jittered returns the flush interval spread over ±10 %, so replicas do not flush in step.
func (r *Redis) jittered() time.Duration {
	f := r.o.FlushInterval
	return f + time.Duration((rand.Float64()*0.2-0.1)*float64(f))
}

func (r *Redis) loop(ctx context.Context) {
	tick := time.NewTimer(r.jittered())
	defer tick.Stop()
	// A woken loop runs at most once per minGap, so a burst of wakes is one exchange.
	minGap := min(r.o.FlushInterval/10, 10*time.Millisecond)
	needResync := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			tick.Reset(r.jittered())
		case <-r.wake:
		case <-r.resync:
			needResync = true
		}
		if ctx.Err() != nil {
			return
		}
		start := time.Now()
		r.xmu.Lock()
		if needResync || r.degraded.Load() {
			err := r.resyncLocked(ctx)
			needResync = err != nil && !r.degraded.Load()
		} else {
			err := r.exchange(ctx, r.list(), false)
			if errors.Is(err, errIdle) && (r.failures > 0 ||
				time.Since(r.lastOK) >= min(heartbeatEvery*r.o.FlushInterval, heartbeatMax)) {
				err = r.heartbeat(ctx)
			}
			r.record(err)
		}
		r.xmu.Unlock()
		if d := minGap - time.Since(start); d > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(d):
			}
		}
	}
}

// A replica with nothing to send (idle, or holding back the successes of quiet circuits)
// still checks on Redis once heartbeatEvery flush intervals, and at most
// heartbeatMax, have passed without an exchange Redis answered, and on every flush
// interval once a check failed: every replica, idle or busy, must know that Redis is
// gone (and degrade, so that /readyz says so and its breakers protect locally) before
// its first failures need it, within a second. At the defaults (flush every 100 ms ±10 %,
// degrade after 3) a dead Redis is noticed within about 0.4 + 0.1 (the tick) + 2 × 0.1
// s = 0.7 s, which leaves room for a busy machine. It costs an idle replica about 2
// EVALSHA a second, each one SET of a small key.
const (
	heartbeatEvery = 5
	heartbeatMax   = 400 * time.Millisecond
)

// heartbeatTTL is how long a heartbeat key lives in Redis.
const heartbeatTTL = 5 * time.Second

// heartbeat is an exchange with nothing to say: a script that writes one short-lived key
// under the prefix, so that it fails wherever the flush scripts would: a Redis that
// holds scripts, refuses this replica (NOAUTH, NOPERM on the prefix), or refuses writes
// (OOM, READONLY, MISCONF, ...).
func (r *Redis) heartbeat(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.o.Timeout)
	defer cancel()
	start := time.Now()
	err := r.run(ctx, []*call{r.beat()})
	if r.o.Hooks.Flush != nil {
		r.o.Hooks.Flush(time.Since(start), err)
	}
	return err
}

// beat is the heartbeat's call, with no circuit.
func (r *Redis) beat() *call {
	return &call{script: heartbeatScript, keys: []string{r.heartbeatKey}, args: []any{heartbeatTTL.Milliseconds()}}
}

// call is one script call of an exchange.
type call struct {
	c      *circuit
	script *redis.Script
	keys   []string
	args   []any
	leases []string // acquire: the ids this call asks for
	cmd    *redis.Cmd
}

// exchange sends every circuit's news in one pipeline and applies the replies. With
// resync set it reads every circuit and adopts what Redis holds whatever the generation.
func (r *Redis) exchange(ctx context.Context, cs []*circuit, resync bool) error {
	now := time.Now()
	r.holding = false
	var calls []*call
	for _, c := range cs {
		calls = r.plan(calls, c, now, resync)
	}
	if len(calls) == 0 {
		return errIdle
	}
	if r.failures > 0 || r.degraded.Load() {
		// In doubt, an exchange must also show that Redis takes this replica's writes:
		// a poll or a resync read with nothing to write succeeds on a Redis that refuses
		// them (OOM, READONLY, MISCONF), and must neither clear the count of failed
		// exchanges nor end a degradation.
		calls = append([]*call{r.beat()}, calls...)
	}
	var err error
	for i := 0; i < len(calls); i += maxPipeline {
		chunk := calls[i:min(i+maxPipeline, len(calls))]
		if e := r.send(ctx, chunk, resync); e != nil {
			var rerr redis.Error
			if err = cmp.Or(err, e); !errors.As(e, &rerr) {
				// No answer: the rest would wait as long. Poll them on the next flush.
				for _, cl := range calls[i:] {
					if cl.c != nil {
						cl.c.retry = true
					}
				}
				break
			}
		}
	}
	if r.o.Hooks.Flush != nil {
		r.o.Hooks.Flush(time.Since(now), err)
	}
	return err
}

// maxPipeline bounds the scripts of one round trip, each round trip bounded by Timeout:
// a resync of 10,000 circuits is 40 round trips, not one that cannot finish in time.
const maxPipeline = 256

// send runs calls in one pipeline and applies the replies.
func (r *Redis) send(ctx context.Context, calls []*call, resync bool) error {
	ctx, cancel := context.WithTimeout(ctx, r.o.Timeout)
	defer cancel()
	sent := r.o.Wall()
	err := r.run(ctx, calls)
	// No answer at all (network, timeout): the exchange failed as a whole.
	var rerr redis.Error
	if err != nil && !errors.As(err, &rerr) {
		return err
	}
	// Redis answered, but possibly with error replies. Only an error that is provably
	// one circuit's bad data (circuitData) spares the exchange; any other error reply
	// fails it, so that enough of them degrade the store, while the good replies of the
	// other circuits are still applied.
	var failed error
	rtt := r.o.Wall().Sub(sent)
	for _, cl := range calls {
		cerr := cl.cmd.Err()
		switch {
		case cerr == nil && err != nil && cl.cmd.Val() == nil:
			// The pipeline was refused before this script ran (a new connection's AUTH
			// or HELLO failed): go-redis leaves the command without a reply or an error,
			// and Exec's error is everyone's.
			cerr = err
		case redis.HasErrorPrefix(cerr, "NOSCRIPT") && err != nil && !redis.HasErrorPrefix(err, "NOSCRIPT"):
			// Loading the scripts failed (run): that error is the reason.
			cerr = err
		}
		switch {
		case cl.c == nil: // the heartbeat: nothing to apply
			failed = cmp.Or(failed, cerr)
			continue
		case cerr == nil:
		case circuitData(cerr):
			r.log.Error("script failed in Redis on this circuit's data", zap.String("upstream", cl.c.name), zap.Error(cerr))
			continue
		default:
			failed = cmp.Or(failed, cerr)
			cl.c.retry = true
			continue
		}
		rep, derr := decodeReply(cl.cmd.Val())
		if derr != nil {
			// Not an error reply, and not one either that proves the circuit's data bad:
			// whatever answers is not the Redis these scripts expect.
			failed = cmp.Or(failed, fmt.Errorf("unexpected reply from Redis for upstream %q: %w", cl.c.name, derr))
			cl.c.retry = true
			continue
		}
		r.offset.Store(rep.now*int64(time.Millisecond) - sent.Add(rtt/2).UnixNano())
		r.applyReply(cl, rep, resync)
	}
	return failed
}

// circuitData reports whether a script's error reply is provably about its own
// circuit's data, so that the other circuits and the store as a whole are sound: only
// WRONGTYPE, which a script can meet only on the two keys it was given (its circuit's;
// the scripts replace a foreign value they can read, see load in lua/prelude.lua). It is
// an allow-list on purpose: every other error reply (NOAUTH, WRONGPASS, NOPERM, OOM,
// READONLY, MISCONF, LOADING, BUSY, MASTERDOWN, CLUSTERDOWN, TRYAGAIN, a MOVED that
// outlived go-redis's redirects, an unknown or renamed command, a script's runtime
// error, and any class nobody has listed) speaks of Redis or of this replica's access
// to it, which every circuit shares, and counts towards degradation.
func circuitData(err error) bool { return redis.HasErrorPrefix(err, "WRONGTYPE") }

// plan appends the calls one circuit needs: its finished trials (at once), its counts or
// a poll when it is not closed, and a permit request when it waits for one.
func (r *Redis) plan(calls []*call, c *circuit, now time.Time, resync bool) []*call {
	b := c.Breaker
	// Most circuits of a replica with many upstreams have nothing to say on most flushes:
	// closed and synced, no news from the breaker, successes held (if any) still waiting.
	// They are skipped without taking the breaker's lock; everything they could send goes
	// through the full path below on a later flush (news, a hold that ran out, an onset).
	if !resync && !r.stopping && !b.HasNews() && c.synced.Load() && !c.deciding && !c.retry &&
		b.State() == breaker.Closed && (c.held.Requests == 0 || r.holds(c, c.held, now)) {
		r.holding = r.holding || c.held.Requests > 0
		return calls
	}
	keys := []string{c.key, c.leaseKey}
	if tr, ok := b.TakeTrials(); (ok || r.stopping && len(c.leases) > 0) && !resync {
		args := []any{r.o.ReplicaID, tr.Generation, tr.Successes, tr.Failures, c.settings,
			rand.Float64(), r.channel, c.name}
		// Release one lease per finished trial (every lease when stopping); leases of
		// older generations are gone from Redis already.
		n, kept := tr.Successes+tr.Failures+tr.Released, c.leases[:0]
		if r.stopping {
			n = len(c.leases)
		}
		for _, l := range c.leases {
			switch {
			case l.gen != tr.Generation:
			case n > 0:
				args = append(args, l.id)
				n--
			default:
				kept = append(kept, l)
			}
		}
		c.leases = kept
		calls = append(calls, &call{c: c, script: trialScript, keys: keys, args: args})
	}
	// A resync sends the counts too: they are fenced by generation in Redis, and a
	// breaker that was deciding locally has none (it counts into a Delta only when shared).
	d, _ := b.TakeDelta()
	d = merge(c.held, d)
	c.held = breaker.Delta{}
	send := resync || c.deciding || c.retry || !c.synced.Load() || b.State() != breaker.Closed
	if !send && d.Requests > 0 && r.holds(c, d, now) {
		c.held, r.holding = d, true
		if c.heldSince.IsZero() {
			c.heldSince = now
		}
	} else if send || d.Requests > 0 {
		c.heldSince = time.Time{}
		calls = append(calls, &call{c: c, script: flushScript, keys: keys, args: []any{
			r.o.ReplicaID, d.Generation, d.Requests, d.Failures, d.Slow, d.Tail,
			boolArg(d.HadSuccess), c.settings, c.SettingsHash, rand.Float64(), r.channel, c.name,
			r.onset, r.o.FlushInterval.Milliseconds()}})
	}
	if resync || r.stopping || now.Before(c.nextAcquire) {
		return calls
	}
	if want := b.NeedsPermits(); want > 0 {
		base := r.o.ReplicaID + ":" + strconv.FormatUint(r.leaseSeq.Add(1), 10)
		calls = append(calls, &call{c: c, script: acquireScript, keys: keys, args: []any{
			r.o.ReplicaID, want, c.lease().Milliseconds(), c.settings, base, r.channel, c.name}})
	}
	return calls
}

// holds reports whether a closed, synced circuit's counts d may wait: they are all
// successes, the circuit is quiet, and they have waited less than a window. Held
// successes change no decision anywhere: the fleet's rate rules only look at them once a
// failure arrives, and then every replica sends them first (see the onset in flush.lua).
func (r *Redis) holds(c *circuit, d breaker.Delta, now time.Time) bool {
	return !r.stopping && c.quiet.Load() && d.Failures == 0 && d.Slow == 0 && d.Tail == 0 &&
		d.Requests < 1<<30 && (c.heldSince.IsZero() || now.Sub(c.heldSince) < c.holdFor)
}

// merge returns the held batch h followed by the newer batch d as one batch. Held
// successes count as requests but do not end a run of consecutive failures: they were
// held while the circuit was quiet (no run in Redis), so they came before any run that
// other replicas are building now; a replica stops holding as soon as it hears of one.
// A held batch of another generation is dropped: Redis would drop it too.
func merge(h, d breaker.Delta) breaker.Delta {
	switch {
	case d.Requests == 0:
		h.HadSuccess, h.Tail = false, 0
		return h
	case h.Requests == 0 || h.Generation != d.Generation:
		return d
	}
	d.Requests += h.Requests // h holds successes only (see holds)
	return d
}

func boolArg(b bool) int {
	if b {
		return 1
	}
	return 0
}

// run executes the calls in one pipeline by SHA, loading the scripts once if Redis lost
// them (a restart, SCRIPT FLUSH) and sending again.
func (r *Redis) run(ctx context.Context, calls []*call) error {
	for attempt := 0; ; attempt++ {
		pipe := r.client.Pipeline()
		for _, cl := range calls {
			cl.cmd = cl.script.EvalSha(ctx, pipe, cl.keys, cl.args...)
		}
		_, err := pipe.Exec(ctx)
		if err == nil || attempt > 0 || !redis.HasErrorPrefix(err, "NOSCRIPT") {
			return err
		}
		for _, s := range allScripts {
			if err := s.Load(ctx, r.client).Err(); err != nil {
				return err
			}
		}
	}
}

func (r *Redis) applyReply(cl *call, rep reply, force bool) {
	c := cl.c
	if rep.corrupt != "" {
		r.log.Error("shared state was unreadable and was replaced by a fresh closed state",
			zap.String("upstream", c.name), zap.String("key", c.key), zap.String("problem", rep.corrupt))
	}
	r.apply(c, rep, force, "flush")
	c.quiet.Store(rep.quiet)
	if cl.script == flushScript {
		c.deciding = rep.deciding
	}
	c.retry = false
	c.synced.Store(true)
	if cl.script == acquireScript {
		// Local permits lapse a little before their leases, so a permit is never used
		// after Redis may have handed its lease to another replica.
		ttl := c.lease() - c.lease()/10
		ttl -= min(r.o.Timeout, ttl/2)
		if rep.granted > 0 && c.Breaker.GrantPermits(rep.state.Generation, rep.granted, ttl) {
			gen := rep.state.Generation
			base := cl.args[4].(string) + ":" + strconv.FormatUint(gen, 10)
			for i := 1; i <= rep.granted; i++ {
				c.leases = append(c.leases, lease{gen: gen, id: base + ":" + strconv.Itoa(i)})
			}
			c.nextAcquire = time.Time{}
		} else {
			c.nextAcquire = time.Now().Add(r.o.FlushInterval / 2)
		}
	}
	if cl.script == flushScript && rep.cfg != "" && rep.cfg != c.SettingsHash &&
		rep.cfgr != r.o.ReplicaID && rep.cfg != c.warnedCfg {
		c.warnedCfg = rep.cfg
		r.log.Warn("replicas disagree on breaker settings",
			zap.String("upstream", c.name), zap.String("ours", c.SettingsHash),
			zap.String("theirs", rep.cfg), zap.String("their_replica", rep.cfgr))
	}
}

// apply adopts a shared state. A new epoch (the state was lost or replaced in Redis)
// is adopted whatever its generation.
func (r *Redis) apply(c *circuit, rep reply, force bool, source string) {
	c.amu.Lock()
	gen := rep.state.Generation
	switch {
	case c.epoch.Swap(rep.epoch) != rep.epoch:
		force, c.seen = true, gen
	case force && gen < c.seen:
		// A resync read that left before a newer state arrived (by pub/sub, Control or
		// another reply) must not undo it: force only overrides local decisions.
		force = false
	}
	c.seen = max(c.seen, gen)
	from := c.Breaker.State()
	adopted := c.Breaker.Apply(rep.state, force)
	c.amu.Unlock()
	if !adopted {
		return
	}
	if from == rep.state.State {
		return
	}
	lag := time.Duration(r.o.Wall().UnixNano()+r.offset.Load()) - time.Duration(rep.now)*time.Millisecond
	lag = max(lag, 0)
	if r.o.Hooks.Propagation != nil {
		r.o.Hooks.Propagation(c.name, lag)
	}
	r.log.Info("applied shared state", zap.String("upstream", c.name),
		zap.String("from", from.String()), zap.String("to", rep.state.State.String()),
		zap.Uint64("generation", rep.state.Generation), zap.String("source", source),
		zap.Float64("lag_ms", float64(lag.Microseconds())/1000))
}

// errIdle is what exchange returns when there was nothing to send: it says nothing
// about Redis, so it neither counts towards degradation nor clears the count. (A tick
// that clears the count would keep a lightly loaded replica from ever noticing that
// Redis is gone; an idle replica need not notice, it has nothing to protect.)
var errIdle = errors.New("nothing to exchange")

// record counts a failed exchange towards degradation, or clears the count.
func (r *Redis) record(err error) {
	if errors.Is(err, errIdle) {
		return
	}
	if err == nil {
		r.failures, r.lastOK = 0, time.Now()
		return
	}
	if errors.Is(err, context.Canceled) {
		return
	}
	r.failures++
	r.log.Debug("exchange with Redis failed", zap.Int("consecutive", r.failures), zap.Error(err))
	switch st := r.status.Load(); {
	case r.failures >= r.o.DegradeAfter && !r.degraded.Load():
		r.setDegraded(true, err)
	case r.degraded.Load() && st.LastError != err.Error():
		// Still degraded, for another reason now (NOAUTH fixed, OOM next): /readyz and
		// the admin API show the current one.
		next := *st
		next.LastError = err.Error()
		r.status.Store(&next)
	}
}

func (r *Redis) setDegraded(d bool, err error) {
	r.degraded.Store(d)
	st := Status{Driver: "redis", ReplicaID: r.o.ReplicaID, Degraded: d, Since: time.Now()}
	if err != nil {
		st.LastError = err.Error()
	}
	r.status.Store(&st)
	if d {
		for _, c := range r.list() {
			c.Breaker.SetShared(false)
			c.leases = c.leases[:0]
			c.held, c.heldSince = breaker.Delta{}, time.Time{}
		}
		r.log.Warn("redis store degraded: breakers decide locally from the last shared state",
			zap.Error(err))
	} else {
		r.log.Info("redis store recovered: state resynced")
	}
	if r.o.Hooks.Degraded != nil {
		r.o.Hooks.Degraded(d)
	}
}

// Resync implements Store: every circuit is read again and adopted whatever its
// generation, local decisions are dropped, and shared decisions resume. A failure counts
// towards degradation (at start, the caller decides).
func (r *Redis) Resync(ctx context.Context) error {
	r.xmu.Lock()
	defer r.xmu.Unlock()
	return r.resyncLocked(ctx)
}

func (r *Redis) resyncLocked(ctx context.Context) error {
	cs := r.list()
	if r.degraded.Load() {
		// Read first, with the breakers still deciding locally: handing them to the store
		// before Redis has answered would leave them without anyone deciding (no trips,
		// trial outcomes dropped) for as long as each failed attempt takes, every interval.
		if err := r.exchange(ctx, cs, true); err != nil && !errors.Is(err, errIdle) {
			r.record(err)
			return err
		}
	}
	for _, c := range cs {
		if !c.Breaker.Shared() { // SetShared drops the counts not yet flushed
			c.Breaker.SetShared(true)
		}
	}
	err := r.exchange(ctx, cs, true)
	if err != nil && !errors.Is(err, errIdle) {
		for _, c := range cs {
			if r.degraded.Load() || !c.synced.Load() {
				c.Breaker.SetShared(false)
			}
		}
		r.record(err)
		return err
	}
	r.failures, r.lastOK = 0, time.Now()
	if r.degraded.Load() {
		r.setDegraded(false, nil)
	}
	return nil
}

// Control implements Store: the command runs as one script in Redis and every replica
// adopts its result. If Redis cannot be reached the command is applied to this replica
// only and the error says so.
func (r *Redis) Control(ctx context.Context, name string, cmd Command) error {
	c, ok := r.get(name)
	if !ok {
		return unknown(name)
	}
	if err := cmd.validate(); err != nil {
		return err
	}
	op := [...]string{OpOpen: "open", OpClose: "close", OpReset: "reset", OpMode: "mode"}[cmd.Op]
	ctx, cancel := context.WithTimeout(ctx, r.o.Timeout)
	defer cancel()
	keys := []string{c.key, c.leaseKey}
	res, err := controlScript.Run(ctx, r.client, keys, op, int(cmd.Mode), c.settings,
		rand.Float64(), r.channel, c.name, r.o.ReplicaID).Result()
	if err != nil {
		apply(c.Breaker, cmd)
		// The local command moved this breaker to a generation Redis never issued; it
		// would ignore every shared state up to it. Re-read everything (whatever the
		// generation) as soon as Redis answers, as after a degradation.
		r.requestResync()
		return &LocalOnlyError{Err: err}
	}
	rep, err := decodeReply(res)
	if err != nil {
		return err
	}
	r.apply(c, rep, false, "control")
	c.quiet.Store(rep.quiet)
	return nil
}

// LocalOnlyError reports an operator command that reached this replica only.
type LocalOnlyError struct{ Err error }

func (e *LocalOnlyError) Error() string {
	return "applied to this replica only; shared store unreachable: " + e.Err.Error()
}

func (e *LocalOnlyError) Unwrap() error { return e.Err }

// Inspect implements Store: the circuit's hash and its trial leases as Redis holds them.
func (r *Redis) Inspect(ctx context.Context, name string) (map[string]string, error) {
	c, ok := r.get(name)
	if !ok {
		return nil, unknown(name)
	}
	ctx, cancel := context.WithTimeout(ctx, r.o.Timeout)
	defer cancel()
	pipe := r.client.Pipeline()
	h := pipe.HGetAll(ctx, c.key)
	l := pipe.ZRangeWithScores(ctx, c.leaseKey, 0, -1)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	out := h.Val()
	if out == nil {
		out = map[string]string{}
	}
	var ls []string
	for _, z := range l.Val() {
		ls = append(ls, z.Member.(string)+"@"+strconv.FormatFloat(z.Score, 'f', 0, 64))
	}
	out["leases"] = strings.Join(ls, ",")
	out["key"] = c.key
	return out, nil
}

// Close implements Store.
func (r *Redis) Close() error { return r.client.Close() }

// subscribe applies transitions published by any replica as they happen. Pub/sub is
// at-most-once, so every (re)subscription asks the loop for a full resync, and the flush
// replies remain the backstop for messages lost in between.
func (r *Redis) subscribe(ctx context.Context) {
	ps := r.client.Subscribe(ctx, r.channel, r.onset)
	defer ps.Close()
	ch := ps.ChannelWithSubscriptions(redis.WithChannelHealthCheckInterval(time.Second))
	subscribed := false
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-ch:
			if !ok {
				return
			}
			switch m := m.(type) {
			case *redis.Subscription:
				if m.Kind == "subscribe" && m.Channel == r.channel {
					// Also the first time: what was published before the subscription
					// took effect (since Resync) was missed too.
					if subscribed {
						r.log.Info("pub/sub resubscribed; resyncing")
					}
					r.requestResync()
					subscribed = true
				}
			case *redis.Message:
				if m.Channel == r.onset {
					r.onOnset(m.Payload)
				} else {
					r.onMessage(m.Payload)
				}
			}
		}
	}
}

func (r *Redis) onMessage(payload string) {
	name, rep, err := decodeMessage(payload)
	if err != nil {
		r.log.Warn("ignored malformed state message", zap.Error(err))
		return
	}
	c, ok := r.get(name)
	if !ok || r.degraded.Load() || !c.synced.Load() {
		return
	}
	c.quiet.Store(false) // until the next reply says otherwise
	r.apply(c, rep, false, "pubsub")
}

// onOnset handles a failure reaching a quiet circuit's window (payload: its name): the
// successes this replica holds for it must be in the window before the rate rules look,
// so they go now.
func (r *Redis) onOnset(name string) {
	if c, ok := r.get(name); ok && c.quiet.Swap(false) {
		r.Wake()
	}
}
