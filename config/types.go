package config

import (
	"net/url"
	"time"
)

// Config is the whole fuseproxy configuration file. Every field's default lives in
// defaults.go (Default()); README's configuration reference is generated from the same
// table of documented fields, so the two never drift.
type Config struct {
	Listen    string               `yaml:"listen"`
	Server    Server               `yaml:"server"`
	Admin     Admin                `yaml:"admin"`
	Log       Log                  `yaml:"log"`
	Store     Store                `yaml:"store"`
	Events    Events               `yaml:"events"`
	AccessLog AccessLog            `yaml:"access_log"`
	Upstreams map[string]*Upstream `yaml:"upstreams"`
	Routes    []Route              `yaml:"routes"`

	// Replicas is how many replicas the operator declares will share this config
	// (informational; validate warns when >1 with the memory store).
	Replicas int `yaml:"replicas"`

	// Path is the file the config was loaded from (not a YAML key).
	Path string `yaml:"-"`

	// origin records where each value came from (file line or environment variable)
	// so Validate and Warnings can point at it; nil for a Config built in code.
	origin *origin
}

// Server holds the proxy listener's HTTP server settings.
type Server struct {
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
	ReadTimeout       time.Duration `yaml:"read_timeout"`
	WriteTimeout      time.Duration `yaml:"write_timeout"`
	IdleTimeout       time.Duration `yaml:"idle_timeout"`
	MaxHeaderBytes    int           `yaml:"max_header_bytes"`
	ShutdownTimeout   time.Duration `yaml:"shutdown_timeout"`

	// Limits against exhaustion (a connection cap and a progress deadline for request
	// bodies); see the config reference for the reasons of their defaults.
	MaxConnections  int           `yaml:"max_connections"`   // 0 = no cap
	BodyReadTimeout time.Duration `yaml:"body_read_timeout"` // 0 = no body deadline
	BodyMinRate     int           `yaml:"body_min_rate"`     // bytes/s; 0 = no rate rule
	// TrustedProxies are the addresses (CIDR ranges or single IPs) whose forwarding
	// headers (X-Forwarded-*, Forwarded, X-Real-IP, ...) are kept and extended; from
	// any other peer they are replaced. Empty: no one is trusted.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// TLS: the listener speaks TLS when certificates are listed.
	TLS ListenerTLS `yaml:"tls"`
	// HTTP2 offers HTTP/2 to TLS clients (ALPN "h2").
	HTTP2 bool `yaml:"http2"`
	// H2C accepts cleartext HTTP/2 with prior knowledge on a listener without TLS.
	H2C bool `yaml:"h2c"`
}

// ListenerTLS is a listener's TLS (the proxy's server.tls, the admin API's admin.tls).
// The files are read again when they change, so certificates rotate without a restart.
type ListenerTLS struct {
	// Certificates are chosen by the client's SNI name; the first is the default.
	Certificates []Certificate `yaml:"certificates"`
	MinVersion   string        `yaml:"min_version"` // "1.2" or "1.3"
}

// Enabled reports whether the listener speaks TLS.
func (t *ListenerTLS) Enabled() bool { return len(t.Certificates) > 0 }

// Certificate is a PEM certificate (chain) and its private key.
type Certificate struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Admin is the admin/metrics listener.
type Admin struct {
	Listen string `yaml:"listen"`
	Token  string `yaml:"token"`
	// AllowedHosts are the names, besides IP literals and localhost, that the admin API
	// accepts in a request's Host header (a defence against DNS rebinding).
	AllowedHosts []string `yaml:"allowed_hosts"`
	// TLS: the admin listener speaks TLS when certificates are listed.
	TLS ListenerTLS `yaml:"tls"`
}

// Log selects the zap encoder and level.
type Log struct {
	Format string `yaml:"format"` // json | console
	Level  string `yaml:"level"`  // debug | info | warn | error
}

// Store selects where breaker state lives.
type Store struct {
	Driver        string        `yaml:"driver"` // memory | redis | postgres
	ReplicaID     string        `yaml:"replica_id"`
	FlushInterval time.Duration `yaml:"flush_interval"`
	Redis         Redis         `yaml:"redis"`
	Postgres      Postgres      `yaml:"postgres"`
	History       History       `yaml:"history"`
}

