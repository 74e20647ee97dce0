package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// Postgres is the PostgreSQL store (store.driver: postgres): the shared store's engine,
// whose doc (Redis) says what it does, on a PostgreSQL backend. The scripts are SQL
// functions of the same contracts (store/sql, PG.md): a call is `SELECT <p>X(name, args)`,
// an exchange all of them in one pipeline round trip, each its own transaction (an error
// in one leaves the others, and no row lock is held beyond its own call, so replicas
// flushing the same circuits in different orders never deadlock). Transitions and onsets
// come by LISTEN/NOTIFY on a connection of their own; the database's clock is the fleet's.
type Postgres struct{ *Redis }

// PostgresOptions are the engine's options (see RedisOptions); Prefix is the prefix of
// every table and function (store.postgres.prefix).
type PostgresOptions = RedisOptions

var (
	_ Store    = (*Postgres)(nil)
	_ KeyStore = (*Postgres)(nil)
)

// NewPostgres returns a PostgreSQL store on pool; it owns the pool from then on (and
// closes it when the options are refused). The schema must be in place (Migrate).
func NewPostgres(pool *pgxpool.Pool, o PostgresOptions) (*Postgres, error) {
	if err := o.checkFor("postgres"); err != nil {
		pool.Close()
		return nil, err
	}
	if !validPrefix(o.Prefix) {
		pool.Close()
		return nil, fmt.Errorf("postgres store: prefix %q: want [a-z_][a-z0-9_]{0,29}", o.Prefix)
	}
	b := &pgBackend{pool: pool, prefix: o.Prefix, fn: map[*redis.Script]string{}, historyOpts: o.History}
	for _, s := range append(allScripts[:len(allScripts):len(allScripts)], claimScript) {
		fn, ok := pgScriptFunction(s)
		if !ok {
			panic("store: a script without its PostgreSQL function")
		}
		b.fn[s] = fn
	}
	// The heartbeat's call names the replica: its row is what the heartbeat writes.
	return &Postgres{newEngine(b, o, o.Prefix+"events", o.Prefix+"onsets", o.ReplicaID)}, nil
}

