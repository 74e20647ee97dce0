package store

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/internal/testutil/pgtest"
	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// The script-level tests (lua_test.go, lua_advance_test.go, conformance_test.go,
// ejection_test.go) run each case against both ports of the fleet state machine: the
// Lua scripts on Redis and their PL/pgSQL port on PostgreSQL (store/sql), through a
// scriptBackend. The same calls, the same replies: that is the proof the port is exact.

// scriptBackend is where a luaEnv's scripts run and what they stored, in the Lua hash's
// terms.
type scriptBackend interface {
	// name is "redis" or "postgres".
	name() string
	// call runs script with args on the Redis keys keys, or on PostgreSQL with name (what
	// the keys identify: the upstream, the tally, the claim, the replica), and returns
	// its reply as go-redis returns a Lua script's reply.
	call(script *redis.Script, keys []string, name string, args []any) (any, error)
	// fields is the circuit's stored state as the Lua hash's fields ("st", "gen", ...,
	// "b:<k>", "r:<replica>"): what a script reads next (an expired state has none).
	fields(e *luaEnv) (map[string]string, error)
	// setField overwrites one stored number (a test moving time: "ou", "at").
	setField(e *luaEnv, field string, v int64) error
	// leases are the circuit's trial leases, soonest expiry first.
	leases(e *luaEnv) ([]string, error)
	// subscribe listens on a channel (confirmed when it returns) until t ends.
	subscribe(t testing.TB, channel string) scriptSub
	// channels are the transition and onset channels a circuit's scripts are told.
	channels() (events, onsets string)
}

// scriptSub is a subscription to a channel the scripts publish (notify) on.
type scriptSub interface {
	// next waits up to within for the next message; ok is false when none came.
	next(within time.Duration) (payload string, ok bool)
}

// eachBackend runs f as two parallel subtests, "redis" and "postgres", each with a
// backend of its own (a private redis-server; a fresh table prefix on the package's
// PostgreSQL).
func eachBackend(t *testing.T, f func(t *testing.T, b scriptBackend)) {
	t.Helper()
	for _, name := range []string{"redis", "postgres"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f(t, newScriptBackend(t, name))
		})
	}
}

func newScriptBackend(t testing.TB, name string) scriptBackend {
	t.Helper()
	switch name {
	case "redis":
		return redisScripts{srv: redistest.Start(t)}
	case "postgres":
		return newPGScripts(t)
	}
	t.Fatalf("no script backend %q", name)
	return nil
}

// env is one circuit called name on backend b.
func env(t testing.TB, b scriptBackend, name string, s breaker.Settings, minReplicas int) *luaEnv {
	t.Helper()
	if r, ok := b.(redisScripts); ok {
		return luaEnvOn(t, r.srv, name, s, minReplicas)
	}
	s = breaker.New(name, s, breaker.Options{}).Settings()
	events, onsets := b.channels()
	return &luaEnv{t: t, be: b, name: name, upstream: name, channel: events, onset: onsets,
		settingsArg: settingsArg(s, minReplicas), hash: "h1"}
}

// keyedEnv is key member's circuit of upstream on backend b, called by the keyed
// scripts.
func keyedEnv(t testing.TB, b scriptBackend, upstream, member string, s breaker.Settings, minReplicas int) *luaEnv {
	t.Helper()
	e := env(t, b, upstream+"#"+member, s, minReplicas)
	e.upstream, e.member = upstream, member
	e.key, e.leaseKey, e.registry, _ = keyKeys("fuse", upstream, e.name)
	return e
}

// redisScripts runs the Lua scripts on a private redis-server.
type redisScripts struct{ srv *redistest.Server }

func (redisScripts) name() string                      { return "redis" }
func (redisScripts) channels() (events, onsets string) { return "fuse:events", "fuse:onset" }

func (b redisScripts) call(script *redis.Script, keys []string, _ string, args []any) (any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return script.Run(ctx, b.srv.Client(), keys, args...).Result()
}

func (b redisScripts) fields(e *luaEnv) (map[string]string, error) {
	return b.srv.Client().HGetAll(context.Background(), e.key).Result()
}

func (b redisScripts) setField(e *luaEnv, field string, v int64) error {
	return b.srv.Client().HSet(context.Background(), e.key, field, v).Err()
}

