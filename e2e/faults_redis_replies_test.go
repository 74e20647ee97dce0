package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// redisReplyFault is a way for Redis to answer with an error reply instead of dropping
// the connection. breaks and heals run on admin (a connection of the test's own);
// heals is nil for a fault that lasts (set by redis-server's own configuration).
type redisReplyFault struct {
	name   string
	want   string   // the Redis error names this
	args   []string // redis-server's configuration
	url    func(addr string) string
	breaks func(t *testing.T, srv *redistest.Server, admin *redis.Conn)
	heals  func(t *testing.T, admin *redis.Conn)
}

func adminDo(t *testing.T, admin *redis.Conn, args ...any) string {
	t.Helper()
	v, err := admin.Do(context.Background(), args...).Result()
	if err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	s, _ := v.(string)
	return s
}

func adminDoer(args ...any) func(t *testing.T, _ *redistest.Server, admin *redis.Conn) {
	return func(t *testing.T, _ *redistest.Server, admin *redis.Conn) { adminDo(t, admin, args...) }
}

func adminHealer(cmds ...[]any) func(t *testing.T, admin *redis.Conn) {
	return func(t *testing.T, admin *redis.Conn) {
		for _, c := range cmds {
			adminDo(t, admin, c...)
		}
	}
}

func redisReplyFaults() []redisReplyFault {
	deadPort := func(t *testing.T) string { return strconv.Itoa(freePort(t)) }
	return []redisReplyFault{{
		name: "NOAUTH", want: "NOAUTH",
		breaks: func(t *testing.T, _ *redistest.Server, admin *redis.Conn) {
			adminDo(t, admin, "CONFIG", "SET", "requirepass", "s3cret")
			adminDo(t, admin, "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
			adminDo(t, admin, "CLIENT", "KILL", "TYPE", "pubsub")
		},
		heals: adminHealer([]any{"CONFIG", "SET", "requirepass", ""}),
	}, {
		name: "WRONGPASS", want: "WRONGPASS",
		url: func(addr string) string { return "redis://fuse:pw@" + addr + "/0" },
		breaks: func(t *testing.T, _ *redistest.Server, admin *redis.Conn) {
			adminDo(t, admin, "ACL", "SETUSER", "fuse", "resetpass", ">changed")
			adminDo(t, admin, "CLIENT", "KILL", "USER", "fuse")
		},
		heals: adminHealer([]any{"ACL", "SETUSER", "fuse", "resetpass", ">pw"}),
	}, {
		name: "OOM", want: "OOM",
		breaks: func(t *testing.T, _ *redistest.Server, admin *redis.Conn) {
			adminDo(t, admin, "CONFIG", "SET", "maxmemory-policy", "noeviction")
			adminDo(t, admin, "CONFIG", "SET", "maxmemory", "1")
		},
		heals: adminHealer([]any{"CONFIG", "SET", "maxmemory", "0"}),
	}, {
		name: "READONLY", want: "READONLY",
		breaks: func(t *testing.T, _ *redistest.Server, admin *redis.Conn) {
			adminDo(t, admin, "REPLICAOF", "127.0.0.1", deadPort(t))
		},
		heals: adminHealer([]any{"REPLICAOF", "NO", "ONE"}),
	}, {
		name: "MASTERDOWN", want: "MASTERDOWN",
		breaks: func(t *testing.T, _ *redistest.Server, admin *redis.Conn) {
			adminDo(t, admin, "CONFIG", "SET", "replica-serve-stale-data", "no")
			adminDo(t, admin, "REPLICAOF", "127.0.0.1", deadPort(t))
		},
		heals: adminHealer([]any{"REPLICAOF", "NO", "ONE"}),
	}, {
		name: "NOPERM", want: "NOPERM",
		breaks: adminDoer("ACL", "SETUSER", "default", "resetkeys", "~elsewhere:*"),
		heals:  adminHealer([]any{"ACL", "SETUSER", "default", "allkeys"}),
	}, {
		name: "MISCONF", want: "MISCONF", args: []string{"--enable-protected-configs", "yes"},
		breaks: func(t *testing.T, _ *redistest.Server, admin *redis.Conn) {
			dir := filepath.Join(t.TempDir(), "gone")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			adminDo(t, admin, "CONFIG", "SET", "dir", dir)
			if err := os.Remove(dir); err != nil {
				t.Fatal(err)
			}
			adminDo(t, admin, "CONFIG", "SET", "save", "3600 1")
			adminDo(t, admin, "BGSAVE")
			if !waitFor(10*time.Second, 10*time.Millisecond, func() bool {
				info := adminDo(t, admin, "INFO", "persistence")
				return strings.Contains(info, "rdb_last_bgsave_status:err") && strings.Contains(info, "rdb_bgsave_in_progress:0")
			}) {
				t.Fatal("the background save into a removed directory did not fail")
			}
		},
		heals: adminHealer([]any{"CONFIG", "SET", "save", ""}),
	}, {
		name: "BUSY", want: "BUSY",
		breaks: func(t *testing.T, srv *redistest.Server, admin *redis.Conn) {
			adminDo(t, admin, "CONFIG", "SET", "busy-reply-threshold", "10")
			c := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1, ReadTimeout: -1})
			var wg sync.WaitGroup
			wg.Go(func() { _ = c.Eval(context.Background(), "while true do end", nil).Err() })
			t.Cleanup(func() {
				_ = admin.Do(context.Background(), "SCRIPT", "KILL").Err()
				wg.Wait()
				_ = c.Close()
			})
		},
		heals: func(t *testing.T, admin *redis.Conn) {
			if !waitFor(10*time.Second, 10*time.Millisecond, func() bool {
				return admin.Do(context.Background(), "SCRIPT", "KILL").Err() == nil
			}) {
				t.Fatal("SCRIPT KILL did not succeed")
			}
		},
	}, {
		name: "unknown command", want: "unknown command",
		args: []string{"--rename-command", "EVALSHA", "EVALSHA_RENAMED"},
	}}
}

