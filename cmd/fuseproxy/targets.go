package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"text/tabwriter"
	"time"

	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/internal/admin"
)

const targetsUsage = `Usage:
  fuseproxy targets [list]                    every target of upstreams with outlier detection
  fuseproxy targets eject UPSTREAM HOST:PORT  take the target out until restored (fleet-wide with Redis)
  fuseproxy targets restore UPSTREAM HOST:PORT  bring it back: closed, mode normal, ejections cleared

A target's circuit is also a circuit named UPSTREAM@HOST:PORT: "fuseproxy circuits show"
and the other circuits commands take that name. eject sets its mode to forced_open and
opens it (a "target ejected" event on every replica); restore resets it ("target
restored"). An operator's ejection is honoured first: it takes its place in
max_ejection_percent before the detectors' ejections (never the last target).

Flags (anywhere on the line):
  --admin URL      admin API (default $FUSE_ADMIN_URL, else http://127.0.0.1:8084)
  --token TOKEN    bearer token (default $FUSE_ADMIN_TOKEN)
  --ca FILE        PEM CA bundle for an https admin API (default $FUSE_ADMIN_CA)
  --json           print the API's JSON
  --timeout D      request timeout (default 5s)
`

// targets runs `fuseproxy targets SUBCOMMAND ...` against the admin API.
func targets(args []string, stdout, stderr io.Writer) error {
	fs, f := newAdminFlagSet("targets", stderr, 5*time.Second)
	fs.Usage = func() { fmt.Fprint(stderr, targetsUsage) }
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	sub := "list"
	if len(pos) > 0 {
		sub, pos = pos[0], pos[1:]
	}
	want := map[string]int{"list": 0, "eject": 2, "restore": 2}
	n, ok := want[sub]
	if !ok {
		fmt.Fprintf(stderr, "fuseproxy targets: unknown subcommand %q\n\n%s", sub, targetsUsage)
		return errUsage
	}
	if len(pos) != n {
		fmt.Fprintf(stderr, "fuseproxy targets %s: want %d argument(s), got %d\n\n%s", sub, n, len(pos), targetsUsage)
		return errUsage
	}
	c, err := f.client()
	if err != nil {
		return err
	}
	switch sub {
	case "eject":
		// Forced open, so it stays out until restored; then opened, so that the ejection
		// is a transition every replica reports (log line, webhook), like a detector's.
		name := targetCircuit(pos[0], pos[1])
		if err := circuitsControl(c, name, "mode", map[string]string{"mode": "forced_open"}, f.json, io.Discard, stderr); err != nil {
			return err
		}
		return circuitsControl(c, name, "open", nil, f.json, stdout, stderr)
	case "restore":
		return circuitsControl(c, targetCircuit(pos[0], pos[1]), "reset", nil, f.json, stdout, stderr)
	}
	_, data, err := c.Call(http.MethodGet, "/circuits", nil)
	if err != nil {
		return answer(f.json, stdout, data, err)
	}
	var l admin.CircuitList
	if err := json.Unmarshal(data, &l); err != nil {
		return fmt.Errorf("admin API: unexpected answer to GET /circuits: %w", err)
	}
	var ts []admin.Circuit
	for _, ci := range l.Circuits {
		if ci.Target != "" {
			ts = append(ts, ci)
		}
	}
	if f.json {
		out, err := json.MarshalIndent(ts, "", "  ")
		if err != nil {
			return err
		}
		printJSON(stdout, out)
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "UPSTREAM\tTARGET\tHEALTH\tSTATE\tMODE\tREQUESTS\tFAIL%\tCONSEC\tEJECTIONS\tEJECTED LEFT")
	for _, ci := range ts {
		health := "healthy"
		switch {
		case ci.Ejected:
			health = "ejected"
		case ci.PastCap:
			health = "past-cap" // its circuit is out, max_ejection_percent keeps it serving
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%d\t%d\t%s\n", ci.Upstream, ci.Target, health, ci.State, ci.Mode,
			ci.Counts.Requests, pct(ci.Rates.FailureRate), ci.Consecutive, ci.Trips, openLeft(ci))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(ts) == 0 {
		fmt.Fprintln(stdout, "(no upstream has outlier_detection enabled with two or more targets)")
	}
	fmt.Fprintf(stdout, "\nreplica %s, store %s\n", l.Replica, storeSummary(l.Store.Driver, l.Store.Degraded, l.Store.LastError))
	return nil
}

// targetCircuit is the name of the circuit of upstream's target at hostPort, spelled as
// config.TargetName spells it (a host in lower case, an IP address in standard form), so
// that the target is found however the config writes it. A hostPort without a port is
// passed on as it is: the admin API names it in its answer.
func targetCircuit(upstream, hostPort string) string {
	u := &url.URL{Scheme: "http", Host: hostPort}
	if u.Port() == "" {
		return upstream + "@" + hostPort
	}
	return config.TargetName(upstream, u)
}
