package store

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// Every test closes what it opens (stores, clients, subscriptions, redis-servers), so no
// goroutine may outlive the package's tests, with one exception: once as many dials as
// the pool has connections failed, go-redis starts a prober that dials Redis every second
// until one succeeds, and checks whether its client was closed only after its sleep, so
// it outlives a closed client by up to a second. Tests that kill Redis start it.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(pgMain{m},
		goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"))
}

// fakeClock is a breaker.Clock that moves only when told.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) Now() time.Duration      { return time.Duration(c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

var _ breaker.Clock = (*fakeClock)(nil)

// waitFor is how long eventually waits by default: generous for -race on a busy machine,
// while a passing test returns as soon as the condition holds.
const waitFor = 5 * time.Second

// startResync runs a replica's first Resync as the replica would: one that fails is
// tried again (the store's loop does), here every 10 ms for up to waitFor. On a loaded
// machine under the race detector one round trip can outlast a test's short timeout (CI:
// an i/o timeout at 100 ms, a PostgreSQL connection at 250 ms), which is not what the
// tests that start replicas are about; those about a failing Resync call it themselves.
func startResync(tb testing.TB, id string, resync func(context.Context) error) {
	tb.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		err := resync(context.Background())
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("replica %s: Resync: %v", id, err)
		}
		tb.Logf("replica %s: Resync: %v (trying again)", id, err)
		time.Sleep(10 * time.Millisecond)
	}
}

// eventually polls cond until it holds, failing the test after within.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(time.Millisecond) // polling interval, not synchronisation
	}
}

// baseSettings is a breaker that trips after 3 consecutive failures (the rate rules off),
// opens for 100 ms without backoff or jitter, and closes after one good trial.
func baseSettings() breaker.Settings {
	return breaker.Settings{
		ConsecutiveFailures: 3,
		Window:              time.Second,
		Buckets:             10,
		OpenDuration:        100 * time.Millisecond,
		BackoffMultiplier:   1,
		HalfOpenMaxRequests: 1,
		SuccessThreshold:    1,
	}
}

// fail and succeed run one request through b with the given outcome; the request must
// be admitted.
func fail(t testing.TB, b *breaker.Breaker)    { t.Helper(); do(t, b, breaker.Failure) }
func succeed(t testing.TB, b *breaker.Breaker) { t.Helper(); do(t, b, breaker.Success) }

func do(t testing.TB, b *breaker.Breaker, o breaker.Outcome) {
	t.Helper()
	tk, err := b.Allow()
	if err != nil {
		t.Fatalf("%s: Allow: %v (state %v)", b.Name(), err, b.State())
	}
	b.Done(tk, o, time.Millisecond)
}

// gate is the request path's view of a circuit's breaker, for tests that play requests
// through a store's circuits (a store itself never sees it).
func gate(b breaker.Sync) breaker.Gate { return b.(breaker.Gate) }
