package main

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/internal/admin"
)

func TestCircuitsHistory(t *testing.T) {
	srv, f := adminServer(t, "")
	if code, out, errs := runCLI("circuits", "history", "api", "--admin", srv.URL); code != 0 || out != "no transitions recorded for api\n" {
		t.Fatalf("before any transition: exit %d, %q %s", code, out, errs)
	}
	b := f.breakers["api"]
	for range 2 {
		tk, _ := b.Allow()
		b.Done(tk, breaker.Failure, time.Millisecond)
	}
	b.Close()

	code, out, errs := runCLI("circuits", "history", "api", "--admin", srv.URL)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("output:\n%s", out)
	}
	if h := strings.Join(strings.Fields(lines[0]), " "); h != "AT FROM TO REASON REQUESTS FAILURES SLOW CONSEC GEN REPLICA" {
		t.Errorf("header %q", lines[0])
	}
	stamp := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`)
	for i, want := range []string{"open closed mode 0 0 0 0 2 replica-1", "closed open consecutive_failures 2 2 0 2 1 replica-1"} {
		row := strings.Fields(lines[i+1])
		if !stamp.MatchString(row[0]) || strings.Join(row[1:], " ") != want {
			t.Errorf("row %d %q, want <time> %s", i+1, lines[i+1], want)
		}
	}
	if i := strings.Index(lines[0], "REASON"); lines[2][i:i+len("consecutive_failures")] != "consecutive_failures" {
		t.Errorf("columns not aligned:\n%s", out)
	}

	code, out, _ = runCLI("circuits", "history", "--limit", "1", "api", "--json", "--admin", srv.URL)
	var h admin.History
	if err := json.Unmarshal([]byte(out), &h); code != 0 || err != nil || len(h.Transitions) != 1 || h.Transitions[0].To != "closed" {
		t.Errorf("--json --limit 1: exit %d, %v, %s", code, err, out)
	}

	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"circuits", "history", "api", "--limit", "0"}, 1, "limit must be a whole number from 1 to 10000"},
		{[]string{"circuits", "history", "nope"}, 1, `unknown upstream "nope"`},
		{[]string{"circuits", "history"}, 2, "want 1 argument(s), got 0"},
		{[]string{"circuits", "list", "--limit", "5"}, 2, "--limit is for history only"},
	} {
		code, _, errs := runCLI(append(tc.args, "--admin", srv.URL)...)
		if code != tc.code || !strings.Contains(errs, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", tc.args, code, errs, tc.code, tc.want)
		}
	}
}