// validPrefix reports whether p is a prefix the schema's names can take unquoted:
// [a-z_][a-z0-9_]{0,29} (PostgreSQL's identifiers are at most 63 bytes).
func validPrefix(p string) bool {
	if p == "" || len(p) > 30 {
		return false
	}
	for i, c := range []byte(p) {
		if !(c >= 'a' && c <= 'z' || c == '_' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// pgBackend runs the engine's calls as SQL functions.
type pgBackend struct {
	pool   *pgxpool.Pool
	prefix string
	fn     map[*redis.Script]string // each script's function, without the prefix
	// the history's bounds (RedisOptions.History), which cleanup applies too
	historyOpts HistoryOptions
	// deaf drops every transition notification the listener receives (tests: a
	// notification lost, which the poll must make up for)
	deaf atomic.Bool
	// polls counts poll's calls that succeeded (tests)
	polls atomic.Int64
}

// history reads <p>history_read: the upstream's transitions and its keys', newest first.
func (b *pgBackend) history(ctx context.Context, upstream string, limit int) ([]Transition, error) {
	var lim *int
	if limit > 0 {
		lim = &limit
	}
	rows, err := b.pool.Query(ctx, `SELECT key, from_state, to_state, reason, requests, failures, slow, consecutive,
		generation, replica, at FROM `+b.prefix+`history_read($1, NULL, $2)`, upstream, lim)
	if err != nil {
		return nil, err
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Transition, error) {
		t := Transition{Upstream: upstream}
		var gen int64
		err := row.Scan(&t.Key, &t.From, &t.To, &t.Reason, &t.Requests, &t.Failures, &t.Slow, &t.Consecutive,
			&gen, &t.Replica, &t.At)
		t.Generation, t.At = uint64(gen), t.At.UTC()
		return t, err
	})
	if err != nil {
		return nil, fmt.Errorf("history of %q: %w", upstream, err)
	}
	return out, nil
}

func (b *pgBackend) driver() string { return "postgres" }
func (b *pgBackend) pipeline() int  { return maxPgPipeline }

// pgError is a statement's error: the database's answer to one call, which the engine
// tells from no answer by redis.Error (see backend).
type pgError struct{ err *pgconn.PgError }

func (e pgError) Error() string { return "postgres: " + e.err.Error() }
func (e pgError) Unwrap() error { return e.err }
func (pgError) RedisError()     {}

// name returns what a call's SQL function takes as its name: the upstream (a key's
// upstream: the key is in its arguments), the tally's name, or the heartbeat's
// (its first key, the replica's id).
func (cl *call) name() string {
	switch {
	case cl.c != nil && cl.c.k != nil:
		return cl.c.k.upstream
	case cl.c != nil:
		return cl.c.name
	case cl.tally != nil:
		return cl.tally.name
	default:
		return cl.keys[0]
	}
}

// Parameter and result encodings of the functions' (name text, args text[]) → text[]:
// binary, so that no text in them is ever parsed.
var (
	pgParamOIDs  = []uint32{25, 1009} // text, text[]
	pgBinary     = []int16{1}
	pgBinaryBoth = []int16{1, 1}
)

// run sends every call in one pipeline, each followed by a Sync (its own implicit
// transaction), and reads their replies.
func (b *pgBackend) run(ctx context.Context, calls []*call) error {
	for _, cl := range calls {
		cl.cmd = redis.NewCmd(ctx)
	}
	conn, err := b.pool.Acquire(ctx)
	if err != nil {
		return unanswered(calls, err)
	}
	defer conn.Release()
	p := conn.Conn().PgConn().StartPipeline(ctx)
	for _, cl := range calls {
		args, err := pgArgs(cl.args)
		if err != nil { // a bug: the engine's arguments are numbers and strings
			p.Close()
			return unanswered(calls, fmt.Errorf("postgres store: %s: %w", b.fn[cl.script], err))
		}
		p.SendQueryParams("SELECT "+b.prefix+b.fn[cl.script]+"($1, $2)", [][]byte{[]byte(cl.name()), encodeTextArray(args)},
			pgParamOIDs, pgBinaryBoth, pgBinary)
		p.SendPipelineSync()
	}
	if err := p.Flush(); err != nil {
		p.Close()
		return unanswered(calls, err)
	}
	var first error
	for i, cl := range calls {
		v, serr, err := pipelineResult(p, b.fn[cl.script])
		if err == nil {
			_, err = p.GetResults() // the call's Sync
		}
		if err != nil {
			p.Close()
			return unanswered(calls[i:], err)
		}
		if serr != nil {
			cl.cmd.SetErr(serr)
			first = cmpOr(first, serr)
			continue
		}
		cl.cmd.SetVal(v)
	}
	if err := p.Close(); err != nil {
		return err
	}
	return first
}

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// unanswered sets err on calls (none has a reply) and returns it.
func unanswered(calls []*call, err error) error {
	for _, cl := range calls {
		cl.cmd.SetErr(err)
	}
	return err
}

// pipelineResult reads one call's result: its reply, or its statement's error (serr), or
// err when the connection failed.
func pipelineResult(p *pgconn.Pipeline, fn string) (v any, serr, err error) {
	res, err := p.GetResults()
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return nil, pgError{pe}, nil
	}
	if err != nil {
		return nil, nil, err
	}
	rr, ok := res.(*pgconn.ResultReader)
	if !ok {
		return nil, nil, fmt.Errorf("postgres store: unexpected pipeline result %T", res)
	}
	r := rr.Read()
	if errors.As(r.Err, &pe) {
		return nil, pgError{pe}, nil
	}
	if r.Err != nil {
		return nil, nil, r.Err
	}
	if len(r.Rows) != 1 || len(r.Rows[0]) != 1 {
		return nil, fmt.Errorf("postgres store: unexpected reply: want one value, got %d rows", len(r.Rows)), nil
	}
	if r.Rows[0][0] == nil {
		return nil, nil, nil
	}
	vals, derr := decodeTextArray(r.Rows[0][0])
	if derr == nil {
		v, derr = pgReplyValue(fn, vals)
	}
	if derr != nil {
		return nil, fmt.Errorf("postgres store: unexpected reply: %w", derr), nil
	}
	return v, nil, nil
}

// encodeTextArray encodes args as a one-dimensional text[] in PostgreSQL's binary format.
func encodeTextArray(args []string) []byte {
	buf := make([]byte, 20, 20+len(args)*12)
	binary.BigEndian.PutUint32(buf[0:], 1)  // dimensions
	binary.BigEndian.PutUint32(buf[4:], 0)  // no NULL
	binary.BigEndian.PutUint32(buf[8:], 25) // element type: text
	binary.BigEndian.PutUint32(buf[12:], uint32(len(args)))
	binary.BigEndian.PutUint32(buf[16:], 1) // lower bound
	for _, a := range args {
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(a)))
		buf = append(buf, a...)
	}
	return buf
}

