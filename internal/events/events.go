// Package events turns circuit transitions into operator-facing events. A Dispatcher is
// the breaker.Observer of every breaker of a replica; for each transition it
//
//   - always counts it in the metrics (Metrics.Transition);
//   - when events are enabled, writes one log line "circuit transition";
//   - when events are enabled and webhooks are configured, queues one Event that a
//     worker goroutine POSTs as JSON to every webhook, with retries.
//
// OnTransition never blocks: the queue is bounded (events.queue_size), and an event that
// finds it full is dropped and counted (fuseproxy_events_dropped_total). A slow or
// hanging webhook therefore delays only other webhook deliveries, never a request.
//
// # The webhook request
//
// POST to the webhook's URL, with the webhook's headers, Content-Type: application/json,
// User-Agent: fuseproxy/VERSION and X-Fuseproxy-Event: circuit.transition. The body is
// one Event:
//
//	{
//	  "event": "circuit.transition",   // always this value
//	  "upstream": "payments",          // the upstream's name in the config
//	  "from": "closed",                // closed | open | half_open
//	  "to": "open",                    // closed | open | half_open
//	  "reason": "consecutive_failures",// consecutive_failures | failure_rate |
//	                                   // slow_call_rate | open_timeout | trial_failed |
//	                                   // trials_succeeded | mode | reset | shared
//	  "generation": 7,                 // the circuit's generation after the transition
//	  "mode": "normal",                // normal | forced_open | forced_closed | metrics_only
//	  "counts": {"requests": 20, "failures": 11, "slow": 0}, // the window at the decision
//	  "consecutive": 3,                // consecutive failures at the decision
//	  "open_for_seconds": 30,          // the open period when "to" is "open", else 0
//	  "replica": "fuseproxy-0",        // the replica that saw the transition
//	  "time": "2025-01-02T15:04:05.123456789Z" // when it saw it, RFC 3339 with nanoseconds
//	}
//
// With a shared store every replica sees (and sends) each fleet-wide transition, with
// reason "shared" on the replicas that adopted it; deduplicate on upstream + generation.
//
// A 2xx answer is a delivery. A transport error, a timeout (the webhook's timeout bounds
// each attempt), 408, 429 or 5xx is retried up to the webhook's retries, after 100 ms,
// 200 ms, 400 ms, … (at most 5 s); any other status fails the delivery at once.
package events

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
)

// EventType is the value of Event.Event for a transition.
const EventType = "circuit.transition"

// TargetEventType is the value of Event.Event for a transition of a target's circuit
// (outlier detection): to open is an ejection, to half_open the target's return on
// trial, to closed its restoration.
const TargetEventType = "target.transition"

// Event is the JSON body a webhook receives for one transition.
type Event struct {
	Event          string         `json:"event"`
	Upstream       string         `json:"upstream"`
	Target         string         `json:"target,omitempty"` // host:port, for a target's transition
	Key            string         `json:"key,omitempty"`    // the key, for a key's transition
	From           string         `json:"from"`
	To             string         `json:"to"`
	Reason         string         `json:"reason"`
	Generation     uint64         `json:"generation"`
	Mode           string         `json:"mode"`
	Counts         breaker.Counts `json:"counts"`
	Consecutive    int            `json:"consecutive"`
	OpenForSeconds float64        `json:"open_for_seconds"`
	Replica        string         `json:"replica"`
	Time           time.Time      `json:"time"` // RFC 3339 with nanoseconds
}

// NewEvent returns the event for a transition seen by replica at time now.
func NewEvent(t breaker.Transition, replica string, now time.Time) Event {
	ev := Event{
		Event: EventType, Upstream: t.Upstream, From: t.From.String(), To: t.To.String(),
		Reason: t.Reason, Generation: t.Generation, Mode: t.Mode.String(), Counts: t.Counts,
		Consecutive: t.Consecutive, OpenForSeconds: t.OpenFor.Seconds(), Replica: replica,
		Time: now.UTC(),
	}
	if up, key, ok := config.SplitKeyName(t.Upstream); ok {
		ev.Event, ev.Upstream, ev.Key = KeyEventType, up, key
	} else if up, target, ok := strings.Cut(t.Upstream, "@"); ok {
		ev.Event, ev.Upstream, ev.Target = TargetEventType, up, target
	}
	return ev
}

// targetMessages are the log messages of a target's transitions, by the state entered.
var targetMessages = [...]string{
	breaker.Closed:   "target restored",
	breaker.Open:     "target ejected",
	breaker.HalfOpen: "target returning on trial",
}

// Metrics is what the Dispatcher counts; *telemetry.Metrics implements it.
type Metrics interface {
	Transition(breaker.Transition)
	EventDropped()
	WebhookDelivered(ok bool)
}

// Options are a Dispatcher's collaborators. The zero value is usable.
type Options struct {
	Logger  *zap.Logger // nil: no logs
	Replica string      // this replica's id, in every log line and event
	Version string      // in the User-Agent
	Metrics Metrics     // nil: nothing counted
	Now     func() time.Time
	// Transport sends the webhook requests; nil means a transport of the Dispatcher's own,
	// whose idle connections Close closes.
	Transport http.RoundTripper
	// Backoff is the delay before the first retry, doubled for each further one (capped
	// at 5 s); 100 ms when zero.
	Backoff time.Duration
}