func (b redisScripts) leases(e *luaEnv) ([]string, error) {
	return b.srv.Client().ZRange(context.Background(), e.leaseKey, 0, -1).Result()
}

func (b redisScripts) subscribe(t testing.TB, channel string) scriptSub {
	t.Helper()
	ps := b.srv.Client().Subscribe(t.Context(), channel)
	t.Cleanup(func() { ps.Close() })
	if _, err := ps.Receive(t.Context()); err != nil { // the subscription's confirmation
		t.Fatal(err)
	}
	return redisSub{ps.Channel()}
}

type redisSub struct{ ch <-chan *redis.Message }

func (s redisSub) next(within time.Duration) (string, bool) {
	select {
	case m := <-s.ch:
		return m.Payload, true
	case <-time.After(within):
		return "", false
	}
}

// pgScripts runs the PL/pgSQL functions under a table prefix of its own on the
// package's PostgreSQL server.
type pgScripts struct {
	srv    *pgtest.Server
	pool   *pgxpool.Pool
	prefix string
}

// sharedPG is the one PostgreSQL server of the package's tests, started by the first
// test that needs it and closed by TestMain (pgMain).
var sharedPG struct {
	once sync.Once
	srv  *pgtest.Server
	err  error
	seq  atomic.Int64
}

func pgServer(t testing.TB) *pgtest.Server {
	t.Helper()
	sharedPG.once.Do(func() { sharedPG.srv, sharedPG.err = pgtest.New("max_connections=200") })
	if sharedPG.err != nil {
		t.Fatalf("pgtest: %v", sharedPG.err)
	}
	return sharedPG.srv
}

// pgMain closes the shared PostgreSQL server after the tests (TestMain).
type pgMain struct{ m *testing.M }

func (w pgMain) Run() int {
	code := w.m.Run()
	if sharedPG.srv != nil {
		sharedPG.srv.Close()
	}
	return code
}

