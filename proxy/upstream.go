package proxy

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
)

// upstream is one compiled config.Upstream with its breaker and transport. Upstreams
// with equal transport keys (the same targets and transport settings) share a transport.
type upstream struct {
	name    string
	targets []*target
	next    atomic.Uint64 // round-robin position among targets
	breaker breaker.Gate  // nil: no breaker; the proxy only admits and reports
	// keys are the per-key circuits (keyed.go), nil without keyed.from; the table is
	// carried across routing tables.
	keys *keyTable
	// maxEjected is how many targets may be ejected at once (see pick); 0 without
	// outlier detection.
	maxEjected int
	timeout    time.Duration // whole-request deadline, 0 = none
	transport  *http.Transport
	// tkey is what transport was built from, shared by the upstreams that share it.
	tkey *transportKey

	countTransport bool
	countTimeouts  bool
	// honorRetryAfter: breaker.honor_retry_after (see retryAfter).
	honorRetryAfter bool
	// leastRequests: load_balancing least_requests (see pick). (The flags sit together,
	// beside grpcFailure: an upstream's struct is one per upstream, thousands of them.)
	leastRequests bool
	// grpcFailure has bit c set when grpc-status c is a failure (failure.grpc_codes).
	grpcFailure uint32
	// failureStatus is failure.statuses resolved, shared by the upstreams with equal
	// tables (fallbacks.status): most have the default.
	failureStatus *config.StatusSet
	// retry is the retries policy, nil when the upstream does not retry (retry.go).
	retry *retryPolicy
	// fallback is the answer to a rejection and to a full bulkhead, shared by the
	// upstreams with equal fallback sections (fallbacks).
	fallback *fallback
	// fallbackUp is the upstream that serves while this one's circuit rejects
	// (fallback.upstream), nil for none; via marks its answers (nil for none).
	fallbackUp    *upstream
	via           *fallbackVia
	bulkhead      *bulkhead // shared with the same-named upstream of the tables before and after
	maxConcurrent int64     // the bulkhead's cap in this table (setLimits)
	// upgrades are the protocols clients may switch to (lower-case names); see
	// filterUpgrade. Read-only: the config's slice (Validate lower-cases it) when it is
	// already lower case.
	upgrades []string
}

// fallbackVia marks the answers of an upstream's fallback upstream, by the rejecting
// circuit's state.
type fallbackVia struct {
	open, halfOpen served
}

// newUpstream compiles cu. breakers holds the upstream's breaker under its name and, with
// outlier detection, each target's under config.TargetName.
func newUpstream(name string, cu *config.Upstream, breakers map[string]*breaker.Breaker, fbs fallbacks) (*upstream, error) {
	b := breakers[name]
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
		name:            name,
		breaker:         gate,
		timeout:         cu.Timeout,
		failureStatus:   fbs.status(cu.Failure.FailureStatus),
		countTransport:  cu.Failure.TransportErrors,
		grpcFailure:     cu.Failure.GRPCFailure,
		countTimeouts:   cu.Failure.Timeouts,
		honorRetryAfter: cu.Breaker.HonorRetryAfter && b != nil,
		fallback:        fbs.get(cu.Fallback),
		upgrades:        lowerAll(cu.UpgradeProtocols),
	}
	ejection := cu.Outlier.Enabled && len(cu.TargetURLs) > 1
	for _, t := range cu.TargetURLs {
		if t == nil || (t.Scheme != "http" && t.Scheme != "https") || t.Host == "" {
			return nil, fmt.Errorf("proxy: upstream %q: target %v is not an absolute http(s) URL", name, t)
		}
		if !cleanBasePath(t) {
			return nil, fmt.Errorf("proxy: upstream %q: target %v: its path must be clean (no dot-segments, empty segments or '%%')", name, t)
		}
		// The config's URL, shared: nothing modifies a validated config's targets.
		tg := &target{index: len(up.targets), url: t}
		if ejection {
			tg.name = config.TargetName(name, t)
			tb := breakers[tg.name]
			if tb == nil {
				return nil, fmt.Errorf("proxy: upstream %q: outlier detection enabled but target %s has no breaker", name, tg.name)
			}
			tg.gate = tb
		}
		up.targets = append(up.targets, tg)
	}
	if ejection {
		up.maxEjected = maxEjected(len(up.targets), cu.Outlier.MaxEjectionPercent)
	}
	up.leastRequests = cu.LoadBalancing == "least_requests"
	up.bulkhead = new(bulkhead)
	up.maxConcurrent = int64(cu.MaxConcurrentRequests)
	return up, nil
}

// lowerAll returns ps lower-cased: ps itself (read-only, shared) when it already is.
func lowerAll(ps []string) []string {
	for i, p := range ps {
		if l := strings.ToLower(p); l != p {
			out := slices.Clone(ps)
			for j := i; j < len(out); j++ {
				out[j] = strings.ToLower(out[j])
			}
			return out
		}
	}
	return ps
}

// targetURLs returns the targets' URLs, in config order.
func (up *upstream) targetURLs() []*url.URL {
	urls := make([]*url.URL, len(up.targets))
	for i, t := range up.targets {
		urls[i] = t.url
	}
	return urls
}
