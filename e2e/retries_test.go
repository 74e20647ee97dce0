package e2e

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// retriesYAML is one replica in front of targets with retries on a 20 % budget (and a
// floor of floor retries a second), ejection on; the upstream's own breaker is off, so
// that the budget alone bounds the retries while every target fails.
func retriesYAML(listen, admin, id, store string, targets []string, floor float64) string {
	return fmt.Sprintf(`listen: %q
admin:
  listen: %q
log:
  format: json
  level: info
store:
%s  replica_id: %s
upstreams:
  api:
    targets: [%s]
    timeout: 2s
    breaker:
      enabled: false
    retries:
      attempts: 3
      backoff_base: 1ms
      backoff_max: 5ms
      budget:
        percent: 20
        min_per_second: %s
        window: 2s
    outlier_detection:
      enabled: true
      consecutive_gateway_errors: 3
      consecutive_5xx: 0
      failure_percentage: 0
      base_ejection_time: 30s
routes:
  - path_prefix: /
    upstream: api
`, listen, admin, store, id, strings.Join(targets, ", "), fmtFloat(floor))
}

func fmtFloat(f float64) string {
	return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.3f", f), "0"), ".")
}

// budgetView is the part of an upstream circuit's retry_budget the test reads.
type budgetView struct {
	Share float64 `json:"share"`
	Fleet *struct {
		Requests int64 `json:"requests"`
		Retries  int64 `json:"retries"`
		Replicas int   `json:"replicas"`
	} `json:"fleet"`
}

// TestRetriesFleetBudget (issue #15, acceptance 1): under load, one of three targets
// dies: idempotent requests see no error while retries absorb the failure (and ejection
// takes the dead target out). Then every target left answers 503: the retries are held
// to the budget. Over the whole run, the requests reaching the backends stay within
// (1 + 20 %) × the requests offered, plus the floor: with one replica, and with three
// replicas on one Redis, where the floor is the fleet's, split between them.
func TestRetriesFleetBudget(t *testing.T) {
	for _, tc := range []struct {
		name     string
		replicas int
		redis    bool
	}{
		{"one replica", 1, false},
		{"three replicas on one redis", 3, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const floor = 5.0 // retries a second, for the fleet
			var backends []*Backend
			var targets []string
			for range 3 {
				b := startBackend(t)
				backends = append(backends, b)
				targets = append(targets, b.URL())
			}
			storeYAML := "  driver: memory\n"
			if tc.redis {
				srv := redistest.Start(t)
				storeYAML = fmt.Sprintf("  driver: redis\n  flush_interval: 100ms\n  redis:\n    url: %q\n", srv.URL())
			}
			var replicas []*Proxy
			var admins []*adminAPI
			for i := range tc.replicas {
				admin := freeAddr(t)
				p := startProxy(t, retriesYAML(freeAddr(t), admin, fmt.Sprintf("r%d", i+1), storeYAML, targets, floor))
				p.WaitReady(t, "/warm")
				replicas, admins = append(replicas, p), append(admins, newAdminAPI(t, admin))
			}
			var warm int64
			for _, b := range backends {
				warm += b.Stats(t).Requests
			}

			// Load: GETs through every replica, paced.
			var (
				mu   sync.Mutex
				rs   []response
				stop = make(chan struct{})
				wg   sync.WaitGroup
			)
			start := time.Now()
			for w := range 4 {
				wg.Go(func() {
					for n := w; ; n++ {
						select {
						case <-stop:
							return
						default:
						}
						r := replicas[n%len(replicas)].Get("/x")
						mu.Lock()
						rs = append(rs, r)
						mu.Unlock()
						time.Sleep(3 * time.Millisecond)
					}
				})
			}
			stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait() })
			t.Cleanup(stopLoad)
			snapshot := func() []response {
				mu.Lock()
				defer mu.Unlock()
				return append([]response(nil), rs...)
			}
			time.Sleep(time.Second)

			// 1. One target dies under load: no client sees it.
			dead := backends[0].Stats(t).Requests
			killedAt := time.Now()
			backends[0].Kill()
			time.Sleep(2 * time.Second)
			phase1 := snapshot()
			failed := 0
			for _, r := range phase1 {
				if !r.OK() {
					failed++
					if failed <= 3 {
						t.Errorf("request failed while a target died: %s", r)
					}
				}
			}
			var retried float64
			for _, a := range admins {
				retried += a.Metric(t, `fuseproxy_retries_total{reason="connect_failure",upstream="api"}`) +
					a.Metric(t, `fuseproxy_retries_total{reason="reset",upstream="api"}`)
			}
			t.Logf("a target killed %v into the run: %d requests, %d failed; %v retries absorbed its failures",
				killedAt.Sub(start).Round(time.Millisecond), len(phase1), failed, retried)
			if retried == 0 {
				t.Errorf("no retry counted: the dead target's failures were not absorbed by retries")
			}

			// 2. Every target left fails: the budget holds the retries.
			backends[1].Set(t, "fail=on")
			backends[2].Set(t, "fail=on")
			time.Sleep(2 * time.Second)
			if tc.redis {
				// Each replica spends its own part; the shares of the floor add up to one.
				var share float64
				for i, a := range admins {
					r := a.Get("/circuits/api")
					var c struct {
						Budget *budgetView `json:"retry_budget"`
					}
					if r.Err != nil || json.Unmarshal([]byte(r.Body), &c) != nil || c.Budget == nil || c.Budget.Fleet == nil {
						t.Fatalf("r%d: GET /circuits/api shows no fleet budget: %v", i+1, r)
					}
					share += c.Budget.Share
					if c.Budget.Fleet.Replicas != 3 {
						t.Errorf("r%d: the budget's fleet has %d replicas, want 3", i+1, c.Budget.Fleet.Replicas)
					}
				}
				checkReadmeBudget(t, admins[0].Get("/circuits/api").Body)
				if math.Abs(share-1) > 0.25 {
					t.Errorf("the replicas' shares of the floor sum to %.2f, want about 1", share)
				}
			}
			stopLoad()
			elapsed := time.Since(start)

			offered := int64(len(snapshot()))
			reached := dead - warm
			for _, b := range backends[1:] {
				reached += b.Stats(t).Requests
			}
			var denied, attempts float64
			for _, a := range admins {
				denied += a.Metric(t, `fuseproxy_retry_budget_exhausted_total{upstream="api"}`)
				attempts += a.Metric(t, `fuseproxy_upstream_attempts_total{upstream="api"}`)
			}
			// The budget counts the warm-up's requests too (WaitReady's): so does the bound.
			bound := 1.2*float64(offered+warm) + floor*(elapsed.Seconds()+2)
			t.Logf("%d requests offered over %v; %d reached the backends (bound %.0f); %v attempts; %v retries refused by the budget",
				offered, elapsed.Round(time.Millisecond), reached, bound, attempts, denied)
			if float64(reached) > bound {
				t.Errorf("%d requests reached the backends for %d offered: over (1 + 20 %%) × offered + the floor (%.0f)", reached, offered, bound)
			}
			if float64(attempts) > bound {
				t.Errorf("%v attempts for %d requests: over the budget (%.0f)", attempts, offered, bound)
			}
			if denied == 0 {
				t.Errorf("the budget never refused a retry while every target failed")
			}
		})
	}
}

