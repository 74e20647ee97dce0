package proxy

import (
	"math/rand/v2"
	"net/url"
	"sync/atomic"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
)

// target is one of an upstream's targets. With outlier detection it has a circuit of its
// own (gate): the circuit's trip is the target's ejection, its open period the ejection
// time, and a shared store shares it with the fleet like any circuit. Nothing here waits
// on a store: the gate decides from local state.
type target struct {
	index int // position in the upstream's targets
	url   *url.URL
	name  string       // the circuit's name, config.TargetName: UPSTREAM@HOST:PORT ("" without gate)
	gate  breaker.Gate // nil: the upstream has no outlier detection
	// inflight counts this replica's requests to the target (least_requests only).
	inflight atomic.Int64
}

// pick chooses the target for one request. Without outlier detection it is the next in
// round-robin order, or the better of two drawn at random (least_requests: the one with
// fewer requests in flight on this replica, Mitzenmacher's power of two choices).
//
// With outlier detection the target's circuit must admit the request: an ejected target
// (its circuit open, half-open with its one trial slot taken, or forced open by an
// operator) is skipped, and the pick moves on. A returning target (half-open) gets one
// trial request at a time; its success brings the target back, its failure ejects it
// again for longer. The request is then tracked: its outcome goes to the target's
// circuit (ticket).
//
// Safety caps: at most maxEjected targets are skipped at once, the first ones in config
// order whose circuit is not passing; maxEjected is at most len(targets)-1, so the last
// target is never ejected. A target ejected beyond the cap (the panic rule: more targets
// failing than max_ejection_percent allows) serves its share of requests as if it were
// healthy, untracked: its own circuit learns nothing from them, the upstream's circuit
// counts them like any request, and if the whole upstream fails it is the upstream's
// circuit that opens.
func (up *upstream) pick() (t *target, ticket breaker.Ticket, tracked bool) {
	n := len(up.targets)
	if n == 1 {
		return up.targets[0], ticket, false
	}
	i := up.first(n)
	t = up.targets[i]
	if t.gate == nil {
		return t, ticket, false
	}
	if tk, err := t.gate.Allow(); err == nil {
		return t, tk, true
	}
	if !up.honoured(i) {
		return t, ticket, false
	}
	// i is ejected: pick again the way the policy picks (the next round-robin positions,
	// or new draws of two), so that the skipped target's share spreads evenly over the
	// others, whichever targets are ejected. (A scan from one start would hand the share
	// of a run of ejected targets to the target after it.) 2n tries find a target in
	// practice; a scan from i ends the search.
	for range 2 * n {
		j := up.again(n)
		if j == i {
			continue
		}
		o := up.targets[j]
		if tk, err := o.gate.Allow(); err == nil {
			return o, tk, true
		}
		if !up.honoured(j) {
			return o, ticket, false
		}
	}
	for k := 1; k < n; k++ {
		j := (i + k) % n
		o := up.targets[j]
		if tk, err := o.gate.Allow(); err == nil {
			return o, tk, true
		}
		if !up.honoured(j) {
			return o, ticket, false
		}
	}
	// Every target is ejected within the cap: possible only while circuits change under
	// the scan. Serve the first choice untracked.
	return t, ticket, false
}

// again is another choice once the first was ejected: the next in round-robin order, or
// for least_requests the better of two distinct targets drawn at random, a passing one
// (not ejected) before one that is not, then the one with fewer requests in flight. (An
// ejected target has none in flight, so the first choice's rule would pick it again.)
func (up *upstream) again(n int) int {
	if !up.leastRequests {
		return int((up.next.Add(1) - 1) % uint64(n))
	}
	r := rand.Uint64()
	a := int(r % uint64(n))
	b := int((r >> 32) % uint64(n-1))
	if b >= a {
		b++
	}
	if pa, pb := up.targets[a].gate.Passing(), up.targets[b].gate.Passing(); pa != pb {
		if pb {
			return b
		}
		return a
	}
	if up.targets[b].inflight.Load() < up.targets[a].inflight.Load() {
		return b
	}
	return a
}

// first is the first choice among n targets: the next in round-robin order, or for
// least_requests the less busy of two distinct targets drawn at random.
func (up *upstream) first(n int) int {
	if !up.leastRequests {
		return int((up.next.Add(1) - 1) % uint64(n))
	}
	r := rand.Uint64()
	a := int(r % uint64(n))
	b := int((r >> 32) % uint64(n-1))
	if b >= a {
		b++
	}
	if up.targets[b].inflight.Load() < up.targets[a].inflight.Load() {
		return b
	}
	return a
}

// honoured reports whether target i, which refused a request, is ejected within the
// cap: fewer than maxEjected targets before it in config order are not passing. Every
// replica holding the same circuit states makes the same choice.
func (up *upstream) honoured(i int) bool {
	return config.Honoured(i, len(up.targets), up.maxEjected, func(j int) (bool, bool) {
		g := up.targets[j].gate
		return !g.Passing(), g.Mode() == breaker.ForcedOpen
	})
}

// maxEjected is how many of n targets may be ejected at once (config.MaxEjected).
func maxEjected(n, pct int) int { return config.MaxEjected(n, pct) }

// targetOutcome classifies a response status for the target's circuit, whatever the
// upstream's failure settings: 502, 503 and 504 are gateway failures (like a refused
// or reset connection, or a timeout), other 5xx failures, the rest successes. 501 Not
// Implemented and 505 HTTP Version Not Supported are successes: the client's request
// caused them, and a client sending unsupported methods must not eject healthy targets.
func targetOutcome(code int) breaker.Outcome {
	switch {
	case code == 502 || code == 503 || code == 504:
		return breaker.GatewayFailure
	case code == 501 || code == 505:
		return breaker.Success
	case code >= 500 && code <= 599:
		return breaker.Failure
	}
	return breaker.Success
}
