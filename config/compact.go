package config

import "fmt"

// Compact returns a copy of c for a running replica to keep: what a validated config
// holds per upstream, less what only building the replica's tables reads. Its upstreams
// have no targets (Targets and TargetURLs are nil: the proxy's routing table holds them)
// and upstreams whose settings are equal share one *Upstream; it has no record of where
// values came from in the file (Validate and Warnings locate nothing) and no routes (the
// routing table holds them compiled). The copy shares the rest (slices, maps) with c;
// neither may be modified afterwards.
//
// With thousands of upstreams the parsed config is most of a replica's memory: an
// Upstream is a struct of about a kilobyte, plus its slices and maps (docs/BENCHMARKS.md,
// "Memory"); most upstreams of a large config have equal settings.
func (c *Config) Compact() *Config {
	out := *c
	out.origin, out.Routes = nil, nil
	out.Upstreams = make(map[string]*Upstream, len(c.Upstreams))
	shared := make(map[string]*Upstream)
	for name, u := range c.Upstreams {
		if u == nil {
			out.Upstreams[name] = nil
			continue
		}
		s := *u
		s.Targets, s.TargetURLs = nil, nil
		// fmt prints every field, maps sorted by key, so equal settings print alike; a
		// pointer (none today but the targets') would print its address and only keep
		// the upstream from being shared.
		key := fmt.Sprintf("%#v", s)
		p := shared[key]
		if p == nil {
			p = &s
			shared[key] = p
		}
		out.Upstreams[name] = p
	}
	return &out
}
