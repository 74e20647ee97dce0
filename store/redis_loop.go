package store

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"go.uber.org/zap"
)

// jittered returns the flush interval spread over ±10 %, so replicas do not flush in step.
func (r *Redis) jittered() time.Duration {
	f := r.o.FlushInterval
	return f + time.Duration((rand.Float64()*0.2-0.1)*float64(f))
}

func (r *Redis) loop(ctx context.Context) {
	tick := time.NewTimer(r.jittered())
	defer tick.Stop()
	// soon runs the loop at a random point in the next quarter flush interval after an
	// onset (onOnset): a fleet's replicas send what they hold spread over it, not at once.
	// The rate rules wait one flush interval after the onset (the grace): the rest of it is
	// the margin for the round trip and a busy machine (with half an interval, held
	// successes of a replica under the race detector in CI came after the grace, and
	// 30 failures among 1,030 requests opened the circuit).
	soon := time.NewTimer(time.Hour)
	soon.Stop()
	defer soon.Stop()
	soonArmed := false
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
		case <-r.onsets:
			if !soonArmed {
				soon.Reset(rand.N(r.o.FlushInterval/4) + 1)
				soonArmed = true
			}
			continue
		case <-soon.C:
			soonArmed = false
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
			if err == nil && r.o.Hooks.Resynced != nil {
				r.o.Hooks.Resynced()
			}
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
	err := r.be.run(ctx, []*call{r.beat()})
	if r.o.Hooks.Flush != nil {
		r.o.Hooks.Flush(time.Since(start), err)
	}
	return err
}

// beat is the heartbeat's call, with no circuit.
func (r *Redis) beat() *call {
	return &call{script: heartbeatScript, keys: []string{r.heartbeatKey}, args: []any{heartbeatTTL.Milliseconds()}}
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
	r.be.failed()
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
	if d {
		// The breakers decide locally before the status says so: /readyz answering
		// "degraded, protection local" promises that a failure from then on counts
		// towards a local decision, and one counted into a shared delta in between
		// would be dropped by SetShared.
		for _, c := range r.list() {
			c.Breaker.SetShared(false)
			// the permits are gone with the shared decisions: their leases go back once
			// Redis answers again, rather than hold trial slots until they expire
			if x := c.more; x != nil {
				for _, l := range x.leases {
					x.refused = append(x.refused, l.id)
				}
				x.leases = x.leases[:0]
			}
			c.clearHeld()
		}
	}
	r.degraded.Store(d)
	st := Status{Driver: r.be.driver(), ReplicaID: r.o.ReplicaID, Degraded: d, Since: time.Now()}
	if err != nil {
		st.LastError = err.Error()
	}
	r.status.Store(&st)
	if d {
		r.log.Warn(r.be.driver()+" store degraded: breakers decide locally from the last shared state",
			zap.Error(err))
	} else {
		r.log.Info(r.be.driver() + " store recovered: state resynced")
	}
	if r.o.Hooks.Degraded != nil {
		r.o.Hooks.Degraded(d)
	}
}
