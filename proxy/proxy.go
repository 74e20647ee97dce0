package proxy

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
)

// Options are a Proxy's collaborators. The zero value is usable.
type Options struct {
	// Logger receives upstream errors: at warn level at most once per upstream every
	// 10 s (errlog.go), the others at debug level; nil means zap.NewNop(). Nothing
	// else is logged per request above debug level.
	Logger *zap.Logger
	// Recorder receives one call per routed request; nil means no metrics.
	Recorder Recorder
	// AccessLog receives the sampled requests' accounts; nil means no access log.
	AccessLog AccessLog
	// Clock measures latency; nil means time.Now.
	Clock func() time.Time
	// SharedStore says that a shared store will tell each retry budget this replica's
	// share of the fleet (RetryBudget.Fleet); until it does, a replica spends no part of
	// the budget's floor. Without one, the replica is the fleet.
	SharedStore bool
	// Keys are the collaborators of per-key circuits (keyed.go).
	Keys KeyOptions
}

// Proxy is the HTTP data plane: it routes each request to an upstream, asks the
// upstream's circuit breaker for admission, forwards the request with
// httputil.ReverseProxy and reports the outcome back to the breaker. It is safe for
// concurrent use, including Update while requests are served.
type Proxy struct {
	shared  bool // Options.SharedStore
	log     *zap.Logger
	rec     Recorder
	access  AccessLog
	now     func() time.Time
	buffers bufferPool
	errLog  *log.Logger // ReverseProxy's own messages, at debug level
	upErrs  upstreamErrLog

	exchanges sync.Pool // of *exchange
	// answers serves an answer set aside for a retry that did not happen (retry.go).
	answers *httputil.ReverseProxy
	keyOpts KeyOptions

	// table is the routing table in effect; requests load it once and finish on it.
	table atomic.Pointer[table]
	// mu serialises Update (the only writer of table) and Close.
	mu sync.Mutex
}

// sharedTransport is a transport and the key it was built from, shared by the upstreams
// with that key.
type sharedTransport struct {
	key       *transportKey
	transport *http.Transport
}

// table is an immutable routing table, swapped whole by Update.
type table struct {
	routes    routeIndex
	upstreams map[string]*upstream
}

// transports returns the distinct transports of t's upstreams.
func (t *table) transports() map[*http.Transport]bool {
	set := make(map[*http.Transport]bool)
	for _, up := range t.upstreams {
		set[up.transport] = true
	}
	return set
}

// New builds a Proxy for cfg's routes and upstreams. breakers maps upstream names to
// their circuit breakers; an upstream whose breaker is disabled (Breaker.Enabled false)
// may be missing, and is then proxied without one. cfg must have been validated: New
// uses the derived fields Upstream.TargetURLs and Failure.FailureStatus.
func New(cfg *config.Config, breakers map[string]*breaker.Breaker, opts Options) (*Proxy, error) {
	p := &Proxy{log: opts.Logger, rec: opts.Recorder, access: opts.AccessLog, now: opts.Clock,
		shared: opts.SharedStore, keyOpts: opts.Keys}
	if p.log == nil {
		p.log = zap.NewNop()
	}
	if p.now == nil {
		p.now = time.Now
	}
	errLog, err := zap.NewStdLogAt(p.log, zap.DebugLevel)
	if err != nil {
		return nil, err
	}
	p.errLog = errLog
	p.exchanges.New = func() any { return new(exchange) }
	p.answers = &httputil.ReverseProxy{
		Rewrite:      func(*httputil.ProxyRequest) {}, // the request went out already
		Transport:    answerTransport{},
		BufferPool:   &p.buffers,
		ErrorHandler: p.handleError,
		ErrorLog:     p.errLog,
	}
	t, err := p.build(cfg, breakers, nil)
	if err != nil {
		return nil, err
	}
	p.keyTables(t, nil, cfg)
	p.table.Store(t)
	t.setLimits()
	return p, nil
}

