package config

import (
	"slices"
	"strings"
	"testing"
)

// Outlier detection that can never act is warned about: on an upstream with a single
// target (never ejected, so its health_check never probes), and with every passive rule
// at 0 and no health_check.
func TestWarningsOutlier(t *testing.T) {
	src := `upstreams:
  one:
    targets: [http://10.0.0.5:8080]
    outlier_detection:
      enabled: true
    health_check:
      path: /healthz
  norule:
    targets: [http://10.0.0.5:8080, http://10.0.0.6:8080]
    outlier_detection:
      enabled: true
      consecutive_gateway_errors: 0
      consecutive_5xx: 0
      failure_percentage: 0
routes:
  - {upstream: one, path_prefix: /one/}
  - {upstream: norule, path_prefix: /norule/}
`
	got := mustParse(t, src, nil).Warnings()
	want := []string{
		`config.yaml:4: upstreams.one.outlier_detection: a single target is never ejected: outlier_detection and health_check do nothing (the breaker guards the upstream)`,
		`config.yaml:10: upstreams.norule.outlier_detection: no ejection rule is set (consecutive_gateway_errors, consecutive_5xx, failure_percentage and slow_call_rate are all 0, and no health_check), so no target is ever ejected but by hand`,
	}
	var outlier []string
	for _, w := range got {
		if strings.Contains(w, "outlier_detection") {
			outlier = append(outlier, w)
		}
	}
	if !slices.Equal(outlier, want) {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(outlier, "\n"), strings.Join(want, "\n"))
	}
	if w := mustParse(t, `upstreams:
  api:
    targets: [http://10.0.0.5:8080, http://10.0.0.6:8080]
    outlier_detection: {enabled: true}
routes:
  - upstream: api
`, nil).Warnings(); len(w) != 0 {
		t.Errorf("warnings with the default outlier_detection: %q", w)
	}
}
