package config

import (
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Warnings returns settings that are valid but risky, formatted like errors
// ("file:line: path: message") and sorted by line. Call it on a validated Config,
// e.g. to log at startup. A non-loopback admin listener without a token is not a
// warning but a Validate error.
func (c *Config) Warnings() []string {
	w := &validator{o: c.origin}
	if c.Store.Driver == "memory" && c.Replicas > 1 {
		w.errorf("replicas", "%d replicas with the memory store: each keeps its own breaker state (use the redis store to share it)", c.Replicas)
	}
	if c.Admin.Token != "" && c.origin.inFile("admin.token") {
		w.errorf("admin.token", "the admin token is written in the config file; prefer env FUSE_ADMIN_TOKEN to keep it out of version control")
	}
	if c.Store.FlushInterval > time.Second {
		w.errorf("store.flush_interval", "%s is over 1s: replicas learn of each other's failures late", fmtDuration(c.Store.FlushInterval))
	}
	if c.Store.Driver == "redis" {
		w.redisWarnings(&c.Store.Redis)
	}
	for _, name := range slices.Sorted(maps.Keys(c.Upstreams)) {
		if u := c.Upstreams[name]; u != nil {
			w.breakerWarnings("upstreams."+name+".breaker", &u.Breaker, c.Replicas)
			w.outlierWarnings("upstreams."+name+".outlier_detection", u)
		}
	}
	w.shadowedRoutes(c.Routes)
	w.limitWarnings(c)

	errs, _ := w.errs.err().(*Errors)
	if errs == nil {
		return nil
	}
	out := make([]string, len(*errs))
	for i, e := range *errs {
		out[i] = e.Error()
	}
	return out
}

func (w *validator) redisWarnings(r *Redis) {
	host, password := r.Host, r.Password
	if u, err := url.Parse(r.URL); r.URL != "" && err == nil {
		host = u.Hostname()
		if p, ok := u.User.Password(); ok {
			password = p
		}
	}
	if password == "" && len(r.ClusterAddrs) == 0 && len(r.SentinelAddrs) == 0 && !isLoopback(host) {
		w.errorf("store.redis.password", "redis at %s is not on loopback and no password is set", quote(host))
	}
	if r.TLS.InsecureSkipVerify {
		w.errorf("store.redis.tls.insecure_skip_verify", "the redis server's certificate is not verified")
	}
}

func (w *validator) breakerWarnings(p string, b *Breaker, replicas int) {
	switch {
	case !b.Enabled:
		w.errorf(p+".enabled", "breaker disabled: failures never open the circuit")
	case b.Mode == "forced_open":
		w.errorf(p+".mode", "forced_open: every request gets the fallback response")
	case b.Mode == "forced_closed":
		w.errorf(p+".mode", "forced_closed: the circuit never opens")
	case b.Mode == "normal" && b.ConsecutiveFailures == 0 && b.FailureRate == 0 && b.SlowCallRate == 0:
		w.errorf(p, "no trip rule is set (consecutive_failures, failure_rate and slow_call_rate are all 0), so the circuit never opens")
	}
	if replicas > 0 && b.MinReplicasReporting > replicas {
		w.errorf(p+".min_replicas_reporting", "%d is more than replicas (%d), so it may never be reached", b.MinReplicasReporting, replicas)
	}
}

// outlierWarnings warns about outlier detection that never acts.
func (w *validator) outlierWarnings(p string, u *Upstream) {
	o := &u.Outlier
	switch {
	case !o.Enabled:
	case len(u.TargetURLs) < 2:
		w.errorf(p, "a single target is never ejected: outlier_detection and health_check do nothing (the breaker guards the upstream)")
	case o.ConsecutiveGatewayErrors == 0 && o.Consecutive5xx == 0 && o.FailurePercentage == 0 && o.SlowCallRate == 0 && u.HealthCheck.Path == "":
		w.errorf(p, "no ejection rule is set (consecutive_gateway_errors, consecutive_5xx, failure_percentage and slow_call_rate are all 0, and no health_check), so no target is ever ejected but by hand")
	}
}

// shadowedRoutes warns about routes that an earlier route always wins over.
func (w *validator) shadowedRoutes(routes []Route) {
	if len(routes) > 1000 {
		return // quadratic; a list this long is generated and checked elsewhere
	}
	for i, later := range routes {
		for j, earlier := range routes[:i] {
			if covers(earlier, later) {
				w.errorf(fmt.Sprintf("routes[%d]", i), "never matches: routes[%d] comes first and matches every request it would", j)
				break
			}
		}
	}
}

// covers reports whether route a matches every request route b matches, given how
// the proxy matches: hosts exactly or by "*." suffix (any depth, not the apex), paths
// by prefix at a segment boundary, methods exactly (they are upper-cased on load).
func covers(a, b Route) bool {
	hostOK := a.Host == "" || a.Host == b.Host ||
		strings.HasPrefix(a.Host, "*.") && strings.HasSuffix(b.Host, a.Host[1:])
	methodsOK := len(a.Methods) == 0 || len(b.Methods) > 0 && !slices.ContainsFunc(b.Methods, func(m string) bool {
		return !slices.Contains(a.Methods, m)
	})
	rest, prefixOK := strings.CutPrefix(b.PathPrefix, a.PathPrefix)
	prefixOK = prefixOK && (rest == "" || strings.HasSuffix(a.PathPrefix, "/") || strings.HasPrefix(rest, "/"))
	return hostOK && methodsOK && prefixOK
}
