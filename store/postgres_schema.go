package store

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The PostgreSQL store's schema: the migrations in sql/, templates rendered with the
// configured prefix (store.postgres.prefix) and applied in order by Migrate. Each
// version is applied once, recorded in <prefix>schema; a new version is a new file
// (NNN_name.sql), never an edit of an applied one.
//
// What fuseproxy creates, for prefix p (default fuse_), in the schema current for the
// migrating connection (its search_path's first existing schema, usually public):
//
//	tables    p circuits, p leases, p keys, p tallies, p claims, p heartbeats,
//	          p history, p schema
//	types     p settings, p st
//	functions p flush, p acquire, p trial, p control, p key_flush, p key_acquire,
//	          p key_trial, p key_control (name text, args text[]) → text[];
//	          p heartbeat, p tally, p claim (name text, args text[]) → text[];
//	          p history_read(upstream text, key text, limit int) → SETOF p history;
//	          p keys_read(upstream text, limit int) → SETOF text;
//	          p cleanup(retention_ms bigint, max_entries int DEFAULT 0) → bigint;
//	          p changes(since_ms bigint) → text[] (the poll that backs NOTIFY up);
//	          p now_ms() and the helpers p _* (no one but the owner may run those).
//
// The public functions are SECURITY DEFINER, owned by the migrating role: the runtime
// role needs no right on any table (see PostgresGrants). A later version that creates or
// replaces functions revokes them from PUBLIC again, as 002_functions.sql ends.
//
// PostgreSQL 11 or later (hashtextextended, starts_with); the tests run 15.

//go:embed sql/*.sql
var pgMigrations embed.FS