// Update swaps in a routing table built from cfg and breakers, atomically: a request
// uses either the old table or the new one throughout, and requests in flight finish on
// the old one. An upstream whose targets and transport settings match a transport of the
// old table (its own, or another upstream's: a renamed one) gets that *http.Transport
// and its pooled connections; the idle connections of transports no longer used are
// closed (busy ones close when their requests finish and they go idle, at the
// latest after the idle timeout). On error the old table stays in effect.
func (p *Proxy) Update(cfg *config.Config, breakers map[string]*breaker.Breaker) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	old := p.table.Load()
	t, err := p.build(cfg, breakers, old)
	if err != nil {
		return err
	}
	gone := p.keyTables(t, old, cfg)
	p.table.Store(t)
	t.setLimits()
	for _, kt := range gone {
		kt.drop()
	}
	p.upErrs.forget(t.upstreams)
	kept := t.transports()
	reused := 0
	for tr := range old.transports() {
		if kept[tr] {
			reused++
			continue
		}
		tr.CloseIdleConnections()
	}
	p.log.Debug("proxy routing table updated", zap.Int("routes", len(cfg.Routes)),
		zap.Int("upstreams", len(t.upstreams)), zap.Int("transports", len(kept)),
		zap.Int("transports_reused", reused))
	return nil
}

// Close closes the idle upstream connections. Call it once the server has stopped
// sending requests; a request served afterwards opens new connections.
func (p *Proxy) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for tr := range p.table.Load().transports() {
		tr.CloseIdleConnections()
	}
}

// build compiles cfg into a table, taking transports from old where they can be reused.
func (p *Proxy) build(cfg *config.Config, breakers map[string]*breaker.Breaker, old *table) (*table, error) {
	if cfg == nil {
		return nil, errors.New("proxy: nil config")
	}
	t := &table{upstreams: make(map[string]*upstream, len(cfg.Upstreams))}
	// Upstreams with the same targets and transport settings share one transport, and so
	// one pool of connections: the old table's when it has one for their key.
	transports := map[transportKey]sharedTransport{}
	if old != nil {
		for _, up := range old.upstreams {
			transports[*up.tkey] = sharedTransport{up.tkey, up.transport}
		}
	}
	fbs := newFallbacks()
	// An upstream keeps its bulkhead (its count of requests in flight) across tables.
	bulkheads := map[string]*bulkhead{}
	if old != nil {
		for name, up := range old.upstreams {
			bulkheads[name] = up.bulkhead
		}
	}
	// And its retry budget, while the budget's settings stay the same.
	budgets := map[string]*RetryBudget{}
	if old != nil {
		for name, up := range old.upstreams {
			if up.retry != nil {
				budgets[name] = up.retry.budget
			}
		}
	}
	for name, cu := range cfg.Upstreams {
		if cu == nil {
			return nil, fmt.Errorf("proxy: upstream %q has no settings", name)
		}
		up, err := newUpstream(name, cu, breakers, fbs)
		if err != nil {
			return nil, err
		}
		if bh := bulkheads[name]; bh != nil {
			up.bulkhead = bh
		}
		if cu.Retries.Enabled() {
			b := budgets[name]
			if b == nil || b.cfg != cu.Retries.Budget {
				b = NewRetryBudget(cu.Retries.Budget, p.shared)
			}
			up.retry = newRetryPolicy(&cu.Retries, b)
		}
		key := newTransportKey(cu, up.targetURLs())
		st, ok := transports[key]
		if !ok {
			st.key = &key
			if st.transport, err = newTransport(key, up.targetURLs(), name, p.log); err != nil {
				return nil, fmt.Errorf("proxy: upstream %q: tls: %w", name, err)
			}
			transports[key] = st
		}
		up.tkey, up.transport = st.key, st.transport
		t.upstreams[name] = up
	}
	for name, cu := range cfg.Upstreams {
		if fb := cu.Fallback.Upstream; fb != "" {
			up := t.upstreams[name]
			if up.fallbackUp = t.upstreams[fb]; up.fallbackUp == nil || fb == name {
				return nil, fmt.Errorf("proxy: upstream %q: unknown fallback upstream %q (validate the config first)", name, fb)
			}
			if cfg.Upstreams[fb].Fallback.Upstream != "" {
				return nil, fmt.Errorf("proxy: upstream %q: fallback upstream %q has a fallback upstream of its own (validate the config first)", name, fb)
			}
			by := readOnly(fb)
			up.via = &fallbackVia{open: served{state: stateOpen, by: by}, halfOpen: served{state: stateHalfOpen, by: by}}
		}
	}
	var trusted []netip.Prefix
	for i, s := range cfg.Server.TrustedProxies {
		p, err := config.ParseTrustedProxy(s)
		if err != nil {
			return nil, fmt.Errorf("proxy: server.trusted_proxies[%d]: %w", i, err)
		}
		trusted = append(trusted, p)
	}
	routes := make([]*route, len(cfg.Routes))
	for i, cr := range cfg.Routes {
		up := t.upstreams[cr.Upstream]
		if up == nil {
			return nil, fmt.Errorf("proxy: routes[%d]: unknown upstream %q", i, cr.Upstream)
		}
		rt := &route{
			index:   int32(i),
			host:    strings.TrimSuffix(strings.ToLower(cr.Host), "."),
			prefix:  cr.PathPrefix,
			strip:   cr.StripPrefix,
			up:      up,
			trusted: &trusted,
		}
		if rt.prefix == "" {
			rt.prefix = "/"
		}
		if rt.prefix[0] != '/' {
			return nil, fmt.Errorf("proxy: routes[%d]: path_prefix %q does not start with \"/\"", i, cr.PathPrefix)
		}
		for _, m := range cr.Methods {
			rt.methods = append(rt.methods, strings.ToUpper(m))
		}
		routes[i] = rt
	}
	t.routes = newRouteIndex(routes)
	return t, nil
}

