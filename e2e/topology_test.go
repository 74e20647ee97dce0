package e2e

import (
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// These tests run a fleet on a Redis Cluster (3 masters, each with a replica) and on
// Sentinel (a master, a replica, 3 Sentinels), all on loopback: the store's scripts,
// pub/sub and resync through the client library's cluster and failover clients, and a
// master failing over under load.

// topoFleet is a fleet on a Redis topology, with each replica's admin address.
type topoFleet struct {
	*fleet
	admins map[*Proxy]string
}

func startTopoFleet(t *testing.T, replicas int, set func(*proxyConfig), b breakerSettings) *topoFleet {
	t.Helper()
	f := &topoFleet{fleet: &fleet{Backend: startBackend(t)}, admins: map[*Proxy]string{}}
	f.base = newConfig(t, f.Backend, "redis", b)
	f.base.FlushInterval = 50 * time.Millisecond
	set(&f.base)
	for i := range replicas {
		f.start(t, "r"+string(rune('1'+i)))
	}
	return f
}

// start starts one more replica named id.
func (f *topoFleet) start(t *testing.T, id string) *Proxy {
	t.Helper()
	c := f.base
	c.Listen, c.AdminListen, c.ReplicaID = freeAddr(t), freeAddr(t), id
	p := startProxy(t, c.YAML(t))
	f.Replicas = append(f.Replicas, p)
	f.admins[p] = c.AdminListen
	return p
}

// waitShared waits until every replica's store says it is not degraded (readyz).
func (f *topoFleet) waitShared(t *testing.T, timeout time.Duration) time.Time {
	t.Helper()
	ok := waitFor(timeout, 5*time.Millisecond, func() bool {
		for _, p := range f.Replicas {
			if rd, _ := faultReadyz(t, p, f.admins[p], ""); rd.Degraded || !rd.Ready {
				return false
			}
		}
		return true
	})
	if !ok {
		for _, p := range f.Replicas {
			rd, _ := faultReadyz(t, p, f.admins[p], "")
			t.Logf("%s readyz: %+v", p.ID, rd)
		}
		t.Fatalf("the replicas' stores not all shared (not degraded) within %v", timeout)
	}
	return time.Now()
}

// sharedTrip checks that the fleet trips as one: threshold failures spread round-robin
// (fewer than threshold per replica) open every replica.
func (f *topoFleet) sharedTrip(t *testing.T, threshold int, what string) {
	t.Helper()
	opens := make([]int, len(f.Replicas))
	for i, p := range f.Replicas {
		opens[i] = p.CountTransitionsTo(upstream, "open")
	}
	f.Backend.Set(t, "fail=on")
	f.sendFailures(t, threshold)
	for i, p := range f.Replicas {
		p.WaitTransitions(t, 5*time.Second, upstream, "open", opens[i]+1)
		assertRejection(t, p.ID+" "+what, p.Get("/open"), "open")
	}
}

// loadRun sends requests round-robin over the replicas from clients goroutines, each a
// request every 2 ms, until stop is closed; done returns what they got.
func loadRun(proxies []*Proxy, clients int) (stop func() tally) {
	rr := &roundRobin{proxies: proxies}
	quit := make(chan struct{})
	results := make([]tally, clients)
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-quit:
					return
				default:
				}
				results[c].add(count([]response{rr.Next().Get("/load")}))
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	return func() tally {
		close(quit)
		wg.Wait()
		var total tally
		for _, r := range results {
			total.add(r)
		}
		return total
	}
}

// failoverUnderLoad runs load through the fleet (healthy backend), kills the master
// serving the circuit (kill) and waits for its replica's promotion (promoted, which
// returns when the test saw it); then it checks that no request failed because of the
// proxy, that every replica's store is shared again within 2 s of the promotion, and
// that the fleet trips as one again.
func failoverUnderLoad(t *testing.T, f *topoFleet, kill func(), promoted func() time.Time, threshold int) {
	t.Helper()
	f.Backend.Reset(t)
	f.waitShared(t, 10*time.Second)
	stop := loadRun(f.Replicas, 3)
	time.Sleep(time.Second)
	killed := time.Now()
	kill()
	at := promoted()
	back := f.waitShared(t, 10*time.Second)
	time.Sleep(500 * time.Millisecond) // load goes on after the recovery too
	total := stop()
	t.Logf("load: %v; master killed, replica promoted %v later, every store shared %v after the promotion",
		total, at.Sub(killed).Round(time.Millisecond), back.Sub(at).Round(time.Millisecond))
	if total.OK == 0 || total.Other+total.RejectedOpen+total.RejectedHalfOpen > 0 {
		t.Errorf("under load through the failover: got %v, want every response a 200 from the backend", total)
	}
	degraded := 0
	for _, p := range f.Replicas {
		if p.hasLog(func(l logLine) bool { return strings.HasPrefix(l.Msg(), "redis store degraded") && l.At.After(killed) }) {
			degraded++
		}
	}
	report(t, "failover_promotion_to_all_stores_shared", []time.Duration{back.Sub(at)},
		map[string]any{"kill_to_promotion_ms": at.Sub(killed).Milliseconds(), "replicas_degraded": degraded,
			"requests": total.OK + total.Other, "failed_by_proxy": total.Other + total.RejectedOpen + total.RejectedHalfOpen})
	if back.Sub(at) > 2*time.Second {
		t.Errorf("shared protection back %v after the promotion, want within 2s", back.Sub(at))
	}
	// Shared protection: a trip spread over the replicas opens every one of them (once
	// the load's last successes have reached Redis: see fleet.recover).
	time.Sleep(3 * f.base.FlushInterval)
	f.sharedTrip(t, threshold, "after the failover")
}

