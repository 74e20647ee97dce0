package config

import (
	"reflect"
	"testing"
	"time"
)

// TestDefaults pins every default to the documented product behaviour.
func TestDefaults(t *testing.T) {
	want := &Config{
		Listen: ":8080",
		Server: Server{
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       120 * time.Second,
			MaxHeaderBytes:    1 << 20,
			ShutdownTimeout:   30 * time.Second,
			// Safe on the internet: a connection cap and a progress deadline for bodies.
			MaxConnections:  4096,
			BodyReadTimeout: 30 * time.Second,
			BodyMinRate:     500,
			TLS:             ListenerTLS{MinVersion: "1.2"},
			HTTP2:           true, // HTTP/2 over TLS by ALPN; h2c off (issue #20)
		},
		Admin: Admin{Listen: "127.0.0.1:8084", TLS: ListenerTLS{MinVersion: "1.2"}},
		Log:   Log{Format: "json", Level: "info"},
		Store: Store{
			Driver:        "memory",
			FlushInterval: 100 * time.Millisecond,
			Redis: Redis{
				Host: "127.0.0.1", Port: 6379, Prefix: "fuse", PoolSize: 16,
				DialTimeout: 250 * time.Millisecond, ReadTimeout: 100 * time.Millisecond,
				WriteTimeout: 100 * time.Millisecond, DegradeAfter: 3,
			},
			// empty connection keys: libpq's PG* variables, then its defaults
			Postgres: Postgres{Prefix: "fuse_", PoolSize: 8, ConnectTimeout: 250 * time.Millisecond,
				StatementTimeout: 250 * time.Millisecond, DegradeAfter: 3, Migrate: true},
			History: History{Retention: 168 * time.Hour, MaxEntries: 1000},
		},
		Events: Events{Enabled: true, QueueSize: 1024},
		// Off; when on, every request, and a queue that never makes a request wait.
		AccessLog: AccessLog{SampleRate: 1, BufferSize: 1 << 20},
		Upstreams: map[string]*Upstream{},
	}
	if got := Default(); !reflect.DeepEqual(got, want) {
		t.Errorf("Default() =\n%+v\nwant\n%+v", got, want)
	}

	wantUp := &Upstream{
		DialTimeout:           2 * time.Second,
		ResponseHeaderTimeout: 10 * time.Second,
		MaxIdleConnsPerHost:   256,
		MaxConcurrentRequests: 1024, // a bulkhead by default
		Breaker: Breaker{
			Enabled: true, Mode: "normal", ConsecutiveFailures: 5, FailureRate: 50,
			SlowCallDuration: time.Second, MinimumRequests: 20, Window: 10 * time.Second,
			Buckets: 10, OpenDuration: 30 * time.Second, BackoffMultiplier: 2,
			MaxOpenDuration: 5 * time.Minute, Jitter: 0.1, HalfOpenMaxRequests: 1,
			SuccessThreshold: 1, MinReplicasReporting: 1,
		},
		Failure: Failure{Statuses: []string{"5xx"}, SuccessStatuses: []int{}, TransportErrors: true, Timeouts: true,
			GRPCCodes: []string{"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INTERNAL", "UNKNOWN"}},
		Fallback: Fallback{Status: 503, Headers: map[string]string{}},
	}
	wantUp.UpgradeProtocols = []string{"websocket"} // never h2c by default (issue #12)
	wantUp.LoadBalancing = "round_robin"
	wantUp.TLS = UpstreamTLS{MinVersion: "1.2"}
	wantUp.Retries = Retries{ // off (1 attempt); Envoy-like policy and budget once on (issue #15)
		Attempts: 1, Methods: []string{"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"},
		On: []string{"connect_failure", "reset"}, Statuses: []int{502, 503, 504},
		BackoffBase: 25 * time.Millisecond, BackoffMax: 250 * time.Millisecond,
		Budget: RetryBudget{Percent: 20, MinPerSecond: 3, Window: 10 * time.Second},
	}
	wantUp.Outlier = Outlier{ // off by default; Envoy-like detectors once enabled (issue #14)
		ConsecutiveGatewayErrors: 3, Consecutive5xx: 5, FailurePercentage: 50, MinimumRequests: 10,
		SlowCallDuration: time.Second, Interval: 10 * time.Second, BaseEjectionTime: 30 * time.Second,
		MaxEjectionTime: 5 * time.Minute, Jitter: 0.1, MaxEjectionPercent: 50, MinReplicasReporting: 1,
	}
	wantUp.HealthCheck = HealthCheck{Interval: 5 * time.Second, Timeout: time.Second,
		HealthyThreshold: 2, UnhealthyThreshold: 3, ExpectedStatuses: []string{"2xx"}}
	wantUp.Keyed = Keyed{From: []string{}, MaxKeys: 10000, IdleTTL: 10 * time.Minute, EventsPerSecond: 10, // off (issue #16)
		ConsecutiveFailures: -1, FailureRate: -1, MinimumRequests: -1}
	if got := DefaultUpstream(); !reflect.DeepEqual(got, wantUp) {
		t.Errorf("DefaultUpstream() =\n%+v\nwant\n%+v", got, wantUp)
	}
	if got := DefaultRoute(); got.PathPrefix != "/" {
		t.Errorf("DefaultRoute() = %+v", got)
	}
	if got := DefaultWebhook(); got.Timeout != 2*time.Second || got.Retries != 3 {
		t.Errorf("DefaultWebhook() = %+v", got)
	}
}

