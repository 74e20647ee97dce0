package health

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
	"github.com/fuseproxy/fuseproxy/store"
)

// TestSharedProbing: three replicas (a Redis store and a checker each) on one
// redis-server check one backend. The backend receives one probe per interval from the
// fleet, not three; when the holder stops, another replica takes over within the lease
// (2 × interval) plus one interval of the holder's last probe.
func TestSharedProbing(t *testing.T) {
	const (
		interval = 200 * time.Millisecond
		ttl      = ClaimTTLFactor * interval
		span     = 4 * time.Second
	)
	srv := redistest.Start(t)
	var hits atomic.Int64
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.UserAgent() == UserAgent {
			hits.Add(1)
		}
	}))
	defer backend.Close()
	u, _ := url.Parse(backend.URL)
	name := config.TargetName("api", u)

	type replica struct {
		c      *Checker
		cancel context.CancelFunc
		ran    chan error
		mu     sync.Mutex
		starts []time.Time // when each of its probes started
	}
	replicas := make([]*replica, 3)
	for i := range replicas {
		client, err := store.NewRedisClient(store.RedisClientOptions{Addr: srv.Addr()})
		if err != nil {
			t.Fatal(err)
		}
		st, err := store.NewRedis(client, store.RedisOptions{Prefix: "fp", ReplicaID: string(rune('a' + i)),
			FlushInterval: 100 * time.Millisecond, DegradeAfter: 3, Timeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		r := &replica{ran: make(chan error, 1)}
		r.c = New(Options{Store: st, Observe: func(res Result) {
			if res.Outcome != OutcomeOK || res.Local {
				t.Errorf("replica %d: probe %+v", i, res)
			}
			r.mu.Lock()
			r.starts = append(r.starts, time.Now().Add(-res.Duration))
			r.mu.Unlock()
		}})
		br := breaker.New(name, config.DefaultUpstream().Outlier.Settings(), breaker.Options{})
		r.c.Update([]Target{{Upstream: "api", Circuit: name, URL: u, Check: check(interval), Breaker: br}})
		var ctx context.Context
		ctx, r.cancel = context.WithCancel(context.Background())
		go func() { r.ran <- r.c.Run(ctx) }()
		replicas[i] = r
	}
	stop := func(r *replica) {
		r.cancel()
		select {
		case <-r.ran:
		case <-time.After(waitFor):
			t.Fatal("Run did not return")
		}
	}
	defer func() {
		for _, r := range replicas {
			if r != nil {
				stop(r)
			}
		}
	}()
	probes := func(r *replica) int {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.starts)
	}

	eventually(t, waitFor, "the first probes", func() bool { return hits.Load() >= 3 })
	before := make([]int, len(replicas))
	for i, r := range replicas {
		before[i] = probes(r)
	}
	n0 := hits.Load()
	<-time.After(span) // the span measured, not a synchronisation
	n := hits.Load() - n0
	want := int64(span / interval)
	probers, holder, most := 0, 0, 0
	for i, r := range replicas {
		if d := probes(r) - before[i]; d > 0 {
			probers++
			if d > most {
				holder, most = i, d
			}
		}
	}
	t.Logf("%d probes in %v at interval %v from 3 replicas (%d of them probed; holder %d with %d)",
		n, span, interval, probers, holder, most)
	if n > want+2 || n < want-2 {
		t.Errorf("backend got %d probes in %v, want %d ± 2 (one per interval from the whole fleet)", n, span, want)
	}

	// The holder stops: another replica takes over once its lease expired.
	h := replicas[holder]
	stop(h)
	replicas[holder] = nil
	h.mu.Lock()
	last := h.starts[len(h.starts)-1]
	h.mu.Unlock()
	others := map[int]int{}
	for i, r := range replicas {
		if r != nil {
			others[i] = probes(r)
		}
	}
	var first time.Time
	eventually(t, waitFor, "another replica takes over", func() bool {
		for i, r := range replicas {
			if r == nil {
				continue
			}
			r.mu.Lock()
			if len(r.starts) > others[i] && (first.IsZero() || r.starts[others[i]].Before(first)) {
				first = r.starts[others[i]]
			}
			r.mu.Unlock()
		}
		return !first.IsZero()
	})
	gap := first.Sub(last)
	t.Logf("takeover %v after the holder's last probe (lease %v, interval %v)", gap, ttl, interval)
	// The new holder's turn comes within an interval of the expiry, plus a Redis round
	// trip and the scheduling of a busy machine (2 cores shared by several test runs).
	const slack = 300 * time.Millisecond // the race detector on a loaded 2-core machine took 705 ms once
	if gap > ttl+interval+slack {
		t.Errorf("takeover after %v, want within lease + interval = %v", gap, ttl+interval)
	}
	if gap < ttl-slack {
		t.Errorf("takeover after %v, before the holder's lease (%v) expired", gap, ttl)
	}
}
