package config

import (
	"strings"
	"testing"
)

// Every outlier_detection, health_check and load_balancing error names its file:line and
// key.
func TestOutlierErrors(t *testing.T) {
	head := "upstreams:\n  api:\n    targets: [http://10.0.0.5:8080, http://10.0.0.6:8080]\n"
	tail := "routes:\n  - upstream: api\n"
	for _, tt := range []struct{ src, want string }{
		{"    load_balancing: random\n",
			`config.yaml:4: upstreams.api.load_balancing: must be round_robin or least_requests, got "random"`},
		{"    outlier_detection:\n      max_ejection_percent: 120\n",
			`config.yaml:5: upstreams.api.outlier_detection.max_ejection_percent: must be between 0 and 100, got 120`},
		{"    outlier_detection:\n      base_ejection_time: 0s\n",
			`config.yaml:5: upstreams.api.outlier_detection.base_ejection_time: must be > 0, got 0s`},
		{"    outlier_detection:\n      base_ejection_time: 1m\n      max_ejection_time: 30s\n",
			`config.yaml:6: upstreams.api.outlier_detection.max_ejection_time: must be >= base_ejection_time (1m), got 30s`},
		{"    outlier_detection:\n      consecutive_gateway_errors: -1\n",
			`config.yaml:5: upstreams.api.outlier_detection.consecutive_gateway_errors: must be >= 0, got -1`},
		{"    outlier_detection:\n      failure_percentage: 101\n",
			`config.yaml:5: upstreams.api.outlier_detection.failure_percentage: must be between 0 and 100, got 101`},
		{"    outlier_detection:\n      interval: 1ms\n",
			`config.yaml:5: upstreams.api.outlier_detection.interval: must be at least 10ms, got 1ms`},
		{"    health_check:\n      path: /healthz\n",
			`config.yaml:5: upstreams.api.health_check.path: health checks eject and restore targets: set upstreams.api.outlier_detection.enabled: true`},
		{"    outlier_detection: {enabled: true}\n    health_check:\n      path: healthz\n",
			`config.yaml:6: upstreams.api.health_check.path: must be a path starting with "/" (a query may follow), got "healthz"`},
		{"    outlier_detection: {enabled: true}\n    health_check:\n      path: /h\n      timeout: 5s\n",
			`config.yaml:7: upstreams.api.health_check.timeout: must be > 0 and less than interval (5s), got 5s`},
		{"    outlier_detection: {enabled: true}\n    health_check:\n      path: /h\n      expected_statuses: [\"2xx\", \"700\"]\n",
			`config.yaml:7: upstreams.api.health_check.expected_statuses[1]: must be a status code (100-599) or a class ("1xx" to "5xx"), got "700"`},
	} {
		_, err := parse(t, head+tt.src+tail, nil)
		if err == nil || err.Error() != tt.want {
			t.Errorf("%s\n got: %v\nwant: %s", strings.TrimSpace(tt.src), err, tt.want)
		}
	}
}

func TestOutlierDuplicateTargets(t *testing.T) {
	src := "upstreams:\n  api:\n    targets: [http://h:80, http://h, https://h:443, https://h]\n    outlier_detection: {enabled: true}\nroutes:\n  - upstream: api\n"
	_, err := parse(t, src, nil)
	if err == nil || !strings.Contains(err.Error(), "upstreams.api.targets[1]: same host:port as targets[0] (h:80)") ||
		!strings.Contains(err.Error(), "targets[3]: same host:port as targets[2] (h:443)") {
		t.Errorf("got %v, want both duplicates named", err)
	}
}

func TestOutlierSettings(t *testing.T) {
	o := DefaultUpstream().Outlier
	s := o.Settings()
	if s.ConsecutiveFailures != 5 || s.ConsecutiveGatewayFailures != 3 || !s.LinearBackoff ||
		s.OpenDuration != o.BaseEjectionTime || s.MaxOpenDuration != o.MaxEjectionTime || s.TripDecay != o.Interval ||
		s.Window != o.Interval || s.FailureRate != 50 || s.MinimumRequests != 10 || s.HalfOpenMaxRequests != 1 {
		t.Errorf("Settings() = %+v", s)
	}
}

func TestFallbackUpstreamErrors(t *testing.T) {
	for _, tt := range []struct{ src, want string }{
		{"upstreams:\n  a:\n    targets: [http://h:1]\n    fallback:\n      upstream: a\nroutes:\n  - upstream: a\n",
			`config.yaml:5: upstreams.a.fallback.upstream: an upstream cannot be its own fallback`},
		{"upstreams:\n  a:\n    targets: [http://h:1]\n    fallback:\n      upstream: nope\nroutes:\n  - upstream: a\n",
			`config.yaml:5: upstreams.a.fallback.upstream: unknown upstream "nope"`},
		{"upstreams:\n  a:\n    targets: [http://h:1]\n    fallback: {upstream: b}\n  b:\n    targets: [http://h:2]\n    fallback: {upstream: c}\n  c:\n    targets: [http://h:3]\nroutes:\n  - upstream: a\n",
			`config.yaml:4: upstreams.a.fallback.upstream: "b" falls back to "c" already: a fallback upstream may not have one of its own (no chains or cycles)`},
		{"upstreams:\n  a:\n    targets: [http://h:1]\n    fallback: {upstream: b}\n  b:\n    targets: [http://h:2]\n    fallback: {upstream: a}\nroutes:\n  - upstream: a\n",
			"config.yaml:4: upstreams.a.fallback.upstream: \"b\" falls back to \"a\" already: a fallback upstream may not have one of its own (no chains or cycles)\n" +
				`config.yaml:7: upstreams.b.fallback.upstream: "a" falls back to "b" already: a fallback upstream may not have one of its own (no chains or cycles)`},
	} {
		_, err := parse(t, tt.src, nil)
		if err == nil || err.Error() != tt.want {
			t.Errorf("%s\n got: %v\nwant: %s", tt.src, err, tt.want)
		}
	}
	if _, err := parse(t, "upstreams:\n  a:\n    targets: [http://h:1]\n    fallback: {upstream: b}\n  b:\n    targets: [http://h:2]\nroutes:\n  - upstream: a\n", nil); err != nil {
		t.Errorf("a fallback upstream of depth one: %v", err)
	}
}
