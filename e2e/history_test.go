package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// historyView is GET /circuits/{name}/history as the tests read it.
type historyView struct {
	Upstream    string              `json:"upstream"`
	Transitions []historyTransition `json:"transitions"`
}

type historyTransition struct {
	Upstream    string    `json:"upstream"`
	Key         string    `json:"key"`
	From        string    `json:"from"`
	To          string    `json:"to"`
	Reason      string    `json:"reason"`
	Requests    int64     `json:"requests"`
	Failures    int64     `json:"failures"`
	Slow        int64     `json:"slow"`
	Consecutive int64     `json:"consecutive"`
	Generation  uint64    `json:"generation"`
	Replica     string    `json:"replica"`
	At          time.Time `json:"at"`
}

// History returns GET /circuits/{name}/history and its raw body.
func (a *adminAPI) History(t testing.TB, name string) (historyView, string) {
	t.Helper()
	r := a.Get("/circuits/" + name + "/history")
	if r.Err != nil || r.Status != http.StatusOK {
		t.Fatalf("GET /circuits/%s/history: %v", name, r)
	}
	var h historyView
	if err := json.Unmarshal([]byte(r.Body), &h); err != nil {
		t.Fatalf("GET /circuits/%s/history: %v in %q", name, err, r.Body)
	}
	return h, r.Body
}

// TestHistoryTripAndRecover (#18, acceptance 4): three replicas on one redis-server (and
// on one PostgreSQL); the
// failures that trip the circuit are spread over them (2 each, the threshold 6, so only
// the fleet's count trips it); the backend heals, the open period ends and a trial closes
// the circuit. Every replica's admin API then shows the same history: exactly the
// fleet's three transitions, once each, in generation order. README's sample of
// `fuseproxy circuits history` and of the API's answer are checked against this run.
func TestHistoryTripAndRecover(t *testing.T) {
	for _, d := range []string{"redis", "postgres"} {
		t.Run(d, func(t *testing.T) { testHistoryTripAndRecover(t, d) })
	}
}

func testHistoryTripAndRecover(t *testing.T, driver string) {
	const replicas, threshold = 3, 6
	f := startFleet(t, fleetOptions{Driver: driver, FlushInterval: 50 * time.Millisecond, Breaker: breakerSettings{
		ConsecutiveFailures: threshold, OpenDuration: 500 * time.Millisecond,
		HalfOpenMaxRequests: 1, SuccessThreshold: 1,
	}})
	var admins []*adminAPI
	for i := range replicas {
		c := f.base
		c.Listen, c.AdminListen, c.ReplicaID = freeAddr(t), freeAddr(t), fmt.Sprintf("r%d", i+1)
		f.Replicas = append(f.Replicas, startProxy(t, c.YAML(t)))
		admins = append(admins, newAdminAPI(t, c.AdminListen))
	}
	f.waitSubscribed(t, replicas)
	for i, a := range admins {
		if h, _ := a.History(t, upstream); len(h.Transitions) != 0 {
			t.Fatalf("%s: history before any transition: %+v", f.Replicas[i].ID, h)
		}
	}

	f.Backend.Set(t, "fail=on")
	f.sendFailures(t, threshold)
	f.waitAll(t, 5*time.Second, "open", 1)
	f.recover(t, 1)

	want := []historyTransition{
		{From: "half_open", To: "closed", Reason: "trials_succeeded", Generation: 3},
		{From: "open", To: "half_open", Reason: "open_timeout", Generation: 2},
		{From: "closed", To: "open", Reason: "consecutive_failures", Requests: threshold, Failures: threshold,
			Consecutive: threshold, Generation: 1},
	}
	var first []historyTransition
	for i, a := range admins {
		h, raw := a.History(t, upstream)
		id := f.Replicas[i].ID
		if h.Upstream != upstream || len(h.Transitions) != len(want) {
			t.Fatalf("%s: history %s, want exactly %d transitions", id, raw, len(want))
		}
		for j, got := range h.Transitions {
			w := want[j]
			w.Upstream, w.Replica, w.At = upstream, got.Replica, got.At
			if got != w {
				t.Errorf("%s: transition %d = %+v\nwant %+v", id, j, got, w)
			}
			if (got.Reason == "open_timeout") != (got.Replica == "") ||
				(got.Replica != "" && !slices.ContainsFunc(f.Replicas, func(p *Proxy) bool { return p.ID == got.Replica })) {
				t.Errorf("%s: transition %d made by replica %q", id, j, got.Replica)
			}
			if got.At.IsZero() || (j > 0 && got.At.After(h.Transitions[j-1].At)) {
				t.Errorf("%s: transition %d at %v: not newest first", id, j, got.At)
			}
		}
		if first == nil {
			first = h.Transitions
		} else if !slices.Equal(first, h.Transitions) {
			t.Errorf("%s's history differs from %s's:\n%+v\n%+v", id, f.Replicas[0].ID, h.Transitions, first)
		}
	}
	// Each replica logged the same three transitions (one it made or adopted each): the
	// history holds the fleet's, not one per replica.
	// A replica that did not run the trial may read the closed state from a flush's reply
	// before the half-open period's message arrives on its subscription (Redis pub/sub,
	// PostgreSQL LISTEN: two connections, no order between them); it then adopts the
	// newest state and logs open→closed, never a transition twice (1 run in 6 on a busy
	// machine, with either store).
	for _, p := range f.Replicas {
		n := len(p.Transitions(upstream))
		if n != len(want) && !(n == len(want)-1 && p.CountTransitionsTo(upstream, "closed") == 1) {
			t.Errorf("%s logged %d transitions, want %d", p.ID, n, len(want))
		}
	}

	if driver == "redis" { // README's samples come from the redis run
		checkReadmeHistory(t, admins[1])
	}
}

