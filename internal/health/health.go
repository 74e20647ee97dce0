// Package health runs the active health checks of targets (health_check under an
// upstream with outlier_detection): it probes each target every interval and ejects or
// restores the target through its circuit, fleet-wide, by the store's operator commands.
//
// A target's circuit is the one the proxy consults before picking the target (named
// config.TargetName: "UPSTREAM@HOST:PORT"); an open circuit is an ejected target. The
// checker counts consecutive probe results per target:
//
//   - after unhealthy_threshold failed probes in a row it ejects the target
//     (store.OpOpen), unless the circuit is already open: the ejection then lasts the
//     circuit's open period (base_ejection_time × ejections), after which the circuit is
//     half-open and, while probes keep failing, the next failed probe ejects it again;
//   - a circuit that is not closed (ejected by a probe, by passive detection or by an
//     operator's "open") is restored (store.OpClose) after healthy_threshold good probes
//     in a row, counted from the first probe that found it ejected: active checks can end
//     a passive ejection early, after healthy_threshold × interval;
//   - an operator's mode wins: a circuit forced_open or forced_closed is never ejected
//     nor restored by a probe (in normal and metrics_only modes the checker acts).
//
// Shared probing: before each probe the checker claims the target's lease
// (store.Store.Claim, key = the circuit's name, ttl = 2 × interval). With the Redis
// store only the holder probes, so a target receives one probe per interval from the
// whole fleet, whatever its size. The holder renews the lease at each probe; when it
// stops (the replica died or its checker stopped), another replica's claim succeeds at
// its first turn after the lease expired: within 2 × interval + interval of the
// holder's last probe, a gap rather than an extra probe. An extra probe (two in one
// interval) happens only when the lease's key is lost while held (Redis restarted or
// failed over without it): the next replica to claim takes it at once, and the old
// holder, refused at its next turn, stops.
//
// The consecutive counts stay with the holder: a replica refused the lease forgets its
// counts, so a new holder starts from zero (a target changing hands needs up to
// unhealthy_threshold fresh probes to be ejected).
//
// When the lease cannot be asked (the Redis store is degraded, or the call failed) the
// replica probes on its own and keeps its counts, as breakers decide locally while
// degraded: each such replica then sends its own probe per interval, and its ejections
// protect it alone (the store's Control applies a command locally when Redis is
// unreachable; a resync later adopts Redis's state). With the memory store every
// replica probes its targets itself.
package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/store"
)

// UserAgent is the User-Agent header of every probe.
const UserAgent = "fuseproxy-health-check"

// maxBody is how much of a probe's response body is read (and discarded) before the
// connection is closed.
const maxBody = 64 << 10

// ClaimTTLFactor: the lease on a target lasts this many intervals, so that a holder
// whose turn comes late (a busy machine, a slow claim) keeps it.
const ClaimTTLFactor = 2

// Store is what the checker needs of the breaker store; store.Store implements it.
// Control ejects (store.OpOpen) and restores (store.OpClose) a target's circuit
// fleet-wide; Claim shares the probing (see the package comment).
type Store interface {
	Control(ctx context.Context, circuit string, c store.Command) error
	Claim(ctx context.Context, key string, ttl time.Duration) (bool, error)
}

// Target is one target to check.
type Target struct {
	Upstream string
	// Circuit is the target's circuit, config.TargetName(Upstream, URL): the name given
	// to Store.Control and the key of the probing lease.
	Circuit string
	// URL is the target's base URL: probes go to its scheme and host, with Check.Path
	// appended to its path.
	URL *url.URL
	// Check is the upstream's health_check, validated (Check.Expected filled). A target
	// whose Check.Path is "" is not checked.
	Check config.HealthCheck
	// Breaker is the target's circuit as the store holds it: the checker reads its state
	// and mode, and commands it only through Store.Control.
	Breaker breaker.Control
}

// Outcome classifies one probe.
type Outcome string

