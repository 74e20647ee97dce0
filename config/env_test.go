package config

import (
	"errors"
	"testing"
)

func TestExpand(t *testing.T) {
	vars := env(map[string]string{"HOST": "db.internal", "EMPTY": "", "DOLLAR": "a$b"})
	tests := []struct {
		in, want, err string
	}{
		{in: "plain", want: "plain"},
		{in: "${HOST}", want: "db.internal"},
		{in: "redis://${HOST}:6379/0", want: "redis://db.internal:6379/0"},
		{in: "${HOST}${HOST}", want: "db.internaldb.internal"},
		{in: "${MISSING:-fallback}", want: "fallback"},
		{in: "${MISSING:-}", want: ""},
		{in: "${EMPTY:-fallback}", want: "fallback"}, // :- also covers set-but-empty
		{in: "${EMPTY}", want: ""},
		{in: "${HOST:-fallback}", want: "db.internal"},
		{in: "${MISSING:-redis://127.0.0.1:6379/0}", want: "redis://127.0.0.1:6379/0"},
		{in: "$${HOST}", want: "${HOST}"},
		{in: "pa$$word", want: "pa$word"},
		{in: "pa$word", want: "pa$word"}, // a lone $ stays
		{in: "cost: 5$", want: "cost: 5$"},
		{in: "${DOLLAR}", want: "a$b"}, // values are not expanded again
		{in: "${MISSING}", err: "environment variable MISSING is not set (use ${MISSING:-default} to give a default)"},
		{in: "${HOST", err: `unterminated "${" (missing "}")`},
		{in: "${}", err: "invalid reference ${} (want ${NAME} or ${NAME:-default})"},
		{in: "${1X}", err: "invalid reference ${1X} (want ${NAME} or ${NAME:-default})"},
		{in: "${HOST:?x}", err: "invalid reference ${HOST:?x} (want ${NAME} or ${NAME:-default})"},
	}
	for _, tt := range tests {
		got, err := expand(tt.in, vars)
		switch {
		case tt.err != "" && (err == nil || err.Error() != tt.err):
			t.Errorf("expand(%q) error = %v, want %q", tt.in, err, tt.err)
		case tt.err == "" && err != nil:
			t.Errorf("expand(%q) error = %v", tt.in, err)
		case tt.err == "" && got != tt.want:
			t.Errorf("expand(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestExpandInConfig(t *testing.T) {
	src := `listen: ":${PORT:-8080}"
admin:
  listen: 127.0.0.1:${ADMIN_PORT}
store:
  driver: ${STORE:-memory}
  flush_interval: ${FLUSH:-250ms}
upstreams:
  payments:
    targets: ["${PAYMENTS_URL}"]
    breaker:
      enabled: ${BREAKER_ON:-true}
      failure_rate: ${RATE:-50}
    fallback:
      headers:
        X-Price: "$$5"
routes:
  - upstream: payments
`
	cfg := mustParse(t, src, map[string]string{"ADMIN_PORT": "9999", "PAYMENTS_URL": "https://pay.internal", "RATE": "12.5"})
	up := cfg.Upstreams["payments"]
	switch {
	case cfg.Listen != ":8080":
		t.Errorf("listen = %q", cfg.Listen)
	case cfg.Admin.Listen != "127.0.0.1:9999":
		t.Errorf("admin.listen = %q", cfg.Admin.Listen)
	case cfg.Store.FlushInterval.String() != "250ms":
		t.Errorf("flush_interval = %v", cfg.Store.FlushInterval)
	case up.Targets[0] != "https://pay.internal" || up.TargetURLs[0].Host != "pay.internal":
		t.Errorf("targets = %v", up.Targets)
	case !up.Breaker.Enabled || up.Breaker.FailureRate != 12.5:
		t.Errorf("breaker = %+v", up.Breaker)
	case up.Fallback.Headers["X-Price"] != "$5":
		t.Errorf("header = %q", up.Fallback.Headers["X-Price"])
	}
}

func TestKeysAreNotExpanded(t *testing.T) {
	_, err := parse(t, minimal+"${KEY}: 1\n", map[string]string{"KEY": "listen"})
	want := "config.yaml:6: ${KEY}: unknown key"
	if err == nil || err.Error() != want {
		t.Errorf("err = %v, want %s", err, want)
	}
}

func TestApplyEnv(t *testing.T) {
	all := map[string]string{
		"FUSE_STORE":          "redis",
		"FUSE_REPLICA_ID":     "pod-7",
		"FUSE_REDIS_URL":      "rediss://cache:6380/2",
		"REDIS_HOST":          "cache",
		"REDIS_PORT":          "6380",
		"REDIS_USERNAME":      "fuse",
		"REDIS_PASSWORD":      "s3cret",
		"REDIS_DB":            "2",
		"FUSE_REDIS_PREFIX":   "staging",
		"FUSE_ADMIN_TOKEN":    "t0ken",
		"FUSE_EVENTS_ENABLED": "false",
		// the postgres store's: not applied to the redis store (see TestApplyEnvPostgres)
		"DATABASE_URL":           "postgres://platform@db/app",
		"FUSE_POSTGRES_URL":      "postgres://fuse@pg.internal:5433/breakers?sslmode=verify-full",
		"FUSE_POSTGRES_HOST":     "pg",
		"FUSE_POSTGRES_PORT":     "5433",
		"FUSE_POSTGRES_USER":     "fuse",
		"FUSE_POSTGRES_PASSWORD": "pw",
		"FUSE_POSTGRES_DATABASE": "breakers",
		"FUSE_POSTGRES_SSLMODE":  "require",
		"FUSE_POSTGRES_PREFIX":   "staging_",
	}
	cfg := Default()
	if err := ApplyEnv(cfg, env(all)); err != nil {
		t.Fatal(err)
	}
	r := cfg.Store.Redis
	want := Redis{URL: "rediss://cache:6380/2", Host: "cache", Port: 6380, Username: "fuse", Password: "s3cret", DB: 2, Prefix: "staging"}
	if r.URL != want.URL || r.Host != want.Host || r.Port != want.Port || r.Username != want.Username ||
		r.Password != want.Password || r.DB != want.DB || r.Prefix != want.Prefix {
		t.Errorf("redis = %+v", r)
	}
	if cfg.Store.Driver != "redis" || cfg.Store.ReplicaID != "pod-7" || cfg.Admin.Token != "t0ken" || cfg.Events.Enabled {
		t.Errorf("config = %+v", cfg)
	}

	if cfg.Store.Postgres != Default().Store.Postgres {
		t.Errorf("the postgres variables applied to the redis store: %+v", cfg.Store.Postgres)
	}

	all["FUSE_STORE"] = "database" // Fuse's name for it
	cfg = Default()
	if err := ApplyEnv(cfg, env(all)); err != nil {
		t.Fatal(err)
	}
	pg := cfg.Store.Postgres
	wantPg := Postgres{URL: "postgres://fuse@pg.internal:5433/breakers?sslmode=verify-full", Host: "pg", Port: 5433,
		User: "fuse", Password: "pw", Database: "breakers", SSLMode: "require", Prefix: "staging_"}
	if pg.URL != wantPg.URL || pg.Host != wantPg.Host || pg.Port != wantPg.Port || pg.User != wantPg.User ||
		pg.Password != wantPg.Password || pg.Database != wantPg.Database || pg.SSLMode != wantPg.SSLMode || pg.Prefix != wantPg.Prefix {
		t.Errorf("postgres = %+v", pg)
	}
	if cfg.Store.Driver != "postgres" || cfg.Store.Redis.Host != Default().Store.Redis.Host {
		t.Errorf("driver %q, redis %+v", cfg.Store.Driver, cfg.Store.Redis)
	}
	delete(all, "FUSE_POSTGRES_URL")
	cfg = Default()
	if err := ApplyEnv(cfg, env(all)); err != nil || cfg.Store.Postgres.URL != "postgres://platform@db/app" {
		t.Errorf("DATABASE_URL alone: url %q, %v", cfg.Store.Postgres.URL, err)
	}
	all["FUSE_POSTGRES_URL"] = wantPg.URL

	// Every variable ApplyEnv knows is exercised above.
	for _, o := range envOverrides() {
		if _, ok := all[o.Name]; !ok {
			t.Errorf("%s not covered by this test", o.Name)
		}
	}
}

func TestApplyEnvBeatsFile(t *testing.T) {
	src := minimal + "store:\n  driver: redis\n  redis:\n    host: from-file\n    password: from-file\n"
	cfg := mustParse(t, src, map[string]string{"REDIS_HOST": "from-env", "REDIS_PASSWORD": "pw"})
	if cfg.Store.Redis.Host != "from-env" || cfg.Store.Redis.Password != "pw" {
		t.Errorf("redis = %+v", cfg.Store.Redis)
	}
}

func TestApplyEnvIgnoresRedisVarsWithMemoryStore(t *testing.T) {
	cfg := Default()
	vars := env(map[string]string{"REDIS_PORT": "tcp://10.0.0.1:6379", "REDIS_HOST": "elsewhere"})
	if err := ApplyEnv(cfg, vars); err != nil {
		t.Fatalf("memory store must ignore REDIS_*: %v", err)
	}
	if cfg.Store.Redis.Host != "127.0.0.1" {
		t.Errorf("host = %q", cfg.Store.Redis.Host)
	}
}

func TestApplyEnvIgnoresEmpty(t *testing.T) {
	cfg := Default()
	cfg.Admin.Token = "from-file"
	if err := ApplyEnv(cfg, env(map[string]string{"FUSE_ADMIN_TOKEN": "", "FUSE_STORE": ""})); err != nil {
		t.Fatal(err)
	}
	if cfg.Admin.Token != "from-file" || cfg.Store.Driver != "memory" {
		t.Errorf("empty variables must not override: %+v", cfg)
	}
}

func TestApplyEnvErrors(t *testing.T) {
	cfg := Default()
	cfg.Store.Driver = "redis"
	err := ApplyEnv(cfg, env(map[string]string{"REDIS_PORT": "abc", "REDIS_DB": "-", "FUSE_EVENTS_ENABLED": "nah"}))
	var errs *Errors
	if !errors.As(err, &errs) {
		t.Fatalf("err = %v (%T), want *Errors", err, err)
	}
	want := "env REDIS_PORT: invalid integer \"abc\"\nenv REDIS_DB: invalid integer \"-\"\nenv FUSE_EVENTS_ENABLED: invalid boolean \"nah\""
	if err.Error() != want {
		t.Errorf("err =\n%v\nwant\n%s", err, want)
	}
	if cfg.Store.Redis.Port != 6379 || !cfg.Events.Enabled {
		t.Errorf("bad values must leave fields alone: %+v", cfg)
	}
}