// Postgres is the postgres store's connection and tolerance settings. A connection
// setting left empty (or 0) falls back to libpq's environment variables (PGHOST,
// PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE, ...) and then libpq's defaults, as
// psql does.
type Postgres struct {
	URL              string        `yaml:"url"`
	Host             string        `yaml:"host"`
	Port             int           `yaml:"port"`
	User             string        `yaml:"user"`
	Password         string        `yaml:"password"`
	Database         string        `yaml:"database"`
	SSLMode          string        `yaml:"sslmode"`
	SSLRootCert      string        `yaml:"sslrootcert"`
	SSLCert          string        `yaml:"sslcert"`
	SSLKey           string        `yaml:"sslkey"`
	Prefix           string        `yaml:"prefix"`
	PoolSize         int           `yaml:"pool_size"`
	ConnectTimeout   time.Duration `yaml:"connect_timeout"`
	StatementTimeout time.Duration `yaml:"statement_timeout"`
	DegradeAfter     int           `yaml:"degrade_after"`
	// Migrate: apply the schema's missing versions at start (behind an advisory lock).
	Migrate bool `yaml:"migrate"`
}

// History bounds the transition history every store keeps of each circuit
// (GET /circuits/{name}/history).
type History struct {
	// Retention is how long a transition is kept; 0 disables the history.
	Retention time.Duration `yaml:"retention"`
	// MaxEntries is how many transitions are kept per circuit at most.
	MaxEntries int `yaml:"max_entries"`
}

// Redis is the redis store's connection and tolerance settings.
type Redis struct {
	URL          string        `yaml:"url"`
	Host         string        `yaml:"host"`
	Port         int           `yaml:"port"`
	Username     string        `yaml:"username"`
	Password     string        `yaml:"password"`
	DB           int           `yaml:"db"`
	TLS          TLS           `yaml:"tls"`
	Prefix       string        `yaml:"prefix"`
	PoolSize     int           `yaml:"pool_size"`
	DialTimeout  time.Duration `yaml:"dial_timeout"`
	ReadTimeout  time.Duration `yaml:"read_timeout"`
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// DegradeAfter is how many consecutive failed store operations declare Redis degraded.
	DegradeAfter     int      `yaml:"degrade_after"`
	SentinelMaster   string   `yaml:"sentinel_master"`
	SentinelAddrs    []string `yaml:"sentinel_addrs"`
	SentinelPassword string   `yaml:"sentinel_password"`
	ClusterAddrs     []string `yaml:"cluster_addrs"`
}

