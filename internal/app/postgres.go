package app

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/store"
)

// The PostgreSQL store takes every value from here, and these from the config (whose
// defaults are config.Default()'s alone), as the Redis store does (redis.go).

// postgresOptions translates the store's config into the PostgreSQL store's tolerances;
// the caller adds the replica's id, logger, clock and hooks.
func postgresOptions(s config.Store) store.PostgresOptions {
	return store.PostgresOptions{
		Prefix:        s.Postgres.Prefix,
		FlushInterval: s.FlushInterval,
		DegradeAfter:  s.Postgres.DegradeAfter,
		Timeout:       s.Postgres.ConnectTimeout + s.Postgres.StatementTimeout,
		History:       historyOptions(s),
	}
}

// postgresClientOptions translates store.postgres into the pool's settings.
func postgresClientOptions(c config.Postgres) store.PostgresClientOptions {
	return store.PostgresClientOptions{
		URL: c.URL, Host: c.Host, Port: c.Port, User: c.User, Password: c.Password, Database: c.Database,
		SSLMode: c.SSLMode, SSLRootCert: c.SSLRootCert, SSLCert: c.SSLCert, SSLKey: c.SSLKey,
		PoolSize: c.PoolSize, ConnectTimeout: c.ConnectTimeout, StatementTimeout: c.StatementTimeout,
	}
}

// newPostgres builds the PostgreSQL store (no I/O: prepareStore connects).
func (a *App) newPostgres(cfg *config.Config) (store.Store, error) {
	pool, err := store.NewPostgresPool(postgresClientOptions(cfg.Store.Postgres))
	if err != nil {
		return nil, fmt.Errorf("store.postgres.%w", err)
	}
	o := postgresOptions(cfg.Store)
	o.ReplicaID, o.Logger, o.Wall, o.Hooks = a.replica, a.log, a.opts.Wall, a.metrics.StoreHooks()
	p, err := store.NewPostgres(pool, o)
	if err != nil { // a nil *Postgres must not become a non-nil Store
		return nil, err
	}
	return p, nil
}

// prepareTimeout bounds preparing the database at start (migrating it may wait for
// another replica's migration, behind the advisory lock).
const prepareTimeout = 30 * time.Second

// prepareStore readies the PostgreSQL store's database before the replica serves: the
// schema migrated (store.postgres.migrate) or checked, and LISTEN proven to work. A
// database that cannot be reached is not fatal, as a Redis that cannot be: the breakers
// decide locally until it answers. Any answer that says it cannot work (a migration that
// fails, a schema too old, notifications that do not arrive) stops the start.
func (a *App) prepareStore(ctx context.Context, cfg *config.Config) error {
	pg, ok := a.store.(*store.Postgres)
	if !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, prepareTimeout)
	defer cancel()
	res, err := pg.Prepare(ctx, cfg.Store.Postgres.Migrate)
	switch {
	case errors.Is(err, store.ErrUnreachable):
		a.log.Warn("postgres not reachable at start; schema and LISTEN not checked; breakers decide locally until it is", zap.Error(err))
		return nil
	case err != nil:
		return err
	}
	a.log.Info("postgres store ready", zap.String("schema", res.Schema), zap.Int("version", res.Version),
		zap.Ints("migrated", res.Applied))
	return nil
}

// MigratePostgres applies the schema's missing versions to the database the config's
// store.postgres names, under its prefix (fuseproxy migrate), whatever store.driver says,
// and returns that database's name.
func MigratePostgres(ctx context.Context, cfg *config.Config) (store.MigrateResult, string, error) {
	o := postgresClientOptions(cfg.Store.Postgres)
	o.StatementTimeout = 0 // DDL, and waiting for another migration, take their time
	pool, err := store.NewPostgresPool(o)
	if err != nil {
		return store.MigrateResult{}, "", fmt.Errorf("store.postgres.%w", err)
	}
	defer pool.Close()
	res, err := store.Migrate(ctx, pool, cfg.Store.Postgres.Prefix)
	if err != nil {
		return res, "", err
	}
	var db string
	err = pool.QueryRow(ctx, "SELECT current_database()").Scan(&db)
	return res, db, err
}