// checkReadmeBudget checks README's retry_budget sample against a real answer of GET
// /circuits/NAME: the same keys, nested alike, with values of the same types.
func checkReadmeBudget(t *testing.T, body string) {
	t.Helper()
	var real struct {
		Budget json.RawMessage `json:"retry_budget"`
	}
	if err := json.Unmarshal([]byte(body), &real); err != nil || real.Budget == nil {
		t.Fatalf("no retry_budget in %s", body)
	}
	t.Logf("retry_budget: %s", real.Budget)
	block := readmeBlock(t, "retry-budget")
	block = strings.TrimSuffix(strings.TrimPrefix(block, "```json\n"), "```\n")
	var doc map[string]any
	if err := json.Unmarshal([]byte("{"+block+"}"), &doc); err != nil {
		t.Fatalf("README's retry_budget sample is not JSON: %v", err)
	}
	var got any
	if err := json.Unmarshal(real.Budget, &got); err != nil {
		t.Fatal(err)
	}
	if want, have := shape(doc["retry_budget"]), shape(got); want != have {
		t.Errorf("README's retry_budget sample has the shape\n%s\nthe API answers\n%s", want, have)
	}
}

// shape is a JSON value's keys and value types, recursively, as a string.
func shape(v any) string {
	switch x := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		var b strings.Builder
		b.WriteString("{")
		for _, k := range keys {
			b.WriteString(k + ":" + shape(x[k]) + " ")
		}
		return b.String() + "}"
	case float64:
		return "number"
	case string:
		return "string"
	case bool:
		return "bool"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", v)
}