// TLS configures TLS to Redis (also implied by a rediss:// URL).
type TLS struct {
	Enabled            bool   `yaml:"enabled"`
	CAFile             string `yaml:"ca_file"`
	CertFile           string `yaml:"cert_file"`
	KeyFile            string `yaml:"key_file"`
	ServerName         string `yaml:"server_name"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
}

// AccessLog configures the optional access log: one JSON line per routed request.
type AccessLog struct {
	Enabled    bool    `yaml:"enabled"`
	Path       string  `yaml:"path"`        // "" or "stderr": standard error; "stdout"; else a file
	SampleRate float64 `yaml:"sample_rate"` // 0-1: the share of requests logged
	BufferSize int     `yaml:"buffer_size"` // bytes pending for the writer beyond which lines are dropped
}

// Events configures transition events (log lines always, webhooks when listed).
type Events struct {
	Enabled   bool      `yaml:"enabled"`
	QueueSize int       `yaml:"queue_size"`
	Webhooks  []Webhook `yaml:"webhooks"`
}

// Webhook is one HTTP endpoint that receives transition events as JSON.
type Webhook struct {
	URL     string            `yaml:"url"`
	Timeout time.Duration     `yaml:"timeout"`
	Retries int               `yaml:"retries"`
	Headers map[string]string `yaml:"headers"`
}

// Upstream is one named backend service guarded by one circuit breaker.
type Upstream struct {
	Targets               []string      `yaml:"targets"`
	DialTimeout           time.Duration `yaml:"dial_timeout"`
	ResponseHeaderTimeout time.Duration `yaml:"response_header_timeout"`
	Timeout               time.Duration `yaml:"timeout"` // whole request, 0 = none
	MaxIdleConnsPerHost   int           `yaml:"max_idle_conns_per_host"`
	// MaxConcurrentRequests is the upstream's bulkhead: requests in flight to it beyond
	// this get the fallback at once. 0 = no cap.
	MaxConcurrentRequests int      `yaml:"max_concurrent_requests"`
	Breaker               Breaker  `yaml:"breaker"`
	Failure               Failure  `yaml:"failure"`
	Fallback              Fallback `yaml:"fallback"`
	// UpgradeProtocols are the protocols a client may switch to through this upstream
	// (Upgrade header), compared case-insensitively by name; lower-cased by Validate.
	UpgradeProtocols []string `yaml:"upgrade_protocols"`
	// LoadBalancing is how a request picks among the upstream's targets:
	// "round_robin" or "least_requests" (power of two choices).
	LoadBalancing string `yaml:"load_balancing"`
	// Outlier is per-target outlier detection: ejection of a failing target.
	Outlier Outlier `yaml:"outlier_detection"`
	// HealthCheck is the optional active health check of each target.
	HealthCheck HealthCheck `yaml:"health_check"`
	// TLS is how the proxy speaks TLS to the upstream's https targets.
	TLS UpstreamTLS `yaml:"tls"`
	// Retries is how a failed attempt is tried again, on a fleet-wide budget.
	Retries Retries `yaml:"retries"`
	// H2C speaks cleartext HTTP/2 (prior knowledge) to the upstream's http:// targets.
	H2C bool `yaml:"h2c"`
	// Keyed gives each key read from the request (a tenant) a circuit of its own
	// (keyed.go).
	Keyed Keyed `yaml:"keyed"`

	// TargetURLs are Targets parsed (not a YAML key; filled by Load).
	TargetURLs []*url.URL `yaml:"-"`
}

// Outlier is an upstream's per-target outlier detection. Each target gets a circuit of
// its own (see Settings): its trip is the target's ejection, its open period the
// ejection time, and a shared store shares it like any circuit.
type Outlier struct {
	Enabled                  bool          `yaml:"enabled"`
	ConsecutiveGatewayErrors int           `yaml:"consecutive_gateway_errors"`
	Consecutive5xx           int           `yaml:"consecutive_5xx"`
	FailurePercentage        float64       `yaml:"failure_percentage"` // percent, 0 disables
	MinimumRequests          int           `yaml:"minimum_requests"`
	SlowCallRate             float64       `yaml:"slow_call_rate"` // percent, 0 disables
	SlowCallDuration         time.Duration `yaml:"slow_call_duration"`
	Interval                 time.Duration `yaml:"interval"`
	BaseEjectionTime         time.Duration `yaml:"base_ejection_time"`
	MaxEjectionTime          time.Duration `yaml:"max_ejection_time"`
	Jitter                   float64       `yaml:"jitter"`
	MaxEjectionPercent       int           `yaml:"max_ejection_percent"`
	MinReplicasReporting     int           `yaml:"min_replicas_reporting"`
}

// Retries is an upstream's retry policy: off while Attempts is 1.
type Retries struct {
	// Attempts is how many times a request may be sent in all, the first included.
	Attempts int `yaml:"attempts"`
	// Methods are the methods retried (upper-cased by Validate); default the idempotent ones.
	Methods []string `yaml:"methods"`
	// On are the failures retried: connect_failure, reset, timeout.
	On []string `yaml:"on"`
	// Statuses are the response statuses retried.
	Statuses []int `yaml:"statuses"`
	// PerTryTimeout bounds each attempt's wait for its response headers (0: the
	// upstream's response_header_timeout).
	PerTryTimeout time.Duration `yaml:"per_try_timeout"`
	// BackoffBase and BackoffMax: attempt n waits a random time in [0, min(max, base·2ⁿ⁻¹)].
	BackoffBase time.Duration `yaml:"backoff_base"`
	BackoffMax  time.Duration `yaml:"backoff_max"`
	// BufferBody is the largest request body, in bytes, kept for a retry; a request with a
	// larger body (or any body, at 0) is sent once.
	BufferBody int `yaml:"buffer_body"`
	// Budget caps the retries of the upstream, fleet-wide with a shared store.
	Budget RetryBudget `yaml:"budget"`
}

// Enabled reports whether the upstream retries at all.
func (r *Retries) Enabled() bool { return r.Attempts > 1 }

// RetryBudget is a retry budget (Envoy's and Finagle's): retries may add at most Percent
// of the requests of the last Window, plus MinPerSecond.
type RetryBudget struct {
	Percent      float64       `yaml:"percent"`
	MinPerSecond float64       `yaml:"min_per_second"`
	Window       time.Duration `yaml:"window"`
}

// UpstreamTLS is how the proxy speaks TLS to an upstream's https targets. The files are
// read again when they change (see proxy's tlsFiles), so certificates rotate without a
// restart.
type UpstreamTLS struct {
	CAFile             string `yaml:"ca_file"`
	CertFile           string `yaml:"cert_file"`
	KeyFile            string `yaml:"key_file"`
	ServerName         string `yaml:"server_name"`
	MinVersion         string `yaml:"min_version"` // "1.2" or "1.3"
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
}

// HealthCheck is an upstream's active health check; Path "" turns it off.
type HealthCheck struct {
	Path               string        `yaml:"path"`
	Interval           time.Duration `yaml:"interval"`
	Timeout            time.Duration `yaml:"timeout"`
	HealthyThreshold   int           `yaml:"healthy_threshold"`
	UnhealthyThreshold int           `yaml:"unhealthy_threshold"`
	ExpectedStatuses   []string      `yaml:"expected_statuses"`

	// Expected is ExpectedStatuses resolved (not a YAML key; filled by Validate).
	Expected StatusSet `yaml:"-"`
}

// Breaker is an upstream's breaker settings. A zero threshold disables that trip rule.
type Breaker struct {
	Enabled              bool          `yaml:"enabled"`
	Mode                 string        `yaml:"mode"` // normal | forced_open | forced_closed | metrics_only
	ConsecutiveFailures  int           `yaml:"consecutive_failures"`
	FailureRate          float64       `yaml:"failure_rate"`   // percent, 0 disables
	SlowCallRate         float64       `yaml:"slow_call_rate"` // percent, 0 disables
	SlowCallDuration     time.Duration `yaml:"slow_call_duration"`
	MinimumRequests      int           `yaml:"minimum_requests"`
	Window               time.Duration `yaml:"window"`
	Buckets              int           `yaml:"buckets"`
	OpenDuration         time.Duration `yaml:"open_duration"`
	BackoffMultiplier    float64       `yaml:"backoff_multiplier"`
	MaxOpenDuration      time.Duration `yaml:"max_open_duration"`
	Jitter               float64       `yaml:"jitter"` // fraction 0..1 of the open duration
	HalfOpenMaxRequests  int           `yaml:"half_open_max_requests"`
	SuccessThreshold     int           `yaml:"success_threshold"`
	MinReplicasReporting int           `yaml:"min_replicas_reporting"`
	// HonorRetryAfter: a 429 or 503 carrying Retry-After opens the circuit for that long.
	HonorRetryAfter bool `yaml:"honor_retry_after"`
}

// Failure says which outcomes count against the breaker.
type Failure struct {
	// Statuses counted as failures: codes (503) or classes ("5xx"). Default: 5xx except
	// 501; writing "5xx" explicitly includes 501 (see Config.Validate).
	Statuses []string `yaml:"statuses"`
	// SuccessStatuses count as success even if Statuses lists them (e.g. 429).
	SuccessStatuses []int `yaml:"success_statuses"`
	TransportErrors bool  `yaml:"transport_errors"`
	Timeouts        bool  `yaml:"timeouts"`
	// GRPCCodes are the grpc-status codes of a gRPC response that are failures: names
	// ("UNAVAILABLE") or numbers (14).
	GRPCCodes []string `yaml:"grpc_codes"`

	// FailureStatus is the resolved table (not a YAML key; filled by Load).
	FailureStatus StatusSet `yaml:"-"`
	// GRPCFailure has bit c set when grpc-status c is a failure (not a YAML key; filled
	// by Validate from GRPCCodes).
	GRPCFailure uint32 `yaml:"-"`
}

// Fallback is the response sent when the circuit rejects a request.
type Fallback struct {
	// Upstream names an upstream that serves while this one's circuit rejects; "" for
	// none. The response below is sent when it refuses too.
	Upstream string            `yaml:"upstream"`
	Status   int               `yaml:"status"`
	Headers  map[string]string `yaml:"headers"`
	Body     string            `yaml:"body"` // empty: a small JSON body naming upstream and state
}

// Route maps requests to an upstream. Routes are tried in order; the first match wins.
type Route struct {
	Host        string   `yaml:"host"`        // exact, "*.example.com", or empty for any
	PathPrefix  string   `yaml:"path_prefix"` // default "/"
	Methods     []string `yaml:"methods"`     // empty: any
	Upstream    string   `yaml:"upstream"`
	StripPrefix bool     `yaml:"strip_prefix"`
}
