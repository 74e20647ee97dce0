package store

import (
	_ "embed"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/fuseproxy/fuseproxy/breaker"
)

var (
	//go:embed lua/prelude.lua
	prelude string
	//go:embed lua/flush.lua
	flushSrc string
	//go:embed lua/acquire.lua
	acquireSrc string
	//go:embed lua/trial.lua
	trialSrc string
	//go:embed lua/control.lua
	controlSrc string
)

// The scripts share one prelude (state layout, trip rules, save, reply). Each runs on one
// circuit's two keys, which share a hash slot, so all of them work on Redis Cluster.
var (
	flushScript   = redis.NewScript(prelude + flushSrc)
	acquireScript = redis.NewScript(prelude + acquireSrc)
	trialScript   = redis.NewScript(prelude + trialSrc)
	controlScript = redis.NewScript(prelude + controlSrc)
	// heartbeatScript checks that Redis runs this replica's scripts and takes their
	// writes: it sets KEYS[1] (the replica's heartbeat key) for ARGV[1] ms.
	heartbeatScript = redis.NewScript("redis.call('SET', KEYS[1], '1', 'PX', ARGV[1]) return 1")
	allScripts      = []*redis.Script{flushScript, acquireScript, trialScript, controlScript, heartbeatScript, tallyScript}
)

// settingsArg encodes a circuit's settings as the scripts' settings argument (the order
// settings in lua/prelude.lua reads). New settings go at the end: the scripts read a
// missing one as 0.
func settingsArg(s breaker.Settings, minReplicas int) string {
	ms := func(d interface{ Milliseconds() int64 }) string { return strconv.FormatInt(d.Milliseconds(), 10) }
	f := func(x float64) string { return strconv.FormatFloat(x, 'f', -1, 64) }
	i := strconv.Itoa
	return strings.Join([]string{
		i(s.ConsecutiveFailures), f(s.FailureRate), f(s.SlowCallRate), i(s.MinimumRequests),
		ms(s.Window), i(s.Buckets), ms(s.OpenDuration), f(s.BackoffMultiplier), ms(s.MaxOpenDuration),
		f(s.Jitter), i(s.HalfOpenMaxRequests), i(s.SuccessThreshold), i(max(minReplicas, 1)),
		i(int(s.Mode)), i(s.ConsecutiveGatewayFailures), i(boolArg(s.LinearBackoff)), ms(s.TripDecay),
	}, ",")
}

// keys returns an upstream's keys in Redis: its state and its trial leases, in one
// allocation (a circuit derives them when a call needs them, rather than keep them).
func keys(prefix, name string) (state, leases string) {
	s := prefix + ":{" + name + "}:state" + prefix + ":{" + name + "}:leases"
	n := len(prefix) + len(name) + len(":{}:state")
	return s[:n], s[n:]
}
