package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/redis/go-redis/v9"
)

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
		if c.k != nil && c.k.local.Load() {
			continue // a key the registry refused decides alone (keyed.go)
		}
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
	r.readRegistries(ctx) // keys the fleet holds open that this replica does not track (keyed.go)
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
	keys := r.callKeys(c)
	var res any
	var err error
	for {
		if c.k != nil {
			res, err = r.controlKeyRun(ctx, c, cmd)
		} else {
			res, err = r.be.eval(ctx, &call{c: c, script: controlScript, keys: keys, args: []any{op, int(cmd.Mode), c.cfg.arg,
				rand.Float64(), r.channel, c.name, r.o.ReplicaID}})
		}
		// A connection error (not Redis's reply) is tried again within the timeout: just
		// after Redis came back, the client's pool may still answer with the dial error
		// of the outage for a moment while the loop's exchanges already succeed.
		var reply redis.Error
		if err == nil || errors.As(err, &reply) {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(controlRetryPause):
			continue
		}
		break
	}
	if err != nil {
		apply(c.Breaker, cmd)
		// The local command moved this breaker to a generation Redis never issued; it
		// would ignore every shared state up to it. Re-read everything (whatever the
		// generation) as soon as Redis answers, as after a degradation.
		r.requestResync()
		return &LocalOnlyError{Err: err}
	}
	if v, ok := res.(int64); ok && v == -1 && c.k != nil {
		return fmt.Errorf("key %q: the shared registry of %q is full (max_keys)", name, c.k.upstream)
	}
	rep, err := decodeReply(res)
	if err != nil {
		return err
	}
	r.apply(c, rep, false, "control")
	c.quiet.Store(rep.quiet)
	return nil
}

// controlRetryPause is the pause before an operator command tries Redis again after a
// connection error, within the exchange timeout.
const controlRetryPause = 50 * time.Millisecond

// LocalOnlyError reports an operator command that reached this replica only.
type LocalOnlyError struct{ Err error }

func (e *LocalOnlyError) Error() string {
	return "applied to this replica only; shared store unreachable: " + e.Err.Error()
}

func (e *LocalOnlyError) Unwrap() error { return e.Err }

// Inspect implements Store: the circuit's state and its trial leases as the server
// holds them.
func (r *Redis) Inspect(ctx context.Context, name string) (map[string]string, error) {
	c, ok := r.get(name)
	if !ok {
		return nil, unknown(name)
	}
	ctx, cancel := context.WithTimeout(ctx, r.o.Timeout)
	defer cancel()
	return r.be.inspect(ctx, c, false)
}
