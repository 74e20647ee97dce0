package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestFaultCorruptSharedState writes values no fuseproxy writes into a live
// redis-server, in the state and leases keys of the circuit two replicas share: keys of
// the wrong type, a megabyte field, binary junk, numbers out of any replica's range, a
// junk reason. After each, every replica in turn (each gets the traffic alone, so each
// reads the value itself) must log a clear error naming the key and the problem, in a
// line of sane size; nobody may log a script failure or an undecodable reply (a value
// that wedges the scripts: no replica would ever learn the state again), nobody crashes;
// and the circuit is fresh and closed: traffic flows, and it still opens on failures.
func TestFaultCorruptSharedState(t *testing.T) {
	t.Parallel()
	const threshold = 3
	f := startFaultFleet(t, 2, false, func(_ int, c *faultConfig) {
		c.FlushInterval = 50 * time.Millisecond
		// An open circuit is polled shortly before its open period ends (and every few
		// seconds as a backstop): a short one, so that its replicas read the value soon.
		c.Upstreams[0].ConsecutiveFailures, c.Upstreams[0].OpenDuration = threshold, 2*time.Second
	})
	ctx := context.Background()
	rc := f.Redis.Client()
	stateKey := f.key()
	leaseKey := f.Cfgs[0].Prefix + ":{" + upstream + "}:leases"
	huge := strings.Repeat("\xff", 1<<20)
	// replace swaps a key for a value of another type atomically: a replica's script
	// may run between two separate commands.
	replace := func(key string, set func(redis.Pipeliner)) error {
		_, err := rc.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Del(ctx, key)
			set(p)
			return nil
		})
		return err
	}
	cases := []struct {
		name    string
		open    bool // the circuit is open when the value is written
		corrupt func() error
		want    string // in the logged problem
	}{
		{"state: string key", false, func() error { return replace(stateKey, func(p redis.Pipeliner) { p.Set(ctx, stateKey, "hello", 0) }) }, "not a hash"},
		{"state: list key", true, func() error { return replace(stateKey, func(p redis.Pipeliner) { p.RPush(ctx, stateKey, "st", "1") }) }, "not a hash"},
		{"state: a 1 MiB field", false, func() error { return rc.HSet(ctx, stateKey, "st", huge).Err() }, "field st"},
		{"state: binary junk", true, func() error { return rc.HSet(ctx, stateKey, "md", "\x00\x01\xfe").Err() }, "field md"},
		{"state: generation 1e300", false, func() error { return rc.HSet(ctx, stateKey, "gen", "1e300").Err() }, "field gen"},
		{"state: generation past 2^64", true, func() error { return rc.HSet(ctx, stateKey, "gen", "99999999999999999999").Err() }, "field gen"},
		{"state: open until the end of time", false, func() error { return rc.HSet(ctx, stateKey, "st", "1", "ou", "1e308").Err() }, "field ou"},
		{"state: negative trips", true, func() error { return rc.HSet(ctx, stateKey, "tr", "-1").Err() }, "field tr"},
		{"state: junk reason", true, func() error { return rc.HSet(ctx, stateKey, "rs", "two words\nand more").Err() }, "field rs"},
		{"leases: string key", true, func() error { return replace(leaseKey, func(p redis.Pipeliner) { p.Set(ctx, leaseKey, "x", 0) }) }, "leases key is a string"},
		{"leases: hash key", false, func() error { return replace(leaseKey, func(p redis.Pipeliner) { p.HSet(ctx, leaseKey, "a", huge) }) }, "leases key is a hash"},
		{"leases: list key", true, func() error { return replace(leaseKey, func(p redis.Pipeliner) { p.RPush(ctx, leaseKey, "a") }) }, "leases key is a list"},
	}
	time.Sleep(5 * f.Cfgs[0].FlushInterval) // the replicas' start-up reads are done
	logged := map[string]int{}
	for _, c := range cases {
		for _, p := range f.Replicas {
			if c.open {
				// Open through the fleet's admin API: the circuit must not be closed, so
				// the corrupt value is read by the replicas' polls and permit requests
				// (as the open period nears its end) as well as by flushes.
				r := faultAdmin(t, p.client, f.Cfgs[0].AdminListen, "POST", "/circuits/api/open", "", "")
				if r.Status != 200 {
					t.Fatalf("%s: open: %v", c.name, r)
				}
				for _, q := range f.Replicas {
					if !waitFor(3*time.Second, 5*time.Millisecond, func() bool { return q.Get("/open").Rejected() }) {
						t.Fatalf("%s: %s not open after an admin open", c.name, q.ID)
					}
				}
			}
			since := time.Now()
			if err := c.corrupt(); err != nil {
				t.Fatalf("%s: writing the foreign value: %v", c.name, err)
			}
			if !c.open {
				// A quiet circuit's successes are held, not sent: a failure is, at once
				// (one, below the threshold; the repair's fresh state drops it), and its
				// flush reads the value.
				f.Backend.Set(t, "fail=on")
				p.Get("/fail")
				f.Backend.Set(t, "fail=off")
			}
			// With the circuit closed, p's flush reads the value; an open circuit is
			// polled by every replica near the end of its open period. Either may read it.
			readers := f.Replicas
			var l logLine
			var reader *Proxy
			ok := waitFor(5*time.Second, 5*time.Millisecond, func() bool {
				p.Get("/traffic")
				for _, q := range readers {
					for _, x := range q.LogsWhere(msgPrefix("shared state was unreadable")) {
						if !x.At.Before(since) {
							l, reader = x, q
							return true
						}
					}
				}
				return false
			})
			if !ok {
				t.Fatalf("%s: %s logged no \"shared state was unreadable\" line within 5s; log:\n%s", c.name, p.ID, tail(p.Stderr(), 20))
			}
			logged[reader.ID]++
			if prob := l.Str("problem"); !strings.Contains(prob, c.want) || len(prob) > 200 || l.Str("key") != stateKey {
				t.Errorf("%s: %s logged %.300s, want key %s and a problem (< 200 bytes) mentioning %q", c.name, reader.ID, l, stateKey, c.want)
			}
			// Fresh and closed on every replica.
			for _, q := range f.Replicas {
				if r := pollUntil(q, 3*time.Second, 10*time.Millisecond, response.OK); !r.OK() {
					t.Errorf("%s: %s after the repair: %v, want 200 (a fresh closed state)", c.name, q.ID, r)
				}
			}
		}
	}
	for _, p := range f.Replicas {
		for _, bad := range []string{"script failed in Redis", "unexpected reply from Redis", "panic"} {
			if l := p.LogsWhere(msgPrefix(bad)); len(l) > 0 {
				t.Errorf("%s logged %q (%d lines), e.g. %v", p.ID, bad, len(l), l[0])
			}
		}
		if strings.Contains(p.Stderr(), "goroutine ") || p.Exited() {
			t.Errorf("%s crashed or exited (code %d)", p.ID, p.ExitCode())
		}
	}
	// Protection still works: failures spread over the fleet open it everywhere.
	f.Backend.Set(t, "fail=on")
	for i := range threshold {
		if r := f.Replicas[i%2].Get("/fail"); !failedByBackend(r) {
			t.Fatalf("failure %d: %v", i+1, r)
		}
	}
	for _, p := range f.Replicas {
		if !waitFor(3*time.Second, 5*time.Millisecond, func() bool { return p.Get("/after").Rejected() }) {
			t.Errorf("%s: the fleet did not open on %d failures after the repairs", p.ID, threshold)
		}
	}
	if typ := rc.Type(ctx, stateKey).Val(); typ != "hash" {
		t.Errorf("state key is a %s at the end, want a hash", typ)
	}
	t.Logf("clear errors logged per replica: %v", logged)
	for _, p := range f.Replicas {
		if logged[p.ID] == 0 {
			t.Errorf("%s never logged a clear error", p.ID)
		}
	}
	faultFigures{Extra: map[string]any{"foreign_values": len(cases), "replicas": len(f.Replicas),
		"clear_errors_logged": logged}}.record(t, "corrupt_shared_state")
}
