package store

import (
	"context"
)

// backend is the server a shared store keeps its state in: Redis (redisBackend) or
// PostgreSQL (pgBackend). The engine (the Redis type and its loop, whatever the backend)
// plans calls and applies their replies; a backend only carries them:
//
//   - A call names a script (one of the *redis.Script values, which the PostgreSQL
//     backend maps to its SQL function of the same contract), its Redis keys, and the
//     script's arguments. run sends a slice of them in one round trip and sets each
//     call's cmd to its reply (an []any of int64, string and nil, as decodeReply takes)
//     or to its error reply.
//   - An error reply is the server's answer to one call: it satisfies redis.Error, which
//     is how the engine tells it from no answer at all (a network error, a timeout),
//     whichever the backend. run returns an error when some call got no reply.
//   - listen delivers other replicas' transitions and onsets (pub/sub, LISTEN/NOTIFY) to
//     the engine, and asks for a resync whenever it (re)starts listening: messages are
//     lost while it is not.
type backend interface {
	// driver names the backend as Status.Driver and the logs do.
	driver() string
	// run sends calls in one round trip and sets each call's cmd.
	run(ctx context.Context, calls []*call) error
	// pipeline is how many calls one round trip carries at most (see exchange), each
	// round trip bounded by the store's Timeout.
	pipeline() int
	// eval runs one call on its own (an operator's command) and returns its reply.
	eval(ctx context.Context, cl *call) (any, error)
	// listen delivers messages to r (onMessage, onOnset) until ctx ends.
	listen(ctx context.Context, r *Redis)
	// inspect returns what the server holds for c: as a circuit's (Inspect), or as a
	// key's (InspectKey).
	inspect(ctx context.Context, c *circuit, key bool) (map[string]string, error)
	// claim takes or renews owner's lease on key for ms milliseconds (see Store.Claim).
	claim(ctx context.Context, key, owner string, ms int64) (bool, error)
	// history returns an upstream's transitions (its keys' included), newest first, at
	// most limit (all when 0).
	history(ctx context.Context, upstream string, limit int) ([]Transition, error)
	// members returns at most n keys of upstream's registry of per-key circuits
	// (registry is its Redis key).
	members(ctx context.Context, upstream, registry string, n int) ([]string, error)
	// failed is told of every failed exchange (a Redis Cluster client then reloads its
	// view of the masters).
	failed()
	// close releases the connections.
	close() error
}
