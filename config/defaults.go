package config

import (
	"reflect"
	"time"
)

// This file holds every default. Reference (reference.go) documents them, and a test
// checks that the documented defaults match these functions.

// Default returns the configuration used for every key the file leaves out. It has
// no upstreams and no routes, so it is not valid on its own.
func Default() *Config {
	return &Config{
		Listen: ":8080",
		Server: Server{
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       0, // none: request bodies may stream
			WriteTimeout:      0, // none: response bodies may stream
			IdleTimeout:       120 * time.Second,
			MaxHeaderBytes:    1 << 20,
			ShutdownTimeout:   30 * time.Second,
			MaxConnections:    4096,
			BodyReadTimeout:   30 * time.Second,
			BodyMinRate:       500,
			TLS:               ListenerTLS{MinVersion: "1.2"},
			HTTP2:             true,
			H2C:               false,
		},
		Admin: Admin{
			Listen: "127.0.0.1:8084",
			TLS:    ListenerTLS{MinVersion: "1.2"},
		},
		Log: Log{
			Format: "json",
			Level:  "info",
		},
		Store: Store{
			Driver:        "memory",
			ReplicaID:     "", // resolved to host-pid by internal/app (ReplicaID)
			FlushInterval: 100 * time.Millisecond,
			Redis: Redis{
				Host:         "127.0.0.1",
				Port:         6379,
				Prefix:       "fuse",
				PoolSize:     16,
				DialTimeout:  250 * time.Millisecond,
				ReadTimeout:  100 * time.Millisecond,
				WriteTimeout: 100 * time.Millisecond,
				DegradeAfter: 3,
			},
			Postgres: Postgres{
				Prefix:           "fuse_",
				PoolSize:         8,
				ConnectTimeout:   250 * time.Millisecond,
				StatementTimeout: 250 * time.Millisecond,
				DegradeAfter:     3,
				Migrate:          true,
			},
			History: History{Retention: 168 * time.Hour, MaxEntries: 1000},
		},
		Events: Events{
			Enabled:   true,
			QueueSize: 1024,
		},
		AccessLog: AccessLog{
			Enabled:    false,
			Path:       "",
			SampleRate: 1,
			BufferSize: 1 << 20,
		},
		Upstreams: map[string]*Upstream{},
	}
}

// DefaultUpstream returns the settings each upstream in the file starts from.
func DefaultUpstream() *Upstream {
	return &Upstream{
		DialTimeout:           2 * time.Second,
		ResponseHeaderTimeout: 10 * time.Second,
		Timeout:               0, // none
		MaxIdleConnsPerHost:   256,
		MaxConcurrentRequests: 1024,
		Breaker: Breaker{
			Enabled:              true,
			Mode:                 "normal",
			ConsecutiveFailures:  5,
			FailureRate:          50,
			SlowCallRate:         0, // disabled
			SlowCallDuration:     time.Second,
			MinimumRequests:      20,
			Window:               10 * time.Second,
			Buckets:              10,
			OpenDuration:         30 * time.Second,
			BackoffMultiplier:    2,
			MaxOpenDuration:      5 * time.Minute,
			Jitter:               0.1,
			HalfOpenMaxRequests:  1,
			SuccessThreshold:     1,
			MinReplicasReporting: 1,
			HonorRetryAfter:      false,
		},
		Failure: Failure{
			// "5xx" left at this default excludes 501 Not Implemented (see Validate).
			Statuses:        []string{"5xx"},
			SuccessStatuses: []int{},
			TransportErrors: true,
			Timeouts:        true,
			GRPCCodes:       []string{"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INTERNAL", "UNKNOWN"},
		},
		Fallback: Fallback{
			Upstream: "", // none
			Status:   503,
			Headers:  map[string]string{},
			Body:     "",
		},
		// WebSocket only: h2c would tunnel past routing and the breaker.
		UpgradeProtocols: []string{"websocket"},
		LoadBalancing:    "round_robin",
		TLS:              UpstreamTLS{MinVersion: "1.2"},
		Retries: Retries{
			Attempts:      1, // no retries
			Methods:       []string{"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"},
			On:            []string{"connect_failure", "reset"},
			Statuses:      []int{502, 503, 504},
			PerTryTimeout: 0, // the upstream's response_header_timeout
			BackoffBase:   25 * time.Millisecond,
			BackoffMax:    250 * time.Millisecond,
			BufferBody:    0, // a request with a body is sent once
			Budget:        RetryBudget{Percent: 20, MinPerSecond: 3, Window: 10 * time.Second},
		},
		H2C: false,
		Outlier: Outlier{
			Enabled:                  false,
			ConsecutiveGatewayErrors: 3,
			Consecutive5xx:           5,
			FailurePercentage:        50,
			MinimumRequests:          10,
			SlowCallRate:             0, // disabled
			SlowCallDuration:         time.Second,
			Interval:                 10 * time.Second,
			BaseEjectionTime:         30 * time.Second,
			MaxEjectionTime:          5 * time.Minute,
			Jitter:                   0.1,
			MaxEjectionPercent:       50,
			MinReplicasReporting:     1,
		},
		Keyed: Keyed{
			From:                []string{}, // off
			DefaultKey:          "",         // the upstream-wide breaker alone
			MaxKeys:             10000,
			IdleTTL:             10 * time.Minute,
			EventsPerSecond:     10,
			ConsecutiveFailures: -1, // the upstream's
			FailureRate:         -1,
			MinimumRequests:     -1,
			OpenDuration:        0,
		},
		HealthCheck: HealthCheck{
			Path:               "", // off
			Interval:           5 * time.Second,
			Timeout:            time.Second,
			HealthyThreshold:   2,
			UnhealthyThreshold: 3,
			ExpectedStatuses:   []string{"2xx"},
		},
	}
}

// DefaultRoute returns the settings each route in the file starts from.
func DefaultRoute() Route {
	return Route{PathPrefix: "/"}
}

// DefaultWebhook returns the settings each webhook in the file starts from.
func DefaultWebhook() Webhook {
	return Webhook{Timeout: 2 * time.Second, Retries: 3}
}

// elementDefault returns a settable value of type t holding the default for one
// element of a map or list: DefaultUpstream, DefaultRoute or DefaultWebhook, or the
// zero value for other types.
func elementDefault(t reflect.Type) reflect.Value {
	v := reflect.New(t).Elem()
	switch t {
	case reflect.TypeFor[*Upstream]():
		v.Set(reflect.ValueOf(DefaultUpstream()))
	case reflect.TypeFor[Route]():
		v.Set(reflect.ValueOf(DefaultRoute()))
	case reflect.TypeFor[Webhook]():
		v.Set(reflect.ValueOf(DefaultWebhook()))
	}
	return v
}