// Probe outcomes. Only OutcomeOK is a good probe.
const (
	OutcomeOK        Outcome = "ok"         // an expected status
	OutcomeBadStatus Outcome = "bad_status" // a status not in expected_statuses
	OutcomeTimeout   Outcome = "timeout"    // no full answer (headers and body) within timeout
	OutcomeError     Outcome = "error"      // the connection failed (refused, reset, TLS, ...)
)

// Result is one probe, as the Observe hook sees it.
type Result struct {
	Upstream string
	Target   string // host:port (the circuit's name after "@")
	Circuit  string
	Outcome  Outcome
	Status   int // the response's status; 0 when there was none
	Err      error
	Duration time.Duration
	// Local: the lease could not be asked (shared store degraded or unreachable), so this
	// replica probed on its own.
	Local bool
}

// Action is what a probe result made the checker do to a target.
type Action string

// Actions, as the OnAction hook and the logs see them.
const (
	ActionEject   Action = "ejected"
	ActionRestore Action = "restored"
)

// Event is an ejection or a restoration by the health check.
type Event struct {
	Upstream, Target, Circuit string
	Action                    Action
	Consecutive               int // the run of failed (ejected) or good (restored) probes
	// Err is the store's answer: nil when the command reached the fleet; a
	// *store.LocalOnlyError when it was applied to this replica only; another error when
	// it was not applied.
	Err error
}

// Options configure a Checker.
type Options struct {
	Store  Store
	Logger *zap.Logger // nil: no logs
	// Observe is called after each probe (metrics); OnAction after each ejection or
	// restoration. Both are called from the checker's goroutines and must not block.
	Observe  func(Result)
	OnAction func(Event)
	// Transport sends the probes; nil: a transport of the checker's own, without
	// keep-alives (each probe opens a connection) and without proxy.
	Transport http.RoundTripper
	// Rand spreads the first probes (jitter); nil: math/rand/v2.
	Rand func() float64
}

// Checker probes targets. Update sets the targets (at start and on each reload); Run
// probes them until its context ends. All methods are safe for concurrent use.
type Checker struct {
	o      Options
	log    *zap.Logger
	client *http.Client
	own    *http.Transport // the transport the checker made (closed after Run), or nil

	mu      sync.Mutex
	probes  map[string]*probe // by circuit
	running context.Context   // Run's context while it runs, else nil
	wg      sync.WaitGroup    // the probe goroutines
}

// probe is one target's state.
type probe struct {
	mu     sync.Mutex
	t      Target
	url    string // the probe's URL
	good   int    // consecutive good probes while the circuit was not closed
	bad    int    // consecutive failed probes
	stop   context.CancelFunc
	done   chan struct{} // closed when the goroutine exited (nil when none runs)
	change chan struct{} // the target's settings changed (Update)
}

