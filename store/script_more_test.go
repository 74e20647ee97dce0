package store

import (
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// The scripts besides a circuit's four, on both backends: the tally, the claim, the
// heartbeat, and the per-key scripts' registry (keyed.lua).

func TestScriptsTally(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b scriptBackend) {
		tally := func(replica string, a, bb string, window time.Duration) []any {
			t.Helper()
			v, err := b.call(tallyScript, []string{"fuse:{tally:api}"}, "api",
				[]any{replica, a, bb, window.Milliseconds()})
			if err != nil {
				t.Fatalf("tally: %v", err)
			}
			got, ok := v.([]any)
			if !ok || len(got) != 3 {
				t.Fatalf("tally reply %#v", v)
			}
			return got
		}
		want := func(got []any, a, bb, n int64) {
			t.Helper()
			if got[0] != a || got[1] != bb || got[2] != n {
				t.Fatalf("tally = %v, want [%d %d %d]", got, a, bb, n)
			}
		}
		want(tally("r1", "100", "5", 10*time.Second), 100, 5, 1)
		want(tally("r2", "200", "0", 10*time.Second), 300, 5, 2)
		want(tally("r1", "1", "1", 10*time.Second), 201, 1, 2)
		// a count of 16 digits is no replica's: dropped, with the replica's older report
		want(tally("r2", "1234567890123456", "0", 10*time.Second), 1, 1, 1)
		want(tally("r2", "2", "0", 10*time.Second), 3, 1, 2)
		// a report older than the window is dropped
		time.Sleep(5 * time.Millisecond)
		want(tally("r3", "7", "7", time.Millisecond), 7, 7, 1)
	})
}

func TestScriptsClaim(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b scriptBackend) {
		claim := func(owner string, ttl time.Duration) int64 {
			t.Helper()
			v, err := b.call(claimScript, []string{"fuse:probe:x"}, "x", []any{owner, ttl.Milliseconds()})
			if err != nil {
				t.Fatalf("claim: %v", err)
			}
			n, ok := v.(int64)
			if !ok {
				t.Fatalf("claim reply %#v", v)
			}
			return n
		}
		if n := claim("a", time.Minute); n != 1 {
			t.Fatalf("a free claim: %d", n)
		}
		if n := claim("b", time.Minute); n != 0 {
			t.Fatalf("b took a's claim: %d", n)
		}
		if n := claim("a", 30*time.Millisecond); n != 1 {
			t.Fatalf("a's renewal: %d", n)
		}
		eventually(t, waitFor, "a's claim to expire for b", func() bool { return claim("b", time.Minute) == 1 })
		if n := claim("a", time.Minute); n != 0 {
			t.Fatalf("a took b's claim back: %d", n)
		}
	})
}

func TestScriptsHeartbeat(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b scriptBackend) {
		for range 2 {
			v, err := b.call(heartbeatScript, []string{"fuse:heartbeat:r1"}, "r1", []any{int64(5000)})
			if err != nil || v != int64(1) {
				t.Fatalf("heartbeat = %#v, %v; want 1", v, err)
			}
		}
	})
}

// TestScriptsKeyedRegistry: an upstream's registry takes at most max keys; a key it does
// not hold is refused (-1) while it is full, until a key's idle ttl passes; each key is a
// circuit of its own.
func TestScriptsKeyedRegistry(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b scriptBackend) {
		bs := baseSettings()
		bs.OpenDuration = time.Minute
		s := breaker.New("up", bs, breaker.Options{}).Settings()
		sarg := settingsArg(s, 1)
		events, onsets := b.channels()
		const maxKeys = 2
		flush := func(member string, ttl time.Duration, bt batch, gen uint64) any {
			t.Helper()
			state, leases, registry, _ := keyKeys("fuse", "up", "up#"+member)
			v, err := b.call(keyFlushScript, []string{state, leases, registry}, "up", []any{maxKeys, ttl.Milliseconds(),
				member, "r1", gen, bt.req, bt.fail, bt.slow, bt.tail, boolArg(bt.hadSuccess), sarg, "h1", 0.5, events,
				"up#" + member, onsets, 0, bt.gatewayTail, boolArg(bt.gatewayEnded), bt.pause})
			if err != nil {
				t.Fatalf("key_flush %s: %v", member, err)
			}
			return v
		}
		state := func(v any) reply {
			t.Helper()
			rep, err := decodeReply(v)
			if err != nil {
				t.Fatalf("reply %#v: %v", v, err)
			}
			return rep
		}
		wantState(t, state(flush("a", time.Minute, failures(3), 0)), breaker.Open, 1)
		wantState(t, state(flush("b", 100*time.Millisecond, successes(1), 0)), breaker.Closed, 0)
		if v := flush("c", time.Minute, failures(1), 0); v != int64(-1) {
			t.Fatalf("a third key with max keys %d: %#v, want -1", maxKeys, v)
		}
		wantState(t, state(flush("a", time.Minute, batch{}, 0)), breaker.Open, 1) // held: not refused
		// b's idle ttl ends: c takes its place
		var v any
		eventually(t, waitFor, "b's place to free up", func() bool {
			v = flush("c", time.Minute, failures(1), 0)
			return v != int64(-1)
		})
		wantState(t, state(v), breaker.Closed, 0)
		if v := flush("b", time.Minute, batch{}, 0); v != int64(-1) {
			t.Fatalf("b after c took its place: %#v, want -1", v)
		}
		// a's open period keeps it registered however short its idle ttl
		if rep := state(flush("a", time.Millisecond, batch{}, 0)); rep.state.State != breaker.Open {
			t.Fatalf("a: %+v", rep.state)
		}
		time.Sleep(5 * time.Millisecond)
		if v := flush("b", time.Minute, batch{}, 0); v != int64(-1) {
			t.Fatalf("b while a is open: %#v, want -1", v)
		}
	})
}
