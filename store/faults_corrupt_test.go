package store

import (
	"context"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// TestLuaForeignValuesStartFresh writes values no fuseproxy writes into a circuit's
// state and leases keys (numbers beyond what a replica can hold, a leases key of the
// wrong type, junk reasons, thousands of fields nobody owns) and runs every script on
// them. Each script must answer (never a script error: that would wedge the circuit on
// every replica), with a reply the replicas can decode, reporting what was wrong where
// the value was unreadable and starting a fresh closed state; and the keys must be sane
// afterwards (no unbounded hash, no reply carrying megabytes).
func TestLuaForeignValuesStartFresh(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := context.Background()
	huge := strings.Repeat("z", 1<<20)
	type tc struct {
		name    string
		corrupt func(e *luaEnv)
		want    string // in the corrupt reason; "" when the value is dropped silently
	}
	cases := []tc{
		{"gen 1e300", func(e *luaEnv) { e.rdb.HSet(ctx, e.key, "gen", "1e300") }, "field gen"},
		{"gen 2^63-1", func(e *luaEnv) { e.rdb.HSet(ctx, e.key, "gen", "9223372036854775807") }, "field gen"},
		{"gen 2^64", func(e *luaEnv) { e.rdb.HSet(ctx, e.key, "gen", "18446744073709551616") }, "field gen"},
		{"open until 1e300", func(e *luaEnv) { e.rdb.HSet(ctx, e.key, "st", "1", "ou", "1e300") }, "field ou"},
		{"open for inf", func(e *luaEnv) { e.rdb.HSet(ctx, e.key, "of", "inf") }, "field of"},
		{"trips 1e308", func(e *luaEnv) { e.rdb.HSet(ctx, e.key, "tr", "1e308") }, "field tr"},
		{"hex st", func(e *luaEnv) { e.rdb.HSet(ctx, e.key, "st", "0x1") }, "field st"},
		{"binary junk", func(e *luaEnv) { e.rdb.HSet(ctx, e.key, "md", "\x00\xff\xfe") }, "field md"},
		{"empty gen", func(e *luaEnv) { e.rdb.HSet(ctx, e.key, "gen", "") }, "field gen"},
		{"list key", func(e *luaEnv) { e.rdb.Del(ctx, e.key); e.rdb.RPush(ctx, e.key, "a", "b") }, "not a hash"},
		{"set key", func(e *luaEnv) { e.rdb.Del(ctx, e.key); e.rdb.SAdd(ctx, e.key, "a") }, "not a hash"},
		{"junk reason", func(e *luaEnv) { e.rdb.HSet(ctx, e.key, "rs", "two words\nand a newline") }, "field rs"},
		{"huge reason", func(e *luaEnv) { e.rdb.HSet(ctx, e.key, "rs", huge) }, "field rs"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := luaEnvOn(t, srv, strings.ReplaceAll(c.name, " ", "_"), baseSettings(), 1)
			for range 3 { // gen 3, open
				e.control("open", 0)
			}
			before := e.poll()
			eventually(t, waitFor, "the next millisecond", func() bool { return e.poll().now > before.epoch })
			for _, step := range []struct {
				name string
				run  func() reply
			}{
				{"flush", e.poll},
				{"acquire", func() reply { return e.acquire("r1", time.Second) }},
				{"trial", func() reply { return e.trial("r1", 3, 1, 0) }},
				{"control", func() reply { return e.control("mode", breaker.Normal) }},
			} {
				c.corrupt(e)
				rep := step.run()
				if !strings.Contains(rep.corrupt, c.want) {
					t.Fatalf("%s: corrupt = %q, want it to mention %q", step.name, rep.corrupt, c.want)
				}
				if rep.state.State != breaker.Closed || rep.state.Trips != 0 {
					t.Fatalf("%s: state after corruption: %+v, want fresh closed", step.name, rep.state)
				}
				if len(rep.state.Reason) > 64 {
					t.Fatalf("%s: reply reason is %d bytes", step.name, len(rep.state.Reason))
				}
			}
			if rep := e.poll(); rep.corrupt != "" {
				t.Fatalf("still corrupt after repair: %q", rep.corrupt)
			}
		})
	}
}

