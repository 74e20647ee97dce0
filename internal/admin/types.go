package admin

import (
	"math"
	"strings"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/proxy"
	"github.com/fuseproxy/fuseproxy/store"
)

// The JSON documents the admin API answers with. The CLI decodes the same types.

// Circuit is one upstream's circuit as GET /circuits lists it, or one target's (outlier
// detection: its name is UPSTREAM@HOST:PORT, and Upstream and Target are set).
type Circuit struct {
	Name string `json:"name"`
	// Upstream and Target (host:port) name a target's circuit; empty for an upstream's.
	Upstream string `json:"upstream,omitempty"`
	Target   string `json:"target,omitempty"`
	// Ejected is true while a target's circuit keeps the target out of rotation (open,
	// half-open or forced open) and max_ejection_percent lets it; always false for an
	// upstream's circuit.
	Ejected bool `json:"ejected,omitempty"`
	// PastCap is true for a target whose circuit is open, half-open or forced open but
	// which serves all the same, its ejection past max_ejection_percent (the panic rule;
	// with max_ejection_percent 0, every such target).
	PastCap bool `json:"past_cap,omitempty"`
	// State is closed, open or half_open; "disabled" for an upstream whose breaker is
	// disabled (every other field is then zero).
	State      string         `json:"state"`
	Mode       string         `json:"mode,omitempty"` // normal | forced_open | forced_closed | metrics_only
	Generation uint64         `json:"generation"`
	Counts     breaker.Counts `json:"counts"` // the current window
	Rates      Rates          `json:"rates"`  // of the current window, in percent
	// Consecutive is the current run of consecutive failures.
	Consecutive int `json:"consecutive"`
	// Trips counts the trips since the circuit last recovered through trials (the backoff).
	Trips int `json:"trips"`
	// OpenedAt is when the circuit last opened (RFC 3339, UTC), while it is not closed.
	OpenedAt string `json:"opened_at,omitempty"`
	// OpenRemainingSeconds is what is left of the open period (0 unless open).
	OpenRemainingSeconds float64 `json:"open_remaining_seconds"`
	// OpenForSeconds is the length of the current open period (0 unless open).
	OpenForSeconds float64 `json:"open_for_seconds"`
	// TrialsInFlight is the number of half-open trials this replica has in flight.
	TrialsInFlight int `json:"trials_in_flight"`
	// Source says who decides: "local" (memory store, or a shared circuit not yet
	// synced), "shared" (the shared store decides for the fleet) or "degraded" (the
	// shared store is unreachable: this replica decides from the last shared state).
	Source string `json:"source,omitempty"`
	// RetryBudget is an upstream's retry budget in use (retries), this replica's part and,
	// with the Redis store, the fleet's as last shared; absent when it does not retry.
	RetryBudget *proxy.BudgetView `json:"retry_budget,omitempty"`
}

// Rates are a window's failure and slow-call rates in percent.
type Rates struct {
	FailureRate float64 `json:"failure_rate"`
	SlowRate    float64 `json:"slow_rate"`
}

// Sources of a circuit's decisions (Circuit.Source).
const (
	SourceLocal    = "local"
	SourceShared   = "shared"
	SourceDegraded = "degraded"
)

// StateDisabled is Circuit.State for an upstream whose breaker is disabled.
const StateDisabled = "disabled"

// CircuitList is the answer to GET /circuits: every upstream, sorted by name.
type CircuitList struct {
	Replica  string       `json:"replica"`
	Store    store.Status `json:"store"`
	Circuits []Circuit    `json:"circuits"`
}

// CircuitDetail is the answer to GET /circuits/{name}: this replica's view next to
// what the store holds.
type CircuitDetail struct {
	Circuit
	Replica  string       `json:"replica"`
	Settings *Settings    `json:"settings,omitempty"` // nil when the breaker is disabled
	Store    store.Status `json:"store"`
	// SharedStore is store.Inspect's raw answer: the Redis hash (and trial leases) with the
	// redis store, the breaker's own fields with the memory store.
	SharedStore      map[string]string `json:"shared_store,omitempty"`
	SharedStoreError string            `json:"shared_store_error,omitempty"`
}

// Settings are the breaker settings in effect, durations as Go duration strings.
type Settings struct {
	ConsecutiveFailures  int     `json:"consecutive_failures"`
	FailureRate          float64 `json:"failure_rate"`
	SlowCallRate         float64 `json:"slow_call_rate"`
	SlowCallDuration     string  `json:"slow_call_duration"`
	MinimumRequests      int     `json:"minimum_requests"`
	Window               string  `json:"window"`
	Buckets              int     `json:"buckets"`
	OpenDuration         string  `json:"open_duration"`
	BackoffMultiplier    float64 `json:"backoff_multiplier"`
	MaxOpenDuration      string  `json:"max_open_duration"`
	Jitter               float64 `json:"jitter"`
	HalfOpenMaxRequests  int     `json:"half_open_max_requests"`
	SuccessThreshold     int     `json:"success_threshold"`
	InitialMode          string  `json:"initial_mode"`
	MinReplicasReporting int     `json:"min_replicas_reporting"`
}

