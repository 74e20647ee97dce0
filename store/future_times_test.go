package store

import (
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// TestFutureTimesDoNotSuspendTheRules: stored times ahead of the fleet's clock (a
// failover to a database, or Redis, whose clock is behind; a foreign value) must not
// suspend the rules by as much as they are ahead. A failure onset from the future held
// the rate rules back (they wait for onset + grace) while failures kept coming, which
// kept the window from ever going quiet and the onset from being renewed: the breaker
// was off for rates. An open period's end from the future kept the circuit open longer
// than its whole period.
func TestFutureTimesDoNotSuspendTheRules(t *testing.T) {
	eachBackend(t, func(t *testing.T, b scriptBackend) {
		t.Run("onset", func(t *testing.T) {
			s := baseSettings()
			s.ConsecutiveFailures = 0
			s.FailureRate, s.MinimumRequests = 50, 10
			s.Window = time.Minute
			e := env(t, b, "onset", s, 1)
			if rep := e.flush("r1", 0, batch{req: 10, fail: 1, gatewayEnded: true}); rep.state.State != breaker.Closed {
				t.Fatalf("10%% failures: %+v", rep.state)
			}
			now := e.poll().now
			if err := b.setField(e, "fo", now+time.Hour.Milliseconds()); err != nil {
				t.Fatal(err)
			}
			if rep := e.flush("r1", 0, failures(10)); rep.state.State != breaker.Open {
				t.Fatalf("55%% failures with an onset an hour ahead: %+v, want open (failure_rate)", rep.state)
			}
		})
		t.Run("open until", func(t *testing.T) {
			e := env(t, b, "openuntil", baseSettings(), 1) // open 100 ms
			rep := e.control("open", 0)
			if err := b.setField(e, "ou", rep.now+time.Hour.Milliseconds()); err != nil {
				t.Fatal(err)
			}
			if rep = e.poll(); rep.state.State == breaker.Open && rep.state.OpenRemaining > rep.state.OpenFor {
				t.Fatalf("open %v more of a %v period", rep.state.OpenRemaining, rep.state.OpenFor)
			}
		})
	})
}
