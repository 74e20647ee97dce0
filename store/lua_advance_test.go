package store

import (
	"strconv"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// acquireAdvance asks for one permit in advance.
func (e *luaEnv) acquireAdvance(replica string, lease time.Duration) reply {
	e.t.Helper()
	return e.run(acquireScript, replica, 1, lease.Milliseconds(), e.settingsArg, replica+":1",
		e.channel, e.name, 1)
}

func (e *luaEnv) leases() []string {
	e.t.Helper()
	ls, err := e.be.leases(e)
	if err != nil {
		e.t.Fatal(err)
	}
	return ls
}

// A permit asked for in advance while the circuit is open is leased for the half-open
// period that follows (generation + 1) and counts against its maximum: the open period
// still runs, the end keeps the lease, and a trial on it is the first Redis hears of the
// half-open period (trial.lua ends the open period).
func TestLuaAdvancePermit(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b scriptBackend) {
		s := baseSettings()
		s.OpenDuration = 300 * time.Millisecond
		e := env(t, b, "api", s, 1)
		open := e.trip(0, 3)
		rep := e.acquireAdvance("a", time.Minute)
		if rep.state.State != breaker.Open || rep.granted != 1 {
			t.Fatalf("advance acquire while open: %+v", rep)
		}
		gen := open.state.Generation
		if ls := e.leases(); len(ls) != 1 || ls[0] != "a:1:"+strconv.FormatUint(gen+1, 10)+":1" {
			t.Fatalf("leases %v, want a:1:%d:1", ls, gen+1)
		}
		if rep := e.acquireAdvance("b", time.Minute); rep.granted != 0 {
			t.Fatalf("a second replica got %d permits with the only slot leased", rep.granted)
		}
		// a normal acquire before the end grants nothing and changes nothing
		if rep := e.acquire("b", time.Minute); rep.granted != 0 || rep.state.State != breaker.Open {
			t.Fatalf("acquire before the end: %+v", rep)
		}
		time.Sleep(350 * time.Millisecond)
		rep = e.trial("a", gen+1, 1, 0, "a:1:"+strconv.FormatUint(gen+1, 10)+":1")
		if rep.state.State != breaker.Closed || rep.state.Generation != gen+2 {
			t.Fatalf("a's trial on its advance permit: %+v, want closed in generation %d", rep, gen+2)
		}
	})
}

// The half-open flag of a flush ends an open period that is over; trial.lua releases
// every lease whose id starts with a prefix given as "prefix*".
func TestLuaFlushHalfOpenAndPrefixRelease(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b scriptBackend) {
		s := baseSettings()
		s.OpenDuration = 100 * time.Millisecond
		s.HalfOpenMaxRequests = 3
		e := env(t, b, "api", s, 1)
		open := e.trip(0, 3)
		gen := open.state.Generation
		e.acquireAdvance("a", time.Minute)
		flushHalfOpen := func() reply {
			return e.run(flushScript, "a", gen+1, 0, 0, 0, 0, 0, e.settingsArg, e.hash, 0.5, e.channel, e.name,
				e.onset, e.grace.Milliseconds(), 0, 0, 0, 1)
		}
		if rep := flushHalfOpen(); rep.state.State != breaker.Open {
			t.Fatalf("half-open flag before the end: %+v", rep)
		}
		time.Sleep(150 * time.Millisecond)
		if rep := flushHalfOpen(); rep.state.State != breaker.HalfOpen || rep.state.Generation != gen+1 {
			t.Fatalf("half-open flag after the end: %+v", rep)
		}
		if ls := e.leases(); len(ls) != 1 {
			t.Fatalf("the advance lease did not survive the end of the open period: %v", ls)
		}
		e.run(acquireScript, "b", 2, time.Minute.Milliseconds(), e.settingsArg, "b:7", e.channel, e.name)
		if ls := e.leases(); len(ls) != 3 {
			t.Fatalf("leases %v, want a's and b's 2", ls)
		}
		e.trial("b", 0, 0, 0, "b:7:*")
		if ls := e.leases(); len(ls) != 1 || ls[0] != "a:1:"+strconv.FormatUint(gen+1, 10)+":1" {
			t.Fatalf("after releasing b:7:*: %v, want a's alone", ls)
		}
	})
}
