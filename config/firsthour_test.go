package config

import (
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Fuse's own store names are aliases, in the file and in FUSE_STORE; with "cache" the
// REDIS_* variables apply as with "redis".
func TestStoreDriverFuseAliases(t *testing.T) {
	for _, tt := range []struct {
		file, env, want string
	}{
		{file: "array", want: "memory"},
		{file: "cache", want: "redis"},
		{env: "array", want: "memory"},
		{env: "cache", want: "redis"},
		{file: "redis", env: "array", want: "memory"},
	} {
		src := minimal
		if tt.file != "" {
			src += "store:\n  driver: " + tt.file + "\n"
		}
		vars := map[string]string{"REDIS_HOST": "redis.internal"}
		if tt.env != "" {
			vars["FUSE_STORE"] = tt.env
		}
		cfg := mustParse(t, src, vars)
		if cfg.Store.Driver != tt.want {
			t.Errorf("file %q, FUSE_STORE %q: driver %q, want %q", tt.file, tt.env, cfg.Store.Driver, tt.want)
		}
		if wantHost := map[bool]string{true: "redis.internal", false: "127.0.0.1"}[tt.want == "redis"]; cfg.Store.Redis.Host != wantHost {
			t.Errorf("file %q, FUSE_STORE %q: redis host %q, want %q (REDIS_* apply only to the redis store)", tt.file, tt.env, cfg.Store.Redis.Host, wantHost)
		}
	}
}

// Fuse's database store is the postgres store, in the file and in FUSE_STORE.
func TestStoreDriverDatabaseIsPostgres(t *testing.T) {
	for _, tt := range []struct{ file, env string }{
		{file: "database"}, {file: "postgres"}, {env: "database"}, {file: "redis", env: "postgres"},
	} {
		src := minimal
		if tt.file != "" {
			src += "store:\n  driver: " + tt.file + "\n"
		}
		cfg := mustParse(t, src, map[string]string{"FUSE_STORE": tt.env, "FUSE_POSTGRES_HOST": "pg.internal"})
		if cfg.Store.Driver != "postgres" || cfg.Store.Postgres.Host != "pg.internal" {
			t.Errorf("file %q, FUSE_STORE %q: driver %q, host %q", tt.file, tt.env, cfg.Store.Driver, cfg.Store.Postgres.Host)
		}
	}
}

// store.postgres is checked like the rest: each bad value named at its line.
func TestPostgresValidation(t *testing.T) {
	src := minimal + `store:
  driver: postgres
  postgres:
    url: mysql://u:secret@h/db
    port: 70000
    sslmode: strict
    sslcert: c.pem
    prefix: Fuse-
    pool_size: 0
    connect_timeout: 0s
    statement_timeout: -1s
    degrade_after: 0
`
	_, err := parse(t, src, nil)
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{
		`config.yaml:9: store.postgres.url: must be a postgres:// or postgresql:// URL, got scheme "mysql"`,
		`config.yaml:10: store.postgres.port: must be between 1 and 65535, got 70000`,
		`config.yaml:11: store.postgres.sslmode: must be disable, allow, prefer, require, verify-ca or verify-full, got "strict"`,
		`config.yaml:12: store.postgres.sslcert: sslcert and sslkey must be set together`,
		`config.yaml:13: store.postgres.prefix: must match [a-z_][a-z0-9_]{0,29}`,
		`config.yaml:14: store.postgres.pool_size: must be >= 1, got 0`,
		`config.yaml:15: store.postgres.connect_timeout: must be > 0, got 0s`,
		`config.yaml:16: store.postgres.statement_timeout: must be > 0, got -1s`,
		`config.yaml:17: store.postgres.degrade_after: must be >= 1, got 0`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "secret") {
		t.Errorf("the URL's password is echoed:\n%v", err)
	}
	mustParse(t, minimal+"store:\n  driver: database\n  postgres:\n    url: postgresql://fuse@db:5432/app?sslmode=verify-full\n    prefix: _f1\n", nil)
}

// The URL's query options are what the store will use: they replace the keys, so
// `validate` checks what `serve` runs with.
func TestRedisURLOptionsApply(t *testing.T) {
	src := minimal + "store:\n  driver: redis\n  redis:\n    dial_timeout: 5s\n    url: redis://10.0.0.9:6380/2?dial_timeout=1s&read_timeout=2&write_timeout=300ms&pool_size=7\n"
	r := mustParse(t, src, nil).Store.Redis
	if r.DialTimeout != time.Second || r.ReadTimeout != 2*time.Second || r.WriteTimeout != 300*time.Millisecond || r.PoolSize != 7 {
		t.Errorf("dial %v read %v write %v pool %d; want the URL's 1s 2s 300ms 7", r.DialTimeout, r.ReadTimeout, r.WriteTimeout, r.PoolSize)
	}
	// The same from FUSE_REDIS_URL.
	r = mustParse(t, minimal, map[string]string{"FUSE_STORE": "redis", "FUSE_REDIS_URL": "redis://h:1/0?read_timeout=50ms"}).Store.Redis
	if r.ReadTimeout != 50*time.Millisecond {
		t.Errorf("FUSE_REDIS_URL's read_timeout: %v, want 50ms", r.ReadTimeout)
	}
}

// An unknown or malformed option is an error at the URL's line, not at serve's start.
func TestRedisURLOptionErrors(t *testing.T) {
	for _, tt := range []struct{ query, want string }{
		{"dial_timout=1s", `config.yaml:9: store.redis.url: unknown option "dial_timout" in the URL (known: db, dial_timeout, read_timeout, write_timeout, pool_size; set the others as store.redis keys)`},
		{"max_retries=3", `unknown option "max_retries" in the URL`},
		{"dial_timeout=soon", `config.yaml:9: store.redis.url: option dial_timeout=soon in the URL: want a duration (250ms, 1s) or whole seconds`},
		{"pool_size=x", `option pool_size=x in the URL: want a whole number`},
		{"pool_size=1&pool_size=2", `option pool_size is given 2 times in the URL`},
	} {
		src := minimal + "store:\n  driver: redis\n  redis:\n    url: redis://127.0.0.1:6379/0?" + tt.query + "\n"
		_, err := parse(t, src, nil)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("?%s: error %v, want %q", tt.query, err, tt.want)
		}
	}
}

// A ${VAR} in the example config, README or the compose example that looks like one of
// fuseproxy's variables (FUSE_*, REDIS_*) is one the reference documents: the example
// once read ${REDIS_URL} while README documented FUSE_REDIS_URL.
func TestDocumentedVariablesInExamples(t *testing.T) {
	documented := map[string]bool{"FUSE_CONFIG": true, "FUSE_ADMIN_URL": true}
	for _, k := range Reference {
		if k.Env != "" {
			documented[k.Env] = true
		}
	}
	ref := regexp.MustCompile(`\$\{((?:FUSE|REDIS)_[A-Z0-9_]*)`)
	for _, file := range []string{"../config.example.yaml", "../README.md", "../examples/compose/fuseproxy.yaml"} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for n, line := range strings.Split(string(b), "\n") {
			for _, m := range ref.FindAllStringSubmatch(line, -1) {
				if !documented[m[1]] {
					t.Errorf("%s:%d: ${%s} is not a variable fuseproxy documents", file, n+1, m[1])
				}
			}
		}
	}
}
