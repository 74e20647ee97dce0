package store

import (
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// The store holds no default of its own for what the operator configures: each is in
// config.Default() alone, so none can drift (the exchange timeout was 500 ms here and
// 450 ms from the config). A zero option is refused, naming it, instead of being filled
// in; and the client, which the store owns, is closed.
func TestNewRedisRefusesMissingOptions(t *testing.T) {
	full := RedisOptions{Prefix: "fuse", ReplicaID: "r", FlushInterval: 100 * time.Millisecond,
		DegradeAfter: 3, Timeout: 450 * time.Millisecond}
	for _, tc := range []struct {
		missing string
		clear   func(*RedisOptions)
	}{
		{"Prefix", func(o *RedisOptions) { o.Prefix = "" }},
		{"FlushInterval", func(o *RedisOptions) { o.FlushInterval = 0 }},
		{"FlushInterval", func(o *RedisOptions) { o.FlushInterval = -time.Second }},
		{"DegradeAfter", func(o *RedisOptions) { o.DegradeAfter = 0 }},
		{"Timeout", func(o *RedisOptions) { o.Timeout = 0 }},
	} {
		t.Run(tc.missing, func(t *testing.T) {
			o := full
			tc.clear(&o)
			client := offlineClient(t)
			st, err := NewRedis(client, o)
			if err == nil {
				st.Close()
				t.Fatalf("NewRedis accepted options without %s", tc.missing)
			}
			if !strings.Contains(err.Error(), tc.missing) {
				t.Errorf("error %q does not name %s", err, tc.missing)
			}
			if perr := client.Ping(t.Context()).Err(); perr != redis.ErrClosed {
				t.Errorf("client after a refusal: PING %v, want it closed", perr)
			}
		})
	}
	st, err := NewRedis(offlineClient(t), full)
	if err != nil {
		t.Fatalf("NewRedis refused complete options: %v", err)
	}
	st.Close()
}

// A circuit's trial lease has no default either: attaching one without it is a bug in
// the caller, caught at once rather than at its first half-open period.
func TestAttachRefusesCircuitWithoutLease(t *testing.T) {
	st := offlineStore(t)
	defer func() {
		if p := recover(); p == nil || !strings.Contains(p.(string), `"u"`) {
			t.Errorf("Attach without a TrialLease: panic %v, want one naming the circuit", p)
		}
	}()
	st.Attach(map[string]Circuit{"u": {Breaker: breaker.New("u", baseSettings(), breaker.Options{}), SettingsHash: "h"}})
}

// After refusing a circuit, the store is as before: still usable.
func TestAttachRefusalLeavesStoreUsable(t *testing.T) {
	st := offlineStore(t)
	func() {
		defer func() { _ = recover() }()
		st.Attach(map[string]Circuit{"u": {Breaker: breaker.New("u", baseSettings(), breaker.Options{}), SettingsHash: "h"}})
	}()
	st.Attach(map[string]Circuit{"v": {Breaker: breaker.New("v", baseSettings(), breaker.Options{}), SettingsHash: "h", TrialLease: time.Second}})
	if cs := st.list(); len(cs) != 1 || cs[0].name != "v" {
		t.Errorf("circuits after a refused Attach and a good one: %d", len(cs))
	}
}

// offlineClient is a client of a port nothing listens on; it is never dialled.
func offlineClient(tb testing.TB) redis.UniversalClient {
	client, err := NewRedisClient(RedisClientOptions{Addr: "127.0.0.1:1"})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { client.Close() })
	return client
}