// routeProxies returns rt's ReverseProxy for each target of rt.up (routeProxies) or of
// its fallback upstream (fallbackProxies), built at the first request that needs them:
// one ReverseProxy per target, so that the target picked for a request reaches the
// Rewrite without a per-request allocation. Requests racing to build them all use the
// set the first of them stored.
func (p *Proxy) routeProxies(rt *route) []*httputil.ReverseProxy {
	return p.lazyProxies(&rt.rps, rt, rt.up)
}

func (p *Proxy) fallbackProxies(rt *route) []*httputil.ReverseProxy {
	return p.lazyProxies(&rt.fallbackRPs, rt, rt.up.fallbackUp)
}

func (p *Proxy) lazyProxies(slot *atomic.Pointer[[]*httputil.ReverseProxy], rt *route, up *upstream) []*httputil.ReverseProxy {
	if rps := slot.Load(); rps != nil {
		return *rps
	}
	rps := p.reverseProxies(rt, up)
	if slot.CompareAndSwap(nil, &rps) {
		return rps
	}
	return *slot.Load()
}

// reverseProxies returns rt's ReverseProxy for each of up's targets (up is rt's upstream,
// or its fallback upstream), by target index: the target picked for a request reaches
// the Rewrite without a per-request allocation.
func (p *Proxy) reverseProxies(rt *route, up *upstream) []*httputil.ReverseProxy {
	rps := make([]*httputil.ReverseProxy, len(up.targets))
	for _, tg := range up.targets {
		u := tg.url
		rps[tg.index] = &httputil.ReverseProxy{
			Rewrite:        func(pr *httputil.ProxyRequest) { rt.rewrite(pr, u) },
			ModifyResponse: up.checkResponse,
			Transport:      up.transport,
			BufferPool:     &p.buffers,
			ErrorHandler:   p.handleError,
			ErrorLog:       p.errLog,
		}
	}
	return rps
}

