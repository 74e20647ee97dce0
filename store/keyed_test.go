package store

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// attachKey gives replica r a key's circuit of upstream api, as the proxy does.
func (r *replica) attachKey(key string, maxKeys int, ttl time.Duration) *breaker.Breaker {
	name := circuitName + "#" + key
	b := breaker.New(name, baseSettings(), breaker.Options{})
	r.st.AttachKey(name, KeyCircuit{Circuit: Circuit{Breaker: b, SettingsHash: "h", TrialLease: 10 * time.Second},
		Upstream: circuitName, MaxKeys: maxKeys, IdleTTL: ttl})
	return b
}

// keyedCalls counts the script calls on keys' circuits a replica sends.
type keyedCalls struct{ n atomic.Int64 }

func (h *keyedCalls) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *keyedCalls) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { h.count(cmd); return next(ctx, cmd) }
}
func (h *keyedCalls) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			h.count(c)
		}
		return next(ctx, cmds)
	}
}
func (h *keyedCalls) count(cmd redis.Cmder) {
	if args := cmd.Args(); len(args) > 3 {
		if s, ok := args[3].(string); ok && len(s) > 10 && s[len(s)-6:] == ":state" && containsKey(s) {
			h.n.Add(1)
		}
	}
}

func containsKey(s string) bool {
	for i := 0; i+5 <= len(s); i++ {
		if s[i:i+5] == ":key:" {
			return true
		}
	}
	return false
}

// A key's failures open it on every replica (its own circuit only); healthy keys send
// Redis nothing; the key recovers through half-open with one trial fleet-wide.
func TestRedisKeyFleetWide(t *testing.T) {
	srv := redistest.Start(t)
	hooks := make([]*keyedCalls, 3)
	var reps []*replica
	for i := range 3 {
		hooks[i] = &keyedCalls{}
		reps = append(reps, startReplica(t, srv, "r"+strconv.Itoa(i), replicaConfig{settings: baseSettings(), hook: hooks[i]}))
	}
	as := make([]*breaker.Breaker, 3)
	bs := make([]*breaker.Breaker, 3)
	for i, r := range reps {
		as[i] = r.attachKey("tenant-a", 100, time.Minute)
		bs[i] = r.attachKey("tenant-b", 100, time.Minute)
	}
	// Healthy keys: many successes, several flush intervals, not one script.
	for range 200 {
		for i := range reps {
			succeed(t, as[i])
			succeed(t, bs[i])
		}
	}
	for range 5 {
		for _, r := range reps {
			r.flushNow(t)
		}
	}
	for i, h := range hooks {
		if n := h.n.Load(); n != 0 {
			t.Fatalf("replica %d sent %d scripts for quiet keys", i, n)
		}
	}
	if n := srv.Client().Exists(t.Context(), "fuse:{api}:key:tenant-a:state").Val(); n != 0 {
		t.Fatal("a quiet key has state in Redis")
	}
	// tenant-a fails on r0 and r1 (the fleet's run of 3), and opens everywhere.
	fail(t, as[0])
	fail(t, as[0])
	reps[0].flushNow(t)
	fail(t, as[1])
	reps[1].flushNow(t)
	for i := range reps {
		eventually(t, waitFor, "tenant-a open on r"+strconv.Itoa(i), func() bool { return as[i].State() == breaker.Open })
		if bs[i].State() != breaker.Closed {
			t.Fatalf("tenant-b on r%d: %v", i, bs[i].State())
		}
		succeed(t, bs[i]) // b keeps flowing
	}
	if st := reps[0].b.State(); st != breaker.Closed {
		t.Fatalf("the upstream's circuit: %v", st)
	}
	ttl := srv.Client().PTTL(t.Context(), "fuse:{api}:key:tenant-a:state").Val()
	if ttl <= 0 || ttl > time.Minute+time.Second {
		t.Fatalf("tenant-a's state expires in %v, want about its open period + 1m", ttl)
	}
	// The open period ends: one trial fleet-wide at a time.
	var mu sync.Mutex
	var trials []breaker.Ticket
	var trialOn []int
	eventually(t, waitFor, "a trial admitted", func() bool {
		for i := range reps {
			if tk, err := as[i].Allow(); err == nil {
				mu.Lock()
				trials, trialOn = append(trials, tk), append(trialOn, i)
				mu.Unlock()
			}
		}
		return len(trials) > 0
	})
	// Nobody else gets one while it runs.
	for range 20 {
		for i := range reps {
			if _, err := as[i].Allow(); err == nil {
				t.Fatalf("a second trial admitted on r%d while r%d's runs", i, trialOn[0])
			}
		}
		time.Sleep(5 * time.Millisecond) // several flush intervals of the other replicas
	}
	if len(trials) != 1 {
		t.Fatalf("%d trials admitted at once, want 1", len(trials))
	}
	as[trialOn[0]].Done(trials[0], breaker.Success, time.Millisecond)
	for i := range reps {
		eventually(t, waitFor, "tenant-a closed on r"+strconv.Itoa(i), func() bool { return as[i].State() == breaker.Closed })
	}
}

