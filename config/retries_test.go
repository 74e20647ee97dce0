package config

import (
	"strings"
	"testing"
)

// Every retries error names its file:line and key.
func TestRetriesErrors(t *testing.T) {
	head := "upstreams:\n  api:\n    targets: [http://10.0.0.5:8080, http://10.0.0.6:8080]\n    retries:\n"
	tail := "routes:\n  - upstream: api\n"
	for _, tt := range []struct{ src, want string }{
		{"      attempts: 0\n", `config.yaml:5: upstreams.api.retries.attempts: must be between 1 and 10, got 0`},
		{"      attempts: 11\n", `config.yaml:5: upstreams.api.retries.attempts: must be between 1 and 10, got 11`},
		{"      methods: [GET, CONNECT]\n", `config.yaml:5: upstreams.api.retries.methods[1]: CONNECT is never proxied, so never retried`},
		{"      methods: [\"GE T\"]\n", `config.yaml:5: upstreams.api.retries.methods[0]: invalid method "GE T"`},
		{"      on: [reset, refused]\n", `config.yaml:5: upstreams.api.retries.on[1]: unknown failure "refused": want connect_failure, reset or timeout`},
		{"      statuses: [503, 200]\n", `config.yaml:5: upstreams.api.retries.statuses[1]: must be between 400 and 599, got 200`},
		{"      per_try_timeout: -1s\n", `config.yaml:5: upstreams.api.retries.per_try_timeout: must be >= 0, got -1s`},
		{"      backoff_base: 1s\n", `config.yaml:4: upstreams.api.retries.backoff_max: must be >= backoff_base (1s), got 250ms`},
		{"      buffer_body: 20000000\n", `config.yaml:5: upstreams.api.retries.buffer_body: must be between 0 and 16777216, got 20000000`},
		{"      budget: {percent: 120}\n", `config.yaml:5: upstreams.api.retries.budget.percent: must be between 0 and 100, got 120`},
		{"      budget: {min_per_second: -1}\n", `config.yaml:5: upstreams.api.retries.budget.min_per_second: must be between 0 and 1000000, got -1`},
		{"      budget: {window: 100ms}\n", `config.yaml:5: upstreams.api.retries.budget.window: must be between 1s and 1h, got 100ms`},
	} {
		_, err := parse(t, head+tt.src+tail, nil)
		if err == nil || err.Error() != tt.want {
			t.Errorf("%s\n got: %v\nwant: %s", strings.TrimSpace(tt.src), err, tt.want)
		}
	}
}

func TestRetriesParsed(t *testing.T) {
	src := "upstreams:\n  api:\n    targets: [http://10.0.0.5:8080]\n    retries:\n      attempts: 3\n      methods: [get, post]\n      on: [connect_failure, timeout]\n      statuses: [429, 503]\n      buffer_body: 65536\nroutes:\n  - upstream: api\n"
	cfg, err := parse(t, src, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Upstreams["api"].Retries
	if !r.Enabled() || r.Attempts != 3 || strings.Join(r.Methods, ",") != "GET,POST" || r.BufferBody != 65536 ||
		len(r.Statuses) != 2 || r.Budget.Percent != 20 || r.BackoffMax != DefaultUpstream().Retries.BackoffMax {
		t.Errorf("retries = %+v", r)
	}
}