// TestLuaForeignLeasesKey corrupts the leases key of a half-open circuit. A key of
// another type is reported and the circuit starts fresh (closed), like a corrupt state
// hash, rather than failing every acquire and trial report with WRONGTYPE, which would
// keep the circuit half-open for good; a lease no replica could have been granted (a
// century long) is dropped. Either way trial permits flow again.
func TestLuaForeignLeasesKey(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := context.Background()
	for _, c := range []struct {
		name    string
		corrupt func(e *luaEnv)
		want    string // in the corrupt reason; "" when the state is kept
	}{
		{"string", func(e *luaEnv) { e.rdb.Del(ctx, e.leaseKey); e.rdb.Set(ctx, e.leaseKey, "x", 0) }, "leases key is a string"},
		{"hash", func(e *luaEnv) { e.rdb.Del(ctx, e.leaseKey); e.rdb.HSet(ctx, e.leaseKey, "a", "b") }, "leases key is a hash"},
		{"list", func(e *luaEnv) { e.rdb.Del(ctx, e.leaseKey); e.rdb.RPush(ctx, e.leaseKey, "a") }, "leases key is a list"},
		{"lease a century long", func(e *luaEnv) {
			e.rdb.ZAdd(ctx, e.leaseKey, redis.Z{Score: 4e12, Member: "ghost:1:1:1"})
		}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := baseSettings()
			s.OpenDuration = 20 * time.Millisecond
			e := luaEnvOn(t, srv, "leases_"+strings.ReplaceAll(c.name, " ", "_"), s, 1)
			e.trip(0, s.ConsecutiveFailures)
			rep := e.halfOpen("r1", time.Second) // half-open, r1 holds the permit
			gen := rep.state.Generation
			e.trial("r1", gen, 0, 0, leaseID("r1", rep)) // r1 gives it back unused
			c.corrupt(e)
			for _, step := range []func() reply{
				func() reply { return e.acquire("r2", time.Second) },
				func() reply { return e.trial("r2", gen, 1, 0) },
				e.poll,
			} {
				if c.want == "" {
					break
				}
				c.corrupt(e)
				got := step()
				if !strings.Contains(got.corrupt, c.want) || got.state.State != breaker.Closed {
					t.Fatalf("with the leases key corrupt: corrupt %q state %v, want %q and a fresh closed state", got.corrupt, got.state.State, c.want)
				}
				if typ := e.rdb.Type(ctx, e.leaseKey).Val(); typ != "none" {
					t.Fatalf("leases key left as a %s", typ)
				}
			}
			if c.want != "" { // open it again: the half-open period must work as usual
				e.trip(e.poll().state.Generation, s.ConsecutiveFailures)
			}
			var got reply
			eventually(t, waitFor, "a trial permit", func() bool {
				got = e.acquire("r2", time.Second)
				return got.granted > 0
			})
			if got.corrupt != "" {
				t.Fatalf("still corrupt: %q", got.corrupt)
			}
			got = e.trial("r2", got.state.Generation, 1, 0, leaseID("r2", got))
			if got.state.State != breaker.Closed {
				t.Fatalf("after a successful trial: %+v, want closed", got.state)
			}
		})
	}
}

// TestLuaForeignFieldsBounded adds thousands of fields no script owns to a state hash:
// they must be dropped, not read again by every script on every flush.
func TestLuaForeignFieldsBounded(t *testing.T) {
	t.Parallel()
	e := newLuaEnv(t, baseSettings(), 1)
	ctx := context.Background()
	e.poll()
	args := make([]any, 0, 20000)
	for i := range 10000 {
		args = append(args, "junk:"+strconv.Itoa(i), "x")
	}
	e.rdb.HSet(ctx, e.key, args...)
	if rep := e.flush("r1", 0, successes(1)); rep.state.State != breaker.Closed {
		t.Fatalf("state %+v", rep.state)
	}
	if n := e.rdb.HLen(ctx, e.key).Val(); n > 50 {
		t.Fatalf("state hash has %d fields after a flush, want the foreign ones dropped", n)
	}
}

// TestLuaRandomValuesNeverWedge writes random values (junk bytes, numbers of every
// shape and size) into random fields of a circuit's state hash, now and then replaces a
// key with one of another type, and runs a random script after each: every script must
// answer with a reply the replicas can decode (run fails the test on a script error or
// an undecodable reply), and whenever it reports the state unreadable it answers from a
// fresh state (at most the one trip its own call may cause). The seed is logged so a
// failure can be replayed.
func TestLuaRandomValuesNeverWedge(t *testing.T) {
	t.Parallel()
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rnd := rand.New(rand.NewPCG(uint64(seed), 0))
	s := baseSettings()
	s.OpenDuration = 10 * time.Millisecond
	e := newLuaEnv(t, s, 1)
	ctx := context.Background()
	fields := []string{"st", "md", "gen", "ou", "of", "tr", "cf", "gf", "sc", "at", "ep", "rs", "cfg", "cfgr",
		"b:1", "b:" + strconv.FormatInt(time.Now().UnixMilli()/100, 10), "r:r1", "r:ghost", "zz"}
	numbers := []string{"0", "1", "2", "3", "-1", "1.5", "1e3", "1e300", "inf", "-inf", "nan", "0x10",
		"9007199254740993", "9223372036854775807", "18446744073709551616", " 1", "1 ", "", "١"}
	value := func() string {
		switch rnd.IntN(3) {
		case 0:
			return numbers[rnd.IntN(len(numbers))]
		case 1:
			return strconv.Itoa(rnd.IntN(5)) + " " + numbers[rnd.IntN(len(numbers))] + " 1"
		default:
			b := make([]byte, rnd.IntN(64))
			for i := range b {
				b[i] = byte(rnd.IntN(256))
			}
			return string(b)
		}
	}
	gen := uint64(0)
	for i := range 300 {
		switch rnd.IntN(20) {
		case 0:
			e.rdb.Del(ctx, e.key)
			e.rdb.Set(ctx, e.key, value(), 0)
		case 1:
			e.rdb.Del(ctx, e.leaseKey)
			e.rdb.HSet(ctx, e.leaseKey, "x", value())
		default:
			e.rdb.HSet(ctx, e.key, fields[rnd.IntN(len(fields))], value())
		}
		var rep reply
		switch rnd.IntN(4) {
		case 0:
			rep = e.flush("r1", gen, failures(1+rnd.IntN(5)))
		case 1:
			rep = e.acquire("r1", time.Second)
		case 2:
			rep = e.trial("r1", gen, rnd.IntN(2), rnd.IntN(2))
		default:
			rep = e.control([]string{"open", "close", "reset"}[rnd.IntN(3)], 0)
		}
		if rep.corrupt != "" && rep.state.Trips > 1 {
			t.Fatalf("step %d: corrupt %q but state %+v, want a fresh one", i, rep.corrupt, rep.state)
		}
		if len(rep.corrupt) > 200 || len(rep.state.Reason) > 64 {
			t.Fatalf("step %d: reply carries %d bytes of problem, %d of reason", i, len(rep.corrupt), len(rep.state.Reason))
		}
		gen = rep.state.Generation
	}
}