// The registry of keys in Redis holds at most max_keys: a key past it decides on its
// replica alone, and a key expires in Redis when idle.
func TestRedisKeyRegistryBounded(t *testing.T) {
	srv := redistest.Start(t)
	hook := &keyedCalls{}
	r := startReplica(t, srv, "r0", replicaConfig{settings: baseSettings(), noRun: true, hook: hook})
	var keys []*breaker.Breaker
	for i := range 10 {
		b := r.attachKey("k"+strconv.Itoa(i), 5, 2*time.Second)
		fail(t, b)
		keys = append(keys, b)
	}
	r.flushNow(t)
	if n := srv.Client().ZCard(t.Context(), "fuse:{api}:keys").Val(); n != 5 {
		t.Fatalf("registry holds %d keys, want 5", n)
	}
	if n := r.st.KeyRefusals(); n != 5 {
		t.Fatalf("KeyRefusals = %d, want 5", n)
	}
	local := 0
	for _, b := range keys {
		if !b.Shared() {
			local++
			fail(t, b) // decides alone: trips at 3
			fail(t, b)
			if b.State() != breaker.Open {
				t.Fatalf("a local key did not trip on its own: %v", b.State())
			}
		}
	}
	if local != 5 {
		t.Fatalf("%d keys decide alone, want 5", local)
	}
	// More failing keys right after: refused without a script each. (The registered
	// keys poll once more after their failure onset's grace: let them.)
	eventually(t, waitFor, "the registered keys to settle", func() bool {
		n := hook.n.Load()
		r.flushNow(t)
		return hook.n.Load() == n
	})
	scripts := hook.n.Load()
	for i := range 100 {
		fail(t, r.attachKey("more"+strconv.Itoa(i), 5, 2*time.Second))
	}
	r.flushNow(t)
	if n := hook.n.Load() - scripts; n != 0 || r.st.KeyRefusals() != 105 {
		t.Fatalf("100 new keys with the registry full: %d scripts, %d refusals; want 0 and 105", n, r.st.KeyRefusals())
	}
	// Idle for the ttl: the keys' state and the registry are gone.
	eventually(t, 5*time.Second, "the keys to expire in Redis", func() bool {
		n, err := srv.Client().Keys(t.Context(), "fuse:{api}:key*").Result()
		return err == nil && len(n) == 0
	})
	// Control reaches a key this replica does not track, fleet-wide.
	k := KeyCircuit{Settings: baseSettings(), Upstream: circuitName, MaxKeys: 5, IdleTTL: time.Minute}
	if err := r.st.ControlKey(t.Context(), "api#other", k, Command{Op: OpOpen}); err != nil {
		t.Fatal(err)
	}
	h, err := r.st.InspectKey(t.Context(), "api#other", k)
	if err != nil || h["st"] != "1" {
		t.Fatalf("InspectKey = %v, %v; want st 1", h, err)
	}
}