// pgPrefixRE is what store.postgres.prefix may be: every name fuseproxy creates starts
// with it, unquoted, and stays within PostgreSQL's 63 bytes.
var pgPrefixRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,29}$`)

// ValidPostgresPrefix checks a table prefix (store.postgres.prefix).
func ValidPostgresPrefix(prefix string) error {
	if !pgPrefixRE.MatchString(prefix) {
		return fmt.Errorf("postgres prefix %q: want [a-z_][a-z0-9_]{0,29} (lower-case letters, digits, _; not starting with a digit; at most 30)", prefix)
	}
	return nil
}

// PGBeginner is what Migrate needs of a connection: *pgx.Conn, *pgxpool.Pool and
// *pgxpool.Conn all have it.
type PGBeginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// pgMigration is one version of the schema.
type pgMigration struct {
	version int
	name    string // the file, e.g. 001_tables.sql
	text    string // the template
}

// pgMigrationList reads sql/*.sql in version order.
func pgMigrationList() ([]pgMigration, error) {
	ents, err := fs.ReadDir(pgMigrations, "sql")
	if err != nil {
		return nil, err
	}
	var ms []pgMigration
	seen := map[int]string{}
	for _, e := range ents {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 || !strings.HasSuffix(e.Name(), ".sql") {
			return nil, fmt.Errorf("store/sql/%s: want NNN_name.sql", e.Name())
		}
		if prev, dup := seen[v]; dup {
			return nil, fmt.Errorf("store/sql/%s: version %d also in %s", e.Name(), v, prev)
		}
		seen[v] = e.Name()
		b, err := pgMigrations.ReadFile("sql/" + e.Name())
		if err != nil {
			return nil, err
		}
		ms = append(ms, pgMigration{version: v, name: e.Name(), text: string(b)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	return ms, nil
}

// PostgresSchemaVersion is the newest version of the schema this build knows.
func PostgresSchemaVersion() int {
	ms, err := pgMigrationList()
	if err != nil || len(ms) == 0 {
		return 0
	}
	return ms[len(ms)-1].version
}

// renderMigration fills a migration template in.
func renderMigration(m pgMigration, prefix, schema string) (string, error) {
	tpl, err := template.New(m.name).Option("missingkey=error").Parse(m.text)
	if err != nil {
		return "", fmt.Errorf("store/sql/%s: %w", m.name, err)
	}
	var b strings.Builder
	err = tpl.Execute(&b, map[string]string{
		"P":             prefix,
		"Schema":        pgx.Identifier{schema}.Sanitize(),
		"SchemaLiteral": "'" + strings.ReplaceAll(pgx.Identifier{schema}.Sanitize(), "'", "''") + "'",
	})
	if err != nil {
		return "", fmt.Errorf("store/sql/%s: %w", m.name, err)
	}
	return b.String(), nil
}

// pgLockKey is the advisory lock Migrate holds: one per prefix (and so per set of
// tables), whatever the database.
func pgLockKey(prefix string) int64 {
	h := fnv.New64a()
	h.Write([]byte("fuseproxy migrate " + prefix))
	return int64(h.Sum64())
}

// MigrateResult says what Migrate did.
type MigrateResult struct {
	Schema  string // the schema the tables are in
	Applied []int  // versions applied by this call, in order
	Version int    // the newest version now applied
}

// Migrate brings fuseproxy's tables and functions for prefix up to date: in one
// transaction holding pg_advisory_xact_lock(<hash of prefix>), so replicas that start
// together wait for each other and each version is applied once, it applies every
// version not yet recorded in <prefix>schema. When everything is applied already it
// writes nothing (a runtime role with the rights PostgresGrants lists may call it). A
// failure rolls everything back and names the file.
func Migrate(ctx context.Context, conn PGBeginner, prefix string) (MigrateResult, error) {
	if err := ValidPostgresPrefix(prefix); err != nil {
		return MigrateResult{}, err
	}
	ms, err := pgMigrationList()
	if err != nil {
		return MigrateResult{}, err
	}
	return migrate(ctx, conn, prefix, ms)
}

// migrate applies ms (in version order) as Migrate does.
func migrate(ctx context.Context, conn PGBeginner, prefix string, ms []pgMigration) (MigrateResult, error) {
	var res MigrateResult
	tx, err := conn.Begin(ctx)
	if err != nil {
		return res, fmt.Errorf("migrate: begin: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // after Commit it does nothing
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", pgLockKey(prefix)); err != nil {
		return res, fmt.Errorf("migrate: advisory lock: %w", err)
	}
	var schema *string
	if err := tx.QueryRow(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
		return res, fmt.Errorf("migrate: current_schema(): %w", err)
	}
	if schema == nil {
		return res, errors.New("migrate: no schema to create the tables in: the search_path names no existing schema")
	}
	res.Schema = *schema
	table := prefix + "schema"
	var exists bool
	if err := tx.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL",
		pgx.Identifier{res.Schema, table}.Sanitize()).Scan(&exists); err != nil {
		return res, fmt.Errorf("migrate: %w", err)
	}
	applied := map[int]bool{}
	if exists {
		rows, err := tx.Query(ctx, "SELECT version FROM "+pgx.Identifier{res.Schema, table}.Sanitize())
		if err != nil {
			return res, fmt.Errorf("migrate: reading %s: %w", table, err)
		}
		vs, err := pgx.CollectRows(rows, pgx.RowTo[int])
		if err != nil {
			return res, fmt.Errorf("migrate: reading %s: %w", table, err)
		}
		for _, v := range vs {
			applied[v] = true
			res.Version = max(res.Version, v)
		}
	}
	var todo []pgMigration
	for _, m := range ms {
		if !applied[m.version] {
			todo = append(todo, m)
		}
	}
	if len(todo) == 0 {
		return res, tx.Commit(ctx)
	}
	if !exists {
		if _, err := tx.Exec(ctx, fmt.Sprintf(`CREATE TABLE %s (
	version    integer     PRIMARY KEY,
	name       text        NOT NULL,
	applied_at timestamptz NOT NULL DEFAULT now()
)`, pgx.Identifier{res.Schema, table}.Sanitize())); err != nil {
			return res, fmt.Errorf("migrate: creating %s: %w", table, err)
		}
	}
	for _, m := range todo {
		text, err := renderMigration(m, prefix, res.Schema)
		if err != nil {
			return res, err
		}
		// the simple protocol: a file holds many statements
		if _, err := tx.Exec(ctx, text, pgx.QueryExecModeSimpleProtocol); err != nil {
			return res, fmt.Errorf("migrate: store/sql/%s%s: %w", m.name, pgErrorLine(err, text), err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO "+pgx.Identifier{res.Schema, table}.Sanitize()+
			" (version, name) VALUES ($1, $2)", m.version, m.name); err != nil {
			return res, fmt.Errorf("migrate: recording store/sql/%s: %w", m.name, err)
		}
		res.Applied = append(res.Applied, m.version)
		res.Version = max(res.Version, m.version)
	}
	if err := tx.Commit(ctx); err != nil {
		return res, fmt.Errorf("migrate: commit: %w", err)
	}
	return res, nil
}

// pgErrorLine is ":N", the line of the rendered migration text that err points at (the
// template's line: rendering replaces no newline), or "" when err points nowhere.
func pgErrorLine(err error, text string) string {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Position <= 0 {
		return ""
	}
	r := []rune(text) // Position counts characters, from 1
	pos := min(int(pe.Position), len(r))
	return ":" + strconv.Itoa(strings.Count(string(r[:pos-1]), "\n")+1)
}

// PostgresFunctions are the functions a runtime role calls, with their argument types.
var PostgresFunctions = []string{
	"flush(text, text[])", "acquire(text, text[])", "trial(text, text[])", "control(text, text[])",
	"key_flush(text, text[])", "key_acquire(text, text[])", "key_trial(text, text[])",
	"key_control(text, text[])", "heartbeat(text, text[])", "tally(text, text[])", "claim(text, text[])",
	"history_read(text, text, integer)", "keys_read(text, integer)", "cleanup(bigint, integer)",
	"changes(bigint)",
}

// PostgresGrants returns the statements that give role the least rights fuseproxy needs
// at run time on the tables of prefix in schema, once a migrating role (the owner: it
// needs CONNECT on the database and USAGE and CREATE on the schema) has run Migrate
// (`fuseproxy migrate`): CONNECT, USAGE on the schema, SELECT on <prefix>schema (to see
// that the schema is up to date at start) and EXECUTE on the functions. No right on any
// other table: every write goes through the functions, which run as their owner. The
// runtime role's search_path must include the schema (it does for public). The owner of
// the objects (the migrating role) runs the statements, but the first, which the
// database's owner (or a superuser) runs; it is needed only where CONNECT was revoked
// from PUBLIC.
func PostgresGrants(prefix, schema, database, role string) []string {
	p := func(name string) string { return pgx.Identifier{schema, prefix + name}.Sanitize() }
	r := pgx.Identifier{role}.Sanitize()
	out := []string{
		"GRANT CONNECT ON DATABASE " + pgx.Identifier{database}.Sanitize() + " TO " + r,
		"GRANT USAGE ON SCHEMA " + pgx.Identifier{schema}.Sanitize() + " TO " + r,
		"GRANT SELECT ON " + p("schema") + " TO " + r,
	}
	for _, f := range PostgresFunctions {
		name, sig, _ := strings.Cut(f, "(")
		out = append(out, "GRANT EXECUTE ON FUNCTION "+p(name)+"("+sig+" TO "+r)
	}
	return out
}
