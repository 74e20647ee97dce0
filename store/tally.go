package store

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Tally is a count that each replica keeps and the fleet sums through a shared store: a
// retry budget's recent requests and retries. Nothing about it is on the request path:
// the store reads Counts and hands over the fleet's sums (Fleet) from its own loop.
type Tally interface {
	// Counts returns this replica's two counts over the tally's window at now, and
	// whether they are worth sharing now: a store sends only active tallies.
	Counts(now time.Time) (a, b int64, active bool)
	// Window is how long a replica's report counts towards the fleet's sums.
	Window() time.Duration
	// Fleet hands over the sums of the last reports of every replica that reported
	// within the window, this one's (own: its a, as sent) included, and how many
	// replicas that is.
	Fleet(a, b int64, replicas int, own int64, at time.Time)
}

// tallyScript records one replica's report of a tally (KEYS[1], a hash of replica →
// "a:b:ms") on Redis's clock, drops the reports older than the window and returns the
// sums of the others and the number of replicas. A foreign value under the key is
// replaced (like a circuit's, see load in lua/prelude.lua), and so is a field no replica
// could have written: a count of more than 15 digits (beyond a Lua number's exact
// integers, whose sum Redis would turn into a negative reply, failing every replica's
// exchange) or a time more than a window ahead of Redis's clock (it would never age out).
// A report up to a window ahead counts: another master's clock, before a failover, may
// have run ahead of this one's.
var tallyScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[4])
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'hash' and kind ~= 'none' then redis.call('DEL', KEYS[1]) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. ARGV[3] .. ':' .. now)
local all = redis.call('HGETALL', KEYS[1])
local a, b, n = 0, 0, 0
for i = 1, #all, 2 do
  local x, y, at = string.match(all[i + 1], '^(%d+):(%d+):(%d+)$')
  if at and #x <= 15 and #y <= 15 and tonumber(at) <= now + window and now - tonumber(at) <= window then
    a, b, n = a + tonumber(x), b + tonumber(y), n + 1
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
redis.call('PEXPIRE', KEYS[1], 2 * window)
return {a, b, n}
`)

// tallyEntry is one shared tally as the Redis store keeps it.
type tallyEntry struct {
	name string
	key  string
	t    Tally
}

// tallies are a Redis store's shared tallies, replaced whole by Share.
type tallies struct {
	set atomic.Pointer[[]*tallyEntry]
}

// Share hands the store the whole set of tallies to share with the fleet, at start and
// on every reload; those not in the set are no longer sent.
func (r *Redis) Share(ts map[string]Tally) {
	list := make([]*tallyEntry, 0, len(ts))
	for name, t := range ts {
		list = append(list, &tallyEntry{name: name, key: fmt.Sprintf("%s:{tally:%s}", r.o.Prefix, name), t: t})
	}
	r.tallies.set.Store(&list)
}

// planTallies appends a call for each active tally.
func (r *Redis) planTallies(calls []*call, now time.Time) []*call {
	set := r.tallies.set.Load()
	if set == nil {
		return calls
	}
	for _, e := range *set {
		a, b, active := e.t.Counts(now)
		if !active {
			continue
		}
		calls = append(calls, &call{tally: e, own: a, script: tallyScript, keys: []string{e.key},
			args: []any{r.o.ReplicaID, a, b, e.t.Window().Milliseconds()}})
	}
	return calls
}

// applyTally hands a tally's reply to it.
func applyTally(cl *call, at time.Time) error {
	v, ok := cl.cmd.Val().([]any)
	if !ok || len(v) != 3 {
		return fmt.Errorf("unexpected reply from Redis for tally %q: %v", cl.tally.name, cl.cmd.Val())
	}
	var n [3]int64
	for i := range v {
		x, ok := v[i].(int64)
		if !ok || x < 0 {
			return fmt.Errorf("unexpected reply from Redis for tally %q: %v", cl.tally.name, v)
		}
		n[i] = x
	}
	cl.tally.t.Fleet(n[0], n[1], int(n[2]), cl.own, at)
	return nil
}