// Opening a key by Control reaches the replicas that track it.
func TestRedisKeyControlFleetWide(t *testing.T) {
	srv := redistest.Start(t)
	r0 := startReplica(t, srv, "r0", replicaConfig{settings: baseSettings()})
	r1 := startReplica(t, srv, "r1", replicaConfig{settings: baseSettings()})
	b0 := r0.attachKey("acme", 10, time.Minute)
	b1 := r1.attachKey("acme", 10, time.Minute)
	if err := r0.st.ControlKey(t.Context(), "api#acme", KeyCircuit{}, Command{Op: OpMode, Mode: breaker.ForcedOpen}); err != nil {
		t.Fatal(err)
	}
	for _, b := range []*breaker.Breaker{b0, b1} {
		eventually(t, waitFor, "forced open", func() bool { return b.Mode() == breaker.ForcedOpen })
	}
	if err := r1.st.ControlKey(t.Context(), "api#acme", KeyCircuit{}, Command{Op: OpReset}); err != nil {
		t.Fatal(err)
	}
	for _, b := range []*breaker.Breaker{b0, b1} {
		eventually(t, waitFor, "reset", func() bool { return b.Mode() == breaker.Normal && b.State() == breaker.Closed })
	}
	r0.st.DetachKey("api#acme")
	if _, ok := r0.st.get("api#acme"); ok {
		t.Fatal("a detached key is still attached")
	}
}

// With 10,000 active keys, all healthy, a replica sends Redis at most 0.001 commands per
// request at steady state: quiet keys send nothing, the heartbeat alone remains.
func TestRedisKeysCommandsPerRequest(t *testing.T) {
	srv := redistest.Start(t)
	settings := baseSettings()
	settings.Window = 10 * time.Second
	r := startReplica(t, srv, "r0", replicaConfig{settings: settings, flush: 100 * time.Millisecond})
	const n = 10_000
	keys := make([]*breaker.Breaker, n)
	for i := range keys {
		name := circuitName + "#t" + strconv.Itoa(i)
		keys[i] = breaker.New(name, settings, breaker.Options{})
		r.st.AttachKey(name, KeyCircuit{Circuit: Circuit{Breaker: keys[i], SettingsHash: "h", TrialLease: 10 * time.Second},
			Upstream: circuitName, MaxKeys: n, IdleTTL: time.Minute})
	}
	serve := func(d time.Duration) int {
		requests := 0
		for end := time.Now().Add(d); time.Now().Before(end); {
			for range 1000 {
				b := keys[requests%n]
				tk, err := b.Allow()
				if err != nil {
					t.Fatal(err)
				}
				b.Done(tk, breaker.Success, time.Millisecond)
				requests++
			}
			time.Sleep(time.Millisecond) // about 1,000 requests per millisecond at most
		}
		return requests
	}
	serve(time.Second) // warm up: every key active
	before := srv.CommandStats()
	requests := serve(3 * time.Second)
	after := srv.CommandStats()
	cmds := int64(0)
	for name, calls := range after {
		cmds += calls - before[name]
	}
	cmds -= 1 // the INFO that read before
	ratio := float64(cmds) / float64(requests)
	t.Logf("%d requests over %d active keys in 3s, %d Redis commands: %.6f per request (%v)", requests, n, cmds, ratio, diff(before, after))
	if ratio > 0.001 {
		t.Fatalf("%.6f Redis commands per request, want <= 0.001", ratio)
	}
}

func diff(before, after map[string]int64) map[string]int64 {
	out := map[string]int64{}
	for k, v := range after {
		if d := v - before[k]; d > 0 {
			out[k] = d
		}
	}
	return out
}

// A replica that starts tracking a key after the fleet opened it (or an operator forced
// it) starts from that state, learnt from the transition it heard.
func TestRedisKeyLearntBeforeTracked(t *testing.T) {
	srv := redistest.Start(t)
	r0 := startReplica(t, srv, "r0", replicaConfig{settings: baseSettings()})
	r1 := startReplica(t, srv, "r1", replicaConfig{settings: baseSettings()})
	r0.attachKey("acme", 10, time.Minute)
	if err := r0.st.ControlKey(t.Context(), "api#acme", KeyCircuit{}, Command{Op: OpMode, Mode: breaker.ForcedOpen}); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitFor, "r1 to hear of it", func() bool {
		r1.st.kmu.Lock()
		defer r1.st.kmu.Unlock()
		_, ok := r1.st.remembered["api#acme"]
		return ok
	})
	b1 := r1.attachKey("acme", 10, time.Minute)
	if b1.Mode() != breaker.ForcedOpen {
		t.Fatalf("a key tracked after it was forced open: mode %v", b1.Mode())
	}
	if _, err := b1.Allow(); err == nil {
		t.Fatal("admitted by a key forced open fleet-wide")
	}
}

