package main

import (
	"cmp"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/fuseproxy/fuseproxy/internal/admin"
	"github.com/fuseproxy/fuseproxy/store"
)

const circuitsUsage = `Usage:
  fuseproxy circuits list              every upstream's circuit
  fuseproxy circuits show NAME         one circuit: state, settings, the shared store's view
  fuseproxy circuits open NAME         open the circuit now (fleet-wide with Redis)
  fuseproxy circuits close NAME        close the circuit now
  fuseproxy circuits reset NAME        closed, mode normal, counts and backoff cleared
  fuseproxy circuits mode NAME MODE    MODE: normal | forced_open | forced_closed | metrics_only
  fuseproxy circuits history NAME      the circuit's fleet transitions, newest first (--limit N)

Flags (anywhere on the line):
  --admin URL      admin API (default $FUSE_ADMIN_URL, else http://127.0.0.1:8084)
  --token TOKEN    bearer token (default $FUSE_ADMIN_TOKEN)
  --ca FILE        PEM CA bundle for an https admin API (default $FUSE_ADMIN_CA)
  --json           print the API's JSON
  --timeout D      request timeout (default 5s)
  --limit N        history: at most N transitions, 1-10000 (default 100)
`

// circuits runs `fuseproxy circuits SUBCOMMAND ...` against the admin API.
func circuits(args []string, stdout, stderr io.Writer) error {
	fs, f := newAdminFlagSet("circuits", stderr, 5*time.Second)
	fs.Usage = func() { fmt.Fprint(stderr, circuitsUsage) }
	limit := fs.Int("limit", 0, "history: at most this many transitions")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		fmt.Fprint(stderr, circuitsUsage)
		return errUsage
	}
	sub, pos := pos[0], pos[1:]
	want := map[string]int{"list": 0, "show": 1, "open": 1, "close": 1, "reset": 1, "mode": 2, "history": 1}
	n, ok := want[sub]
	if !ok {
		fmt.Fprintf(stderr, "fuseproxy circuits: unknown subcommand %q\n\n%s", sub, circuitsUsage)
		return errUsage
	}
	if len(pos) != n {
		fmt.Fprintf(stderr, "fuseproxy circuits %s: want %d argument(s), got %d\n\n%s", sub, n, len(pos), circuitsUsage)
		return errUsage
	}
	limitSet := false
	fs.Visit(func(fl *flag.Flag) { limitSet = limitSet || fl.Name == "limit" })
	if limitSet && sub != "history" {
		fmt.Fprintf(stderr, "fuseproxy circuits %s: --limit is for history only\n\n%s", sub, circuitsUsage)
		return errUsage
	}
	c, err := f.client()
	if err != nil {
		return err
	}
	switch sub {
	case "history":
		return circuitsHistory(c, pos[0], *limit, limitSet, f.json, stdout)
	case "list":
		return circuitsList(c, f.json, stdout)
	case "show":
		return circuitsShow(c, pos[0], f.json, stdout)
	case "mode":
		return circuitsControl(c, pos[0], sub, map[string]string{"mode": pos[1]}, f.json, stdout, stderr)
	default:
		return circuitsControl(c, pos[0], sub, nil, f.json, stdout, stderr)
	}
}

// answer prints a failed call's JSON body with --json, and returns the error.
func answer(jsonOut bool, stdout io.Writer, data []byte, err error) error {
	if err != nil && jsonOut && data != nil {
		printJSON(stdout, data)
	}
	return err
}

// fetch GETs path from the admin API and decodes the answer into v. With jsonOut it
// prints the answer as it came instead, and reports false: nothing is left to print.
func fetch(c *admin.Client, path string, jsonOut bool, stdout io.Writer, v any) (bool, error) {
	_, data, err := c.Call(http.MethodGet, path, nil)
	if err != nil {
		return false, answer(jsonOut, stdout, data, err)
	}
	if jsonOut {
		printJSON(stdout, data)
		return false, nil
	}
	if err := json.Unmarshal(data, v); err != nil {
		return false, fmt.Errorf("admin API: unexpected answer to GET %s: %w", path, err)
	}
	return true, nil
}

