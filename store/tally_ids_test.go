package store

import (
	"strconv"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// TestRedisTallyOddReplicaIDs: replica ids with ':' characters, huge counts, a wrong-typed
// key and a foreign field in the hash.
func TestRedisTallyOddReplicaIDs(t *testing.T) {
	srv := redistest.Start(t)
	ids := []string{"a:1:2", "b:", ":3"}
	fleet := make([]*replica, len(ids))
	ts := make([]*fakeTally, len(ids))
	for i, id := range ids {
		fleet[i] = startReplica(t, srv, id, replicaConfig{noRun: true})
		ts[i] = &fakeTally{window: 10 * time.Second}
		fleet[i].st.Share(map[string]Tally{"api": ts[i]})
	}
	srv.Client().HSet(t.Context(), "fuse:{tally:api}", "foreign", "1:2:x")
	ts[0].set(100, 5, true)
	ts[1].set(200, 0, true)
	ts[2].set(1<<40, 7, true)
	for _, r := range fleet {
		r.flushNow(t)
	}
	for _, r := range fleet {
		r.flushNow(t)
	}
	for i := range ts {
		fl, own, n := ts[i].last()
		t.Logf("replica %q: fleet %v own %d reports %d", ids[i], fl, own, n)
		if fl != [3]int64{300 + 1<<40, 12, 3} {
			t.Errorf("replica %q learned %v, want [%d 12 3]", ids[i], fl, 300+1<<40)
		}
	}
}

// TestRedisTallyBadEntriesDoNotFailTheExchange: a field of the tally's hash that no
// replica of this version could have written (a count beyond int64, a time in the
// future) is dropped like any foreign value: it neither poisons the fleet's sums nor
// fails the exchange (a failed exchange counts towards the store's degradation, for
// every circuit).
func TestRedisTallyBadEntriesDoNotFailTheExchange(t *testing.T) {
	srv := redistest.Start(t)
	r := startReplica(t, srv, "r0", replicaConfig{noRun: true})
	ft := &fakeTally{window: 10 * time.Second}
	r.st.Share(map[string]Tally{"api": ft})
	ft.set(100, 5, true)
	tm := srv.Client().Time(t.Context()).Val()
	now := tm.UnixMilli()
	for field, v := range map[string]string{
		"huge":   "99999999999999999999999999:0:" + strconv.FormatInt(now, 10),
		"future": "7:7:" + strconv.FormatInt(now+3_600_000, 10),
	} {
		if err := srv.Client().HSet(t.Context(), "fuse:{tally:api}", field, v).Err(); err != nil {
			t.Fatal(err)
		}
	}
	r.flushNow(t) // fails the test on an exchange error
	if fl, own, n := ft.last(); n != 1 || fl != [3]int64{100, 5, 1} || own != 100 {
		t.Errorf("learned %v (own %d, %d reports), want [100 5 1] from its own report alone", fl, own, n)
	}
	if left := srv.Client().HKeys(t.Context(), "fuse:{tally:api}").Val(); len(left) != 1 {
		t.Errorf("fields left %v, want only the replica's", left)
	}
}

// A report stamped ahead of Redis's clock by less than a window (another master's clock
// before a failover) still counts; it ages out like any other.
func TestRedisTallySkewedReportCounts(t *testing.T) {
	srv := redistest.Start(t)
	r := startReplica(t, srv, "r0", replicaConfig{noRun: true})
	ft := &fakeTally{window: 10 * time.Second}
	r.st.Share(map[string]Tally{"api": ft})
	ft.set(100, 5, true)
	now := srv.Client().Time(t.Context()).Val().UnixMilli()
	if err := srv.Client().HSet(t.Context(), "fuse:{tally:api}", "r-old-master", "50:2:"+strconv.FormatInt(now+3_000, 10)).Err(); err != nil {
		t.Fatal(err)
	}
	r.flushNow(t)
	if fl, _, _ := ft.last(); fl != [3]int64{150, 7, 2} {
		t.Errorf("learned %v, want the skewed report counted: [150 7 2]", fl)
	}
}