// While Redis is down a key decides on its replica alone, like every circuit: keys
// attached before and during the outage trip on local failures; when Redis is back,
// they are shared again.
func TestRedisKeyLocalWhenDown(t *testing.T) {
	srv := redistest.Start(t)
	r := startReplica(t, srv, "r0", replicaConfig{settings: baseSettings(), degradeAfter: 2})
	before := r.attachKey("before", 10, time.Minute)
	srv.Kill()
	eventually(t, waitFor, "degraded", func() bool {
		succeedIfAdmitted(r.b)
		return r.st.Status().Degraded
	})
	during := r.attachKey("during", 10, time.Minute)
	for _, b := range []*breaker.Breaker{before, during} {
		if b.Shared() {
			t.Fatalf("%s: shared while Redis is down", b.Name())
		}
		for range 3 {
			fail(t, b)
		}
		if b.State() != breaker.Open {
			t.Fatalf("%s: %v after 3 local failures, want open", b.Name(), b.State())
		}
	}
	srv.Restart()
	eventually(t, 10*time.Second, "recovered", func() bool {
		succeedIfAdmitted(r.b)
		return !r.st.Status().Degraded
	})
	for _, b := range []*breaker.Breaker{before, during} {
		if !b.Shared() {
			t.Fatalf("%s: still local after Redis came back", b.Name())
		}
	}
}

// A replica that starts after an operator forced a key open (no replica tracking it)
// reads the registry when it resyncs: the key starts forced open on it.
func TestRedisKeyRegistryReadAtResync(t *testing.T) {
	srv := redistest.Start(t)
	r0 := startReplica(t, srv, "r0", replicaConfig{settings: baseSettings()})
	k := KeyCircuit{Circuit: Circuit{SettingsHash: "h", TrialLease: 10 * time.Second}, Settings: baseSettings(),
		Upstream: circuitName, MaxKeys: 10, IdleTTL: time.Minute}
	if err := r0.st.ControlKey(t.Context(), "api#acme", k, Command{Op: OpMode, Mode: breaker.ForcedOpen}); err != nil {
		t.Fatal(err)
	}
	r1 := startReplica(t, srv, "r1", replicaConfig{settings: baseSettings(), noRun: true})
	r1.st.KeyUpstreams(map[string]KeyCircuit{circuitName: k})
	if err := r1.st.Resync(t.Context()); err != nil {
		t.Fatal(err)
	}
	b := r1.attachKey("acme", 10, time.Minute)
	if b.Mode() != breaker.ForcedOpen {
		t.Fatalf("a key forced open before this replica started: mode %v", b.Mode())
	}
	if other := r1.attachKey("other", 10, time.Minute); other.State() != breaker.Closed || other.Mode() != breaker.Normal {
		t.Fatalf("a key the fleet never opened: %v %v", other.State(), other.Mode())
	}
}

// A key's failure counted before a resync is sent with it, not dropped: the fleet's run
// of consecutive failures counts it (a replica resyncs when its subscription is back, at
// any moment of a key's life). TestPostgresKeys lost it this way, now and then.
func TestKeyFailureBeforeAResyncCounts(t *testing.T) {
	srv := redistest.Start(t)
	rc := replicaConfig{settings: baseSettings(), noRun: true}
	r1, r2 := startReplica(t, srv, "r1", rc), startReplica(t, srv, "r2", rc)
	k1, k2 := r1.attachKey("acme", 10, time.Minute), r2.attachKey("acme", 10, time.Minute)
	fail(t, k1)
	if err := r1.st.Resync(t.Context()); err != nil {
		t.Fatal(err)
	}
	fail(t, k2)
	fail(t, k2)
	r2.flushNow(t) // 1 + 2 consecutive failures fleet-wide: the threshold
	if k2.State() != breaker.Open {
		t.Fatalf("the key after r1's failure (sent at its resync) and r2's two: %v, want open", k2.State())
	}
}