// decodeTextArray decodes a text[] in PostgreSQL's binary format (at most one dimension).
func decodeTextArray(b []byte) ([]*string, error) {
	bad := func(what string) error { return fmt.Errorf("postgres store: reply is not a text[]: %s", what) }
	if len(b) < 12 {
		return nil, bad("short header")
	}
	dims := binary.BigEndian.Uint32(b)
	if dims == 0 {
		return nil, nil
	}
	if dims != 1 || len(b) < 20 {
		return nil, bad(strconv.Itoa(int(dims)) + " dimensions")
	}
	n := int(binary.BigEndian.Uint32(b[12:]))
	b = b[20:]
	if n < 0 || n > len(b)/4 {
		return nil, bad("bad length")
	}
	out := make([]*string, n)
	for i := range out {
		if len(b) < 4 {
			return nil, bad("truncated")
		}
		l := int32(binary.BigEndian.Uint32(b))
		b = b[4:]
		if l < 0 {
			continue
		}
		if int(l) > len(b) {
			return nil, bad("truncated")
		}
		s := string(b[:l])
		out[i], b = &s, b[l:]
	}
	return out, nil
}

// eval runs one call (an operator's command) and returns its reply.
func (b *pgBackend) eval(ctx context.Context, cl *call) (any, error) {
	err := b.run(ctx, []*call{cl})
	if err != nil {
		return nil, err
	}
	return cl.cmd.Val(), nil
}

func (b *pgBackend) claim(ctx context.Context, key, owner string, ms int64) (bool, error) {
	cl := &call{script: claimScript, keys: []string{key}, args: []any{owner, ms}}
	v, err := b.eval(ctx, cl)
	if err != nil {
		return false, err
	}
	n, ok := v.(int64)
	if !ok {
		return false, fmt.Errorf("postgres store: unexpected reply %v from %sclaim", v, b.prefix)
	}
	return n == 1, nil
}

