package config

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// expand replaces ${NAME} and ${NAME:-default} in s with values from lookup, and $$
// with $. ${NAME:-default} uses default when NAME is unset or empty; ${NAME} with
// NAME unset is an error. A $ followed by anything else is kept as is.
func expand(s string, lookup func(string) (string, bool)) (string, error) {
	if !strings.Contains(s, "$") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '{':
			ref, _, ok := strings.Cut(s[i+2:], "}")
			if !ok {
				return "", errors.New(`unterminated "${" (missing "}")`)
			}
			val, err := resolveVar(ref, lookup)
			if err != nil {
				return "", err
			}
			b.WriteString(val)
			i += len("${") + len(ref) // the loop's i++ steps over "}"
		default:
			b.WriteByte('$')
		}
	}
	return b.String(), nil
}

// resolveVar returns the value of one "NAME" or "NAME:-default" reference.
func resolveVar(ref string, lookup func(string) (string, bool)) (string, error) {
	name, def, hasDef := strings.Cut(ref, ":-")
	if !isEnvName(name) {
		return "", fmt.Errorf("invalid reference ${%s} (want ${NAME} or ${NAME:-default})", ref)
	}
	val, ok := lookup(name)
	switch {
	case hasDef && val == "":
		return def, nil
	case !ok:
		return "", fmt.Errorf("environment variable %s is not set (use ${%s:-default} to give a default)", name, name)
	}
	return val, nil
}

// isEnvName reports whether s is a shell-style variable name.
func isEnvName(s string) bool {
	for i, c := range s {
		if c != '_' && !isLetter(c) && (i == 0 || c < '0' || c > '9') {
			return false
		}
	}
	return s != ""
}

func isLetter(c rune) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// envOverride is one environment variable that overrides a config field.
type envOverride struct {
	Name   string
	Key    string // the field, as in Reference
	driver string // applied only when the store driver (after FUSE_STORE) is this one ("": always)
	field  func(*Config) any
}

// envOverrides lists the variables ApplyEnv honours, in the order it applies them.
func envOverrides() []envOverride {
	return []envOverride{
		{"FUSE_STORE", "store.driver", "", func(c *Config) any { return &c.Store.Driver }},
		{"FUSE_REPLICA_ID", "store.replica_id", "", func(c *Config) any { return &c.Store.ReplicaID }},
		{"FUSE_REDIS_URL", "store.redis.url", "redis", func(c *Config) any { return &c.Store.Redis.URL }},
		{"REDIS_HOST", "store.redis.host", "redis", func(c *Config) any { return &c.Store.Redis.Host }},
		{"REDIS_PORT", "store.redis.port", "redis", func(c *Config) any { return &c.Store.Redis.Port }},
		{"REDIS_USERNAME", "store.redis.username", "redis", func(c *Config) any { return &c.Store.Redis.Username }},
		{"REDIS_PASSWORD", "store.redis.password", "redis", func(c *Config) any { return &c.Store.Redis.Password }},
		{"REDIS_DB", "store.redis.db", "redis", func(c *Config) any { return &c.Store.Redis.DB }},
		{"FUSE_REDIS_PREFIX", "store.redis.prefix", "redis", func(c *Config) any { return &c.Store.Redis.Prefix }},
		{"DATABASE_URL", "store.postgres.url", "postgres", func(c *Config) any { return &c.Store.Postgres.URL }},
		{"FUSE_POSTGRES_URL", "store.postgres.url", "postgres", func(c *Config) any { return &c.Store.Postgres.URL }},
		{"FUSE_POSTGRES_HOST", "store.postgres.host", "postgres", func(c *Config) any { return &c.Store.Postgres.Host }},
		{"FUSE_POSTGRES_PORT", "store.postgres.port", "postgres", func(c *Config) any { return &c.Store.Postgres.Port }},
		{"FUSE_POSTGRES_USER", "store.postgres.user", "postgres", func(c *Config) any { return &c.Store.Postgres.User }},
		{"FUSE_POSTGRES_PASSWORD", "store.postgres.password", "postgres", func(c *Config) any { return &c.Store.Postgres.Password }},
		{"FUSE_POSTGRES_DATABASE", "store.postgres.database", "postgres", func(c *Config) any { return &c.Store.Postgres.Database }},
		{"FUSE_POSTGRES_SSLMODE", "store.postgres.sslmode", "postgres", func(c *Config) any { return &c.Store.Postgres.SSLMode }},
		{"FUSE_POSTGRES_PREFIX", "store.postgres.prefix", "postgres", func(c *Config) any { return &c.Store.Postgres.Prefix }},
		{"FUSE_ADMIN_TOKEN", "admin.token", "", func(c *Config) any { return &c.Admin.Token }},
		{"FUSE_EVENTS_ENABLED", "events.enabled", "", func(c *Config) any { return &c.Events.Enabled }},
	}
}

