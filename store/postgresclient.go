package store

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// PostgresClientOptions say how to reach PostgreSQL. Every field left empty (or 0) is
// libpq's: pgx reads the PG* variables (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGPASSFILE,
// PGDATABASE, PGSSLMODE, PGSSLROOTCERT, PGSSLCERT, PGSSLKEY, ...) and then libpq's
// defaults, as psql does. Errors name a field by its key under store.postgres in the
// config (url, ...), so that the caller can prefix the key's place.
type PostgresClientOptions struct {
	URL                          string // postgres:// URL; replaces Host, Port and Database
	Host                         string
	Port                         int
	User, Password, Database     string // User and Password override the URL's when set
	SSLMode                      string // disable, allow, prefer, require, verify-ca, verify-full
	SSLRootCert, SSLCert, SSLKey string
	PoolSize                     int
	ConnectTimeout               time.Duration
	StatementTimeout             time.Duration // also the server's statement_timeout
	ApplicationName              string        // "fuseproxy" when empty
}

// NewPostgresPool builds a pool (it does not connect until first used).
func NewPostgresPool(o PostgresClientOptions) (*pgxpool.Pool, error) {
	dsn, err := o.connString()
	if err != nil {
		return nil, err
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("url: %w", err)
	}
	if o.PoolSize > 0 {
		cfg.MaxConns = int32(o.PoolSize)
	}
	if o.ConnectTimeout > 0 {
		cfg.ConnConfig.ConnectTimeout = o.ConnectTimeout
	}
	rp := cfg.ConnConfig.RuntimeParams
	if o.StatementTimeout > 0 {
		rp["statement_timeout"] = strconv.FormatInt(o.StatementTimeout.Milliseconds(), 10)
	}
	// The functions are written for READ COMMITTED (a call that waited for a circuit's
	// row lock reads what the holder wrote): a database's or role's stricter
	// default_transaction_isolation would fail concurrent calls on one circuit with
	// serialization errors (40001) and degrade the store under load.
	rp["default_transaction_isolation"] = "read committed"
	// Nor may a database's lock_timeout fail a call that waits for a circuit's row while
	// another replica's call holds it (55P03): statement_timeout bounds the call.
	rp["lock_timeout"] = "0"
	if rp["application_name"] == "" {
		rp["application_name"] = cmpString(o.ApplicationName, "fuseproxy")
	}
	return pgxpool.NewWithConfig(context.Background(), cfg)
}

func cmpString(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// connString is the URL with the fields that override it, or a keyword/value string of
// the fields that are set (pgx fills in the rest from PG* and libpq's defaults).
func (o PostgresClientOptions) connString() (string, error) {
	ssl := [][2]string{{"sslmode", o.SSLMode}, {"sslrootcert", o.SSLRootCert}, {"sslcert", o.SSLCert}, {"sslkey", o.SSLKey}}
	if o.URL != "" {
		u, err := url.Parse(o.URL)
		if err != nil || u.Scheme != "postgres" && u.Scheme != "postgresql" {
			// never the URL itself: it may hold a password
			return "", fmt.Errorf("url: not a postgres:// URL")
		}
		if o.User != "" || o.Password != "" {
			user, pw := u.User.Username(), ""
			if p, ok := u.User.Password(); ok {
				pw = p
			}
			if o.User != "" {
				user = o.User
			}
			if o.Password != "" {
				pw = o.Password
			}
			u.User = url.UserPassword(user, pw)
		}
		q := u.Query()
		for _, kv := range ssl {
			if kv[1] != "" {
				q.Set(kv[0], kv[1])
			}
		}
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	var kv []string
	add := func(k, v string) {
		if v != "" {
			kv = append(kv, k+"='"+strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v)+"'")
		}
	}
	add("host", o.Host)
	if o.Port > 0 {
		add("port", strconv.Itoa(o.Port))
	}
	add("user", o.User)
	add("password", o.Password)
	add("dbname", o.Database)
	for _, p := range ssl {
		add(p[0], p[1])
	}
	return strings.Join(kv, " "), nil
}