// members returns at most n keys of upstream's registry, soonest expiry first.
func (b *pgBackend) members(ctx context.Context, upstream, _ string, n int) ([]string, error) {
	rows, err := b.pool.Query(ctx, "SELECT "+b.prefix+"keys_read($1, $2)", upstream, n)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// inspect returns a circuit's row, its columns as text (state and mode by name), with its
// trial leases ("id@expiry ms,..."), or (key) a key's row. An expired row reads as
// absent, as the functions read it. It reads the tables: the role needs SELECT on
// <p>circuits and <p>leases for it (the functions need no right on any table).
func (b *pgBackend) inspect(ctx context.Context, c *circuit, key bool) (map[string]string, error) {
	k := ""
	if c.k != nil {
		k = c.k.member
	}
	var row map[string]any
	var leases *string
	err := b.pool.QueryRow(ctx, `SELECT
		(SELECT to_jsonb(c) - 'buckets' - 'reports' || jsonb_build_object('buckets', c.buckets::text, 'reports', c.reports::text)
		   FROM `+b.prefix+`circuits c WHERE c.upstream = $1 AND c.key = $2 AND c.expires_at > `+b.prefix+`now_ms()),
		(SELECT string_agg(l.id || '@' || l.expires_at, ',' ORDER BY l.id)
		   FROM `+b.prefix+`leases l WHERE l.upstream = $1 AND l.key = $2 AND l.expires_at > `+b.prefix+`now_ms())`,
		c.upstreamName(), k).Scan(&row, &leases)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for col, v := range row {
		switch n, ok := v.(float64); {
		case v == nil:
		case ok && col == "state":
			out[col] = breaker.State(n).String()
		case ok && col == "mode":
			out[col] = breaker.Mode(n).String()
		case ok:
			out[col] = strconv.FormatFloat(n, 'f', -1, 64)
		default:
			out[col] = fmt.Sprint(v)
		}
	}
	if !key {
		out["leases"] = ""
		if leases != nil {
			out["leases"] = *leases
		}
	}
	out["key"] = b.prefix + "circuits:" + c.name
	return out, nil
}

// upstreamName is the circuit's upstream: its name, or a key's upstream.
func (c *circuit) upstreamName() string {
	if c.k != nil {
		return c.k.upstream
	}
	return c.name
}

func (b *pgBackend) failed() {}

func (b *pgBackend) close() error {
	b.pool.Close()
	return nil
}

// listen delivers the notifications of the transitions' and onsets' channels to r, on a
// connection of its own, and deletes expired rows once every cleanupEvery. NOTIFY is lost
// while the connection is down (or before LISTEN takes effect), as pub/sub's messages
// are: every (re)connection asks for a resync, and poll reads the transitions published
// since its last turn, once every pollInterval, the backstop for any notification lost
// (a quiet closed circuit sends nothing for hours, so its exchanges are none).
func (b *pgBackend) listen(ctx context.Context, r *Redis) {
	var wg sync.WaitGroup
	wg.Go(func() { b.cleanup(ctx, r) })
	wg.Go(func() { b.poll(ctx, r) })
	defer wg.Wait()
	pause := listenRetryMin
	for first := true; ctx.Err() == nil; first = false {
		connected, err := b.listenOnce(ctx, r, first)
		if ctx.Err() != nil {
			return
		}
		if connected {
			pause = listenRetryMin
		}
		r.log.Warn("LISTEN connection lost; reconnecting", zap.Error(err), zap.Duration("after", pause))
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
		pause = min(2*pause, listenRetryMax)
	}
}

const (
	listenRetryMin = 100 * time.Millisecond
	listenRetryMax = time.Second
	// listenCheck is how long the listener waits for a notification before it checks
	// that its connection is alive (as go-redis's pub/sub health check does).
	listenCheck = time.Second
	// cleanupEvery is how often a replica deletes expired rows (any replica may).
	cleanupEvery = time.Minute
)

// listenOnce connects, listens, asks for a resync and delivers notifications until the
// connection fails; connected reports whether it got as far as listening.
func (b *pgBackend) listenOnce(ctx context.Context, r *Redis, first bool) (connected bool, err error) {
	conn, err := b.listenConn(ctx, r.o.Timeout, r.channel, r.onset)
	if err != nil {
		return false, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), r.o.Timeout)
		_ = conn.Close(cctx)
		cancel()
	}()
	// Also the first time: what was notified before LISTEN took effect was missed.
	if first {
		r.log.Info("listening for notifications", zap.Strings("channels", []string{r.channel, r.onset}))
	} else {
		r.log.Info("LISTEN reconnected; resyncing")
	}
	r.requestResync()
	for {
		wctx, cancel := context.WithTimeout(ctx, listenCheck)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return true, nil
		case err != nil && pgconn.Timeout(err) && !conn.IsClosed():
			pctx, cancel := context.WithTimeout(ctx, r.o.Timeout)
			err = conn.Ping(pctx)
			cancel()
			if err != nil {
				return true, err
			}
		case err != nil:
			return true, err
		case n.Channel == r.onset:
			r.onOnset(n.Payload)
		case b.deaf.Load():
		default:
			r.onMessage(n.Payload)
		}
	}
}