// ControlResult is the answer to POST /circuits/{name}/{open,close,reset,mode}.
type ControlResult struct {
	Action  string  `json:"action"` // open | close | reset | mode
	Circuit Circuit `json:"circuit"`
	// Scope is "fleet" when the shared store applied the command for every replica,
	// "replica" when it reached this replica only.
	Scope string `json:"scope"`
	// Warning is set (with status 202) when a shared store was unreachable and the
	// command was applied to this replica only; Detail then holds the store's error.
	Warning string `json:"warning,omitempty"`
	Detail  string `json:"detail,omitempty"`
}

// WarningLocalOnly is ControlResult.Warning when a command reached this replica only.
const WarningLocalOnly = "applied to this replica only"

// Readiness is the answer to GET /readyz.
type Readiness struct {
	Ready bool `json:"ready"`
	// Status is "serving", or why the replica is not ready.
	Status  string `json:"status"`
	Replica string `json:"replica"`
	Store   string `json:"store"` // the store driver: memory | redis
	// Degraded is true while the shared store is unreachable.
	Degraded bool `json:"degraded"`
	// Protection says who protects the upstreams: "shared" (the fleet's state in Redis)
	// or "local" (this replica's breakers: the memory store, or a degraded redis store).
	Protection string `json:"protection"`
	StoreError string `json:"store_error,omitempty"`
	Upstreams  int    `json:"upstreams"`
}

// ReloadResult is the answer to POST /reload.
type ReloadResult struct {
	Reloaded  bool   `json:"reloaded"`
	Path      string `json:"path"`
	Upstreams int    `json:"upstreams,omitempty"`
	Error     string `json:"error,omitempty"`
}

// FlushResult is the answer to POST /flush.
type FlushResult struct {
	Flushed bool         `json:"flushed"`
	Store   store.Status `json:"store"`
	Error   string       `json:"error,omitempty"`
}

// Error is the body of every error answer.
type Error struct {
	Error string `json:"error"`
	// Field names the request field at fault (400), such as "mode".
	Field string `json:"field,omitempty"`
	// Upstream names the circuit the request was about (404, 409).
	Upstream string `json:"upstream,omitempty"`
}

// NewCircuit builds a Circuit from a snapshot taken at now; source is one of the
// Source constants.
func NewCircuit(s breaker.Snapshot, now time.Time, source string) Circuit {
	c := Circuit{
		Name: s.Name, State: s.State.String(), Mode: s.Mode.String(), Generation: s.Generation,
		Counts:      s.Counts,
		Rates:       Rates{FailureRate: round2(s.Counts.FailureRate()), SlowRate: round2(s.Counts.SlowRate())},
		Consecutive: s.Consecutive, Trips: s.Trips,
		OpenRemainingSeconds: seconds(s.OpenRemaining), OpenForSeconds: seconds(s.OpenFor),
		TrialsInFlight: s.TrialsInFlight, Source: source,
	}
	if s.State != breaker.Closed {
		c.OpenedAt = now.Add(-s.OpenedAgo).UTC().Format(time.RFC3339)
	}
	if up, target, ok := strings.Cut(s.Name, "@"); ok {
		c.Upstream, c.Target = up, target
		c.Ejected = (s.State != breaker.Closed || s.Mode == breaker.ForcedOpen) &&
			s.Mode != breaker.ForcedClosed && s.Mode != breaker.MetricsOnly
	}
	return c
}

// NewSettings converts breaker settings for JSON; minReplicas comes from the config.
func NewSettings(s breaker.Settings, minReplicas int) *Settings {
	return &Settings{
		ConsecutiveFailures: s.ConsecutiveFailures, FailureRate: s.FailureRate,
		SlowCallRate: s.SlowCallRate, SlowCallDuration: s.SlowCallDuration.String(),
		MinimumRequests: s.MinimumRequests, Window: s.Window.String(), Buckets: s.Buckets,
		OpenDuration: s.OpenDuration.String(), BackoffMultiplier: s.BackoffMultiplier,
		MaxOpenDuration: s.MaxOpenDuration.String(), Jitter: s.Jitter,
		HalfOpenMaxRequests: s.HalfOpenMaxRequests, SuccessThreshold: s.SuccessThreshold,
		InitialMode: s.Mode.String(), MinReplicasReporting: minReplicas,
	}
}

// minReplicas is the configured quorum of an upstream, 0 when unknown.
func minReplicas(cfg *config.Config, name string) int {
	if u := cfg.Upstreams[name]; u != nil {
		return u.Breaker.MinReplicasReporting
	}
	if up, _, ok := strings.Cut(name, "@"); ok && cfg.Upstreams[up] != nil {
		return cfg.Upstreams[up].Outlier.MinReplicasReporting
	}
	return 0
}

func round2(f float64) float64 { return math.Round(f*100) / 100 }

// seconds is d in seconds, rounded to the millisecond.
func seconds(d time.Duration) float64 { return math.Round(d.Seconds()*1000) / 1000 }
