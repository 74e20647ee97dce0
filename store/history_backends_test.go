package store

// The Lua scripts' history stream and the PL/pgSQL functions' history rows hold the same
// transitions for the same calls.

import (
	"context"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// TestHistorySameOnBothBackends plays trips, failed and successful trials, operator
// commands and a key's trip on both backends and compares their histories row by row.
func TestHistorySameOnBothBackends(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	got := map[string][]string{}
	eachBackend(t, func(t *testing.T, b scriptBackend) {
		s := baseSettings()
		s.OpenDuration = 50 * time.Millisecond
		e := env(t, b, "api", s, 1)
		e.settingsArg += ",3600000,1000"
		e.flush("r1", 0, successes(2))
		e.flush("r2", 0, failures(2))
		e.flush("r3", 0, failures(1))
		ho := e.halfOpen("r2", time.Second)
		e.trial("r2", ho.state.Generation, 0, 1, leaseID("r2", ho))
		ho = e.halfOpen("r1", time.Second)
		e.trial("r1", ho.state.Generation, 1, 0, leaseID("r1", ho))
		e.control("mode", breaker.ForcedOpen)
		e.control("open", 0)
		e.control("reset", 0)
		k := keyedEnv(t, b, "api", "k1", s, 1)
		k.settingsArg = e.settingsArg
		k.flush("r9", 0, failures(3))
		var rows []string
		switch bb := b.(type) {
		case redisScripts:
			xs, err := bb.srv.Client().XRange(context.Background(), "fuse:{api}:history", "-", "+").Result()
			if err != nil {
				t.Fatal(err)
			}
			for _, x := range xs {
				v := x.Values
				rows = append(rows, fmt.Sprintf("%v %v>%v %v rq=%v fl=%v sl=%v cf=%v g=%v rp=%q", v["k"], v["f"], v["t"], v["rs"], v["rq"], v["fl"], v["sl"], v["cf"], v["g"], v["rp"]))
			}
		case *pgScripts:
			hs := bb.history(t, "api")
			for i := len(hs) - 1; i >= 0; i-- {
				h := hs[i]
				rows = append(rows, fmt.Sprintf("%v %v>%v %v rq=%v fl=%v sl=%v cf=%v g=%v rp=%q", h.Key, h.From, h.To, h.Reason, h.Requests, h.Failures, h.Slow, h.Consec, h.Generation, h.Replica))
			}
		}
		mu.Lock()
		got[b.name()] = rows
		mu.Unlock()
	})
	t.Cleanup(func() {
		for _, r := range got["redis"] {
			t.Log("redis    ", r)
		}
		for _, r := range got["postgres"] {
			t.Log("postgres ", r)
		}
		if !reflect.DeepEqual(got["redis"], got["postgres"]) || len(got["redis"]) == 0 {
			t.Error("histories differ")
		}
	})
}
