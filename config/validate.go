package config

import (
	"fmt"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Validate checks c and fills its derived fields, Upstream.TargetURLs and
// Failure.FailureStatus; it also lower-cases Route.Host and upper-cases Route.Methods.
// Parse and Load call it; call it yourself on a Config built or changed in code.
// Problems are returned as *Errors, located in the file when c came from Parse.
//
// Failure statuses resolve to a table of codes: each entry of Statuses is a code
// ("503") or a class ("5xx"), and SuccessStatuses then removes codes from it. When
// Statuses is left at its default ["5xx"] (not written in the file, or, for a Config
// built in code, equal to it) 501 Not Implemented is not a failure: it means the
// client asked for something the upstream does not do, not that the upstream is
// sick. Writing "5xx" in the file counts all of 500-599.
func (c *Config) Validate() error {
	return c.validate().err()
}

// validate is Validate returning the unsorted problem list.
func (c *Config) validate() Errors {
	v := &validator{o: c.origin}
	v.hostPort("listen", c.Listen)
	v.server(&c.Server)
	v.admin(&c.Admin)
	v.oneOf("log.format", c.Log.Format, "json", "console")
	v.oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	v.store(&c.Store)
	v.events(&c.Events)
	v.accessLog(&c.AccessLog)
	v.upstreams(c.Upstreams)
	v.routes(c.Routes, c.Upstreams)
	v.atLeast("replicas", c.Replicas, 0)
	return v.errs
}

// validator collects problems, located through the config's origin.
type validator struct {
	o    *origin
	errs Errors
}

func (v *validator) errorf(path, format string, args ...any) {
	v.errs = append(v.errs, v.o.fieldError(path, fmt.Sprintf(format, args...)))
}

func (v *validator) server(s *Server) {
	v.nonNegative("server.read_header_timeout", s.ReadHeaderTimeout)
	v.nonNegative("server.read_timeout", s.ReadTimeout)
	v.nonNegative("server.write_timeout", s.WriteTimeout)
	v.nonNegative("server.idle_timeout", s.IdleTimeout)
	v.atLeast("server.max_header_bytes", s.MaxHeaderBytes, 0)
	v.nonNegative("server.shutdown_timeout", s.ShutdownTimeout)
	v.atLeast("server.max_connections", s.MaxConnections, 0)
	v.nonNegative("server.body_read_timeout", s.BodyReadTimeout)
	v.atLeast("server.body_min_rate", s.BodyMinRate, 0)
	v.listenerTLS("server.tls", &s.TLS)
	if s.H2C && s.TLS.Enabled() {
		v.errorf("server.h2c", "h2c is cleartext HTTP/2, for a listener without TLS: with server.tls on, clients get HTTP/2 by ALPN (server.http2)")
	}
	for i, cidr := range s.TrustedProxies {
		if _, err := ParseTrustedProxy(cidr); err != nil {
			v.errorf(fmt.Sprintf("server.trusted_proxies[%d]", i), "%v", err)
		}
	}
}

// ParseTrustedProxy parses one server.trusted_proxies entry: a CIDR range
// ("10.0.0.0/8", "fd00::/8") or a single address ("192.0.2.10", a /32 or /128).
func ParseTrustedProxy(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("invalid CIDR range %s: want an address range such as \"10.0.0.0/8\" or an address", quote(s))
		}
		if p != p.Masked() {
			return netip.Prefix{}, fmt.Errorf("CIDR range %s has bits set past its /%d: write %s", quote(s), p.Bits(), quote(p.Masked().String()))
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 { // ::ffff:10.0.0.0/104 is 10.0.0.0/8
			return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96), nil
		}
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("invalid address %s: want an IP address such as \"192.0.2.10\" or a CIDR range such as \"10.0.0.0/8\"", quote(s))
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func (v *validator) admin(a *Admin) {
	host, ok := v.hostPort("admin.listen", a.Listen)
	if ok && a.Token == "" && !isLoopback(host) {
		v.errorf("admin.listen", "%s is not a loopback address, so an admin token is required (set admin.token or env FUSE_ADMIN_TOKEN)", quote(a.Listen))
	}
	if _, err := CleanToken(a.Token); err != nil {
		v.errorf("admin.token", "%v", err)
	}
	v.listenerTLS("admin.tls", &a.TLS)
	for i, h := range a.AllowedHosts {
		if !isHostname(strings.TrimSuffix(h, ".")) {
			v.errorf(fmt.Sprintf("admin.allowed_hosts[%d]", i), "must be a host name (no scheme, port or wildcard), got %s", quote(h))
		}
	}
}

func (v *validator) store(s *Store) {
	s.Driver = StoreDriver(s.Driver)
	v.oneOf("store.driver", s.Driver, "memory", "redis", "postgres")
	if s.ReplicaID != "" && !validName(s.ReplicaID, 128) {
		v.errorf("store.replica_id", "invalid replica id %s: use 1-128 letters, digits, '_', '.' or '-'", quote(s.ReplicaID))
	}
	if s.FlushInterval < 10*time.Millisecond {
		v.errorf("store.flush_interval", "must be >= 10ms, got %s", fmtDuration(s.FlushInterval))
	}
	v.nonNegative("store.history.retention", s.History.Retention)
	v.intBetween("store.history.max_entries", s.History.MaxEntries, 1, 1000000)

	v.postgres(&s.Postgres)

	const p = "store.redis"
	r := &s.Redis
	if r.URL != "" {
		v.redisURL(p+".url", r)
	} else if r.Host == "" && len(r.SentinelAddrs) == 0 && len(r.ClusterAddrs) == 0 {
		v.errorf(p+".host", "must not be empty (or set url, sentinel_addrs or cluster_addrs)")
	}
	v.intBetween(p+".port", r.Port, 1, 65535)
	v.atLeast(p+".db", r.DB, 0)
	if r.Prefix == "" || strings.ContainsFunc(r.Prefix, isSpace) {
		v.errorf(p+".prefix", "must be non-empty without spaces, got %s", quote(r.Prefix))
	}
	v.atLeast(p+".pool_size", r.PoolSize, 0)
	v.nonNegative(p+".dial_timeout", r.DialTimeout)
	v.nonNegative(p+".read_timeout", r.ReadTimeout)
	v.nonNegative(p+".write_timeout", r.WriteTimeout)
	v.atLeast(p+".degrade_after", r.DegradeAfter, 1)
	for i, addr := range r.SentinelAddrs {
		v.hostPort(fmt.Sprintf("%s.sentinel_addrs[%d]", p, i), addr)
	}
	for i, addr := range r.ClusterAddrs {
		v.hostPort(fmt.Sprintf("%s.cluster_addrs[%d]", p, i), addr)
	}
	switch {
	case len(r.SentinelAddrs) > 0 && len(r.ClusterAddrs) > 0:
		v.errorf(p+".cluster_addrs", "cannot be combined with sentinel_addrs")
	case len(r.SentinelAddrs) > 0 && r.SentinelMaster == "":
		v.errorf(p+".sentinel_master", "is required with sentinel_addrs")
	case len(r.SentinelAddrs) == 0 && r.SentinelMaster != "":
		v.errorf(p+".sentinel_addrs", "is required with sentinel_master")
	}
	if (r.TLS.CertFile == "") != (r.TLS.KeyFile == "") {
		v.errorf(p+".tls.cert_file", "cert_file and key_file must be set together")
	}
}

// postgres checks store.postgres. The prefix names tables and functions unquoted, and
// NOTIFY channels, so it is [a-z_][a-z0-9_]{0,29} (the longest name built from it stays
// within PostgreSQL's 63 bytes).
func (v *validator) postgres(pg *Postgres) {
	const p = "store.postgres"
	if pg.URL != "" {
		u, err := url.Parse(pg.URL)
		switch {
		case err != nil:
			v.errorf(p+".url", "must be a postgres:// or postgresql:// URL")
		case u.Scheme != "postgres" && u.Scheme != "postgresql":
			v.errorf(p+".url", "must be a postgres:// or postgresql:// URL, got scheme %s", quote(u.Scheme))
		}
	}
	if pg.Port != 0 {
		v.intBetween(p+".port", pg.Port, 1, 65535)
	}
	if pg.SSLMode != "" {
		v.oneOf(p+".sslmode", pg.SSLMode, "disable", "allow", "prefer", "require", "verify-ca", "verify-full")
	}
	if (pg.SSLCert == "") != (pg.SSLKey == "") {
		v.errorf(p+".sslcert", "sslcert and sslkey must be set together")
	}
	if !validPgPrefix(pg.Prefix) {
		v.errorf(p+".prefix", "must match [a-z_][a-z0-9_]{0,29} (it starts every table, function and channel name), got %s", quote(pg.Prefix))
	}
	v.atLeast(p+".pool_size", pg.PoolSize, 1)
	if pg.ConnectTimeout <= 0 {
		v.errorf(p+".connect_timeout", "must be > 0, got %s", fmtDuration(pg.ConnectTimeout))
	}
	if pg.StatementTimeout <= 0 {
		v.errorf(p+".statement_timeout", "must be > 0, got %s", fmtDuration(pg.StatementTimeout))
	}
	v.atLeast(p+".degrade_after", pg.DegradeAfter, 1)
}

func validPgPrefix(s string) bool {
	if s == "" || len(s) > 30 {
		return false
	}
	for i, c := range s {
		if !(c >= 'a' && c <= 'z' || c == '_' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// redisURL checks a redis:// or rediss:// URL without echoing it: it may hold a password.
func (v *validator) redisURL(path string, r *Redis) {
	u, err := url.Parse(r.URL)
	switch {
	case err != nil:
		v.errorf(path, "must be a redis:// or rediss:// URL")
	case u.Scheme != "redis" && u.Scheme != "rediss":
		v.errorf(path, "must be a redis:// or rediss:// URL, got scheme %s", quote(u.Scheme))
	default:
		if db := strings.Trim(u.Path, "/"); db != "" {
			if n, err := strconv.Atoi(db); err != nil || n < 0 {
				v.errorf(path, "database %s in the URL path is not a number", quote(db))
			}
		}
		for _, msg := range applyRedisURLOptions(u.Query(), r) {
			v.errorf(path, "%s", msg)
		}
	}
}

// redisURLOptions are the query options of store.redis.url, each the store.redis key
// it sets. They are go-redis's names (its ParseURL reads them the same way), limited to
// those fuseproxy has a key for: the URL's option replaces the key, so `validate`, the
// exchange timeout and the client all use the same value.
var redisURLOptions = []struct {
	name  string
	field func(*Redis) any
}{
	{"db", func(r *Redis) any { return &r.DB }},
	{"dial_timeout", func(r *Redis) any { return &r.DialTimeout }},
	{"read_timeout", func(r *Redis) any { return &r.ReadTimeout }},
	{"write_timeout", func(r *Redis) any { return &r.WriteTimeout }},
	{"pool_size", func(r *Redis) any { return &r.PoolSize }},
}

// applyRedisURLOptions sets the fields of r that the URL's query options name, as
// go-redis's ParseURL reads them (a duration is a Go duration or a whole number of
// seconds; an option given twice is an error), and returns a message per option that
// is unknown or does not parse.
func applyRedisURLOptions(q url.Values, r *Redis) (msgs []string) {
	known := make([]string, len(redisURLOptions))
	for i, o := range redisURLOptions {
		known[i] = o.name
		vals, ok := q[o.name]
		if !ok {
			continue
		}
		delete(q, o.name)
		if len(vals) != 1 {
			msgs = append(msgs, fmt.Sprintf("option %s is given %d times in the URL", o.name, len(vals)))
			continue
		}
		val := vals[0]
		switch p := o.field(r).(type) {
		case *int:
			n, err := strconv.Atoi(val)
			if err != nil || n < 0 {
				msgs = append(msgs, fmt.Sprintf("option %s=%s in the URL: want a whole number", o.name, val))
				continue
			}
			*p = n
		case *time.Duration:
			d, err := time.ParseDuration(val)
			if err != nil {
				n, nerr := strconv.Atoi(val)
				if nerr != nil {
					msgs = append(msgs, fmt.Sprintf("option %s=%s in the URL: want a duration (250ms, 1s) or whole seconds", o.name, val))
					continue
				}
				d = time.Duration(n) * time.Second
			}
			*p = d
		}
	}
	for _, name := range slices.Sorted(maps.Keys(q)) {
		msgs = append(msgs, fmt.Sprintf("unknown option %s in the URL (known: %s; set the others as store.redis keys)", quote(name), strings.Join(known, ", ")))
	}
	return msgs
}

func (v *validator) events(e *Events) {
	v.atLeast("events.queue_size", e.QueueSize, 1)
	for i := range e.Webhooks {
		w, p := &e.Webhooks[i], fmt.Sprintf("events.webhooks[%d]", i)
		v.httpURL(p+".url", w.URL)
		if w.Timeout <= 0 {
			v.errorf(p+".timeout", "must be > 0, got %s", fmtDuration(w.Timeout))
		}
		v.atLeast(p+".retries", w.Retries, 0)
		v.headers(p+".headers", w.Headers)
	}
}

func (v *validator) accessLog(a *AccessLog) {
	v.between("access_log.sample_rate", a.SampleRate, 0, 1)
	v.atLeast("access_log.buffer_size", a.BufferSize, 4096)
	if strings.ContainsRune(a.Path, 0) || a.Path != strings.TrimSpace(a.Path) {
		v.errorf("access_log.path", "invalid path %s: no NUL or surrounding white space", quote(a.Path))
	}
	if strings.HasSuffix(a.Path, "/") {
		v.errorf("access_log.path", "%s names a directory: give a file name", quote(a.Path))
	}
}

func (v *validator) upstreams(ups map[string]*Upstream) {
	if len(ups) == 0 {
		v.errorf("upstreams", "at least one upstream is required")
		return
	}
	for _, name := range slices.Sorted(maps.Keys(ups)) {
		p := "upstreams." + name
		if !validName(name, 64) {
			v.errorf(p, "invalid upstream name %s: use 1-64 letters, digits, '_', '.' or '-'", quote(name))
		}
		if ups[name] == nil {
			v.errorf(p, "has no settings")
			continue
		}
		v.upstream(p, ups[name])
	}
	for _, name := range slices.Sorted(maps.Keys(ups)) {
		u := ups[name]
		if u == nil || u.Fallback.Upstream == "" {
			continue
		}
		p, fb := "upstreams."+name+".fallback.upstream", u.Fallback.Upstream
		switch next := ups[fb]; {
		case fb == name:
			v.errorf(p, "an upstream cannot be its own fallback")
		case next == nil:
			v.errorf(p, "unknown upstream %s", quote(fb))
		case next.Fallback.Upstream != "":
			v.errorf(p, "%s falls back to %s already: a fallback upstream may not have one of its own (no chains or cycles)", quote(fb), quote(next.Fallback.Upstream))
		}
	}
}

func (v *validator) upstream(p string, u *Upstream) {
	if len(u.Targets) == 0 {
		v.errorf(p+".targets", "at least one target is required")
	}
	u.TargetURLs = make([]*url.URL, 0, len(u.Targets))
	for i, t := range u.Targets {
		if target := v.httpURL(fmt.Sprintf("%s.targets[%d]", p, i), t); target != nil {
			if !cleanTargetPath(target) {
				v.errorf(fmt.Sprintf("%s.targets[%d]", p, i), `the path of %s must be clean: no "." or ".." segment (also not percent-encoded, or before a ";" or "\"), no "//", no "%%25"`, quote(t))
				continue
			}
			u.TargetURLs = append(u.TargetURLs, target)
		}
	}
	v.nonNegative(p+".dial_timeout", u.DialTimeout)
	v.nonNegative(p+".response_header_timeout", u.ResponseHeaderTimeout)
	v.nonNegative(p+".timeout", u.Timeout)
	v.atLeast(p+".max_idle_conns_per_host", u.MaxIdleConnsPerHost, 0)
	v.atLeast(p+".max_concurrent_requests", u.MaxConcurrentRequests, 0)
	v.breaker(p+".breaker", &u.Breaker)
	v.failure(p+".failure", &u.Failure)
	v.intBetween(p+".fallback.status", u.Fallback.Status, 100, 599)
	v.headers(p+".fallback.headers", u.Fallback.Headers)
	v.oneOf(p+".load_balancing", u.LoadBalancing, "round_robin", "least_requests")
	v.upstreamTLS(p+".tls", &u.TLS)
	if u.H2C {
		for i, t := range u.TargetURLs {
			if t.Scheme != "http" {
				v.errorf(p+".h2c", "h2c is cleartext HTTP/2 to http:// targets, but targets[%d] is %s: https targets negotiate HTTP/2 by ALPN without it", i, quote(t.String()))
				break
			}
		}
	}
	v.outlier(p, u)
	v.retries(p+".retries", &u.Retries)
	v.keyed(p+".keyed", u)
	for i, proto := range u.UpgradeProtocols {
		u.UpgradeProtocols[i] = strings.ToLower(proto)
		if !isToken(proto) {
			v.errorf(fmt.Sprintf("%s.upgrade_protocols[%d]", p, i), "invalid protocol name %s: want a token such as \"websocket\"", quote(proto))
		}
	}
}

func (v *validator) breaker(p string, b *Breaker) {
	v.oneOf(p+".mode", b.Mode, "normal", "forced_open", "forced_closed", "metrics_only")
	v.atLeast(p+".consecutive_failures", b.ConsecutiveFailures, 0)
	v.between(p+".failure_rate", b.FailureRate, 0, 100)
	v.between(p+".slow_call_rate", b.SlowCallRate, 0, 100)
	if b.SlowCallRate > 0 && b.SlowCallDuration <= 0 {
		v.errorf(p+".slow_call_duration", "must be > 0 when slow_call_rate is set, got %s", fmtDuration(b.SlowCallDuration))
	} else {
		v.nonNegative(p+".slow_call_duration", b.SlowCallDuration)
	}
	v.atLeast(p+".minimum_requests", b.MinimumRequests, 0)
	if v.intBetween(p+".buckets", b.Buckets, 1, 600) {
		if minWindow := time.Duration(b.Buckets) * time.Millisecond; b.Window < minWindow {
			v.errorf(p+".window", "must be at least 1ms per bucket (%s for %d buckets), got %s",
				fmtDuration(minWindow), b.Buckets, fmtDuration(b.Window))
		}
	}
	if b.OpenDuration <= 0 {
		v.errorf(p+".open_duration", "must be > 0, got %s", fmtDuration(b.OpenDuration))
	}
	if !(b.BackoffMultiplier >= 1) {
		v.errorf(p+".backoff_multiplier", "must be >= 1, got %s", fmtFloat(b.BackoffMultiplier))
	}
	if b.MaxOpenDuration < b.OpenDuration {
		v.errorf(p+".max_open_duration", "must be >= open_duration (%s), got %s",
			fmtDuration(b.OpenDuration), fmtDuration(b.MaxOpenDuration))
	}
	v.between(p+".jitter", b.Jitter, 0, 1)
	v.atLeast(p+".half_open_max_requests", b.HalfOpenMaxRequests, 1)
	v.atLeast(p+".success_threshold", b.SuccessThreshold, 1)
	v.atLeast(p+".min_replicas_reporting", b.MinReplicasReporting, 1)
}

// MaxRetryAttempts and MaxRetryBuffer bound retries.attempts and retries.buffer_body.
const (
	MaxRetryAttempts = 10
	MaxRetryBuffer   = 16 << 20
)

// retries checks an upstream's retries section and fills its derived fields.
func (v *validator) retries(p string, r *Retries) {
	v.intBetween(p+".attempts", r.Attempts, 1, MaxRetryAttempts)
	for i, m := range r.Methods {
		m = strings.ToUpper(m)
		r.Methods[i] = m
		switch {
		case !isToken(m):
			v.errorf(fmt.Sprintf("%s.methods[%d]", p, i), "invalid method %s", quote(m))
		case m == "CONNECT":
			v.errorf(fmt.Sprintf("%s.methods[%d]", p, i), "CONNECT is never proxied, so never retried")
		}
	}
	for i, o := range r.On {
		if o != "connect_failure" && o != "reset" && o != "timeout" {
			v.errorf(fmt.Sprintf("%s.on[%d]", p, i), "unknown failure %s: want connect_failure, reset or timeout", quote(o))
		}
	}
	for i, c := range r.Statuses {
		v.intBetween(fmt.Sprintf("%s.statuses[%d]", p, i), c, 400, 599)
	}
	v.nonNegative(p+".per_try_timeout", r.PerTryTimeout)
	v.nonNegative(p+".backoff_base", r.BackoffBase)
	if r.BackoffMax < r.BackoffBase {
		v.errorf(p+".backoff_max", "must be >= backoff_base (%s), got %s", fmtDuration(r.BackoffBase), fmtDuration(r.BackoffMax))
	}
	v.intBetween(p+".buffer_body", r.BufferBody, 0, MaxRetryBuffer)
	b, q := &r.Budget, p+".budget"
	v.between(q+".percent", b.Percent, 0, 100)
	if b.MinPerSecond < 0 || b.MinPerSecond > 1e6 {
		v.errorf(q+".min_per_second", "must be between 0 and 1000000, got %s", fmtFloat(b.MinPerSecond))
	}
	if b.Window < time.Second || b.Window > time.Hour {
		v.errorf(q+".window", "must be between 1s and 1h, got %s", fmtDuration(b.Window))
	}
}

// upstreamTLS checks an upstream's tls section and loads its files once, so that
// validate refuses what serve could not use.
func (v *validator) upstreamTLS(p string, t *UpstreamTLS) {
	v.oneOf(p+".min_version", t.MinVersion, "1.2", "1.3")
	if t.CAFile != "" {
		if _, err := LoadCAFile(t.CAFile); err != nil {
			v.errorf(p+".ca_file", "%v", err)
		}
	}
	switch {
	case (t.CertFile == "") != (t.KeyFile == ""):
		v.errorf(p+".cert_file", "cert_file and key_file go together (both set for mutual TLS, or neither)")
	case t.CertFile != "":
		if _, err := LoadKeyPair(t.CertFile, t.KeyFile); err != nil {
			v.errorf(p+".cert_file", "%v", err)
		}
	}
	if t.ServerName != "" && !isHostname(strings.TrimSuffix(t.ServerName, ".")) {
		v.errorf(p+".server_name", "must be a host name, got %s", quote(t.ServerName))
	}
}

// outlier checks outlier_detection and health_check.
func (v *validator) outlier(p string, u *Upstream) {
	o, q := &u.Outlier, p+".outlier_detection"
	v.atLeast(q+".consecutive_gateway_errors", o.ConsecutiveGatewayErrors, 0)
	v.atLeast(q+".consecutive_5xx", o.Consecutive5xx, 0)
	v.between(q+".failure_percentage", o.FailurePercentage, 0, 100)
	v.atLeast(q+".minimum_requests", o.MinimumRequests, 0)
	v.between(q+".slow_call_rate", o.SlowCallRate, 0, 100)
	if o.SlowCallRate > 0 && o.SlowCallDuration <= 0 {
		v.errorf(q+".slow_call_duration", "must be > 0 when slow_call_rate is set, got %s", fmtDuration(o.SlowCallDuration))
	} else {
		v.nonNegative(q+".slow_call_duration", o.SlowCallDuration)
	}
	if o.Interval < 10*time.Millisecond {
		v.errorf(q+".interval", "must be at least 10ms, got %s", fmtDuration(o.Interval))
	}
	if o.BaseEjectionTime <= 0 {
		v.errorf(q+".base_ejection_time", "must be > 0, got %s", fmtDuration(o.BaseEjectionTime))
	}
	if o.MaxEjectionTime < o.BaseEjectionTime {
		v.errorf(q+".max_ejection_time", "must be >= base_ejection_time (%s), got %s",
			fmtDuration(o.BaseEjectionTime), fmtDuration(o.MaxEjectionTime))
	}
	v.between(q+".jitter", o.Jitter, 0, 1)
	v.intBetween(q+".max_ejection_percent", o.MaxEjectionPercent, 0, 100)
	v.atLeast(q+".min_replicas_reporting", o.MinReplicasReporting, 1)
	if o.Enabled {
		// Each target's circuit is named after its host:port, so two targets of one
		// upstream must not share one.
		seen := map[string]int{}
		for i, t := range u.TargetURLs {
			name := TargetName("", t)
			if j, dup := seen[name]; dup {
				v.errorf(fmt.Sprintf("%s.targets[%d]", p, i), "same host:port as targets[%d] (%s): with outlier_detection each target needs its own", j, name[1:])
			}
			seen[name] = i
		}
	}

	h, q := &u.HealthCheck, p+".health_check"
	if h.Path == "" {
		return
	}
	if !o.Enabled {
		v.errorf(q+".path", "health checks eject and restore targets: set %s.outlier_detection.enabled: true", p)
	}
	if pu, err := url.Parse(h.Path); err != nil || !strings.HasPrefix(h.Path, "/") || pu.Host != "" || strings.ContainsAny(h.Path, " \r\n\x00#") {
		v.errorf(q+".path", "must be a path starting with \"/\" (a query may follow), got %s", quote(h.Path))
	}
	if h.Interval < 10*time.Millisecond {
		v.errorf(q+".interval", "must be at least 10ms, got %s", fmtDuration(h.Interval))
	}
	if h.Timeout <= 0 || h.Timeout >= h.Interval {
		v.errorf(q+".timeout", "must be > 0 and less than interval (%s), got %s", fmtDuration(h.Interval), fmtDuration(h.Timeout))
	}
	v.atLeast(q+".healthy_threshold", h.HealthyThreshold, 1)
	v.atLeast(q+".unhealthy_threshold", h.UnhealthyThreshold, 1)
	if len(h.ExpectedStatuses) == 0 {
		v.errorf(q+".expected_statuses", "at least one status is required")
	}
	h.Expected = StatusSet{}
	for i, s := range h.ExpectedStatuses {
		lo, hi, ok := parseStatus(s)
		if !ok {
			v.errorf(fmt.Sprintf("%s.expected_statuses[%d]", q, i), `must be a status code (100-599) or a class ("1xx" to "5xx"), got %s`, quote(s))
			continue
		}
		for code := lo; code <= hi; code++ {
			h.Expected.Set(code, true)
		}
	}
}

// MaxEjected is how many of n targets outlier detection may eject at once with
// max_ejection_percent pct: pct % of them rounded down, at least 1 when pct > 0, at most
// n-1 (the last target is never ejected). The proxy skips the first MaxEjected targets,
// in config order, whose circuits are not passing; a target past them serves (the panic
// rule).
func MaxEjected(n, pct int) int {
	if n < 2 || pct <= 0 {
		return 0
	}
	return min(max(n*pct/100, 1), n-1)
}

// Honoured reports whether the ejection of target i of n (its circuit not passing) is
// honoured, that is whether the target is skipped; out(j) tells whether target j's
// circuit is not passing and whether an operator forced it open. Operators' ejections
// come first: each is honoured as long as fewer forced targets come before it than n-1
// (the last target is never ejected). The others, the detectors' ejections, are honoured
// in config order while the ejections honoured before them (every operator's, and the
// detectors' before them) are fewer than limit (MaxEjected): past it the panic rule lets
// the target serve. The proxy (which targets it skips) and the admin API (which it shows
// ejected) both decide with it.
func Honoured(i, n, limit int, out func(j int) (ejected, forced bool)) bool {
	_, forcedI := out(i)
	forced, forcedBefore, detectedBefore := 0, 0, 0
	for j := range n {
		e, f := out(j)
		switch {
		case f:
			forced++
			if j < i {
				forcedBefore++
			}
		case e && j < i:
			detectedBefore++
		}
	}
	if forcedI {
		return forcedBefore < n-1
	}
	return forced+detectedBefore < limit
}

// TargetName is the name of a target's circuit: the upstream's name, "@", and the
// target's host:port (the scheme's default port when the URL has none). Upstream names
// hold no "@", so the name is unambiguous. The host:port is canonical, so that every
// spelling of one target has one name: a host name in lower case, an IP address in its
// standard form (an IPv6 zone, an interface name, is kept as written), the port without
// leading zeros.
func TargetName(upstream string, target *url.URL) string {
	port := target.Port()
	if port == "" {
		port = "80"
		if target.Scheme == "https" {
			port = "443"
		}
	} else if n, err := strconv.ParseUint(port, 10, 16); err == nil {
		port = strconv.FormatUint(n, 10)
	}
	host := target.Hostname()
	if ip, err := netip.ParseAddr(host); err == nil {
		host = ip.String()
	} else {
		host = strings.ToLower(host)
	}
	return upstream + "@" + net.JoinHostPort(host, port)
}

// failure checks the status lists and resolves them into f.FailureStatus (see Validate).
func (v *validator) failure(p string, f *Failure) {
	var table StatusSet
	for i, s := range f.Statuses {
		lo, hi, ok := parseStatus(s)
		if !ok {
			v.errorf(fmt.Sprintf("%s.statuses[%d]", p, i), `must be a status code (100-599) or a class ("1xx" to "5xx"), got %s`, quote(s))
			continue
		}
		for code := lo; code <= hi; code++ {
			table.Set(code, true)
		}
	}
	if slices.Equal(f.Statuses, []string{"5xx"}) && !v.o.inFile(p+".statuses") {
		table.Set(501, false)
	}
	for i, code := range f.SuccessStatuses {
		if v.intBetween(fmt.Sprintf("%s.success_statuses[%d]", p, i), code, 100, 599) {
			table.Set(code, false)
		}
	}
	f.FailureStatus = table
	f.GRPCFailure = 0
	for i, c := range f.GRPCCodes {
		code, ok := ParseGRPCCode(c)
		if !ok {
			v.errorf(fmt.Sprintf("%s.grpc_codes[%d]", p, i), "must be a gRPC status code, a name such as \"UNAVAILABLE\" or a number 0-16, got %s", quote(c))
			continue
		}
		f.GRPCFailure |= 1 << code
	}
}

// GRPCCodeNames are the gRPC status codes' names, by number.
var GRPCCodeNames = [...]string{"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
	"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
	"UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}

// ParseGRPCCode reads a gRPC status code: its name (any case) or its number, 0-16.
func ParseGRPCCode(s string) (int, bool) {
	if n, err := strconv.Atoi(s); err == nil {
		return n, n >= 0 && n < len(GRPCCodeNames)
	}
	for i, name := range GRPCCodeNames {
		if strings.EqualFold(s, name) {
			return i, true
		}
	}
	return 0, false
}

// listenerTLS checks a listener's tls section and loads its files once, so that
// validate refuses what serve could not use.
func (v *validator) listenerTLS(p string, t *ListenerTLS) {
	v.oneOf(p+".min_version", t.MinVersion, "1.2", "1.3")
	for i, c := range t.Certificates {
		q := fmt.Sprintf("%s.certificates[%d]", p, i)
		switch {
		case c.CertFile == "" || c.KeyFile == "":
			v.errorf(q, "cert_file and key_file are both required")
		default:
			if _, err := LoadKeyPair(c.CertFile, c.KeyFile); err != nil {
				v.errorf(q+".cert_file", "%v", err)
			}
		}
	}
}

func (v *validator) routes(routes []Route, ups map[string]*Upstream) {
	if len(routes) == 0 {
		v.errorf("routes", "at least one route is required")
		return
	}
	for i := range routes {
		r, p := &routes[i], fmt.Sprintf("routes[%d]", i)
		r.Host = strings.ToLower(r.Host)
		if r.Host != "" {
			v.routeHost(p+".host", r.Host)
		}
		if !strings.HasPrefix(r.PathPrefix, "/") {
			v.errorf(p+".path_prefix", `must start with "/", got %s`, quote(r.PathPrefix))
		} else if !cleanURLPath(r.PathPrefix) {
			v.errorf(p+".path_prefix", `must be a clean path (no "." or ".." segment, no "//"): requests are matched cleaned, so %s would never match`, quote(r.PathPrefix))
		}
		for j, m := range r.Methods {
			r.Methods[j] = strings.ToUpper(m)
			if !isToken(r.Methods[j]) {
				v.errorf(fmt.Sprintf("%s.methods[%d]", p, j), "invalid HTTP method %s", quote(m))
			}
		}
		switch {
		case r.Upstream == "":
			v.errorf(p+".upstream", "is required")
		case ups[r.Upstream] == nil:
			v.errorf(p+".upstream", "unknown upstream %s", quote(r.Upstream))
		}
	}
}

// routeHost accepts an exact hostname or a "*." wildcard followed by a hostname.
func (v *validator) routeHost(path, host string) {
	name := strings.TrimPrefix(host, "*.")
	switch {
	case strings.Contains(name, "*"):
		v.errorf(path, `invalid host %s: the only wildcard allowed is a leading "*."`, quote(host))
	case !isHostname(name):
		v.errorf(path, `invalid host %s: want a hostname such as "api.example.com" or "*.example.com"`, quote(host))
	}
}

func (v *validator) headers(path string, h map[string]string) {
	for _, name := range slices.Sorted(maps.Keys(h)) {
		switch {
		case !isToken(name):
			v.errorf(joinPath(path, name), "invalid header name %s", quote(name))
		case strings.ContainsAny(h[name], "\r\n\x00"):
			v.errorf(joinPath(path, name), "header value must not contain CR, LF or NUL")
		}
	}
}

// cleanURLPath reports whether p, which starts with "/", has no empty, "." or ".."
// segment (a trailing slash aside), as a cleaned request path never has.
func cleanURLPath(p string) bool {
	segs := strings.Split(p[1:], "/")
	for i, seg := range segs {
		if seg == "." || seg == ".." || seg == "" && i < len(segs)-1 {
			return false
		}
	}
	return true
}

// cleanTargetPath reports whether a target's base path is one forwarded paths can be
// joined below: empty, or clean, without a "%" once decoded (a backend decoding again
// would read something else), and without a segment a backend could take for a
// dot-segment ("..;x", "..\\x", "...", in either form). The proxy checks the same.
func cleanTargetPath(u *url.URL) bool {
	if u.Path == "" {
		return true
	}
	if u.Path[0] != '/' || !cleanURLPath(u.Path) || strings.Contains(u.Path, "%") {
		return false
	}
	for _, p := range []string{u.Path, u.EscapedPath()} {
		for _, seg := range strings.FieldsFunc(p, func(r rune) bool { return r == '/' || r == '\\' }) {
			seg, _, _ = strings.Cut(seg, ";")
			if strings.Contains(seg, ".") && strings.Trim(seg, ". ") == "" {
				return false
			}
		}
	}
	return true
}

// hostPort checks a "host:port" address with a numeric port, returning the host.
func (v *validator) hostPort(path, addr string) (host string, ok bool) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		v.errorf(path, "must be host:port, got %s", quote(addr))
		return "", false
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		v.errorf(path, "invalid port %s in %s", quote(port), quote(addr))
		return "", false
	}
	return host, true
}

// httpURL parses an absolute http:// or https:// URL with a host.
func (v *validator) httpURL(path, raw string) *url.URL {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
		v.errorf(path, "must be an absolute http:// or https:// URL with a host, got %s", quote(raw))
		return nil
	}
	return u
}

func (v *validator) nonNegative(path string, d time.Duration) {
	if d < 0 {
		v.errorf(path, "must be >= 0, got %s", fmtDuration(d))
	}
}

func (v *validator) atLeast(path string, n, min int) {
	if n < min {
		v.errorf(path, "must be >= %d, got %d", min, n)
	}
}

func (v *validator) intBetween(path string, n, lo, hi int) bool {
	if n < lo || n > hi {
		v.errorf(path, "must be between %d and %d, got %d", lo, hi, n)
		return false
	}
	return true
}

func (v *validator) between(path string, f, lo, hi float64) {
	if !(f >= lo && f <= hi) {
		v.errorf(path, "must be between %s and %s, got %s", fmtFloat(lo), fmtFloat(hi), fmtFloat(f))
	}
}

func (v *validator) oneOf(path, s string, allowed ...string) {
	if !slices.Contains(allowed, s) {
		list := strings.Join(allowed[:len(allowed)-1], ", ") + " or " + allowed[len(allowed)-1]
		v.errorf(path, "must be %s, got %s", list, quote(s))
	}
}

// parseStatus parses a status code ("503") or class ("5xx") into a code range.
func parseStatus(s string) (lo, hi int, ok bool) {
	if len(s) != 3 || s[0] < '1' || s[0] > '5' {
		return 0, 0, false
	}
	if strings.EqualFold(s[1:], "xx") {
		lo = int(s[0]-'0') * 100
		return lo, lo + 99, true
	}
	code, err := strconv.Atoi(s)
	return code, code, err == nil
}

// validName reports whether s is 1..maxLen letters, digits, '_', '.' or '-': safe as
// a Redis key part and a metric label.
func validName(s string, maxLen int) bool {
	if s == "" || len(s) > maxLen {
		return false
	}
	for _, c := range s {
		if !isLetter(c) && (c < '0' || c > '9') && c != '_' && c != '.' && c != '-' {
			return false
		}
	}
	return true
}

// isHostname reports whether s is a DNS name (or IPv4 address): dot-separated labels
// of letters, digits, '-' and '_'.
func isHostname(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range label {
			if !isLetter(c) && (c < '0' || c > '9') && c != '-' && c != '_' {
				return false
			}
		}
	}
	return true
}

// isToken reports whether s is an HTTP token (RFC 9110), as methods and header names are.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if !isLetter(c) && (c < '0' || c > '9') && !strings.ContainsRune("!#$%&'*+-.^_`|~", c) {
			return false
		}
	}
	return true
}

// isLoopback reports whether a listen host only accepts local connections. An empty
// host means every interface.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func isSpace(r rune) bool { return r == ' ' || r == '\t' || r == '\n' || r == '\r' }

// fmtDuration prints d like time.Duration.String without trailing zero units: "5m", not "5m0s".
func fmtDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// fmtFloat prints f in its shortest form: 50, 0.1.
func fmtFloat(f float64) string {
	return strconv.FormatFloat(f, 'g', -1, 64)
}
