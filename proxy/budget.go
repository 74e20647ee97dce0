package proxy

import (
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fuseproxy/fuseproxy/config"
)

// budgetBuckets is how many buckets a retry budget's window is counted in.
const budgetBuckets = 10

// RetryBudget is an upstream's retry budget (Envoy's and Finagle's): retries may add at
// most Percent of the requests of the last Window, plus MinPerSecond, for the whole fleet.
//
// How the fleet shares it without asking the store on the request path: each replica
// spends what its own traffic earns, Percent of its own requests of the window, plus its
// share of the floor (MinPerSecond × Window × the replica's share of the fleet's
// requests, as the store last told it: Fleet). The parts add up to the fleet's budget at
// every instant, with no replica waiting for another's counts, so three replicas together
// stay within it exactly as one would; only the floor's split lags the traffic, by one
// flush of the store. Without a shared store (memory) the replica is the fleet.
//
// The bound is exact per window: a retry is allowed only while the retries of the window
// ending now, this one included, are within the budget of that window; over any run the
// retries are then at most Percent of the requests plus MinPerSecond × (run + Window).
type RetryBudget struct {
	percent float64 // a fraction: Percent/100
	floor   float64 // the fleet's floor per window: MinPerSecond × Window
	width   int64   // bucket width, ns
	window  time.Duration
	cfg     config.RetryBudget
	shared  bool // a shared store sets share (Fleet)

	// reqs counts the requests sent (first attempts), lock-free.
	reqs [budgetBuckets]budgetCounter

	mu      sync.Mutex // guards retries, denied and last: the count that must be exact
	retries [budgetBuckets]budgetBucket
	denied  uint64 // retries refused for want of budget, ever
	last    int64  // the latest epoch a take counted in

	// share is this replica's share of the fleet's requests (float64 bits), which splits
	// the floor; shared is whether a shared store set it.
	share  atomic.Uint64
	fleet  atomic.Pointer[FleetBudget]
	usedAt atomic.Int64 // unix ns of the last retry asked for: the budget is in use
}

// budgetCounter is a bucket of requests: its epoch (the low 32 bits, enough to tell the
// last few epochs apart) and its count, in one word, so that a bucket turning over never
// shows its old count under its new epoch to a concurrent reader (with the two in
// separate words, a take between the epoch's swap and the count's reset counted the
// requests of a window ago, and let retries through that the window has no room for).
type budgetCounter struct{ v atomic.Uint64 }

const budgetCountMask = 1<<32 - 1

// add counts a request at epoch e, turning the bucket over when it held another epoch.
func (c *budgetCounter) add(e int64) {
	ep := uint64(uint32(e)) << 32
	for {
		old := c.v.Load()
		nv := ep | 1
		if old&^budgetCountMask == ep {
			if old&budgetCountMask == budgetCountMask {
				return // saturated: 4 billion requests in one bucket
			}
			nv = old + 1
		}
		if c.v.CompareAndSwap(old, nv) {
			return
		}
	}
}

// in returns the bucket's count if its epoch is within the window ending in epoch e.
func (c *budgetCounter) in(e int64) int64 {
	v := c.v.Load()
	if d := uint32(e) - uint32(v>>32); d < budgetBuckets {
		return int64(v & budgetCountMask)
	}
	return 0
}

type budgetBucket struct{ epoch, n int64 }

// FleetBudget is what the store last said about the fleet's use of a budget.
type FleetBudget struct {
	Requests int64     `json:"requests"` // the fleet's requests in the window
	Retries  int64     `json:"retries"`  // the fleet's retries in the window
	Replicas int       `json:"replicas"` // replicas that reported within the window
	At       time.Time `json:"at"`
}

// NewRetryBudget returns an empty budget. shared says whether a shared store will tell it
// the replica's share of the fleet (Fleet): until it does, the replica spends no floor.
func NewRetryBudget(c config.RetryBudget, shared bool) *RetryBudget {
	w := max(c.Window, time.Second)
	b := &RetryBudget{
		percent: c.Percent / 100,
		floor:   c.MinPerSecond * w.Seconds(),
		width:   int64(w) / budgetBuckets,
		window:  w,
		cfg:     c,
		shared:  shared,
	}
	if !shared {
		b.share.Store(math.Float64bits(1))
	}
	return b
}

// deposit counts a request sent at now.
func (b *RetryBudget) deposit(now time.Time) {
	e := now.UnixNano() / b.width
	b.reqs[e%budgetBuckets].add(e)
}

