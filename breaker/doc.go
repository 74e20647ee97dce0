// Package breaker is fuseproxy's circuit breaker: a pure state machine with no I/O and an
// injected clock, one per upstream.
//
// # The story
//
// A circuit starts closed: every request is admitted and its outcome is counted in a
// sliding window of time buckets (by default 10 × 1 s) and in a run of consecutive
// failures. The circuit trips (closed → open) when any enabled rule fires:
//
//   - consecutive failures ≥ ConsecutiveFailures;
//   - consecutive gateway failures ≥ ConsecutiveGatewayFailures: a GatewayFailure (the
//     target refused or reset the connection, timed out, or answered 502, 503 or 504) is
//     a Failure for every rule and also builds a run of its own, which any other outcome
//     ends (a success, or a plain failure such as a 500);
//   - failures / requests ≥ FailureRate % over the window, once the window holds at
//     least MinimumRequests requests;
//   - slow calls / requests ≥ SlowCallRate % over the window (same minimum), where a
//     call slower than SlowCallDuration is slow whatever its outcome.
//
// While open, every request is rejected without touching the upstream. The open period is
// OpenDuration × BackoffMultiplier^(trips-1), or OpenDuration × trips with LinearBackoff
// (Envoy's ejection time), capped at MaxOpenDuration, then spread by ±Jitter so that many
// circuits do not recover in lock step. When it ends the circuit is half-open: at most
// HalfOpenMaxRequests trial requests are in flight at once; after SuccessThreshold
// successful trials it closes, and the first failed trial (a GatewayFailure too) opens it
// again with a longer period.
//
// A close resets the backoff (trips = 0) unless TripDecay is set: then the trip count is
// kept, and the next trip from closed first takes back one trip for each full TripDecay
// the circuit was closed (not below 0), so a target that stays healthy earns back its
// ejection count one step at a time. Reset clears the count either way.
//
// Every transition increments the generation. Admission hands out a Ticket stamped with
// the generation, and an outcome whose ticket is from an older generation is dropped:
// a slow request admitted before the circuit opened cannot close it again.
//
// # Late failures
//
// The proxy reports an outcome when the response headers arrive, so that a half-open
// trial frees its slot then rather than when a stream of hours ends. A response whose
// body the upstream breaks off afterwards is a failure after all: Done returns a Receipt
// for each success it counted, and LateFailure turns that success into a failure,
// fenced by generation like Done. In the window the request still counts once; for the
// run of consecutive failures the failure comes last; a trial's late failure reopens
// the circuit if its half-open period is still going on. A late failure never counts
// towards the run of gateway failures: the target answered with headers.
//
// # Modes
//
// An operator can override the machine: ForcedOpen rejects everything, ForcedClosed admits
// everything and never trips, MetricsOnly runs the machine and reports what it would have
// rejected but admits everything (a dry run).
//
// # Shared authority
//
// With a shared store (Redis) the decisions are made by the store for the whole fleet:
// the breaker then counts outcomes into a Delta that the store flushes (with the tails of
// its runs of failures and of gateway failures, so the store keeps fleet-wide runs),
// takes its state from Apply (with the trip count and, when closed, how long ago it
// closed, for TripDecay), and sends half-open trials only for permits the store grants.
// When the store is unreachable it falls back to deciding locally from the last state it
// knew.
// Neither mode does I/O here: the store drives the breaker, the breaker never waits.
package breaker