// TestFaultRedisErrorReplies: Redis answers the replica's scripts with an error reply
// (NOAUTH, WRONGPASS, OOM, READONLY, MASTERDOWN, NOPERM, MISCONF, BUSY, EVALSHA renamed
// away) while the replica is idle. Within about a second /readyz says degraded with
// local protection and names the Redis error, fuseproxy_store_degraded is 1, the failed
// exchanges are counted, and one log line names the error; the circuit then opens after
// exactly consecutive_failures; once the fault is gone the replica resyncs and shares
// again.
func TestFaultRedisErrorReplies(t *testing.T) {
	t.Parallel()
	for _, fc := range redisReplyFaults() {
		t.Run(strings.ReplaceAll(fc.name, " ", "_"), func(t *testing.T) {
			t.Parallel()
			testRedisErrorReply(t, fc)
		})
	}
}

func testRedisErrorReply(t *testing.T, fc redisReplyFault) {
	const threshold = 5
	srv := redistest.Start(t, fc.args...)
	adminClient := redis.NewClient(&redis.Options{Addr: srv.Addr(), PoolSize: 1, MaxRetries: -1})
	admin := adminClient.Conn()
	t.Cleanup(func() { _ = admin.Close(); _ = adminClient.Close() })
	url := srv.URL()
	if fc.url != nil {
		adminDo(t, admin, "ACL", "SETUSER", "fuse", "on", ">pw", "~*", "&*", "+@all")
		url = fc.url(srv.Addr())
	}
	backend := startBackend(t)
	c := newFaultConfig(t, backend.URL()).withRedis("r1", url)
	c.Upstreams[0].OpenDuration = 30 * time.Second
	p := startProxy(t, c.YAML(t))
	metric := func(name string) float64 { return faultMetric(t, p.client, c.AdminListen, name, "") }
	readyz := func() faultReadiness { rd, _ := faultReadyz(t, p, c.AdminListen, ""); return rd }

	broke := time.Now()
	if fc.breaks != nil {
		if !waitFor(10*time.Second, 10*time.Millisecond, func() bool { return readyz().Protection == "shared" }) {
			t.Fatalf("/readyz before the fault: %+v, want protection shared", readyz())
		}
		broke = time.Now()
		fc.breaks(t, srv, admin)
	}
	var rd faultReadiness
	if !waitFor(10*time.Second, 10*time.Millisecond, func() bool { rd = readyz(); return rd.Degraded }) {
		t.Fatalf("/readyz with %s: %+v, want degraded", fc.name, rd)
	}
	noticed := time.Since(broke)
	t.Logf("%s: /readyz degraded after %v: %+v", fc.name, noticed.Round(time.Millisecond), rd)
	if fc.breaks != nil && noticed > 1500*time.Millisecond {
		t.Errorf("an idle replica took %v to say it is degraded, want about 1s at most", noticed)
	}
	if rd.Protection != "local" || !strings.Contains(rd.StoreError, fc.want) {
		t.Errorf("/readyz with %s: %+v, want protection local and the error naming %s", fc.name, rd, fc.want)
	}
	if d, e := metric("fuseproxy_store_degraded"), metric("fuseproxy_store_flush_errors_total"); d != 1 || e == 0 {
		t.Errorf("with %s: fuseproxy_store_degraded %v, fuseproxy_store_flush_errors_total %v; want 1 and some", fc.name, d, e)
	}
	lines := p.LogsWhere(msgPrefix("redis store degraded"))
	if len(lines) != 1 || !strings.Contains(lines[0].Str("error"), fc.want) {
		t.Errorf("with %s: degraded log lines %v, want one naming %s", fc.name, lines, fc.want)
	}

	backend.Set(t, "fail=on")
	if n, r := faultTripLocally(t, p, 4*threshold); n != threshold {
		t.Errorf("with %s: opened after %d failures (%v), want %d", fc.name, n, r, threshold)
	}
	backend.Reset(t)
	time.Sleep(500 * time.Millisecond) // several flush intervals with the fault in place
	if lines := p.LogsWhere(msgPrefix("redis store recovered")); len(lines) != 0 || !readyz().Degraded {
		t.Errorf("with %s in place: %v, /readyz %+v; want no recovery while the fault lasts", fc.name, lines, readyz())
	}
	if fc.heals == nil {
		return
	}
	healed := time.Now()
	fc.heals(t, admin)
	faultWaitLog(t, p, 10*time.Second, `"redis store recovered"`, healed, msgPrefix("redis store recovered"))
	if rd := readyz(); rd.Degraded || rd.Protection != "shared" || metric("fuseproxy_store_degraded") != 0 {
		t.Errorf("after %s healed: /readyz %+v, fuseproxy_store_degraded %v; want shared and 0", fc.name, rd, metric("fuseproxy_store_degraded"))
	}
	if r := p.Get("/after"); !r.OK() {
		t.Errorf("after %s healed: got %v, want 200 (the shared state, closed)", fc.name, r)
	}
}

// TestFaultRedisKilledIdleReplica: a replica without traffic says on /readyz within a
// second that Redis was killed (it was about 4.5s, or never).
func TestFaultRedisKilledIdleReplica(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	backend := startBackend(t)
	c := newFaultConfig(t, backend.URL()).withRedis("r1", srv.URL())
	p := startProxy(t, c.YAML(t))
	readyz := func() faultReadiness { rd, _ := faultReadyz(t, p, c.AdminListen, ""); return rd }
	if !waitFor(10*time.Second, 10*time.Millisecond, func() bool { return readyz().Protection == "shared" }) {
		t.Fatalf("/readyz before the kill: %+v, want protection shared", readyz())
	}
	time.Sleep(time.Second) // idle: past the start-up exchanges
	srv.Kill()
	killed := time.Now()
	var rd faultReadiness
	if !waitFor(time.Second, 5*time.Millisecond, func() bool { rd = readyz(); return rd.Degraded }) {
		t.Fatalf("an idle replica 1s after Redis was killed: /readyz %+v, want degraded", rd)
	}
	t.Logf("an idle replica said degraded %v after Redis was killed: %+v", time.Since(killed).Round(time.Millisecond), rd)
}
