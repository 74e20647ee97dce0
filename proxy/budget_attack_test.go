package proxy

import (
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/config"
)

// TestRetryBudgetIdleReplicaDropsItsShare: a replica whose budget goes idle stops
// reporting to the fleet, so the others' shares of the floor grow to cover it; it must
// not keep its last share meanwhile, or when retries come back to it both spend the
// same floor: two replicas together took twice the fleet's floor.
func TestRetryBudgetIdleReplicaDropsItsShare(t *testing.T) {
	cfg := config.RetryBudget{Percent: 0, MinPerSecond: 3, Window: 10 * time.Second} // floor: 30 a window
	a, b := NewRetryBudget(cfg, true), NewRetryBudget(cfg, true)
	t0 := time.Unix(3000, 0)
	// B alone retries: the fleet is B, its share the whole floor.
	for range 100 {
		b.deposit(t0)
	}
	b.take(t0)
	if _, _, active := b.Counts(t0); !active {
		t.Fatal("b not active after a retry")
	}
	b.Fleet(100, 1, 1, 100, t0)
	// B's retries stop; it stops reporting (inactive), and its report ages out of the
	// fleet's sums: A, retrying now, is the fleet.
	t1 := t0.Add(25 * time.Second)
	if _, _, active := b.Counts(t1); active {
		t.Fatal("b still active a window after its last retry")
	}
	for range 100 {
		a.deposit(t1)
		b.deposit(t1)
	}
	n := 0
	if a.take(t1) { // no share yet: no floor
		n++
	}
	a.Fleet(100, 0, 1, 100, t1)
	// Retries come back to B before its next report: together they may spend the floor
	// once.
	for a.take(t1) {
		n++
	}
	for b.take(t1) {
		n++
	}
	if n > 30 {
		t.Errorf("the two replicas took %d retries in one window, over the fleet's floor of 30", n)
	}
}

// TestRetryBudgetConcurrentBound: many requests failing and retrying at once stay within
// the budget: the retries reaching the backend are at most percent of the requests.
func TestRetryBudgetConcurrentBound(t *testing.T) {
	bad := newScriptBackend(t, 503)
	u := retrying(t, bad.URL)
	u.Retries.Attempts = 5
	u.Retries.Budget = config.RetryBudget{Percent: 10, MinPerSecond: 0, Window: time.Minute}
	f := newFixture(t, single(u))
	const clients, each = 20, 25
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for range each {
				resp, err := f.client.Get(f.srv.URL + "/x")
				if err != nil {
					t.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
	retries, _ := f.rec.retryCount()
	if retries > clients*each/10 {
		t.Errorf("%d retries for %d requests at 10 %%", retries, clients*each)
	}
	if got := bad.hits.Load(); got != int64(clients*each+retries) {
		t.Errorf("backend got %d requests, want %d requests + %d retries", got, clients*each, retries)
	}
	t.Logf("%d requests, %d retries", clients*each, retries)
}

// TestRetryBudgetTurnoverShowsNoStaleCount: a bucket of requests turning over to a new
// epoch must never show, under the new epoch, the count it held a window (or more)
// before, to a take reading it at the same moment: that count is not in the window, and
// would let a retry through the budget. The writer turns a bucket over on every round
// (its previous count: 100 requests of long ago) while a reader checks the window.
func TestRetryBudgetTurnoverShowsNoStaleCount(t *testing.T) {
	b := NewRetryBudget(config.RetryBudget{Percent: 100, Window: 10 * time.Second}, false)
	width := int64(time.Second)
	at := func(e int64) time.Time { return time.Unix(0, e*width) }
	var cur atomic.Int64
	cur.Store(1_000_000)
	var stale, reads atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			// the window of cur holds one request per epoch at most: the writer's. (A
			// read the writer overtook by half a window or more is not judged: the
			// deposits of "long ago" it then finds fall in its own, stale, window.)
			c := cur.Load()
			if b.requests(c) >= 100 && cur.Load()-c < budgetBuckets/2 {
				stale.Add(1)
			}
			reads.Add(1)
		}
	})
	rounds := 0
	for deadline := time.Now().Add(300 * time.Millisecond); time.Now().Before(deadline); rounds++ {
		e := cur.Load() + 1
		for range 100 { // the bucket of e, two windows ago: out of every window read
			b.deposit(at(e - 20))
		}
		cur.Store(e)
		b.deposit(at(e)) // turns the bucket over
	}
	close(stop)
	wg.Wait()
	if n := stale.Load(); n > 0 {
		t.Errorf("%d of %d reads during %d turnovers counted a bucket's requests of two windows ago", n, reads.Load(), rounds)
	}
}

// TestRetryBudgetLateClockReading: a retry whose time was read before another's, but
// which takes the budget after it, across a bucket boundary (concurrent requests read
// the clock, then queue for the budget's lock), is counted in the window the budget has
// reached: with the window's room spent at the later time, the earlier reading found the
// later retries in the future, left them out, and was let through over the budget.
func TestRetryBudgetLateClockReading(t *testing.T) {
	cfg := config.RetryBudget{Percent: 0, MinPerSecond: 0.2, Window: 10 * time.Second} // floor: 2 a window
	b := NewRetryBudget(cfg, false)
	t1 := time.Unix(5000, 0)       // the start of a bucket
	t0 := t1.Add(-time.Nanosecond) // the bucket before
	n := 0
	for b.take(t1) {
		n++
	}
	if b.take(t0) {
		n++
	}
	if n > 2 {
		t.Errorf("%d retries in the window ending at %v, over its floor of 2", n, t1)
	}
}
