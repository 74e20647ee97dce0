package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Transition is one fleet transition of a circuit as the store recorded it, appended by
// the code that made the transition, atomically with it (the Redis script, the
// PostgreSQL function, the memory store's breaker callback), so that each transition is
// recorded exactly once whichever replica made it.
type Transition struct {
	Upstream string `json:"upstream"`
	// Key is the per-key circuit's key; empty for an upstream's (or a target's) circuit.
	Key  string `json:"key"`
	From string `json:"from"` // closed, open or half_open
	To   string `json:"to"`
	// Reason is why: the trip reason (consecutive_failures, failure_rate, ...),
	// open_timeout, trial_success, an operator's command, ...
	Reason string `json:"reason"`
	// Requests, Failures and Slow are the window's counts at the transition; Consecutive
	// the consecutive failures.
	Requests    int64 `json:"requests"`
	Failures    int64 `json:"failures"`
	Slow        int64 `json:"slow"`
	Consecutive int64 `json:"consecutive"`
	// Generation is the circuit's generation after the transition.
	Generation uint64 `json:"generation"`
	// Replica is the replica whose call made the transition; empty when the store's clock
	// made it (an open period that ended with no replica asking).
	Replica string `json:"replica"`
	// At is when, on the store's clock (Redis's, PostgreSQL's, or the replica's for the
	// memory store).
	At time.Time `json:"at"`
}

// HistoryOptions bound what a store keeps of each circuit's transitions
// (store.history in the config, whose defaults live in config.Default()).
type HistoryOptions struct {
	// Retention is how long a transition is kept; 0 disables the history (nothing is
	// recorded, History returns ErrHistoryDisabled).
	Retention time.Duration
	// MaxEntries is how many transitions are kept per circuit at most.
	MaxEntries int
}

// Enabled reports whether transitions are recorded.
func (o HistoryOptions) Enabled() bool { return o.Retention > 0 && o.MaxEntries > 0 }

// ErrHistoryDisabled is returned by History when store.history.retention is 0.
var ErrHistoryDisabled = errors.New("transition history disabled (store.history.retention is 0)")

// arg is what the scripts' settings argument ends with to record transitions (fields 18
// and 19 of lua/prelude.lua's settings: retention ms, max entries), "" without history.
func (o HistoryOptions) arg() string {
	if !o.Enabled() {
		return ""
	}
	return "," + strconv.FormatInt(o.Retention.Milliseconds(), 10) + "," + strconv.Itoa(o.MaxEntries)
}

// historyKey is an upstream's history stream, in its circuit's hash slot.
func historyKey(prefix, upstream string) string {
	return fmt.Sprintf("%s:{%s}:history", prefix, upstream)
}

// History implements Store: the upstream's stream, newest first (XREVRANGE), its keys'
// transitions included (Transition.Key). name may be an upstream (or target) circuit, or
// an upstream with per-key circuits.
func (r *Redis) History(ctx context.Context, name string, limit int) ([]Transition, error) {
	if !r.o.History.Enabled() {
		return nil, ErrHistoryDisabled
	}
	if _, ok := r.get(name); !ok {
		r.kmu.Lock()
		_, ok = r.kups[name]
		r.kmu.Unlock()
		if !ok {
			return nil, unknown(name)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, r.o.Timeout)
	defer cancel()
	return r.be.history(ctx, name, limit)
}

// history reads an upstream's stream, newest first (all of it when limit is 0).
func (b *redisBackend) history(ctx context.Context, name string, limit int) ([]Transition, error) {
	key := historyKey(b.prefix, name)
	var (
		msgs []redis.XMessage
		err  error
	)
	if limit > 0 {
		msgs, err = b.client.XRevRangeN(ctx, key, "+", "-", int64(limit)).Result()
	} else {
		msgs, err = b.client.XRevRange(ctx, key, "+", "-").Result()
	}
	if err != nil {
		return nil, err
	}
	out := make([]Transition, 0, len(msgs))
	for _, m := range msgs {
		t, err := decodeTransition(name, m.Values)
		if err != nil {
			return nil, fmt.Errorf("history of %q: entry %s: %w", name, m.ID, err)
		}
		out = append(out, t)
	}
	return out, nil
}

// decodeTransition reads one stream entry as lua/prelude.lua's record writes it.
func decodeTransition(upstream string, v map[string]any) (Transition, error) {
	t := Transition{Upstream: upstream}
	str := func(f string) string { s, _ := v[f].(string); return s }
	num := func(f string, dst *int64) error {
		n, err := strconv.ParseInt(str(f), 10, 64)
		if err != nil {
			return fmt.Errorf("field %s: %q is not a count", f, str(f))
		}
		*dst = n
		return nil
	}
	t.Key, t.From, t.To, t.Reason, t.Replica = str("k"), str("f"), str("t"), str("rs"), str("rp")
	var gen, at int64
	for _, f := range []struct {
		name string
		dst  *int64
	}{{"rq", &t.Requests}, {"fl", &t.Failures}, {"sl", &t.Slow}, {"cf", &t.Consecutive}, {"g", &gen}, {"at", &at}} {
		if err := num(f.name, f.dst); err != nil {
			return Transition{}, err
		}
	}
	t.Generation, t.At = uint64(gen), time.UnixMilli(at).UTC()
	return t, nil
}
