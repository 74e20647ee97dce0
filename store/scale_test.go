package store

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// TestRedisResyncTenThousandCircuits: a replica with 10,000 upstreams reads them all at
// start in pipelines of at most maxPipeline scripts, each bounded by the store's timeout
// (one pipeline of all 10,000 would need a timeout its size), and then rejects on every
// circuit the fleet opened. The timeout here is 2 s: under the race detector on a loaded
// CI machine a pipeline of 256 took longer than 200 ms; the pipelines' sizes are what is
// asserted.
func TestRedisResyncTenThousandCircuits(t *testing.T) {
	if testing.Short() {
		t.Skip("10,000 circuits")
	}
	t.Parallel()
	const n = 10_000
	srv := redistest.Start(t)
	sizes := &pipelineSizes{}
	newStore := func() (*Redis, map[string]Circuit) {
		client, err := NewRedisClient(RedisClientOptions{URL: srv.URL(), PoolSize: 4})
		if err != nil {
			t.Fatal(err)
		}
		client.AddHook(sizes)
		st := newTestRedis(t, client, RedisOptions{ReplicaID: "r", Timeout: 2 * time.Second})
		t.Cleanup(func() { st.Close() })
		cs := make(map[string]Circuit, n)
		for i := range n {
			name := "u" + strconv.Itoa(i)
			cs[name] = Circuit{Breaker: breaker.New(name, longOpen(), breaker.Options{}), SettingsHash: "h", TrialLease: 10 * time.Second}
		}
		st.Attach(cs)
		return st, cs
	}
	first, _ := newStore()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	if err := first.Resync(ctx); err != nil {
		t.Fatalf("Resync of %d circuits: %v", n, err)
	}
	t.Logf("first Resync of %d circuits (creating every key): %v", n, time.Since(start))
	for i := 0; i < n; i += 1000 { // one circuit in a thousand opens
		if err := first.Control(ctx, "u"+strconv.Itoa(i), Command{Op: OpOpen}); err != nil {
			t.Fatal(err)
		}
	}
	second, cs := newStore()
	start = time.Now()
	if err := second.Resync(ctx); err != nil {
		t.Fatalf("Resync of %d circuits: %v", n, err)
	}
	t.Logf("Resync of %d circuits by a second replica: %v", n, time.Since(start))
	sizes.mu.Lock()
	if sizes.largest > maxPipeline || sizes.pipelines < 2*n/maxPipeline {
		t.Errorf("%d pipelines, the largest of %d commands; want at least %d, none over %d",
			sizes.pipelines, sizes.largest, 2*n/maxPipeline, maxPipeline)
	}
	sizes.mu.Unlock()
	for name, c := range cs {
		i, _ := strconv.Atoi(name[1:])
		if want := map[bool]breaker.State{true: breaker.Open, false: breaker.Closed}[i%1000 == 0]; c.Breaker.State() != want {
			t.Fatalf("%s: %v after Resync, want %v", name, c.Breaker.State(), want)
		}
	}
}

// pipelineSizes is a client hook noting how many pipelines were sent and the largest.
type pipelineSizes struct {
	mu                 sync.Mutex
	pipelines, largest int
}

func (p *pipelineSizes) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (p *pipelineSizes) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (p *pipelineSizes) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		p.mu.Lock()
		p.pipelines++
		p.largest = max(p.largest, len(cmds))
		p.mu.Unlock()
		return next(ctx, cmds)
	}
}

// BenchmarkRedisIdleFlush is one turn of the flush loop (every flush_interval, 100 ms by
// default) for a replica whose n circuits are closed and synced and have nothing to
// send: "idle", no traffic; "holding", each holds successes of a quiet window (a replica
// under load spread over every upstream, between sends). No call reaches Redis.
func BenchmarkRedisIdleFlush(b *testing.B) {
	for _, kind := range []string{"idle", "holding"} {
		for _, n := range []int{10, 10_000} {
			b.Run(kind+"/"+strconv.Itoa(n), func(b *testing.B) {
				st := offlineStore(b)
				s := longOpen()
				s.Window = time.Hour // successes are held this long: longer than any -benchtime
				cs := make(map[string]Circuit, n)
				for i := range n {
					name := "u" + strconv.Itoa(i)
					cs[name] = Circuit{Breaker: breaker.New(name, s, breaker.Options{}), SettingsHash: "h", TrialLease: 10 * time.Second}
				}
				st.Attach(cs)
				for _, c := range st.list() { // as a resync leaves them
					c.Breaker.SetShared(true)
					c.synced.Store(true)
					c.quiet.Store(true)
					c.refreshAt = time.Now().Add(refreshEvery)
					if kind == "holding" {
						gate(c.Breaker).Done(must(gate(c.Breaker).Allow()), breaker.Success, 0)
					}
				}
				ctx := context.Background()
				st.xmu.Lock()
				defer st.xmu.Unlock()
				for b.Loop() {
					if err := st.exchange(ctx, st.list(), false); !errors.Is(err, errIdle) {
						b.Fatalf("exchange: %v, want errIdle (nothing sent)", err)
					}
				}
				if kind == "holding" && !st.holding {
					b.Fatal("no circuit holds successes")
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/circuit")
			})
		}
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// offlineStore is a Redis store (flush interval 100 ms) whose client points at a port
// nothing listens on, for tests of what it plans without sending anything.
func offlineStore(tb testing.TB) *Redis {
	client, err := NewRedisClient(RedisClientOptions{URL: "redis://127.0.0.1:1/0"}) // never dialled
	if err != nil {
		tb.Fatal(err)
	}
	st := newTestRedis(tb, client, RedisOptions{ReplicaID: "r", FlushInterval: 100 * time.Millisecond})
	tb.Cleanup(func() { st.Close() })
	return st
}
