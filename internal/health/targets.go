package health

import (
	"slices"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
)

// Targets lists the targets to check in a validated config's upstreams: every target of
// every upstream with outlier_detection enabled and a health_check path, in upstream
// name then target order. circuit returns the breaker of a target's circuit (by
// config.TargetName); a target whose circuit it does not know (an untyped nil) is left
// out.
func Targets(upstreams map[string]*config.Upstream, circuit func(name string) breaker.Control) []Target {
	names := make([]string, 0, len(upstreams))
	for name, u := range upstreams {
		if u.Outlier.Enabled && u.HealthCheck.Path != "" {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	var out []Target
	for _, name := range names {
		u := upstreams[name]
		for _, tu := range u.TargetURLs {
			c := config.TargetName(name, tu)
			br := circuit(c)
			if br == nil {
				continue
			}
			out = append(out, Target{Upstream: name, Circuit: c, URL: tu, Check: u.HealthCheck, Breaker: br})
		}
	}
	return out
}