// listenConn opens a connection of the pool's settings that listens on channels.
func (b *pgBackend) listenConn(ctx context.Context, timeout time.Duration, channels ...string) (*pgx.Conn, error) {
	cfg := b.pool.Config().ConnConfig.Copy()
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, cfg)
	if err != nil {
		return nil, err
	}
	for _, ch := range channels {
		if _, err := conn.Exec(cctx, "LISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
			_ = conn.Close(context.Background())
			return nil, err
		}
	}
	return conn, nil
}

// cleanup calls <p>cleanup(retention, max entries) once every cleanupEvery (jittered, so replicas do not call
// it together): it deletes expired leases, circuits, keys, claims and heartbeats, and
// history past its retention. A failure is logged; the next turn tries again.
func (b *pgBackend) cleanup(ctx context.Context, r *Redis) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(cleanupEvery/2 + rand.N(cleanupEvery)):
		}
		if r.degraded.Load() {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, r.o.Timeout)
		h := b.historyOpts
		if !h.Enabled() {
			h = HistoryOptions{} // nothing recorded: nothing to bound
		}
		_, err := b.pool.Exec(cctx, "SELECT "+b.prefix+"cleanup($1, $2)", h.Retention.Milliseconds(), h.MaxEntries)
		cancel()
		if err != nil && ctx.Err() == nil {
			r.log.Warn("deleting expired rows failed", zap.Error(err))
		}
	}
}

// pollInterval is how often a replica polls for the transitions it may have missed:
// 10 flush intervals, at least a second, jittered ±10 %. A circuit's transition that a
// replica's listener missed reaches it within about that (sooner if it exchanges about
// the circuit); each poll is one statement, whatever the number of circuits.
func pollInterval(flush time.Duration) time.Duration { return max(10*flush, time.Second) }

// pollOverlap is how far back before the previous poll's clock a poll reads. A
// transition's clock is read when its call holds the circuit's row, and the row is seen
// only once the call commits: a call that read the clock before a poll and commits after
// it is seen by the next poll only if the overlap covers that delay. The call's time is
// bounded by the statement_timeout (store.postgres.statement_timeout) and by the replica's
// Timeout, which cancels it; the overlap is the larger of those and 5 s (a commit waiting
// on a synchronous standby is bounded by neither). What the overlap reads twice is
// harmless: the handler is fenced by generation and idempotent.
func (b *pgBackend) pollOverlap(r *Redis) time.Duration {
	d := max(5*time.Second, r.o.Timeout)
	if ms, err := strconv.ParseInt(b.pool.Config().ConnConfig.RuntimeParams["statement_timeout"], 10, 64); err == nil {
		d = max(d, time.Duration(ms)*time.Millisecond)
	}
	return d
}