// requests returns the requests of the window ending in epoch e.
func (b *RetryBudget) requests(e int64) int64 {
	var n int64
	for i := range b.reqs {
		n += b.reqs[i].in(e)
	}
	return n
}

// retriesLocked returns the retries of the window ending in epoch e.
func (b *RetryBudget) retriesLocked(e int64) int64 {
	var n int64
	for _, c := range b.retries {
		if d := e - c.epoch; d >= 0 && d < budgetBuckets {
			n += c.n
		}
	}
	return n
}

// allowed is this replica's part of the budget for a window of reqs requests.
func (b *RetryBudget) allowed(reqs int64) float64 {
	return b.percent*float64(reqs) + b.floor*math.Float64frombits(b.share.Load())
}

// take spends one retry at now if the window has room for it, and reports whether it did.
func (b *RetryBudget) take(now time.Time) bool {
	e := now.UnixNano() / b.width
	b.usedAt.Store(now.UnixNano())
	b.mu.Lock()
	defer b.mu.Unlock()
	// A time read before another take's but taken after it (concurrent requests read the
	// clock, then wait for the lock) counts in the window the budget has reached: from an
	// earlier epoch, the retries already counted in a later one would look like the
	// future and be left out of the window, which would then go over the budget. (A
	// wall clock set back by a window or more starts the count afresh.)
	if e < b.last && b.last-e < budgetBuckets {
		e = b.last
	}
	b.last = e
	if float64(b.retriesLocked(e)+1) > b.allowed(b.requests(e)) {
		b.denied++
		return false
	}
	c := &b.retries[e%budgetBuckets]
	if c.epoch != e {
		c.epoch, c.n = e, 0
	}
	c.n++
	return true
}

// Counts returns this replica's requests and retries of the window ending now, and
// whether the budget was in use within the window (a store shares only those). A budget
// not in use is not reported: the fleet stops counting the replica, and the others'
// shares of the floor grow to cover it, so it gives up its own share (until a report
// tells it its share again, it spends no floor, like a replica that just started).
func (b *RetryBudget) Counts(now time.Time) (requests, retries int64, active bool) {
	e := now.UnixNano() / b.width
	b.mu.Lock()
	retries = b.retriesLocked(e)
	b.mu.Unlock()
	active = now.UnixNano()-b.usedAt.Load() < int64(b.window)
	if !active && b.shared {
		b.share.Store(0)
	}
	return b.requests(e), retries, active
}

// Window is the budget's window, over which a shared store keeps the replicas' reports.
func (b *RetryBudget) Window() time.Duration { return b.window }

// Fleet takes the fleet's sums from a shared store: the requests and retries of every
// replica that reported within the window (this one's, as sent, included). The replica's
// share of the floor is its part of those requests.
func (b *RetryBudget) Fleet(requests, retries int64, replicas int, own int64, at time.Time) {
	share := 0.0
	switch {
	case requests > 0:
		share = min(float64(own)/float64(requests), 1)
	case replicas > 0:
		share = 1 / float64(replicas)
	}
	b.share.Store(math.Float64bits(share))
	b.fleet.Store(&FleetBudget{Requests: requests, Retries: retries, Replicas: replicas, At: at})
}

// BudgetView is a retry budget as the admin API shows it.
type BudgetView struct {
	Percent      float64      `json:"percent"`
	MinPerSecond float64      `json:"min_per_second"`
	Window       string       `json:"window"`
	Requests     int64        `json:"requests"` // this replica's, in the window
	Retries      int64        `json:"retries"`  // this replica's, in the window
	Allowed      float64      `json:"allowed"`  // this replica's part of the budget now
	Share        float64      `json:"share"`    // this replica's share of the floor
	Denied       uint64       `json:"denied_total"`
	Fleet        *FleetBudget `json:"fleet,omitempty"` // with a shared store, once reported
	InUse        float64      `json:"in_use"`          // retries / allowed, 0-1 (this replica)
}

// View returns the budget's state at now.
func (b *RetryBudget) View(now time.Time) BudgetView {
	e := now.UnixNano() / b.width
	b.mu.Lock()
	retries, denied := b.retriesLocked(e), b.denied
	b.mu.Unlock()
	reqs := b.requests(e)
	v := BudgetView{Percent: b.cfg.Percent, MinPerSecond: b.cfg.MinPerSecond, Window: b.window.String(),
		Requests: reqs, Retries: retries, Allowed: b.allowed(reqs), Share: math.Float64frombits(b.share.Load()),
		Denied: denied, Fleet: b.fleet.Load()}
	if v.Allowed > 0 {
		v.InUse = min(float64(retries)/v.Allowed, 1)
	}
	return v
}