// newPGScripts migrates a fresh prefix (t<n>_) on the shared server, and connects to it
// with one connection of its own, on which every function has run once: PL/pgSQL
// compiles a function on a connection's first call of it, which on a busy machine may
// take longer than the tests' 100 ms open periods.
func newPGScripts(t testing.TB) *pgScripts {
	t.Helper()
	srv := pgServer(t)
	prefix := fmt.Sprintf("t%d_", sharedPG.seq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := Migrate(ctx, srv.Pool(), prefix); err != nil {
		t.Fatalf("migrate %s: %v", prefix, err)
	}
	cfg, err := pgxpool.ParseConfig(srv.DSN())
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	b := &pgScripts{srv: srv, pool: pool, prefix: prefix}
	// the warm-up: every function once, then no trace of it
	sarg := settingsArg(baseSettings(), 1) + ",1000,10"
	for _, w := range []struct {
		fn   string
		args []string
	}{
		{"flush", []string{"r", "0", "3", "3", "0", "3", "0", sarg, "h", "0.5", "c", "w", "o", "0", "0", "1", "0", "1"}},
		{"acquire", []string{"r", "1", "1000", sarg, "r:1", "c", "w", "1"}},
		{"trial", []string{"r", "2", "0", "1", sarg, "0.5", "c", "w", "0", "r:1:2:1", "r:*"}},
		{"control", []string{"mode", "0", sarg, "0.5", "c", "w", "r"}},
		{"key_flush", []string{"1", "1000", "k", "r", "0", "1", "0", "0", "0", "1", sarg, "h", "0.5", "c", "w", "o", "0", "0", "1", "0"}},
		{"key_acquire", []string{"1", "1000", "k", "r", "1", "1000", sarg, "r:1", "c", "w"}},
		{"key_trial", []string{"1", "1000", "k", "r", "0", "1", "0", sarg, "0.5", "c", "w", "0"}},
		{"key_control", []string{"1", "1000", "k", "reset", "0", sarg, "0.5", "c", "w", "r"}},
		{"tally", []string{"r", "1", "1", "1000"}},
		{"claim", []string{"r", "1000"}},
		{"heartbeat", []string{"1000"}},
	} {
		var out []*string
		if err := pool.QueryRow(ctx, "SELECT "+prefix+w.fn+"($1, $2)", "w", w.args).Scan(&out); err != nil {
			t.Fatalf("warm-up %s: %v", w.fn, err)
		}
	}
	for _, tbl := range []string{"circuits", "leases", "keys", "tallies", "claims", "heartbeats", "history"} {
		if _, err := pool.Exec(ctx, "DELETE FROM "+prefix+tbl); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

func (*pgScripts) name() string { return "postgres" }

func (b *pgScripts) channels() (events, onsets string) {
	return b.prefix + "events", b.prefix + "onsets"
}

func (b *pgScripts) call(script *redis.Script, _ []string, name string, args []any) (any, error) {
	fn, ok := pgScriptFunction(script)
	if !ok {
		return nil, fmt.Errorf("no PostgreSQL function for script %s", script.Hash())
	}
	a, err := pgArgs(args)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var out []*string
	if err := b.pool.QueryRow(ctx, "SELECT "+b.prefix+fn+"($1, $2)", name, a).Scan(&out); err != nil {
		return nil, err
	}
	return pgReplyValue(fn, out)
}

// pgFields maps the circuits table's columns to the Lua hash's fields.
var pgFields = []struct{ col, field string }{
	{"state", "st"}, {"mode", "md"}, {"generation", "gen"}, {"open_until", "ou"}, {"open_for", "of"},
	{"trips", "tr"}, {"consecutive", "cf"}, {"gateway_consecutive", "gf"}, {"successes", "sc"},
	{"changed_at", "at"}, {"epoch", "ep"}, {"onset", "fo"},
}

func pgColumn(field string) (string, bool) {
	for _, f := range pgFields {
		if f.field == field {
			return f.col, true
		}
	}
	return "", false
}

func (b *pgScripts) fields(e *luaEnv) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	q := "SELECT "
	for _, f := range pgFields {
		q += f.col + "::text, "
	}
	q += "reason, cfg, cfg_replica, buckets, reports FROM " + b.prefix + "circuits WHERE upstream = $1 AND key = $2 AND expires_at > " +
		b.prefix + "now_ms()"
	vals := make([]string, len(pgFields))
	dest := make([]any, 0, len(pgFields)+5)
	for i := range vals {
		dest = append(dest, &vals[i])
	}
	var rs *string
	var cfg, cfgr string
	var buckets map[string][3]int64
	var reports map[string]int64
	dest = append(dest, &rs, &cfg, &cfgr, &buckets, &reports)
	h := map[string]string{}
	err := b.pool.QueryRow(ctx, q, e.upstream, e.member).Scan(dest...)
	if err == pgx.ErrNoRows {
		return h, nil
	}
	if err != nil {
		return nil, err
	}
	for i, f := range pgFields {
		h[f.field] = vals[i]
	}
	if rs != nil {
		h["rs"] = *rs
	}
	if cfg != "" {
		h["cfg"], h["cfgr"] = cfg, cfgr
	}
	for k, c := range buckets {
		h["b:"+k] = fmt.Sprintf("%d %d %d", c[0], c[1], c[2])
	}
	for id, ms := range reports {
		h["r:"+id] = strconv.FormatInt(ms, 10)
	}
	return h, nil
}

func (b *pgScripts) setField(e *luaEnv, field string, v int64) error {
	col, ok := pgColumn(field)
	if !ok {
		return fmt.Errorf("no column for field %q", field)
	}
	_, err := b.pool.Exec(context.Background(), "UPDATE "+b.prefix+"circuits SET "+col+" = $3 WHERE upstream = $1 AND key = $2",
		e.upstream, e.member, v)
	return err
}

func (b *pgScripts) leases(e *luaEnv) ([]string, error) {
	rows, err := b.pool.Query(context.Background(), "SELECT id FROM "+b.prefix+
		"leases WHERE upstream = $1 AND key = $2 ORDER BY expires_at, id", e.upstream, e.member)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

func (b *pgScripts) subscribe(t testing.TB, channel string) scriptSub {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), b.srv.DSN())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(t.Context(), "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan string, 1000)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			n, err := conn.WaitForNotification(ctx)
			if err != nil {
				return
			}
			ch <- n.Payload
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		conn.Close(context.Background())
	})
	return pgSub{ch}
}

type pgSub struct{ ch <-chan string }

func (s pgSub) next(within time.Duration) (string, bool) {
	select {
	case p := <-s.ch:
		return p, true
	case <-time.After(within):
		return "", false
	}
}
