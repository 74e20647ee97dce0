package proxy

import (
	"net/url"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/config"
)

// The defaults have one home, config.DefaultUpstream: the proxy keeps no default of its
// own and uses what the config holds, whether the defaults or other values (a proxy
// default equal to config's today would pass the first case, not the second).
func TestProxyUsesConfigDefaults(t *testing.T) {
	target, _ := url.Parse("http://127.0.0.1:1")
	changed := targetUpstream(target)
	changed.MaxIdleConnsPerHost, changed.DialTimeout = 7, 3*time.Second
	changed.ResponseHeaderTimeout, changed.Timeout = 4*time.Second, 5*time.Second
	changed.MaxConcurrentRequests, changed.Fallback.Status = 9, 502
	changed.UpgradeProtocols = []string{"websocket", "x"}
	for name, cu := range map[string]*config.Upstream{"defaults": targetUpstream(target), "changed": changed} {
		t.Run(name, func(t *testing.T) {
			p, err := New(&config.Config{Upstreams: map[string]*config.Upstream{"svc": cu}, Routes: oneRoute("svc")}, nil, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			up := p.table.Load().upstreams["svc"]
			for _, c := range []struct {
				key       string
				got, want any
			}{
				{"max_idle_conns_per_host", up.transport.MaxIdleConnsPerHost, cu.MaxIdleConnsPerHost},
				{"dial_timeout", up.tkey.dialTimeout, cu.DialTimeout},
				{"response_header_timeout", up.transport.ResponseHeaderTimeout, cu.ResponseHeaderTimeout},
				{"timeout", up.timeout, cu.Timeout},
				{"max_concurrent_requests", up.maxConcurrent, int64(cu.MaxConcurrentRequests)},
				{"fallback.status", up.fallback.status, cu.Fallback.Status},
				{"upgrade_protocols", len(up.upgrades), len(cu.UpgradeProtocols)},
			} {
				if c.got != c.want {
					t.Errorf("%s: the proxy uses %v, the config says %v", c.key, c.got, c.want)
				}
			}
		})
	}
}
