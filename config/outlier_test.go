package config

import (
	"net/url"
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

// A target's circuit is named after its host as DNS and IP addresses read it: case does
// not matter, nor leading zeros in the port, so two spellings of one host:port are one
// target (and the duplicate is refused) and the name is the same whichever is written.
func TestTargetNameIsCanonical(t *testing.T) {
	for _, c := range []struct{ url, want string }{
		{"http://Backend.Example:8080", "api@backend.example:8080"},
		{"http://backend.example:08080", "api@backend.example:8080"},
		{"https://[2001:DB8::1]", "api@[2001:db8::1]:443"},
		{"http://[fe80::A%25Eth0]:81", "api@[fe80::a%Eth0]:81"}, // the zone is an interface name, kept
		{"http://user:pw@10.0.0.5:8080/base", "api@10.0.0.5:8080"},
	} {
		u, err := url.Parse(c.url)
		if err != nil {
			t.Fatal(err)
		}
		if got := TargetName("api", u); got != c.want {
			t.Errorf("TargetName(%s) = %s, want %s", c.url, got, c.want)
		}
	}
	src := "upstreams:\n  api:\n    targets: [http://backend:8080, http://BACKEND:8080]\n    outlier_detection: {enabled: true}\nroutes:\n  - upstream: api\n"
	if _, err := parse(t, src, nil); err == nil || !strings.Contains(err.Error(), "upstreams.api.targets[1]: same host:port as targets[0] (backend:8080)") {
		t.Errorf("got %v, want the duplicate in capitals refused", err)
	}
}

// Operators' ejections come first and are never capped but by "not the last target";
// the detectors' take what is left of the cap, in config order.
func TestHonoured(t *testing.T) {
	type st struct{ out, forced bool }
	for _, c := range []struct {
		name   string
		limit  int
		states []st
		want   []bool // for each target that is out
	}{
		{"detectors in config order", 1, []st{{true, false}, {true, false}, {false, false}}, []bool{true, false, false}},
		{"an operator's ejection takes the cap", 1, []st{{true, false}, {false, false}, {true, true}}, []bool{false, false, true}},
		{"operators beyond the cap", 1, []st{{true, true}, {true, true}, {false, false}}, []bool{true, true, false}},
		{"never the last target", 1, []st{{true, true}, {true, true}, {true, true}}, []bool{true, true, false}},
		{"dry run: operators only", 0, []st{{true, false}, {true, true}, {false, false}}, []bool{false, true, false}},
		{"room for both", 2, []st{{true, true}, {false, false}, {true, false}, {true, false}}, []bool{true, false, true, false}},
	} {
		out := func(j int) (bool, bool) { return c.states[j].out, c.states[j].forced }
		for i, s := range c.states {
			if !s.out {
				continue
			}
			if got := Honoured(i, len(c.states), c.limit, out); got != c.want[i] {
				t.Errorf("%s: target %d honoured = %v, want %v", c.name, i, got, c.want[i])
			}
		}
	}
}