const maxBackoff = 5 * time.Second

// settings are the parts of config.Events a reload may change.
type settings struct {
	enabled bool
	hooks   []config.Webhook
}

// job is one queued event with the webhooks in effect when it was queued.
type job struct {
	ev    Event
	hooks []config.Webhook
}

// Dispatcher fans each transition out to the metrics, the log and the webhooks. Its
// webhook worker runs between Start and Close.
type Dispatcher struct {
	log     *zap.Logger
	o       Options
	client  *http.Client
	ownedTr *http.Transport // closed by Close; nil when Options.Transport was given

	settings atomic.Pointer[settings]
	queue    chan job
	closed   atomic.Bool  // Close was called: nothing more is queued
	dropped  atomic.Int64 // events dropped since the last drop log line
	lastDrop atomic.Int64 // unix ns of the last drop log line

	mu       sync.Mutex // guards started and stopping
	started  bool
	stopping chan struct{}      // closed by Close
	cancel   context.CancelFunc // aborts the worker's deliveries
	done     chan struct{}      // closed when the worker has returned
}

var _ breaker.Observer = (*Dispatcher)(nil)

// New returns a Dispatcher for cfg. The queue's size is fixed here: a reload changes
// enabled and webhooks (Update), not queue_size.
func New(cfg config.Events, o Options) *Dispatcher {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Backoff <= 0 {
		o.Backoff = 100 * time.Millisecond
	}
	d := &Dispatcher{
		log: o.Logger, o: o,
		queue:    make(chan job, max(cfg.QueueSize, 1)),
		stopping: make(chan struct{}),
		done:     make(chan struct{}),
	}
	tr := o.Transport
	if tr == nil {
		d.ownedTr = &http.Transport{
			Proxy: http.ProxyFromEnvironment, MaxIdleConnsPerHost: 2,
			IdleConnTimeout: 30 * time.Second, TLSHandshakeTimeout: 5 * time.Second,
		}
		tr = d.ownedTr
	}
	d.client = &http.Client{
		Transport: tr,
		// Webhooks are configured URLs: a redirect elsewhere is not followed.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	d.Update(cfg)
	return d
}

// Update applies a reloaded config's enabled flag and webhooks. Events already queued
// go to the webhooks in effect when they were queued.
func (d *Dispatcher) Update(cfg config.Events) {
	d.settings.Store(&settings{enabled: cfg.Enabled, hooks: cfg.Webhooks})
}

// OnTransition implements breaker.Observer. It never blocks.
func (d *Dispatcher) OnTransition(t breaker.Transition) {
	if d.o.Metrics != nil {
		d.o.Metrics.Transition(t)
	}
	s := d.settings.Load()
	if !s.enabled {
		return
	}
	d.logTransition(t)
	if len(s.hooks) == 0 || d.closed.Load() {
		return
	}
	select {
	case d.queue <- job{ev: NewEvent(t, d.o.Replica, d.o.Now()), hooks: s.hooks}:
	default:
		d.drop()
	}
}

func (d *Dispatcher) logTransition(t breaker.Transition) {
	msg, upstream, target, key := "circuit transition", t.Upstream, "", ""
	if up, k, ok := config.SplitKeyName(t.Upstream); ok {
		msg, upstream, key = "key transition", up, k
	} else if up, tg, ok := strings.Cut(t.Upstream, "@"); ok && int(t.To) < len(targetMessages) {
		msg, upstream, target = targetMessages[t.To], up, tg
	}
	ce := d.log.Check(zap.InfoLevel, msg)
	if ce == nil {
		return
	}
	fields := []zap.Field{zap.String("upstream", upstream)}
	if target != "" {
		fields = append(fields, zap.String("target", target))
	}
	if msg == "key transition" {
		fields = append(fields, zap.String("key", key))
	}
	fields = append(fields, zap.String("from", t.From.String()),
		zap.String("to", t.To.String()), zap.String("reason", t.Reason),
		zap.Uint32("requests", t.Counts.Requests), zap.Uint32("failures", t.Counts.Failures),
		zap.Uint32("slow", t.Counts.Slow), zap.Float64("failure_rate", t.Counts.FailureRate()),
		zap.Int("consecutive", t.Consecutive), zap.Uint64("generation", t.Generation),
		zap.String("mode", t.Mode.String()), zap.Float64("open_for_seconds", t.OpenFor.Seconds()),
		zap.String("replica", d.o.Replica),
	)
	if t.Mode == breaker.MetricsOnly {
		// Nothing is rejected in metrics_only mode: the line says what would have been.
		fields = append(fields, zap.Bool("dry_run", true))
	}
	ce.Write(fields...)
}

// drop counts an event that found the queue full, and logs at most one line every 10 s.
func (d *Dispatcher) drop() {
	if d.o.Metrics != nil {
		d.o.Metrics.EventDropped()
	}
	n := d.dropped.Add(1)
	now := time.Now().UnixNano()
	last := d.lastDrop.Load()
	if now-last < int64(10*time.Second) || !d.lastDrop.CompareAndSwap(last, now) {
		return
	}
	d.dropped.Add(-n)
	d.log.Warn("event queue full: transition events dropped (webhooks too slow?)",
		zap.Int64("dropped", n), zap.Int("queue_size", cap(d.queue)), zap.String("replica", d.o.Replica))
}

// Start starts the webhook worker. It does nothing when called again or after Close.
func (d *Dispatcher) Start() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.started || d.closed.Load() {
		return
	}
	d.started = true
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	go d.run(ctx)
}

