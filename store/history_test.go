package store

import (
	"context"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// historyStore is a Redis store on e's server that holds e's circuit, to read its
// history through History.
func historyStore(t *testing.T, e *luaEnv, h HistoryOptions) *Redis {
	t.Helper()
	st := newTestRedis(t, e.srv.Client(), RedisOptions{ReplicaID: "reader", History: h})
	t.Cleanup(func() { _ = st.Close() })
	b := breaker.New(e.name, baseSettings(), breaker.Options{})
	st.Attach(map[string]Circuit{e.name: {Breaker: b, TrialLease: time.Second}})
	return st
}

func withHistory(e *luaEnv, h HistoryOptions) *luaEnv {
	e.settingsArg += h.arg()
	return e
}

// The scripts append each transition they make to the upstream's stream, once, with the
// window's counts, the generation after it and the replica whose call made it; History
// reads them newest first.
func TestLuaHistoryTripAndRecover(t *testing.T) {
	t.Parallel()
	h := HistoryOptions{Retention: time.Hour, MaxEntries: 100}
	e := withHistory(newLuaEnv(t, baseSettings(), 1), h) // 3 consecutive failures, open 100 ms
	st := historyStore(t, e, h)

	e.flush("r1", 0, batch{req: 4, fail: 1, tail: 1, hadSuccess: true})
	e.flush("r2", 0, failures(1))
	wantState(t, e.flush("r3", 0, failures(1)), breaker.Open, 1)
	e.poll() // polls record nothing
	granted := e.halfOpen("r2", time.Second)
	wantState(t, granted, breaker.HalfOpen, 2)
	wantState(t, e.trial("r2", 2, 1, 0, leaseID("r2", granted)), breaker.Closed, 3)
	e.poll()

	got, err := st.History(t.Context(), "api", 0)
	if err != nil {
		t.Fatal(err)
	}
	want := []Transition{
		{Upstream: "api", From: "half_open", To: "closed", Reason: "trials_succeeded", Generation: 3, Replica: "r2"},
		{Upstream: "api", From: "open", To: "half_open", Reason: "open_timeout", Generation: 2},
		{Upstream: "api", From: "closed", To: "open", Reason: "consecutive_failures", Requests: 6, Failures: 3,
			Consecutive: 3, Generation: 1, Replica: "r3"},
	}
	if len(got) != len(want) {
		t.Fatalf("history = %+v, want %d transitions", got, len(want))
	}
	for i := range want {
		g := got[i]
		if g.At.IsZero() || (i > 0 && g.At.After(got[i-1].At)) {
			t.Errorf("transition %d at %v: not newest first", i, g.At)
		}
		g.At = time.Time{}
		if g != want[i] {
			t.Errorf("transition %d = %+v\nwant %+v", i, g, want[i])
		}
	}
	if got, err := st.History(t.Context(), "api", 1); err != nil || len(got) != 1 || got[0].To != "closed" {
		t.Errorf("History(limit 1) = %+v, %v; want the close only", got, err)
	}
	if _, err := st.History(t.Context(), "nope", 0); err == nil {
		t.Error("History of an unknown circuit: no error")
	}
}

// max_entries caps the stream exactly; retention drops older entries on the next append
// and expires the stream after its last one.
func TestLuaHistoryCapped(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := context.Background()

	h := HistoryOptions{Retention: time.Hour, MaxEntries: 3}
	e := withHistory(luaEnvOn(t, srv, "capped", baseSettings(), 1), h)
	st := historyStore(t, e, h)
	for range 4 {
		e.control("open", 0)
		e.control("close", 0)
	}
	if n := srv.Client().XLen(ctx, "fuse:{capped}:history").Val(); n != 3 {
		t.Errorf("8 transitions, max_entries 3: the stream holds %d", n)
	}
	got, err := st.History(ctx, "capped", 0)
	if err != nil || len(got) != 3 || got[0].Generation != 8 || got[2].Generation != 6 {
		t.Errorf("History = %+v, %v; want generations 8, 7, 6", got, err)
	}

	h = HistoryOptions{Retention: 300 * time.Millisecond, MaxEntries: 100}
	e = withHistory(luaEnvOn(t, srv, "aged", baseSettings(), 1), h)
	first := e.control("open", 0)
	if ttl := srv.Client().PTTL(ctx, "fuse:{aged}:history").Val(); ttl <= 0 || ttl > 300*time.Millisecond {
		t.Errorf("stream TTL %v, want (0, 300ms]", ttl)
	}
	eventually(t, waitFor, "retention passed on Redis's clock", func() bool {
		return e.poll().now > first.now+300
	})
	e.control("close", 0)
	if n := srv.Client().XLen(ctx, "fuse:{aged}:history").Val(); n != 1 {
		t.Errorf("after the retention: the stream holds %d entries, want 1 (the newest)", n)
	}
	eventually(t, waitFor, "the idle stream expires", func() bool {
		return srv.Client().Exists(ctx, "fuse:{aged}:history").Val() == 0
	})

	// Without history (retention 0, or an older replica's settings) nothing is written.
	e = luaEnvOn(t, srv, "off", baseSettings(), 1)
	e.control("open", 0)
	if n := srv.Client().Exists(ctx, "fuse:{off}:history").Val(); n != 0 {
		t.Error("a script without history settings wrote a stream")
	}
}

// A per-key circuit's transitions go to its upstream's stream, with its key; the
// replica whose command made them is recorded (control's ARGV[7]).
func TestRedisHistoryKeyedAndControl(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	h := HistoryOptions{Retention: time.Hour, MaxEntries: 10}
	st := newTestRedis(t, srv.Client(), RedisOptions{ReplicaID: "ops-1", History: h})
	t.Cleanup(func() { _ = st.Close() })
	b := breaker.New("api", baseSettings(), breaker.Options{})
	st.Attach(map[string]Circuit{"api": {Breaker: b, TrialLease: time.Second}})
	kc := KeyCircuit{Circuit: Circuit{TrialLease: time.Second}, Settings: baseSettings(), Upstream: "api", MaxKeys: 10, IdleTTL: time.Minute}
	st.KeyUpstreams(map[string]KeyCircuit{"api": kc})

	if err := st.ControlKey(t.Context(), "api#tenant-7", kc, Command{Op: OpOpen}); err != nil {
		t.Fatal(err)
	}
	if err := st.Control(t.Context(), "api", Command{Op: OpOpen}); err != nil {
		t.Fatal(err)
	}
	got, err := st.History(t.Context(), "api", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("history = %+v, want the key's open and the upstream's", got)
	}
	for i, w := range []Transition{
		{Upstream: "api", From: "closed", To: "open", Reason: "mode", Generation: 1, Replica: "ops-1"},
		{Upstream: "api", Key: "tenant-7", From: "closed", To: "open", Reason: "mode", Generation: 1, Replica: "ops-1"},
	} {
		g := got[i]
		g.At = time.Time{}
		if g != w {
			t.Errorf("transition %d = %+v\nwant %+v", i, g, w)
		}
	}
	// Redis holds one stream per upstream, in the upstream's hash slot.
	if n := srv.Client().XLen(t.Context(), "fuse:{api}:history").Val(); n != 2 {
		t.Errorf("fuse:{api}:history holds %d entries", n)
	}
}
