package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// call is one script call of an exchange.
type call struct {
	c      *circuit
	tally  *tallyEntry // a tally's report (c is nil), with own: the count it sends
	own    int64
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
	if !resync && !r.stopping {
		calls = r.planTallies(calls, now)
	}
	if len(calls) == 0 {
		return errIdle
	}
	doubt := r.failures > 0 || r.degraded.Load()
	if doubt {
		// In doubt, an exchange must also show that Redis takes this replica's writes:
		// a poll or a resync read with nothing to write succeeds on a Redis that refuses
		// them (OOM, READONLY, MISCONF), and must neither clear the count of failed
		// exchanges nor end a degradation, nor be applied (see send).
		calls = append([]*call{r.beat()}, calls...)
	}
	var err error
	for i := 0; i < len(calls); {
		n := r.be.pipeline()
		if doubt && i == 0 {
			// The heartbeat alone first: a degraded fleet retries every flush interval,
			// and a Redis that refuses it (CLUSTERDOWN, OOM, LOADING, ...) would otherwise
			// run a pipeline of scripts per replica per interval for nothing, loaded the
			// most when it should recover.
			n = 1
		}
		chunk := calls[i:min(i+n, len(calls))]
		i += len(chunk)
		if e := r.send(ctx, chunk, resync); e != nil {
			var rerr redis.Error
			if err = cmp.Or(err, e); !errors.As(e, &rerr) || doubt && i == 1 {
				// No answer, or no proof that Redis takes writes (the heartbeat of an
				// exchange in doubt failed): the rest would fare no better. Poll them on
				// the next flush. A permit request may have been granted all the same:
				// its leases go back on the next exchange rather than hold trial slots
				// until they expire.
				for _, cl := range calls[i-len(chunk):] {
					if cl.c != nil {
						cl.c.retry = true
					}
					if cl.script == acquireScript {
						x := cl.c.x()
						x.refused = append(x.refused, cl.args[4].(string)+":*")
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

// maxPipeline bounds the scripts of one round trip to Redis, each round trip bounded by
// Timeout: a resync of 10,000 circuits is 40 round trips, not one that cannot finish in
// time.
const maxPipeline = 256

// maxPgPipeline bounds the calls of one round trip to PostgreSQL. A PL/pgSQL call costs
// the server about 20 times a Lua script's CPU (0.6 ms for a flush on a busy two-core
// machine): 256 of them took longer than the 500 ms timeout there when the server had a
// quarter of a core, and a resync of 10,000 circuits never finished (each failed round
// trip starts it over). 32 calls are about 20 ms of the server's CPU.
const maxPgPipeline = 32

// send runs calls in one pipeline and applies the replies.
func (r *Redis) send(ctx context.Context, calls []*call, resync bool) error {
	ctx, cancel := context.WithTimeout(ctx, r.o.Timeout)
	defer cancel()
	sent := r.o.Wall()
	err := r.be.run(ctx, calls)
	// No answer at all (network, timeout): the exchange failed as a whole.
	var rerr redis.Error
	if err != nil && !errors.As(err, &rerr) {
		return err
	}
	// An exchange in doubt (after a failure, or degraded) starts with the heartbeat, the
	// proof that Redis takes this replica's writes. Without it, the other replies are
	// not applied: a read-only or refusing Redis still answers a script that writes
	// nothing (a resync's read), and a degraded replica adopting that answer would undo
	// its local decisions (a local trip forced back to the stale shared closed state).
	if len(calls) > 0 && calls[0].c == nil && calls[0].tally == nil {
		if berr := calls[0].cmd.Err(); berr != nil || err != nil && calls[0].cmd.Val() == nil {
			for _, cl := range calls[1:] {
				if cl.c != nil {
					cl.c.retry = true
				}
			}
			return cmp.Or(berr, err)
		}
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
		case cl.tally != nil:
			if cerr == nil {
				cerr = applyTally(cl, sent)
			}
			failed = cmp.Or(failed, cerr)
			continue
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
		if r.keyRefused(cl) {
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
		r.learnOffset(rep.now, sent, rtt)
		r.applyReply(cl, rep, resync)
		keyApplied(cl.c)
	}
	return failed
}

// learnOffset estimates Redis's clock minus the wall clock from a reply read at Redis
// time nowMs (a millisecond reading: taken as its middle) to a pipeline sent at sent
// that took rtt. On a busy machine a round trip can take long one way and not the other,
// which errs by up to half of it: the estimate kept is the one of the fastest round trip
// in the last offsetFor, renewed by any as fast (within 100 µs) and by the next one
// after offsetFor. xmu is held.
func (r *Redis) learnOffset(nowMs int64, sent time.Time, rtt time.Duration) {
	if r.offsetKnown.Load() && rtt > time.Duration(r.offsetRTT.Load())+100*time.Microsecond && time.Since(r.offsetAt) < offsetFor {
		return
	}
	r.offsetRTT.Store(int64(rtt))
	r.offsetAt = time.Now()
	r.offset.Store(nowMs*int64(time.Millisecond) + int64(time.Millisecond)/2 - sent.Add(rtt/2).UnixNano())
	r.offsetKnown.Store(true)
}

// offsetFor is how long the offset of the fastest round trip stands (see learnOffset).
const offsetFor = 10 * time.Second

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
	if c.k != nil {
		return r.planKey(calls, c, now, resync)
	}
	b := c.Breaker
	// Most circuits of a replica with many upstreams have nothing to say on most flushes:
	// closed and synced, no news from the breaker, successes held (if any) still waiting.
	// They are skipped without taking the breaker's lock; everything they could send goes
	// through the full path below on a later flush (news, a key's refresh, an onset).
	if !resync && !r.stopping && !b.HasNews() && c.synced.Load() && !c.deciding && !c.retry {
		switch b.State() {
		case breaker.Closed:
			if c.ageHeld(now); c.more == nil || c.more.held.Requests == 0 || r.holds(c, c.more.held, now) {
				r.holding = r.holding || c.heldRequests() > 0
				return calls
			}
		case breaker.Open:
			if r.openQuiet(c, now) {
				return calls
			}
		}
	}
	keys := r.callKeys(c)
	if tr, ok := b.TakeTrials(); (ok || r.stopping && c.hasLeases()) && !resync {
		args := []any{r.o.ReplicaID, tr.Generation, tr.Successes, tr.Failures, c.cfg.arg,
			rand.Float64(), r.channel, c.name, tr.Pause.Milliseconds()}
		args = r.releaseLeases(args, c, tr)
		calls = append(calls, &call{c: c, script: trialScript, keys: keys, args: args})
	}
	// A resync sends the counts too: they are fenced by generation in Redis, and a
	// breaker that was deciding locally has none (it counts into a Delta only when shared).
	d, _ := b.TakeDelta()
	c.ageHeld(now)
	var held breaker.Delta
	if c.more != nil {
		held = c.more.held
	}
	if d.Requests > 0 && held.Requests > 0 && d.Generation != held.Generation {
		c.clearHeld() // Redis would drop them (see merge)
		held = breaker.Delta{}
	}
	send := resync || c.deciding || c.retry || !c.synced.Load() || b.State() != breaker.Closed
	if !send && r.holds(c, d, now) {
		c.addHeld(d, now)
		r.holding = r.holding || c.heldRequests() > 0
	} else if d = merge(held, d); send || d.Requests > 0 {
		c.clearHeld()
		calls = append(calls, &call{c: c, script: flushScript, keys: keys, args: []any{
			r.o.ReplicaID, d.Generation, d.Requests, d.Failures, d.Slow, d.Tail,
			boolArg(d.HadSuccess), c.cfg.arg, c.cfg.hash, rand.Float64(), r.channel, c.name,
			r.onset, r.o.FlushInterval.Milliseconds(), d.GatewayTail, boolArg(d.GatewayEnded), d.Pause.Milliseconds(),
			boolArg(b.State() == breaker.HalfOpen), boolArg(!now.Before(c.refreshAt))}})
	}
	if resync || r.stopping {
		return calls
	}
	if gen, n := b.DropAdvance(r.o.FlushInterval); n > 0 || c.more != nil && len(c.more.refused) > 0 {
		// Permits granted in advance that this replica's traffic did not use when the
		// open period ended, and grants the breaker refused: their leases go back at
		// once, for the other replicas.
		x := c.x()
		args := []any{r.o.ReplicaID, 0, 0, 0, c.cfg.arg, rand.Float64(), r.channel, c.name, 0}
		for _, id := range x.refused {
			args = append(args, id)
		}
		x.refused = nil
		kept := x.leases[:0]
		for _, l := range x.leases {
			if l.gen == gen && n > 0 {
				args = append(args, l.id)
				n--
			} else {
				kept = append(kept, l)
			}
		}
		x.leases = kept
		calls = append(calls, &call{c: c, script: trialScript, keys: keys, args: args})
	}
	if now.Before(c.acquireAfter()) {
		return calls
	}
	want, advance := b.NeedsPermits(), 0
	if want == 0 && b.NeedsAdvance(r.advanceLead()) {
		want, advance = 1, 1
	}
	if want > 0 {
		base := r.o.ReplicaID + ":" + strconv.FormatUint(r.leaseSeq.Add(1), 10)
		calls = append(calls, &call{c: c, script: acquireScript, keys: keys, args: []any{
			r.o.ReplicaID, want, c.lease().Milliseconds(), c.cfg.arg, base, r.channel, c.name, advance}})
	}
	return calls
}

// openQuiet reports whether an open circuit skips this flush's poll. Until its open
// period nears its end (the permit in advance is asked for advanceLead before it) an open
// circuit needs nothing from Redis: every transition reaches it on the subscription, and
// every resubscription resyncs. So it is polled once when it opens, then only every
// openPollEvery (jittered) as a backstop, and from a flush interval before the advance
// lead on as before. Polled every flush, an open upstream cost Redis R/F scripts a
// second (10,000/s, 40 % of a core, for 1,000 replicas at F = 100 ms). xmu is held.
func (r *Redis) openQuiet(c *circuit, now time.Time) bool {
	if c.Breaker.OpenLeft() <= r.advanceLead()+r.o.FlushInterval {
		return false
	}
	x := c.x()
	if len(x.leases) > 0 || len(x.refused) > 0 {
		return false
	}
	if now.Before(x.pollAt) {
		return true
	}
	x.pollAt = now.Add(openPollEvery/2 + rand.N(openPollEvery))
	return false
}

// openPollEvery is how often, on average, an open circuit far from the end of its open
// period is polled all the same: the backstop for a transition published but not heard
// (a Cluster bus that lost a broadcast), healed within this much.
const openPollEvery = 5 * time.Second

// advanceLead is how long before the end of an open period a replica with traffic for
// the circuit asks for a trial permit in advance: three flush intervals, so that at
// least two of the loop's turns (every flush interval ±10 %) fall in it.
func (r *Redis) advanceLead() time.Duration { return 3 * r.o.FlushInterval }

// releaseLeases appends to args the ids of the leases a trial report gives back, one per
// finished trial of the report's generation (every lease when stopping, a permit granted
// in advance too), and keeps the others; leases of older generations are gone from
// Redis already.
func (r *Redis) releaseLeases(args []any, c *circuit, tr breaker.TrialReport) []any {
	if c.more == nil {
		return args
	}
	n, kept := tr.Successes+tr.Failures+tr.Released, c.more.leases[:0]
	for _, l := range c.more.leases {
		switch {
		case r.stopping:
			args = append(args, l.id)
		case l.gen != tr.Generation:
		case n > 0:
			args = append(args, l.id)
			n--
		default:
			kept = append(kept, l)
		}
	}
	c.more.leases = kept
	return args
}

// advanceAsked reports whether an acquire call asked for permits in advance (its
// advance argument, after the lease id base, the channel and the name; per-key
// circuits never ask).
func advanceAsked(cl *call) bool {
	i := leaseBaseArg(cl.c) + 3
	return i < len(cl.args) && cl.args[i] == 1
}

// holds reports whether a closed, synced circuit's counts d may wait: they are all
// successes, the circuit is quiet, and its key needs no refresh yet. Held successes
// change no decision anywhere: the fleet's rate rules only look at them once a failure
// arrives, and then every replica sends those still in the window first (see the onset
// in flush.lua); once a window old they would count in no decision even then, and are
// dropped (ageHeld) rather than sent.
func (r *Redis) holds(c *circuit, d breaker.Delta, now time.Time) bool {
	return !r.stopping && c.quiet.Load() && d.Failures == 0 && d.Slow == 0 && d.Tail == 0 && d.Pause == 0 &&
		uint64(d.Requests)+uint64(c.heldRequests()) < 1<<30 && now.Before(c.refreshAt)
}

// holdSpan is the number of parts a window's held successes are kept in: a part is
// dropped once its newest success is a window old, so the successes held (and sent at an
// onset) are those of the last window and at most a part more.
const holdSpan = 4

// refreshEvery is how often a busy circuit whose successes are held sends them all the
// same (jittered by up to a tenth): its state's key in Redis lives a day after its last
// write (see save in lua/prelude.lua), and a busy circuit's must not expire: its
// generation and trip count would start over, and the next counts of every replica,
// fenced by the old generation, would be dropped. It costs a replica one script per
// busy circuit per 12 hours: 0.23 a second for 10,000 busy upstreams.
const refreshEvery = 12 * time.Hour

// refreshed notes that a flush script was asked to refresh the circuit's key (its
// refresh argument: every flush once refreshAt has passed, the resync's at start among
// them), which then lives at least 14 hours more (flush.lua writes it unless it does):
// the next refresh is due refreshEvery later, 13.2 hours at most. xmu is held.
func (c *circuit) refreshed(now time.Time) {
	c.refreshAt = now.Add(refreshEvery + rand.N(refreshEvery/10))
}

// ageHeld drops the held successes that are a window old at now. xmu is held.
func (c *circuit) ageHeld(now time.Time) {
	x := c.more
	if x == nil || x.held.Requests == 0 {
		return
	}
	holdFor := c.cfg.holdFor
	part := max(holdFor/holdSpan, 1)
	if now.Sub(x.heldSince) >= holdFor+part*time.Duration(len(x.heldParts)) {
		c.clearHeld()
		return
	}
	for now.Sub(x.heldSince) >= holdFor+part {
		x.held.Requests -= x.heldParts[0]
		copy(x.heldParts[:], x.heldParts[1:])
		x.heldParts[len(x.heldParts)-1] = 0
		x.heldSince = x.heldSince.Add(part)
	}
	if x.held.Requests == 0 {
		c.clearHeld()
	}
}

// addHeld adds the successes d to the hold at now (after ageHeld). xmu is held.
func (c *circuit) addHeld(d breaker.Delta, now time.Time) {
	if d.Requests == 0 {
		return
	}
	x := c.x()
	if x.held.Requests == 0 {
		x.heldSince = now
	}
	i := min(int(now.Sub(x.heldSince)/max(c.cfg.holdFor/holdSpan, 1)), len(x.heldParts)-1)
	x.heldParts[i] += d.Requests
	x.held.Generation = d.Generation
	x.held.Requests += d.Requests
}

// clearHeld empties the hold. xmu is held.
func (c *circuit) clearHeld() {
	if x := c.more; x != nil {
		x.held, x.heldParts, x.heldSince = breaker.Delta{}, [holdSpan + 1]uint32{}, time.Time{}
	}
}

// merge returns the held batch h followed by the newer batch d as one batch. Held
// successes count as requests but do not end a run of consecutive failures (nor of
// gateway failures): they were
// held while the circuit was quiet (no run in Redis), so they came before any run that
// other replicas are building now; a replica stops holding as soon as it hears of one.
// A held batch of another generation is dropped: Redis would drop it too.
func merge(h, d breaker.Delta) breaker.Delta {
	switch {
	case d.Requests == 0:
		h.HadSuccess, h.Tail, h.GatewayEnded, h.GatewayTail = false, 0, false, 0
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
func (r *redisBackend) run(ctx context.Context, calls []*call) error {
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
			zap.String("upstream", c.name), zap.String("key", cl.keys[0]), zap.String("problem", rep.corrupt))
	}
	r.apply(c, rep, force, "flush")
	c.quiet.Store(rep.quiet)
	if cl.script == flushScript && cl.args[18] == 1 {
		c.refreshed(time.Now()) // its key was written: it lives a day from now
	}
	if cl.script == flushScript || cl.script == keyFlushScript {
		c.deciding = rep.deciding
	}
	c.retry = false
	c.synced.Store(true)
	if cl.script == acquireScript || cl.script == keyAcquireScript {
		// Local permits lapse a little before their leases, so a permit is never used
		// after Redis may have handed its lease to another replica.
		ttl := c.lease() - c.lease()/10
		ttl -= min(r.o.Timeout, ttl/2)
		gen, ok := rep.state.Generation, false
		switch {
		case rep.granted <= 0:
		case rep.state.State == breaker.Open && advanceAsked(cl):
			// granted in advance, for the half-open period that follows
			ok = c.Breaker.GrantAdvance(gen, rep.granted, ttl)
			gen++
		default:
			ok = c.Breaker.GrantPermits(gen, rep.granted, ttl)
		}
		if !ok && rep.granted > 0 {
			// The breaker refused them (its state moved on meanwhile): the leases go
			// back on the next exchange rather than hold trial slots until they expire.
			base := cl.args[leaseBaseArg(c)].(string) + ":" + strconv.FormatUint(gen, 10)
			x := c.x()
			for i := 1; i <= rep.granted; i++ {
				x.refused = append(x.refused, base+":"+strconv.Itoa(i))
			}
		}
		if ok {
			base := cl.args[leaseBaseArg(c)].(string) + ":" + strconv.FormatUint(gen, 10)
			x := c.x()
			for i := 1; i <= rep.granted; i++ {
				x.leases = append(x.leases, lease{gen: gen, id: base + ":" + strconv.Itoa(i)})
			}
			x.nextAcquire = time.Time{}
		} else {
			c.x().nextAcquire = time.Now().Add(r.o.FlushInterval / 2)
		}
	}
	if (cl.script == flushScript || cl.script == keyFlushScript) && rep.cfg != "" && rep.cfg != c.cfg.hash &&
		rep.cfgr != r.o.ReplicaID && (c.more == nil || rep.cfg != c.more.warnedCfg) {
		c.x().warnedCfg = rep.cfg
		r.log.Warn("replicas disagree on breaker settings",
			zap.String("upstream", c.name), zap.String("ours", c.cfg.hash),
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
	lag := time.Duration(r.o.Wall().UnixNano()+r.offset.Load()) - time.Duration(rep.now)*time.Millisecond
	lag = max(lag, 0)
	if rep.state.State == breaker.Open && r.offsetKnown.Load() {
		// OpenRemaining was measured when Redis answered or published: less the time the
		// answer took to get here, every replica's open period ends when Redis's does, not
		// a delivery later (which on a busy machine is milliseconds). A millisecond and
		// half the offset's round trip less than the estimate (Redis's clock is read to
		// the millisecond, and the offset may err by half its round trip) so that it
		// never ends early; an estimate beyond the exchange timeout is no delivery.
		if d := lag - time.Millisecond - time.Duration(r.offsetRTT.Load())/2; d > 0 && d < r.o.Timeout {
			rep.state.OpenRemaining -= min(d, rep.state.OpenRemaining)
		}
	}
	adopted := c.Breaker.Apply(rep.state, force)
	c.amu.Unlock()
	if !adopted {
		return
	}
	if from == rep.state.State {
		return
	}
	if r.o.Hooks.Propagation != nil {
		r.o.Hooks.Propagation(c.name, lag)
	}
	r.log.Info("applied shared state", zap.String("upstream", c.name),
		zap.String("from", from.String()), zap.String("to", rep.state.State.String()),
		zap.Uint64("generation", rep.state.Generation), zap.String("source", source),
		zap.Float64("lag_ms", float64(lag.Microseconds())/1000))
}