// poll calls <p>changes once every pollInterval (jittered) and hands the transitions it
// returns to the same handler as the notifications (r.onMessage). The first call reads
// the database's clock only (what came before is the start-up resync's); each next one
// reads from the previous call's clock less pollOverlap. Skipped while degraded (the
// recovery resyncs every circuit); a failed call is logged and the next turn reads from
// the same point.
func (b *pgBackend) poll(ctx context.Context, r *Redis) {
	every, overlap := pollInterval(r.o.FlushInterval), b.pollOverlap(r)
	var since *int64 // nil: the clock alone
	for {
		if !r.degraded.Load() {
			cctx, cancel := context.WithTimeout(ctx, r.o.Timeout)
			var out []string
			err := b.pool.QueryRow(cctx, "SELECT "+b.prefix+"changes($1)", since).Scan(&out)
			cancel()
			var now int64
			if err == nil && len(out) > 0 {
				now, err = strconv.ParseInt(out[0], 10, 64)
			} else if err == nil {
				err = errors.New("empty reply")
			}
			switch {
			case err != nil && ctx.Err() == nil:
				r.log.Warn("polling for missed transitions failed", zap.Error(err))
			case err == nil:
				b.polls.Add(1)
				for _, m := range out[1:] {
					r.onMessage(m)
				}
				next := now - overlap.Milliseconds()
				since = &next
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(every - every/10 + rand.N(every/5+1)):
		}
	}
}

// CheckListen proves that notifications reach this replica: it listens on a channel of
// its own on a new connection, notifies it through the pool, and waits for the
// notification. A transaction-mode pooler (PgBouncer's pool_mode = transaction) accepts
// LISTEN and then delivers nothing, which would leave every replica deaf to the others'
// transitions: fuseproxy needs a session (a direct connection, or session pooling).
func (p *Postgres) CheckListen(ctx context.Context) error {
	b := p.be.(*pgBackend)
	ch := b.prefix + "selftest_" + strconv.FormatUint(rand.Uint64(), 36)
	conn, err := b.listenConn(ctx, p.o.Timeout, ch)
	if err != nil {
		return fmt.Errorf("postgres store: LISTEN: %w", err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	wait := max(2*time.Second, 2*p.o.Timeout)
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	if _, err := b.pool.Exec(wctx, "SELECT pg_notify($1, 'selftest')", ch); err != nil {
		return fmt.Errorf("postgres store: NOTIFY: %w", err)
	}
	if _, err := conn.WaitForNotification(wctx); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("postgres store: a notification sent through the pool did not reach a listening connection within %v: "+
			"LISTEN/NOTIFY needs a session of its own (a direct connection, or a pooler in session mode; "+
			"a transaction-mode pooler such as PgBouncer with pool_mode = transaction drops notifications)", wait)
	}
	return nil
}

// ErrUnreachable wraps an error of Prepare that says the database could not be reached
// (a dial or a timeout), as opposed to one it answered (a failed migration, a schema
// too old, notifications that do not arrive).
var ErrUnreachable = errors.New("postgres unreachable")

// Prepare readies the database at start: it applies the schema's missing versions
// (migrate; Migrate, behind its advisory lock) or checks that none is missing, then
// proves that notifications arrive (CheckListen).
func (p *Postgres) Prepare(ctx context.Context, migrate bool) (MigrateResult, error) {
	b := p.be.(*pgBackend)
	var res MigrateResult
	var err error
	if migrate {
		res, err = b.migrate(ctx)
	} else {
		res.Version, err = p.SchemaVersion(ctx)
		if err == nil && res.Version < PostgresSchemaVersion() {
			err = fmt.Errorf("postgres store: the schema of prefix %q is at version %d, this build needs %d: run `fuseproxy migrate` (or set store.postgres.migrate)",
				b.prefix, res.Version, PostgresSchemaVersion())
		}
	}
	if err == nil {
		err = p.CheckListen(ctx)
	}
	if err != nil && unreachable(err) {
		err = fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	return res, err
}

// SchemaVersion returns the newest version of the schema applied (0: none).
func (p *Postgres) SchemaVersion(ctx context.Context) (int, error) {
	b := p.be.(*pgBackend)
	var v *int
	err := b.pool.QueryRow(ctx, "SELECT CASE WHEN to_regclass($1) IS NULL THEN 0 END", b.prefix+"schema").Scan(&v)
	if err != nil {
		return 0, err
	}
	if v != nil {
		return 0, nil
	}
	err = b.pool.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM "+b.prefix+"schema").Scan(&v)
	if err != nil || v == nil {
		return 0, err
	}
	return *v, nil
}

// unreachable reports whether err is a failure to reach the database at all.
func unreachable(err error) bool {
	var ce *pgconn.ConnectError
	return errors.As(err, &ce) || pgconn.Timeout(err) || errors.Is(err, context.DeadlineExceeded)
}

// migrate runs Migrate on a connection of its own without the pool's statement_timeout
// (meant for an exchange): DDL, and the wait for another replica's migration behind the
// advisory lock, may take longer.
func (b *pgBackend) migrate(ctx context.Context) (MigrateResult, error) {
	cfg := b.pool.Config().ConnConfig.Copy()
	delete(cfg.RuntimeParams, "statement_timeout")
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return MigrateResult{}, err
	}
	defer func() { _ = conn.Close(context.Background()) }()
	return Migrate(ctx, conn, b.prefix)
}
