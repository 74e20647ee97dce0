package breaker_test

import (
	"strings"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/breaker/conformance"
)

// TestConformance holds the Go breaker (the memory store's decisions) to the table the
// Redis store's scripts are held to as well (store.TestConformance).
func TestConformance(t *testing.T) {
	t.Parallel()
	conformance.Run(t, func(t testing.TB) conformance.Driver {
		f := newFixture(t, conformance.Settings())
		return &goDriver{f: f}
	})
}

// goDriver drives a breaker on a fake clock.
type goDriver struct {
	f    *fixture
	held []breaker.Ticket // trials in flight, oldest first
	seen int              // transitions already reported by Observe
}

func (d *goDriver) Do(t testing.TB, s conformance.Step) {
	t.Helper()
	b := d.f.b
	switch s.Kind {
	case conformance.Success, conformance.Slow, conformance.Failure, conformance.GatewayFailure:
		tk, err := b.Allow()
		if err != nil {
			return // rejected: nothing to count
		}
		if tk.Trial() {
			t.Fatalf("a %v step was admitted as a trial: use trial steps while half-open", s.Kind)
		}
		o, elapsed := breaker.Success, time.Duration(0)
		switch s.Kind {
		case conformance.Failure:
			o = breaker.Failure
		case conformance.GatewayFailure:
			o = breaker.GatewayFailure
		case conformance.Slow:
			elapsed = 2 * conformance.Settings().SlowCallDuration
		}
		b.Done(tk, o, elapsed)
	case conformance.Elapse:
		d.f.clock.Advance(b.Snapshot().OpenRemaining)
	case conformance.Admit:
		if tk, err := b.Allow(); err == nil {
			if !tk.Trial() {
				t.Fatalf("admit in %v gave a non-trial ticket", b.State())
			}
			d.held = append(d.held, tk)
		}
	case conformance.TrialSuccess, conformance.TrialFailure, conformance.TrialGatewayFailure:
		if len(d.held) == 0 {
			t.Fatalf("%v with no trial in flight", s.Kind)
		}
		o := breaker.Success
		switch s.Kind {
		case conformance.TrialFailure:
			o = breaker.Failure
		case conformance.TrialGatewayFailure:
			o = breaker.GatewayFailure
		}
		b.Done(d.held[0], o, 0)
		d.held = d.held[1:]
	case conformance.Pause:
		if tk, err := b.Allow(); err == nil {
			b.DonePause(tk, breaker.Success, 0, s.For)
		}
	case conformance.TrialPause:
		if len(d.held) == 0 {
			t.Fatalf("%v with no trial in flight", s.Kind)
		}
		b.DonePause(d.held[0], breaker.Failure, 0, s.For)
		d.held = d.held[1:]
	case conformance.Wait:
		d.f.clock.Advance(s.For)
	case conformance.Configure:
		b.SetSettings(*s.Settings)
	case conformance.Open:
		b.Trip()
	case conformance.Close:
		b.Close()
	case conformance.Reset:
		b.Reset()
	case conformance.Mode:
		b.SetMode(s.Mode)
	default:
		t.Fatalf("unknown step %v", s.Kind)
	}
}

func (d *goDriver) Observe(testing.TB) conformance.Observed {
	sn := d.f.b.Snapshot()
	trs := d.f.obs.all()
	var rs []string
	for _, tr := range trs[d.seen:] {
		rs = append(rs, tr.Reason)
	}
	d.seen = len(trs)
	o := conformance.Observed{State: sn.State, Mode: sn.Mode, Reasons: strings.Join(rs, ","), Trips: sn.Trips}
	switch sn.State {
	case breaker.Closed:
		o.Counts, o.Consecutive, o.GatewayRun = sn.Counts, sn.Consecutive, sn.GatewayRun
	case breaker.Open:
		o.OpenFor = sn.OpenFor
	case breaker.HalfOpen:
		o.InFlight = sn.TrialsInFlight
	}
	return o
}
