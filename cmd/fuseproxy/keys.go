package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"text/tabwriter"
	"time"

	"github.com/fuseproxy/fuseproxy/internal/admin"
)

const keysUsage = `Usage:
  fuseproxy keys [list] [UPSTREAM]          per-key circuits: counts, and the keys open, longest first
  fuseproxy keys show UPSTREAM KEY          one key: this replica's circuit, the shared store's view
  fuseproxy keys open UPSTREAM KEY          open the key's circuit now (fleet-wide with Redis)
  fuseproxy keys close UPSTREAM KEY         close it now
  fuseproxy keys reset UPSTREAM KEY         closed, mode normal, counts and backoff cleared
  fuseproxy keys mode UPSTREAM KEY MODE     MODE: normal | forced_open | forced_closed | metrics_only

Flags (anywhere on the line):
  --admin URL      admin API (default $FUSE_ADMIN_URL, else http://127.0.0.1:8084)
  --token TOKEN    bearer token (default $FUSE_ADMIN_TOKEN)
  --limit N        keys listed per upstream (default 20)
  --json           print the API's JSON
  --timeout D      request timeout (default 5s)
`

// keys runs `fuseproxy keys SUBCOMMAND ...` against the admin API.
func keys(args []string, stdout, stderr io.Writer) error {
	fs, f := newAdminFlagSet("keys", stderr, 5*time.Second)
	limit := fs.Int("limit", 20, "keys listed per upstream")
	fs.Usage = func() { fmt.Fprint(stderr, keysUsage) }
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	sub := "list"
	if len(pos) > 0 {
		if _, known := map[string]bool{"list": true, "show": true, "open": true, "close": true, "reset": true, "mode": true}[pos[0]]; known {
			sub, pos = pos[0], pos[1:]
		}
	}
	want := map[string][2]int{"list": {0, 1}, "show": {2, 2}, "open": {2, 2}, "close": {2, 2}, "reset": {2, 2}, "mode": {3, 3}}[sub]
	if len(pos) < want[0] || len(pos) > want[1] {
		fmt.Fprintf(stderr, "fuseproxy keys %s: want %d argument(s), got %d\n\n%s", sub, want[1], len(pos), keysUsage)
		return errUsage
	}
	c, err := f.client()
	if err != nil {
		return err
	}
	switch sub {
	case "list":
		path := "/keys"
		if len(pos) == 1 {
			path += "/" + url.PathEscape(pos[0])
		}
		return keysList(c, fmt.Sprintf("%s?limit=%d", path, *limit), f.json, stdout)
	case "show":
		return keysShow(c, pos[0], pos[1], f.json, stdout)
	case "mode":
		return keysControl(c, pos[0], pos[1], sub, map[string]string{"mode": pos[2]}, f.json, stdout, stderr)
	default:
		return keysControl(c, pos[0], pos[1], sub, nil, f.json, stdout, stderr)
	}
}

func keyPath(upstream, key string) string {
	return "/keys/" + url.PathEscape(upstream) + "/" + url.PathEscape(key)
}

func keysList(c *admin.Client, path string, jsonOut bool, stdout io.Writer) error {
	var l admin.KeyList
	if ok, err := fetch(c, path, jsonOut, stdout, &l); !ok {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "UPSTREAM\tTRACKED\tMAX\tOPEN\tEVICTIONS\tOVERFLOW\tREJECTED")
	for _, u := range l.Upstreams {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\n", u.Upstream, u.Tracked, u.MaxKeys, u.Open, u.Evictions, u.Overflow, u.Rejected)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, u := range l.Upstreams {
		if len(u.OpenKeys) == 0 {
			continue
		}
		fmt.Fprintf(stdout, "\n%s: keys not passing, longest open first\n", u.Upstream)
		tw = tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "KEY\tSTATE\tMODE\tSOURCE\tTRIPS\tGEN\tOPENED AT\tOPEN LEFT")
		for _, k := range u.OpenKeys {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", k.Key, k.State, k.Mode, k.Source, k.Trips,
				k.Generation, k.OpenedAt, openLeft(k.Circuit))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "\nreplica %s, store %s\n", l.Replica, storeSummary(l.Store.Driver, l.Store.Degraded, l.Store.LastError))
	return nil
}

func keysShow(c *admin.Client, upstream, key string, jsonOut bool, stdout io.Writer) error {
	var d admin.KeyDetail
	if ok, err := fetch(c, keyPath(upstream, key), jsonOut, stdout, &d); !ok {
		return err
	}
	var rows [][2]string
	row := func(k string, v any) { rows = append(rows, [2]string{k, fmt.Sprint(v)}) }
	row("upstream", d.Upstream)
	row("key", d.Key)
	row("circuit", d.Name)
	if ci := d.Circuit; ci != nil {
		row("state", ci.State)
		row("mode", ci.Mode)
		row("source", ci.Source)
		row("generation", ci.Generation)
		row("window", fmt.Sprintf("%d requests, %d failures (%s%%)", ci.Counts.Requests, ci.Counts.Failures, pct(ci.Rates.FailureRate)))
		row("consecutive", ci.Consecutive)
		row("trips", ci.Trips)
		if ci.State == "open" {
			row("open left", openLeft(*ci))
		}
	} else {
		row("state", "not tracked by this replica")
	}
	row("replica", d.Replica)
	if err := printRows(stdout, "", rows); err != nil {
		return err
	}
	return printStoreView(stdout, "store's view", d.SharedStore, d.SharedStoreError)
}

func keysControl(c *admin.Client, upstream, key, action string, body any, jsonOut bool, stdout, stderr io.Writer) error {
	status, data, err := c.Call(http.MethodPost, keyPath(upstream, key)+"/"+action, body)
	if err != nil {
		return answer(jsonOut, stdout, data, err)
	}
	var r admin.KeyControlResult
	if jerr := json.Unmarshal(data, &r); jerr != nil {
		return fmt.Errorf("admin API: unexpected answer to %s %s %s: %w", action, upstream, key, jerr)
	}
	if r.Warning != "" || status == http.StatusAccepted {
		msg := r.Detail
		if msg == "" {
			msg = r.Warning
		}
		fmt.Fprintln(stderr, "warning:", msg)
	}
	if jsonOut {
		printJSON(stdout, data)
		return nil
	}
	scope := "this replica"
	if r.Scope == "fleet" {
		scope = "fleet-wide"
	}
	now := "not tracked by this replica"
	if ci := r.Circuit; ci != nil {
		now = fmt.Sprintf("now %s, mode %s, generation %d", ci.State, ci.Mode, ci.Generation)
	}
	fmt.Fprintf(stdout, "%s: %s applied %s; %s\n", r.Name, action, scope, now)
	return nil
}
