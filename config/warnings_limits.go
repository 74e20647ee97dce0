package config

import (
	"maps"
	"slices"
)

// limitWarnings warns about limits against exhaustion that are switched off, or that
// cannot work as set.
func (w *validator) limitWarnings(c *Config) {
	s := &c.Server
	if s.MaxConnections == 0 {
		w.errorf("server.max_connections", "0: no cap on client connections (each open one costs about 23 KiB, idle keep-alive ones included)")
	}
	if s.BodyReadTimeout == 0 {
		w.errorf("server.body_read_timeout", "0: request bodies have no deadline; a client that stops sending holds its connection and an upstream connection")
	}
	for _, name := range slices.Sorted(maps.Keys(c.Upstreams)) {
		u := c.Upstreams[name]
		if u == nil {
			continue
		}
		p := "upstreams." + name + ".max_concurrent_requests"
		switch {
		case u.MaxConcurrentRequests == 0:
			w.errorf(p, "0: no bulkhead; a slow upstream can hold every client connection")
		case s.MaxConnections > 0 && u.MaxConcurrentRequests >= s.MaxConnections:
			w.errorf(p, "%d is not below server.max_connections (%d): a slow upstream can still hold every client connection", u.MaxConcurrentRequests, s.MaxConnections)
		}
	}
}