// Targets returns the URLs of the named upstream's targets in the routing table in
// effect, in config order; nil for an unknown upstream. Do not modify them.
func (p *Proxy) Targets(upstream string) []*url.URL {
	up := p.table.Load().upstreams[upstream]
	if up == nil {
		return nil
	}
	return up.targetURLs()
}

// Budgets returns the retry budget of each upstream that retries, by upstream name, as
// the routing table in effect holds them (a store shares them; the admin API shows them).
func (p *Proxy) Budgets() map[string]*RetryBudget {
	bs := map[string]*RetryBudget{}
	for name, up := range p.table.Load().upstreams {
		if up.retry != nil {
			bs[name] = up.retry.budget
		}
	}
	return bs
}

// ServeHTTP routes and proxies one request.
//
// Routing: the first route in config order whose host, path prefix and methods match.
// Hosts compare case-insensitively without the port; "*.example.com" matches every
// subdomain of example.com but not example.com itself. The path matched (and forwarded)
// is the cleaned one, so "/api/../admin" is "/admin", and a prefix matches at a segment
// boundary ("/v1" matches "/v1/x", not "/v1.."); a path hiding a dot-segment in
// percent-encoding, or holding a segment a backend may read as one ("..;x", "..\x",
// "%252e%252e", "..."), is refused with 400, as is the asterisk form ("OPTIONS *").
// No match: 404 with a JSON body. CONNECT: 405.
// The proxy only ever connects to configured targets: an absolute-form request URI
// naming another host routes like any request for that Host. Every answer to a request
// with a chunked body says Connection: close, and the connection is closed after it
// (RFC 9112 §6.1: net/http has removed any Content-Length sent beside the
// Transfer-Encoding, so the proxy cannot tell whether there was one).
//
// Admission: a rejected request gets the upstream's fallback response (see
// HeaderCircuit). Otherwise the outcome is reported to the breaker exactly once: when
// the response headers arrive (the latency the breaker's slow-call rule measures), on
// a protocol switch, or on an error (502 for a transport error, 504 for a timeout,
// nothing for a client that went away). Reporting at the headers keeps a half-open
// trial from holding its slot for the length of a stream. If the upstream then breaks
// the body off (a read error from the upstream, not a client that went away), a
// success becomes a failure after all (breaker.LateFailure, Result FailureBody); the
// client sees the body cut, as ReverseProxy aborts the response.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	chunked := chunkedBody(r)
	if chunked {
		// RFC 9112 §6.1: a server must close the connection after responding to a request
		// with both Content-Length and Transfer-Encoding. net/http has dropped the
		// Content-Length by now (§6.3), so every chunked request is treated as one that
		// may have had both. The header is set before any answer is written, so it is on
		// every one, proxied or the proxy's own; the server closes the connection after
		// the response, and bytes after the chunked body are never read as a request.
		w.Header().Set("Connection", "close")
	}
	if r.Method == http.MethodConnect {
		w.Header().Set("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
		writeProblem(w, http.StatusMethodNotAllowed, "method_not_allowed", "CONNECT is not supported")
		return
	}
	cleaned, ok := routingPath(r.URL)
	if !ok || !validUpgrade(r.Header) || !validHost(r.Host) {
		writeProblem(w, http.StatusBadRequest, "bad_request", "invalid request path, Host or upgrade")
		return
	}
	t := p.table.Load()
	rt := t.routes.lookup(normalizeHost(r.Host), cleaned, r.Method)
	if rt == nil {
		noRoute(w, r)
		return
	}
	up := rt.up
	logged := p.access != nil && p.access.Sample()
	var start time.Time
	if logged {
		start = p.now()
	}
	// The bulkhead comes before the breaker: a request it refuses never reaches the
	// breaker, so it is neither a failure nor a trial (bulkhead.go).
	if !up.bulkhead.acquire() {
		p.reject(w, r, rt, RejectedConcurrency, breaker.Ticket{}, nil, chunked, logged, start)
		return
	}
	defer up.bulkhead.release()

	// A key's circuit first (keyed.go): an open key is rejected without touching the
	// upstream's circuit, whose half-open trial slots stay for other keys.
	var ka keyAdmission
	if up.keys != nil {
		var err error
		if ka, err = up.admitKey(r, cleaned); err != nil {
			w.Header()[HeaderScope] = scopeKey
			p.reject(w, r, rt, Rejected, ka.ticket, err, chunked, logged, start)
			return
		}
	}
	var ticket breaker.Ticket
	if b := up.breaker; b != nil {
		var err error
		if ticket, err = b.Allow(); err != nil {
			ka.release()
			p.reject(w, r, rt, Rejected, ticket, err, chunked, logged, start)
			return
		}
	}
	p.forward(w, r, rt, up, p.routeProxies(rt), ticket, chunked, nil, logged, start, ka)
}

