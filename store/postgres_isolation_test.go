package store

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// TestPostgresStricterDefaultIsolation: a database (or role) whose
// default_transaction_isolation is repeatable read or serializable, as some teams set
// it, must not change how the functions run: they are written for READ COMMITTED (a
// call waiting for a circuit's row lock then reads what the holder wrote). Under a
// stricter default, replicas flushing one circuit at once failed with serialization
// errors (40001), which degraded the store under load. The pool asks for READ COMMITTED.
func TestPostgresStricterDefaultIsolation(t *testing.T) {
	t.Parallel()
	concurrentFlushesUnder(t, "strict_iso", "default_transaction_isolation = 'serializable'")
}

// TestPostgresDatabaseLockTimeout: a database's lock_timeout (set for its other users)
// must not fail a call that waits for a circuit's row while another replica's call holds
// it (55P03, which degraded the store under load): statement_timeout bounds the call.
func TestPostgresDatabaseLockTimeout(t *testing.T) {
	t.Parallel()
	concurrentFlushesUnder(t, "strict_lock", "lock_timeout = '1ms'")
}

// concurrentFlushesUnder runs concurrent flushes of one circuit through a pool of
// NewPostgresPool on database db, whose default setting is set.
func concurrentFlushesUnder(t *testing.T, db, set string) {
	srv := pgServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv.Exec("CREATE DATABASE " + db)
	srv.Exec("ALTER DATABASE " + db + " SET " + set)
	pool, err := NewPostgresPool(PostgresClientOptions{URL: srv.DSNFor("postgres", db), PoolSize: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := Migrate(ctx, pool, "fuse_"); err != nil {
		t.Fatal(err)
	}
	s := baseSettings()
	s.ConsecutiveFailures = 0
	s.Window = time.Minute
	sarg := settingsArg(breaker.New("api", s, breaker.Options{}).Settings(), 1)
	const workers, each = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for range each {
				args, _ := pgArgs([]any{fmt.Sprintf("r%d", w), 0, 2, 1, 0, 1, 1, sarg, "h", 0.5, "fuse_events",
					"api", "fuse_onsets", 0, 0, 1, 0})
				var out []*string
				if err := pool.QueryRow(ctx, "SELECT fuse_flush($1, $2)", "api", args).Scan(&out); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("a flush under %s: %v", set, err)
	}
	var req int
	if err := pool.QueryRow(ctx, `SELECT coalesce(sum((v ->> 0)::int), 0) FROM fuse_circuits, jsonb_each(buckets) AS e(k, v)
		WHERE upstream = 'api'`).Scan(&req); err != nil || req != 2*workers*each {
		t.Fatalf("window holds %d requests (%v), want %d", req, err, 2*workers*each)
	}
}