// ApplyEnv overrides fields of cfg from environment variables read with lookup
// (os.LookupEnv in Load): the environment beats the file. A variable counts when it
// is set and non-empty. The REDIS_* and FUSE_REDIS_* variables apply only when the
// store driver, after FUSE_STORE, is "redis", and DATABASE_URL and FUSE_POSTGRES_* only
// when it is "postgres", so that unrelated variables (such as the REDIS_PORT=tcp://...
// that Kubernetes service links inject) cannot break another store's deployment. (The
// postgres store also reads libpq's PG* variables, for the connection settings left
// empty, when it connects.) The variables and the fields they set are:
//
//	FUSE_STORE          store.driver
//	FUSE_REPLICA_ID     store.replica_id
//	FUSE_REDIS_URL      store.redis.url
//	REDIS_HOST          store.redis.host
//	REDIS_PORT          store.redis.port
//	REDIS_USERNAME      store.redis.username
//	REDIS_PASSWORD      store.redis.password
//	REDIS_DB            store.redis.db
//	FUSE_REDIS_PREFIX   store.redis.prefix
//	DATABASE_URL        store.postgres.url
//	FUSE_POSTGRES_URL   store.postgres.url (after DATABASE_URL: it wins)
//	FUSE_POSTGRES_HOST, _PORT, _USER, _PASSWORD, _DATABASE, _SSLMODE, _PREFIX
//	                    store.postgres.host, ... (the key of the same name)
//	FUSE_ADMIN_TOKEN    admin.token
//	FUSE_EVENTS_ENABLED events.enabled
//
// A value that does not parse is reported as *Errors naming the variable, e.g.
// `env REDIS_PORT: invalid integer "abc"`; the field then keeps its value.
func ApplyEnv(cfg *Config, lookup func(string) (string, bool)) error {
	_, errs := applyEnv(cfg, lookup)
	return errs.err()
}

// applyEnv is ApplyEnv, also returning which field each variable set.
func applyEnv(cfg *Config, lookup func(string) (string, bool)) (set map[string]string, errs Errors) {
	set = make(map[string]string)
	for _, o := range envOverrides() {
		val, ok := lookup(o.Name)
		if !ok || val == "" || o.driver != "" && cfg.Store.Driver != o.driver {
			continue
		}
		if msg := setFromEnv(o.field(cfg), val); msg != "" {
			if o.Name == "REDIS_PORT" && strings.Contains(val, "://") {
				msg += " (Kubernetes service links set REDIS_PORT to a URL; set it explicitly or disable enableServiceLinks)"
			}
			errs = append(errs, FieldError{Path: "env " + o.Name, Msg: msg})
			continue
		}
		if o.Key == "store.driver" {
			cfg.Store.Driver = StoreDriver(cfg.Store.Driver)
		}
		set[o.Key] = o.Name
	}
	return set, errs
}

// StoreDriver returns the store driver a store.driver value (or FUSE_STORE) names:
// Fuse's own store names are accepted as aliases, "array" for memory, "cache" for redis
// and "database" for postgres. Any other value is returned as is.
func StoreDriver(name string) string {
	switch name {
	case "array":
		return "memory"
	case "cache":
		return "redis"
	case "database":
		return "postgres"
	}
	return name
}

// setFromEnv parses val into the field ptr points to, returning a message on failure.
func setFromEnv(ptr any, val string) string {
	switch p := ptr.(type) {
	case *string:
		*p = val
	case *int:
		n, err := strconv.Atoi(val)
		if err != nil {
			return "invalid integer " + quote(val)
		}
		*p = n
	case *bool:
		b, err := strconv.ParseBool(val)
		if err != nil {
			return "invalid boolean " + quote(val)
		}
		*p = b
	default:
		panic(fmt.Sprintf("config: env override of unsupported type %T", ptr))
	}
	return ""
}