// serveFallback serves a request its upstream's circuit rejected (err) from the
// upstream's fallback upstream (fallback.upstream), through the fallback's own bulkhead,
// breaker and targets. It reports false, having written nothing, when the fallback
// refuses the request too: the caller then sends the fallback response.
func (p *Proxy) serveFallback(w http.ResponseWriter, r *http.Request, rt *route, fb *upstream, err error,
	chunked, logged bool, start time.Time) bool {
	if !fb.bulkhead.acquire() {
		if p.rec != nil {
			p.rec.Request(fb.name, RejectedConcurrency, 0, 0)
		}
		return false
	}
	defer fb.bulkhead.release()
	var ticket breaker.Ticket
	if b := fb.breaker; b != nil {
		var ferr error
		if ticket, ferr = b.Allow(); ferr != nil {
			if p.rec != nil {
				p.rec.Request(fb.name, Rejected, 0, 0)
			}
			return false
		}
	}
	via := &rt.up.via.open
	if errors.Is(err, breaker.ErrTooManyTrials) {
		via = &rt.up.via.halfOpen
	}
	if p.rec != nil {
		p.rec.FallbackServed(rt.up.name, fb.name)
	}
	p.forward(w, r, rt, fb, p.fallbackProxies(rt), ticket, chunked, via, logged, start, keyAdmission{})
	return true
}

// forward sends an admitted request (ticket, from up's breaker) to one of up's targets
// through rps (one ReverseProxy per target) and reports its outcome. via is set when up
// serves as another upstream's fallback; ka is the request's key admission (keyed.go).
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request, rt *route, up *upstream, rps []*httputil.ReverseProxy,
	ticket breaker.Ticket, chunked bool, via *served, logged bool, start time.Time, ka keyAdmission) {
	tg, tticket, tracked := up.pick()
	e := p.exchanges.Get().(*exchange)
	now := p.now()
	*e = exchange{w: w, p: p, up: up, client: r.Context(), ticket: ticket, start: now, closeConn: chunked,
		target: tg, tticket: tticket, tracked: tracked, via: via, attempt: 1, attemptStart: now, key: ka}
	if up.leastRequests {
		tg.inflight.Add(1)
	}
	defer p.release(e)
	if logged {
		e.logged, e.route, e.method, e.path, e.logStart = true, rt, r.Method, r.URL.Path, start
	}

	if up.retry != nil {
		up.retry.budget.deposit(now)
		e.retry = up.retryFor(r)
	}
	if r.Body != nil && r.Body != http.NoBody {
		e.body = &clientBody{rc: r.Body}
		r.Body = e.body
		if e.retry != nil && !p.bufferBody(e, r) {
			e.returned = true
			return
		}
	}
	if timeout := grpcTimeout(r, up.timeout); timeout > 0 { // gRPC hook (grpc.go): grpc-timeout
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		r, e.upstream = r.WithContext(ctx), ctx
	}
	if e.retry == nil {
		rps[tg.index].ServeHTTP(e, r)
		e.returned = true
		return
	}
	for {
		rps[e.target.index].ServeHTTP(e, r)
		if !e.retrying {
			break
		}
		p.next(e, r)
	}
	e.returned = true
}