// New returns a checker with no targets.
func New(o Options) *Checker {
	if o.Store == nil {
		panic("health: Options.Store is nil")
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Rand == nil {
		o.Rand = rand.Float64
	}
	c := &Checker{o: o, log: o.Logger.With(zap.String("component", "health_check")), probes: map[string]*probe{}}
	rt := o.Transport
	if rt == nil {
		c.own = &http.Transport{
			DialContext:       (&net.Dialer{}).DialContext,
			DisableKeepAlives: true,
			ForceAttemptHTTP2: true,
		}
		rt = c.own
	}
	c.client = &http.Client{
		Transport: rt,
		// A redirect is the probe's answer: its status is checked like any other.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return c
}

// Update replaces the set of targets. A target whose circuit was already checked keeps
// its consecutive counts (and its schedule, moved to a new interval if that changed);
// a target no longer in the set stops being probed; a new one starts (within one
// interval, jittered) if Run is running. Targets with no Check.Path, URL or Breaker, or a
// zero interval or timeout (not validated), are ignored.
func (c *Checker) Update(targets []Target) {
	c.mu.Lock()
	defer c.mu.Unlock()
	next := make(map[string]*probe, len(targets))
	for _, t := range targets {
		if t.Check.Path == "" || t.URL == nil || t.Breaker == nil || t.Check.Interval <= 0 || t.Check.Timeout <= 0 {
			continue
		}
		u := probeURL(t.URL, t.Check.Path)
		if p, ok := c.probes[t.Circuit]; ok {
			p.mu.Lock()
			p.t, p.url = t, u
			p.mu.Unlock()
			select {
			case p.change <- struct{}{}:
			default:
			}
			next[t.Circuit] = p
			continue
		}
		p := &probe{t: t, url: u, change: make(chan struct{}, 1)}
		next[t.Circuit] = p
		if c.running != nil {
			c.start(p)
		}
	}
	for name, p := range c.probes {
		if _, ok := next[name]; !ok && p.stop != nil {
			p.stop()
		}
	}
	c.probes = next
}

// Run probes the targets until ctx ends, then waits for every probe goroutine to stop
// and returns nil. It returns an error at once if it is already running.
func (c *Checker) Run(ctx context.Context) error {
	c.mu.Lock()
	if c.running != nil {
		c.mu.Unlock()
		return errors.New("health: Run is already running")
	}
	c.running = ctx
	for _, p := range c.probes {
		c.start(p)
	}
	c.mu.Unlock()

	<-ctx.Done()

	c.mu.Lock()
	c.running = nil
	for _, p := range c.probes {
		if p.stop != nil {
			p.stop()
		}
	}
	c.mu.Unlock()
	c.wg.Wait()
	if c.own != nil {
		c.own.CloseIdleConnections()
	}
	return nil
}

// start runs p's goroutine under Run's context (c.mu held, Run running).
func (c *Checker) start(p *probe) {
	ctx, stop := context.WithCancel(c.running)
	done := make(chan struct{})
	p.stop, p.done = stop, done
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer close(done)
		c.loop(ctx, p)
	}()
}

// loop probes p every interval, the first time after a random fraction of it. The
// schedule is fixed to its start (a slow probe does not push the next one back; a turn
// missed altogether is skipped).
func (c *Checker) loop(ctx context.Context, p *probe) {
	interval := p.interval()
	next := time.Now().Add(time.Duration(c.o.Rand() * float64(interval)))
	timer := time.NewTimer(time.Until(next))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.change:
			if iv := p.interval(); iv != interval {
				interval = iv
				if now := time.Now(); next.Sub(now) > interval {
					next = now.Add(interval)
				}
				timer.Reset(time.Until(next))
			}
			continue
		case <-timer.C:
		}
		c.turn(ctx, p)
		now := time.Now()
		for next = next.Add(interval); !next.After(now); {
			next = next.Add(interval)
		}
		timer.Reset(time.Until(next))
	}
}

func (p *probe) interval() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.t.Check.Interval
}

// turn is one scheduled turn for p: claim the lease, probe, count, act.
func (c *Checker) turn(ctx context.Context, p *probe) {
	p.mu.Lock()
	t, u := p.t, p.url
	p.mu.Unlock()
	held, err := c.o.Store.Claim(ctx, t.Circuit, ClaimTTLFactor*t.Check.Interval)
	if ctx.Err() != nil {
		return
	}
	local := err != nil
	if !held && !local {
		// Another replica probes this target: its counts are the ones that matter.
		p.mu.Lock()
		p.good, p.bad = 0, 0
		p.mu.Unlock()
		return
	}
	r := c.probe(ctx, t, u)
	if ctx.Err() != nil {
		return // stopping: a cancelled probe says nothing about the target
	}
	r.Local = local
	if c.o.Observe != nil {
		c.o.Observe(r)
	}
	c.judge(ctx, p, t, r.Outcome == OutcomeOK)
}