// Close stops queueing, lets the worker deliver what is queued until ctx ends, then
// aborts the deliveries in flight and waits for the worker to return. Events still
// queued then are not delivered (and logged as such). It is safe to call more than once.
func (d *Dispatcher) Close(ctx context.Context) error {
	d.mu.Lock()
	first := !d.closed.Swap(true)
	if first {
		close(d.stopping)
	}
	started := d.started
	d.mu.Unlock()
	if started {
		select {
		case <-d.done:
		case <-ctx.Done():
			d.cancel()
			<-d.done
		}
		d.cancel()
	}
	if first {
		if n := len(d.queue); n > 0 {
			d.log.Warn("transition events not delivered at shutdown", zap.Int("events", n),
				zap.String("replica", d.o.Replica))
		}
		if d.ownedTr != nil {
			d.ownedTr.CloseIdleConnections()
		}
	}
	return ctx.Err()
}

// run delivers queued events until Close; then it drains the queue and returns, or
// returns at once when its ctx is cancelled.
func (d *Dispatcher) run(ctx context.Context) {
	defer close(d.done)
	for {
		select {
		case j := <-d.queue:
			d.deliver(ctx, j)
		case <-d.stopping:
			for ctx.Err() == nil {
				select {
				case j := <-d.queue:
					d.deliver(ctx, j)
				default:
					return
				}
			}
			return
		case <-ctx.Done():
			return
		}
	}
}

// deliver sends one event to each of its webhooks, concurrently, and waits for them.
func (d *Dispatcher) deliver(ctx context.Context, j job) {
	body, err := json.Marshal(j.ev)
	if err != nil { // cannot happen: Event has only plain fields
		d.log.Error("encoding event", zap.Error(err))
		return
	}
	if len(j.hooks) == 1 {
		d.send(ctx, j.hooks[0], j.ev, body)
		return
	}
	var wg sync.WaitGroup
	for _, h := range j.hooks {
		wg.Go(func() { d.send(ctx, h, j.ev, body) })
	}
	wg.Wait()
}

// send delivers body to one webhook, retrying as the package doc says.
func (d *Dispatcher) send(ctx context.Context, h config.Webhook, ev Event, body []byte) {
	var err error
	attempts := 1 + max(h.Retries, 0)
	for i := range attempts {
		if i > 0 {
			if !sleep(ctx, min(d.o.Backoff<<(i-1), maxBackoff)) {
				break
			}
		}
		var retry bool
		if retry, err = d.attempt(ctx, h, body); err == nil {
			if d.o.Metrics != nil {
				d.o.Metrics.WebhookDelivered(true)
			}
			return
		}
		if !retry || ctx.Err() != nil {
			break
		}
	}
	if d.o.Metrics != nil {
		d.o.Metrics.WebhookDelivered(false)
	}
	if ctx.Err() == nil {
		d.log.Warn("webhook delivery failed", zap.String("webhook", redact(h.URL)),
			zap.String("upstream", ev.Upstream), zap.Uint64("generation", ev.Generation),
			zap.Int("attempts", attempts), zap.Error(err), zap.String("replica", d.o.Replica))
	}
}

// attempt makes one POST; retry reports whether a failure is worth another attempt.
func (d *Dispatcher) attempt(ctx context.Context, h config.Webhook, body []byte) (retry bool, err error) {
	if h.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, h.Timeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.URL, bytes.NewReader(body))
	if err != nil {
		return false, fmt.Errorf("webhook request: %w", err)
	}
	for k, v := range h.Headers {
		req.Header.Set(k, v)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "fuseproxy/"+d.o.Version)
	req.Header.Set("X-Fuseproxy-Event", EventType)
	resp, err := d.client.Do(req)
	if err != nil {
		return true, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode <= 299 {
		return false, nil
	}
	retry = resp.StatusCode >= 500 || resp.StatusCode == http.StatusRequestTimeout ||
		resp.StatusCode == http.StatusTooManyRequests
	return retry, fmt.Errorf("webhook answered %s", resp.Status)
}

// sleep waits for d or until ctx ends, reporting whether it waited the whole time.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// redact returns a webhook URL fit for a log line: without user info and query, which
// may hold credentials.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	u.User, u.RawQuery, u.Fragment = nil, "", ""
	return u.String()
}
