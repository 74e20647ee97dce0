package store

import (
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
