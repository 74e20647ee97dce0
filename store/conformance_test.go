package store

import (
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/breaker/conformance"
)

// TestConformance holds the Lua scripts, and their PL/pgSQL port, to the table the Go
// breaker is held to as well (breaker.TestConformance): one replica calls the scripts as
// the store does, one step at a time, on a real redis-server and on a real PostgreSQL.
func TestConformance(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b scriptBackend) {
		var n atomic.Int64
		conformance.Run(t, func(t testing.TB) conformance.Driver {
			name := fmt.Sprintf("row%d", n.Add(1)) // a circuit of its own per row
			return &luaDriver{e: env(t, b, name, conformance.Settings(), 1)}
		})
	})
}

// TestConformanceKeyed holds the keyed scripts (keyed.lua before each script, and
// their PL/pgSQL port) to the same table: each row is one key's circuit of an upstream.
func TestConformanceKeyed(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b scriptBackend) {
		var n atomic.Int64
		conformance.Run(t, func(t testing.TB) conformance.Driver {
			member := fmt.Sprintf("row%d", n.Add(1)) // a key of its own per row
			return &luaDriver{e: keyedEnv(t, b, "up", member, conformance.Settings(), 1)}
		})
	})
}

// luaDriver turns steps into the scripts' calls: requests into one-request flushes,
// admissions into acquire, trials into trial, operators' commands into control.
type luaDriver struct {
	e       *luaEnv
	last    reply
	started bool
	leases  []luaLease // trials in flight, oldest first
	seq     int
	reasons []string
}

type luaLease struct {
	id  string
	gen uint64
}

func (d *luaDriver) Do(t testing.TB, s conformance.Step) {
	t.Helper()
	e, gen := d.e, d.last.state.Generation
	var rep reply
	switch s.Kind {
	case conformance.Success, conformance.Slow, conformance.Failure, conformance.GatewayFailure:
		b := successes(1)
		switch s.Kind {
		case conformance.Failure:
			b = failures(1)
		case conformance.GatewayFailure:
			b = gatewayFailures(1)
		case conformance.Slow:
			b.slow = 1
		}
		rep = e.flush("r1", gen, b)
	case conformance.Pause:
		b := successes(1)
		b.pause = int(s.For.Milliseconds())
		rep = e.flush("r1", gen, b)
	case conformance.TrialPause:
		if len(d.leases) == 0 {
			t.Fatalf("%v with no trial in flight", s.Kind)
		}
		l := d.leases[0]
		d.leases = d.leases[1:]
		rep = e.trialPause("r1", l.gen, 0, 1, int(s.For.Milliseconds()), l.id)
	case conformance.Elapse:
		// The store's clock cannot be moved: move the end of the open period instead.
		if d.last.state.State != breaker.Open {
			t.Fatalf("elapse in %v", d.last.state.State)
		}
		if err := e.be.setField(e, "ou", 1); err != nil {
			t.Fatal(err)
		}
		return
	case conformance.Wait:
		// Move the close time back instead; only the trip decay reads it.
		if req, _, _ := e.windowTotals(); d.last.state.State != breaker.Closed || req > 0 {
			t.Fatalf("wait in %v with %d requests in the window: only an empty closed circuit can wait", d.last.state.State, req)
		}
		at, err := strconv.ParseInt(e.hgetall()["at"], 10, 64)
		if err != nil {
			t.Fatalf("the close time: %v", err)
		}
		if err := e.be.setField(e, "at", at-s.For.Milliseconds()); err != nil {
			t.Fatal(err)
		}
		return
	case conformance.Configure:
		// Settings travel with every call: later calls carry the new ones.
		e.settingsArg = settingsArg(breaker.New(e.name, *s.Settings, breaker.Options{}).Settings(), 1)
		return
	case conformance.Admit:
		d.seq++
		base := "r1:" + strconv.Itoa(d.seq)
		rep = e.run(acquireScript, "r1", 1, time.Minute.Milliseconds(), e.settingsArg, base, e.channel, e.name)
		if rep.granted == 1 {
			d.leases = append(d.leases, luaLease{base + ":" + strconv.FormatUint(rep.state.Generation, 10) + ":1", rep.state.Generation})
		}
	case conformance.TrialSuccess, conformance.TrialFailure, conformance.TrialGatewayFailure:
		if len(d.leases) == 0 {
			t.Fatalf("%v with no trial in flight", s.Kind)
		}
		l := d.leases[0]
		d.leases = d.leases[1:]
		succ, fails := 1, 0
		if s.Kind != conformance.TrialSuccess { // the script counts a gateway failure as a failure
			succ, fails = 0, 1
		}
		rep = e.trial("r1", l.gen, succ, fails, l.id)
	case conformance.Open, conformance.Close, conformance.Reset:
		rep = e.control(map[conformance.Kind]string{conformance.Open: "open", conformance.Close: "close",
			conformance.Reset: "reset"}[s.Kind], 0)
	case conformance.Mode:
		rep = e.control("mode", s.Mode)
	default:
		t.Fatalf("unknown step %v", s.Kind)
	}
	d.apply(rep)
}

// apply keeps a reply; a change of state, or a new open period, is a transition.
func (d *luaDriver) apply(rep reply) {
	prev, cur := d.last.state, rep.state
	if d.started && (cur.State != prev.State || cur.State == breaker.Open && cur.Trips != prev.Trips) {
		d.reasons = append(d.reasons, cur.Reason)
	}
	d.last, d.started = rep, true
}

func (d *luaDriver) Observe(t testing.TB) conformance.Observed {
	t.Helper()
	if !d.started {
		d.apply(d.e.poll())
	}
	st := d.last.state
	o := conformance.Observed{State: st.State, Mode: st.Mode, Reasons: strings.Join(d.reasons, ","), Trips: st.Trips}
	d.reasons = nil
	switch st.State {
	case breaker.Closed:
		req, fail, slow := d.e.windowTotals()
		o.Counts = breaker.Counts{Requests: uint32(req), Failures: uint32(fail), Slow: uint32(slow)}
		h := d.e.hgetall()
		if cf := h["cf"]; cf != "" {
			o.Consecutive, _ = strconv.Atoi(cf)
		}
		if gf := h["gf"]; gf != "" {
			o.GatewayRun, _ = strconv.Atoi(gf)
		}
	case breaker.Open:
		o.OpenFor = st.OpenFor
	case breaker.HalfOpen:
		o.InFlight = len(d.e.leases())
	}
	return o
}