// TestClusterFleet runs a fleet of 3 replicas on a 3-master Redis Cluster with one
// replica each: a trip spread over the replicas opens all of them, half_open_max_requests
// bounds trials fleet-wide, a replica started while the circuit is open rejects from its
// first request (resync), and the master serving the circuit's slot fails over under
// load with no request failed by the proxy and shared protection back within 2 s of the
// promotion.
func TestClusterFleet(t *testing.T) {
	const (
		threshold   = 6
		halfOpenMax = 2
	)
	cl := redistest.StartCluster(t, 3, 1)
	f := startTopoFleet(t, 3, func(c *proxyConfig) { c.ClusterAddrs = cl.Addrs()[:3] }, breakerSettings{
		ConsecutiveFailures: threshold, OpenDuration: 500 * time.Millisecond,
		HalfOpenMaxRequests: halfOpenMax, SuccessThreshold: 2,
	})
	t.Logf("cluster nodes: %v", cl.Addrs())
	f.waitShared(t, 10*time.Second)

	// Trips, fleet-wide.
	f.sharedTrip(t, threshold, "after the shared trip")

	// Fleet-wide half-open.
	time.Sleep(500 * time.Millisecond)
	tp := trialPhase(t, f.Backend, f.Replicas, 7, 1)
	t.Logf("half-open on the cluster: %v", tp)
	if tp.MaxInFlight > halfOpenMax {
		t.Errorf("the backend had %d requests in flight at once while half-open, want at most %d", tp.MaxInFlight, halfOpenMax)
	}
	f.Backend.Set(t, "latency=0")

	// The history stream lives in the circuit's hash slot: the scripts append to it on
	// the cluster as on one server, and every replica reads the same three transitions.
	for _, p := range f.Replicas {
		h, body := newAdminAPI(t, f.admins[p]).History(t, upstream)
		var got []string
		for _, tr := range h.Transitions {
			got = append(got, tr.From+"→"+tr.To)
		}
		if want := []string{"half_open→closed", "open→half_open", "closed→open"}; !slices.Equal(got, want) {
			t.Errorf("%s: history on the cluster %v, want %v:\n%s", p.ID, got, want, body)
		}
	}

	// Resync: an operator forces the circuit open fleet-wide; a replica started then
	// rejects from its first request, having read the state from the cluster.
	doPost(t, f.Replicas[0], f.admins[f.Replicas[0]], "/circuits/"+upstream+"/mode", `{"mode":"forced_open"}`)
	for _, p := range f.Replicas {
		if !waitFor(5*time.Second, 5*time.Millisecond, func() bool { return p.Get("/forced").Rejected() }) {
			t.Fatalf("%s still admits 5s after the fleet-wide forced_open", p.ID)
		}
	}
	late := f.start(t, "late")
	if r := late.Get("/first"); !r.Rejected() {
		t.Errorf("the late replica's first request while the circuit is forced open: got %v, want a rejection", r)
	}
	doPost(t, late, f.admins[late], "/circuits/"+upstream+"/reset", "")
	for _, p := range f.Replicas {
		if !waitFor(5*time.Second, 5*time.Millisecond, func() bool { return p.Get("/reset").OK() }) {
			t.Fatalf("%s still rejects 5s after the fleet-wide reset", p.ID)
		}
	}

	// A master failover under load.
	master := cl.MasterFor("fuse:{" + upstream + "}:state")
	reps := cl.ReplicasOf(master)
	failoverUnderLoad(t, f, master.Kill, func() time.Time {
		_, at := cl.WaitPromoted(master, reps, 30*time.Second)
		return at
	}, threshold)
}

// TestSentinelFleet runs a fleet of 3 replicas on Sentinel (a master, its replica, 3
// Sentinels): a trip spread over the replicas opens all of them, and the master fails
// over under load with no request failed by the proxy and shared protection back within
// 2 s of the promotion.
func TestSentinelFleet(t *testing.T) {
	const threshold = 6
	s := redistest.StartSentinels(t, "fuse-master")
	f := startTopoFleet(t, 3, func(c *proxyConfig) {
		c.SentinelMaster, c.SentinelAddrs = s.Name, s.Addrs()
	}, breakerSettings{ConsecutiveFailures: threshold, OpenDuration: 500 * time.Millisecond, HalfOpenMaxRequests: 1, SuccessThreshold: 1})
	f.waitShared(t, 10*time.Second)
	f.sharedTrip(t, threshold, "after the shared trip")
	f.recover(t, 1)
	failoverUnderLoad(t, f, s.Master.Kill, func() time.Time { return s.WaitPromoted(30 * time.Second) }, threshold)
}

// doPost sends an operator's POST to p's admin API and fails the test unless it is 200.
func doPost(t *testing.T, p *Proxy, admin, path, body string) {
	t.Helper()
	if r := faultAdmin(t, p.client, admin, http.MethodPost, path, "", body); r.Err != nil || r.Status != http.StatusOK {
		t.Fatalf("%s POST %s: %v", p.ID, path, r)
	}
}