// printStoreView prints what the shared store holds for a circuit (the detail's
// shared_store, sorted by field) under heading, if anything.
func printStoreView(stdout io.Writer, heading string, view map[string]string, viewErr string) error {
	if len(view) == 0 && viewErr == "" {
		return nil
	}
	var rows [][2]string
	for _, k := range slices.Sorted(maps.Keys(view)) {
		rows = append(rows, [2]string{k, view[k]})
	}
	if viewErr != "" {
		rows = append(rows, [2]string{"error", viewErr})
	}
	return printRows(stdout, heading, rows)
}

func circuitsList(c *admin.Client, jsonOut bool, stdout io.Writer) error {
	var l admin.CircuitList
	if ok, err := fetch(c, "/circuits", jsonOut, stdout, &l); !ok {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "UPSTREAM\tSTATE\tMODE\tSOURCE\tREQUESTS\tFAILURES\tSLOW\tFAIL%\tSLOW%\tCONSEC\tTRIPS\tGEN\tOPEN LEFT")
	for _, ci := range l.Circuits {
		if ci.State == admin.StateDisabled {
			fmt.Fprintf(tw, "%s\t%s\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\n", ci.Name, ci.State)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\t%d\t%d\t%d\t%s\n", ci.Name, ci.State, ci.Mode, ci.Source,
			ci.Counts.Requests, ci.Counts.Failures, ci.Counts.Slow, pct(ci.Rates.FailureRate), pct(ci.Rates.SlowRate),
			ci.Consecutive, ci.Trips, ci.Generation, openLeft(ci))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nreplica %s, store %s\n", l.Replica, storeSummary(l.Store.Driver, l.Store.Degraded, l.Store.LastError))
	return nil
}

func pct(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

func openLeft(c admin.Circuit) string {
	if c.Mode == "forced_open" {
		return "forced" // open until an operator closes or resets it
	}
	if c.State != "open" {
		return "-"
	}
	return (time.Duration(c.OpenRemainingSeconds * float64(time.Second))).Round(100 * time.Millisecond).String()
}

func storeSummary(driver string, degraded bool, lastErr string) string {
	switch {
	case degraded && lastErr != "":
		return driver + " (degraded: " + lastErr + ")"
	case degraded:
		return driver + " (degraded)"
	}
	return driver
}

func circuitsShow(c *admin.Client, name string, jsonOut bool, stdout io.Writer) error {
	var d admin.CircuitDetail
	if ok, err := fetch(c, "/circuits/"+url.PathEscape(name), jsonOut, stdout, &d); !ok {
		return err
	}
	var rows [][2]string
	row := func(k string, v any) { rows = append(rows, [2]string{k, fmt.Sprint(v)}) }
	row("upstream", d.Name)
	row("state", d.State)
	if d.State != admin.StateDisabled {
		row("mode", d.Mode)
		row("source", d.Source)
		row("generation", d.Generation)
		row("window", fmt.Sprintf("%d requests, %d failures (%s%%), %d slow (%s%%)", d.Counts.Requests,
			d.Counts.Failures, pct(d.Rates.FailureRate), d.Counts.Slow, pct(d.Rates.SlowRate)))
		row("consecutive", d.Consecutive)
		row("trips", d.Trips)
		if d.OpenedAt != "" {
			row("opened at", d.OpenedAt)
		}
		if d.State == "open" {
			row("open left", openLeft(d.Circuit)+" of "+(time.Duration(d.OpenForSeconds*float64(time.Second))).Round(100*time.Millisecond).String())
		}
		row("trials in flight", d.TrialsInFlight)
	}
	row("replica", d.Replica)
	row("store", storeSummary(d.Store.Driver, d.Store.Degraded, d.Store.LastError))
	if err := printRows(stdout, "", rows); err != nil {
		return err
	}
	if s := d.Settings; s != nil {
		rows = rows[:0]
		for _, kv := range [][2]any{
			{"consecutive_failures", s.ConsecutiveFailures}, {"failure_rate", s.FailureRate},
			{"slow_call_rate", s.SlowCallRate}, {"slow_call_duration", s.SlowCallDuration},
			{"minimum_requests", s.MinimumRequests}, {"window", s.Window}, {"buckets", s.Buckets},
			{"open_duration", s.OpenDuration}, {"backoff_multiplier", s.BackoffMultiplier},
			{"max_open_duration", s.MaxOpenDuration}, {"jitter", s.Jitter},
			{"half_open_max_requests", s.HalfOpenMaxRequests}, {"success_threshold", s.SuccessThreshold},
			{"initial_mode", s.InitialMode}, {"min_replicas_reporting", s.MinReplicasReporting},
		} {
			row(kv[0].(string), kv[1])
		}
		if err := printRows(stdout, "settings", rows); err != nil {
			return err
		}
	}
	return printStoreView(stdout, "store's view ("+d.Store.Driver+")", d.SharedStore, d.SharedStoreError)
}

// printRows prints key/value rows aligned, under a heading (indented) when one is given.
func printRows(w io.Writer, heading string, rows [][2]string) error {
	indent := ""
	if heading != "" {
		fmt.Fprintf(w, "\n%s\n", heading)
		indent = "  "
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, r := range rows {
		fmt.Fprintf(tw, "%s%s\t%s\n", indent, r[0], r[1])
	}
	return tw.Flush()
}

func circuitsControl(c *admin.Client, name, action string, body any, jsonOut bool, stdout, stderr io.Writer) error {
	status, data, err := c.Call(http.MethodPost, "/circuits/"+url.PathEscape(name)+"/"+action, body)
	if err != nil {
		return answer(jsonOut, stdout, data, err)
	}
	var r admin.ControlResult
	if jerr := json.Unmarshal(data, &r); jerr != nil {
		return fmt.Errorf("admin API: unexpected answer to %s %s: %w", action, name, jerr)
	}
	if r.Warning != "" || status == http.StatusAccepted {
		msg := r.Detail // it starts with the warning and says why
		if msg == "" {
			msg = r.Warning
		}
		fmt.Fprintln(stderr, "warning:", msg)
	}
	if jsonOut {
		printJSON(stdout, data)
		return nil
	}
	ci := r.Circuit
	scope := "this replica"
	if r.Scope == "fleet" {
		scope = "fleet-wide"
	}
	extra := ""
	if ci.State == "open" && ci.Mode != "forced_open" {
		extra = ", open for " + openLeft(ci)
	}
	what := action
	if action == "mode" {
		what = "mode " + ci.Mode
	}
	fmt.Fprintf(stdout, "%s: %s applied %s; now %s, mode %s, generation %d%s\n",
		ci.Name, what, scope, ci.State, ci.Mode, ci.Generation, extra)
	return nil
}

// circuitsHistory prints a circuit's transition history (GET /circuits/{name}/history),
// newest first; the admin API checks the limit.
func circuitsHistory(c *admin.Client, name string, limit int, limitSet, jsonOut bool, stdout io.Writer) error {
	path := "/circuits/" + url.PathEscape(name) + "/history"
	if limitSet {
		path += "?limit=" + strconv.Itoa(limit)
	}
	var h admin.History
	if ok, err := fetch(c, path, jsonOut, stdout, &h); !ok {
		return err
	}
	if len(h.Transitions) == 0 {
		fmt.Fprintf(stdout, "no transitions recorded for %s\n", h.Upstream)
		return nil
	}
	keyed := slices.ContainsFunc(h.Transitions, func(t store.Transition) bool { return t.Key != "" })
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	head := "AT\tFROM\tTO\tREASON\tREQUESTS\tFAILURES\tSLOW\tCONSEC\tGEN\tREPLICA"
	if keyed {
		head += "\tKEY"
	}
	fmt.Fprintln(tw, head)
	for _, t := range h.Transitions {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s", t.At.UTC().Format("2006-01-02T15:04:05.000Z"),
			t.From, t.To, t.Reason, t.Requests, t.Failures, t.Slow, t.Consecutive, t.Generation, cmp.Or(t.Replica, "-"))
		if keyed {
			fmt.Fprintf(tw, "\t%s", cmp.Or(t.Key, "-"))
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}