func TestDefaultsAreFresh(t *testing.T) {
	a, b := DefaultUpstream(), DefaultUpstream()
	a.Failure.Statuses[0] = "4xx"
	a.Fallback.Headers["X"] = "y"
	if b.Failure.Statuses[0] != "5xx" || len(b.Fallback.Headers) != 0 {
		t.Error("DefaultUpstream shares state between calls")
	}
}

func TestFailureStatusResolution(t *testing.T) {
	failing := func(src string) func(int) bool {
		t.Helper()
		full := "upstreams:\n  p:\n    targets: [http://a]\n" + src + "routes: [{upstream: p}]\n"
		f := mustParse(t, full, nil).Upstreams["p"].Failure
		return func(code int) bool { return f.FailureStatus.Has(code) }
	}

	def := failing("")
	for code, want := range map[int]bool{200: false, 404: false, 499: false, 500: true, 501: false, 502: true, 503: true, 599: true} {
		if def(code) != want {
			t.Errorf("default: %d failing = %v, want %v", code, !want, want)
		}
	}

	explicit := failing("    failure: {statuses: [\"5xx\"]}\n")
	if !explicit(501) || !explicit(500) || !explicit(599) {
		t.Error(`explicit "5xx" must include 501`)
	}

	mixed := failing("    failure: {statuses: [\"5XX\", 429], success_statuses: [503]}\n")
	for code, want := range map[int]bool{429: true, 428: false, 500: true, 501: true, 503: false} {
		if mixed(code) != want {
			t.Errorf("mixed: %d failing = %v, want %v", code, !want, want)
		}
	}

	none := failing("    failure: {statuses: []}\n")
	for code := range 600 {
		if none(code) {
			t.Fatalf("statuses: [] must make no status a failure, %d is", code)
		}
	}
}

func TestValidateConfigBuiltInCode(t *testing.T) {
	cfg := Default()
	up := DefaultUpstream()
	up.Targets = []string{"http://10.0.0.1:80", "https://b.internal/base"}
	cfg.Upstreams["api"] = up
	r := DefaultRoute()
	r.Upstream, r.Host, r.Methods = "api", "API.Example.COM", []string{"get", "Post"}
	cfg.Routes = []Route{r}

	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(up.TargetURLs) != 2 || up.TargetURLs[1].Path != "/base" {
		t.Errorf("TargetURLs = %v", up.TargetURLs)
	}
	if !up.Failure.FailureStatus.Has(500) || up.Failure.FailureStatus.Has(501) {
		t.Error("default statuses in code must resolve like the file default (501 excluded)")
	}
	if got := cfg.Routes[0]; got.Host != "api.example.com" || got.Methods[0] != "GET" || got.Methods[1] != "POST" {
		t.Errorf("route not normalized: %+v", got)
	}
	// Validate is idempotent.
	if err := cfg.Validate(); err != nil || len(up.TargetURLs) != 2 {
		t.Errorf("second Validate: %v, %v", err, up.TargetURLs)
	}

	// Errors from code have no file or line.
	up.Breaker.Jitter = 2
	want := "upstreams.api.breaker.jitter: must be between 0 and 1, got 2"
	if err := cfg.Validate(); err == nil || err.Error() != want {
		t.Errorf("err = %v, want %s", err, want)
	}
}
