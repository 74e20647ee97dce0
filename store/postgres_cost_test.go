package store

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/internal/testutil/pgtest"
	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// At steady closed state a replica asks its shared store about nothing per request:
// quiet circuits hold their successes and send them once a window, and the heartbeat
// remains. Both stores, side by side, 10 upstreams, healthy traffic for 3 s: at most
// 0.001 statements (PostgreSQL: every statement the server ran, pg_stat_statements) or
// commands (Redis: every command, those run inside the scripts included) per request.
func TestSharedStoreCallsPerRequest(t *testing.T) {
	const upstreams = 10
	settings := baseSettings()
	settings.Window = 10 * time.Second
	breakers := make([]*breaker.Breaker, upstreams)
	circuits := func() map[string]Circuit {
		cs := map[string]Circuit{}
		for i := range breakers {
			name := "u" + strconv.Itoa(i)
			breakers[i] = breaker.New(name, settings, breaker.Options{})
			cs[name] = Circuit{Breaker: breakers[i], SettingsHash: "h", TrialLease: 10 * time.Second}
		}
		return cs
	}
	o := RedisOptions{Prefix: "fuse", ReplicaID: "r0", FlushInterval: 100 * time.Millisecond, DegradeAfter: 3,
		Timeout: time.Second, Logger: zap.NewNop()}
	serve := func(d time.Duration) int {
		requests := 0
		for end := time.Now().Add(d); time.Now().Before(end); {
			for range 1000 {
				b := breakers[requests%upstreams]
				tk, err := b.Allow()
				if err != nil {
					t.Fatal(err)
				}
				b.Done(tk, breaker.Success, time.Millisecond)
				requests++
			}
			time.Sleep(time.Millisecond)
		}
		return requests
	}
	run := func(t *testing.T, st Store, count func() int64) {
		st.Attach(circuits())
		if err := st.Resync(t.Context()); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Go(func() { _ = st.Run(ctx) })
		defer func() { cancel(); wg.Wait(); st.Close() }()
		serve(time.Second) // warm up: every circuit synced and quiet
		before := count()
		requests := serve(3 * time.Second)
		calls := count() - before
		ratio := float64(calls) / float64(requests)
		t.Logf("%d requests over %d upstreams in 3s, %d calls to the store: %.6f per request", requests, upstreams, calls, ratio)
		if ratio > 0.001 {
			t.Errorf("%.6f calls to the store per request, want <= 0.001", ratio)
		}
	}
	t.Run("redis", func(t *testing.T) {
		srv := redistest.Start(t)
		client, err := NewRedisClient(RedisClientOptions{URL: srv.URL(), PoolSize: 4})
		if err != nil {
			t.Fatal(err)
		}
		st, err := NewRedis(client, o)
		if err != nil {
			t.Fatal(err)
		}
		run(t, st, func() int64 {
			n := int64(-1) // the INFO that reads them
			for _, c := range srv.CommandStats() {
				n += c
			}
			return n
		})
	})
	t.Run("postgres", func(t *testing.T) {
		srv := pgtest.Start(t, "shared_preload_libraries=pg_stat_statements", "pg_stat_statements.track=all")
		srv.Exec("CREATE EXTENSION pg_stat_statements")
		f := newPgFleet(t, srv)
		pool, err := NewPostgresPool(PostgresClientOptions{URL: srv.DSN(), PoolSize: 4})
		if err != nil {
			t.Fatal(err)
		}
		po := o
		po.Prefix = f.prefix
		st, err := NewPostgres(pool, po)
		if err != nil {
			t.Fatal(err)
		}
		run(t, st, func() int64 {
			var n int64
			// top-level statements of the store's role: the test's own run through the
			// same role, so they are told apart by their text
			if err := srv.Pool().QueryRow(context.Background(), `SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements
				WHERE toplevel AND query NOT LIKE '%pg_stat_statements%'`).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n
		})
	})
}
