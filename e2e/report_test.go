package e2e

import (
	"encoding/json"
	"math"
	"os"
	"slices"
	"sync"
	"testing"
	"time"
)

// figure is one measured number series, logged and, with FUSE_E2E_REPORT=path, appended
// to that file as a JSON line so the figures can go into the docs.
type figure struct {
	Test   string         `json:"test"`
	Metric string         `json:"metric"`
	N      int            `json:"n"`
	P50ms  float64        `json:"p50_ms"`
	P99ms  float64        `json:"p99_ms"`
	MaxMs  float64        `json:"max_ms"`
	Extra  map[string]any `json:"extra,omitempty"`
	Race   bool           `json:"race"`
	Binary string         `json:"binary,omitempty"`
	When   time.Time      `json:"when"`
}

var reportMu sync.Mutex

// percentile is the nearest-rank percentile p (0-100] of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

func ms(d time.Duration) float64 { return math.Round(float64(d.Microseconds())/10) / 100 }

// report logs the p50/p99/max of samples and appends them to $FUSE_E2E_REPORT.
func report(t testing.TB, metric string, samples []time.Duration, extra map[string]any) figure {
	t.Helper()
	f := figure{
		Test: t.Name(), Metric: metric, N: len(samples),
		P50ms: ms(percentile(samples, 50)), P99ms: ms(percentile(samples, 99)), MaxMs: ms(percentile(samples, 100)),
		Extra: extra, Race: os.Getenv("FUSE_E2E_RACE") == "1", Binary: os.Getenv("FUSE_E2E_BINARY"),
		When: time.Now().UTC().Truncate(time.Second),
	}
	t.Logf("FIGURE %s: n=%d p50=%.2fms p99=%.2fms max=%.2fms %v", metric, f.N, f.P50ms, f.P99ms, f.MaxMs, extra)
	path := os.Getenv("FUSE_E2E_REPORT")
	if path == "" {
		return f
	}
	line, err := json.Marshal(f)
	if err != nil {
		t.Errorf("report: %v", err)
		return f
	}
	reportMu.Lock()
	defer reportMu.Unlock()
	file, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Errorf("report: %v", err)
		return f
	}
	defer file.Close()
	if _, err := file.Write(append(line, '\n')); err != nil {
		t.Errorf("report: %v", err)
	}
	return f
}
