package proxy

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
)

// upstream is one compiled config.Upstream with its breaker and transport. Upstreams
// with equal transport keys (the same targets and transport settings) share a transport.
type upstream struct {
	name      string
	targets   []*url.URL
	next      atomic.Uint64 // round-robin position among targets
	breaker   breaker.Gate  // nil: no breaker; the proxy only admits and reports
	timeout   time.Duration // whole-request deadline, 0 = none
	transport *http.Transport
	tkey      transportKey

	failureStatus  [600]bool
	countTransport bool
	countTimeouts  bool
	fallback       fallback
	bulkhead       *bulkhead     // shared with the same-named upstream of the tables before and after
	maxConcurrent  int64         // the bulkhead's cap in this table (setLimits)
	limited        limitResponse // the answer when the bulkhead is full
	// upgrades are the protocols clients may switch to (lower-case names); see
	// filterUpgrade.
	upgrades []string
	// Precomputed JSON bodies of the proxy's own error responses.
	errBadGateway, errGatewayTimeout, errBadRequest []byte
}

func newUpstream(name string, cu *config.Upstream, b *breaker.Breaker) (*upstream, error) {
	if len(cu.TargetURLs) == 0 {
		if len(cu.Targets) > 0 {
			return nil, fmt.Errorf("proxy: upstream %q: TargetURLs not filled (validate the config first)", name)
		}
		return nil, fmt.Errorf("proxy: upstream %q has no targets", name)
	}
	if s := cu.Fallback.Status; s < 100 || s > 599 {
		return nil, fmt.Errorf("proxy: upstream %q: fallback status %d (validate the config first)", name, s)
	}
	if b == nil && cu.Breaker.Enabled {
		return nil, fmt.Errorf("proxy: upstream %q: breaker enabled but none given", name)
	}
	var gate breaker.Gate
	if b != nil { // a nil *Breaker in the interface would not be a nil Gate
		gate = b
	}
	up := &upstream{
		name:              name,
		breaker:           gate,
		timeout:           cu.Timeout,
		failureStatus:     cu.Failure.FailureStatus,
		countTransport:    cu.Failure.TransportErrors,
		countTimeouts:     cu.Failure.Timeouts,
		fallback:          newFallback(name, cu.Fallback),
		errBadGateway:     errorBody("bad_gateway", name),
		errGatewayTimeout: errorBody("gateway_timeout", name),
		errBadRequest:     errorBody("bad_request", name),
	}
	for _, proto := range cu.UpgradeProtocols {
		up.upgrades = append(up.upgrades, strings.ToLower(proto))
	}
	for _, t := range cu.TargetURLs {
		if t == nil || (t.Scheme != "http" && t.Scheme != "https") || t.Host == "" {
			return nil, fmt.Errorf("proxy: upstream %q: target %v is not an absolute http(s) URL", name, t)
		}
		if !cleanBasePath(t) {
			return nil, fmt.Errorf("proxy: upstream %q: target %v: its path must be clean (no dot-segments, empty segments or '%%')", name, t)
		}
		c := *t
		up.targets = append(up.targets, &c)
	}
	up.tkey = newTransportKey(cu, up.targets)
	up.bulkhead = new(bulkhead)
	up.maxConcurrent = int64(cu.MaxConcurrentRequests)
	up.limited = newLimitResponse(name, cu, &up.fallback)
	return up, nil
}

// pick returns the next target in round-robin order.
func (up *upstream) pick() *url.URL {
	if len(up.targets) == 1 {
		return up.targets[0]
	}
	return up.targets[(up.next.Add(1)-1)%uint64(len(up.targets))]
}