// probe sends one probe to t.
func (c *Checker) probe(ctx context.Context, t Target, u string) (r Result) {
	r = Result{Upstream: t.Upstream, Circuit: t.Circuit, Target: targetOf(t.Circuit)}
	start := time.Now()
	defer func() { r.Duration = time.Since(start) }()
	ctx, cancel := context.WithTimeout(ctx, t.Check.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		r.Outcome, r.Err = OutcomeError, err
		return r
	}
	req.Header.Set("User-Agent", UserAgent)
	resp, err := c.client.Do(req)
	if err != nil {
		r.Outcome, r.Err = OutcomeError, err
		if errors.Is(err, context.DeadlineExceeded) {
			r.Outcome = OutcomeTimeout
		}
		return r
	}
	// A full answer within the timeout: the body too, up to maxBody (the rest is not read).
	_, err = io.CopyN(io.Discard, resp.Body, maxBody)
	_ = resp.Body.Close()
	r.Status = resp.StatusCode
	switch {
	case err != nil && !errors.Is(err, io.EOF):
		r.Outcome, r.Err = OutcomeError, err
		if ctx.Err() != nil {
			r.Outcome = OutcomeTimeout
		}
	case t.Check.Expected.Has(resp.StatusCode):
		r.Outcome = OutcomeOK
	default:
		r.Outcome, r.Err = OutcomeBadStatus, fmt.Errorf("status %d not expected", resp.StatusCode)
	}
	return r
}

// judge counts a probe result and ejects or restores the target when a threshold is
// reached.
func (c *Checker) judge(ctx context.Context, p *probe, t Target, ok bool) {
	st, mode := t.Breaker.State(), t.Breaker.Mode()
	p.mu.Lock()
	var act Action
	var run int
	if ok {
		p.bad = 0
		if st == breaker.Closed {
			p.good = 0 // restoring counts from the first probe that finds the target out
		} else {
			p.good++
			if p.good >= t.Check.HealthyThreshold {
				act, run = ActionRestore, p.good
			}
		}
	} else {
		p.good = 0
		p.bad++
		if p.bad >= t.Check.UnhealthyThreshold && st != breaker.Open {
			act, run = ActionEject, p.bad
		}
	}
	p.mu.Unlock()
	if act == "" || mode == breaker.ForcedOpen || mode == breaker.ForcedClosed {
		return // nothing to do, or the operator decides
	}
	op := store.OpOpen
	if act == ActionRestore {
		op = store.OpClose
	}
	err := c.o.Store.Control(ctx, t.Circuit, store.Command{Op: op})
	if ctx.Err() != nil && err != nil {
		return
	}
	ev := Event{Upstream: t.Upstream, Target: targetOf(t.Circuit), Circuit: t.Circuit, Action: act, Consecutive: run, Err: err}
	c.logEvent(ev, t)
	if c.o.OnAction != nil {
		c.o.OnAction(ev)
	}
}

func (c *Checker) logEvent(ev Event, t Target) {
	var lo *store.LocalOnlyError
	fields := []zap.Field{zap.String("upstream", ev.Upstream), zap.String("target", ev.Target)}
	switch {
	case ev.Err == nil:
		fields = append(fields, zap.String("scope", "fleet"))
	case errors.As(ev.Err, &lo):
		fields = append(fields, zap.String("scope", "replica"), zap.String("warning", ev.Err.Error()))
	default:
		c.log.Warn("health check could not change target", append(fields,
			zap.String("action", string(ev.Action)), zap.Error(ev.Err))...)
		return
	}
	if ev.Action == ActionEject {
		c.log.Info("target ejected by health check", append(fields,
			zap.Int("failed_probes", ev.Consecutive), zap.Int("unhealthy_threshold", t.Check.UnhealthyThreshold))...)
	} else {
		c.log.Info("target restored by health check", append(fields,
			zap.Int("good_probes", ev.Consecutive), zap.Int("healthy_threshold", t.Check.HealthyThreshold))...)
	}
}

// probeURL is the target's base URL with the check's path (and query) appended to its
// path.
func probeURL(base *url.URL, path string) string {
	u := *base
	u.User, u.Fragment, u.RawFragment = nil, "", ""
	pu, err := url.Parse(path)
	if err != nil { // validated by config; keep the path as it is
		pu = &url.URL{Path: path}
	}
	u.Path = strings.TrimSuffix(base.Path, "/") + pu.Path
	u.RawPath = strings.TrimSuffix(base.EscapedPath(), "/") + pu.EscapedPath()
	u.RawQuery = pu.RawQuery
	return u.String()
}

// targetOf is a circuit name's host:port.
func targetOf(circuit string) string {
	if i := strings.LastIndexByte(circuit, '@'); i >= 0 {
		return circuit[i+1:]
	}
	return circuit
}