// checkReadmeHistory checks README's samples (between <!-- history-cli:start/end --> and
// <!-- history-api:start/end -->) against this run: the CLI's table row by row (all but
// the time and the replica, which vary), and the API answer's field names.
func checkReadmeHistory(t *testing.T, admin *adminAPI) {
	t.Helper()
	code, out, errOut := runProcess(t, "", 30*time.Second, "circuits", "history", upstream, "--admin", strings.TrimPrefix(admin.base, "http://"))
	if code != 0 {
		t.Fatalf("fuseproxy circuits history: exit %d: %s", code, errOut)
	}
	t.Logf("fuseproxy circuits history %s:\n%s", upstream, out)
	r := admin.Get("/circuits/" + upstream + "/history?limit=1")
	if r.Err != nil || r.Status != http.StatusOK {
		t.Fatalf("GET /circuits/%s/history?limit=1: %v", upstream, r)
	}
	apiBody := r.Body
	t.Logf("GET /circuits/%s/history?limit=1:\n%s", upstream, apiBody)
	sample := readmeBlock(t, "history-cli")
	_, sample, _ = strings.Cut(sample, "$ fuseproxy circuits history "+upstream+"\n")
	sample, _, _ = strings.Cut(sample, "```")
	stamp := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`)
	norm := func(s string) []string {
		var rows []string
		for l := range strings.Lines(s) {
			f := strings.Fields(l)
			if len(f) == 0 {
				continue
			}
			if stamp.MatchString(f[0]) && len(f) == 10 {
				f[0], f[9] = "<at>", "<replica>"
			}
			rows = append(rows, strings.Join(f, " "))
		}
		return rows
	}
	if got, want := norm(out), norm(sample); !slices.Equal(got, want) {
		t.Errorf("README's `fuseproxy circuits history` sample is not what a real run prints (times and replicas aside):\nREADME:\n%s\nreal:\n%s",
			strings.Join(want, "\n"), strings.Join(got, "\n"))
	}

	var sampleAPI, realAPI map[string]any
	api := readmeBlock(t, "history-api")
	if i := strings.Index(api, "{"); i >= 0 {
		api = api[i:]
	}
	api, _, _ = strings.Cut(api, "```")
	if err := json.Unmarshal([]byte(api), &sampleAPI); err != nil {
		t.Fatalf("README's history API sample is not JSON: %v\n%s", err, api)
	}
	if err := json.Unmarshal([]byte(apiBody), &realAPI); err != nil {
		t.Fatal(err)
	}
	shape := func(m map[string]any) string {
		ts, _ := m["transitions"].([]any)
		if len(ts) == 0 {
			return "no transitions"
		}
		t0, _ := ts[0].(map[string]any)
		return fmt.Sprint(slices.Sorted(mapKeys(m)), slices.Sorted(mapKeys(t0)))
	}
	if a, b := shape(sampleAPI), shape(realAPI); a != b || len(sampleAPI["transitions"].([]any)) != 1 {
		t.Errorf("README's history API sample has fields %s, the real answer %s", a, b)
	}
}

func mapKeys(m map[string]any) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}
