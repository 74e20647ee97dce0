package store

import (
	"context"
	"strconv"
	"testing"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// TestFutureReportIsNoReporter: a failure report stamped ahead of the fleet's clock by
// more than a window (a foreign value, or one written before a failover to a database
// whose clock is behind) does not count towards min_replicas_reporting: it counted as a
// live reporter until the clock caught up (forever for a far one), so one replica's
// failures tripped a circuit that needs two.
func TestFutureReportIsNoReporter(t *testing.T) {
	eachBackend(t, func(t *testing.T, b scriptBackend) {
		e := env(t, b, "ghost", baseSettings(), 2)
		e.flush("r1", 0, failures(1))
		for _, ahead := range []string{"999999999999999", ""} {
			v := ahead
			if v == "" { // two windows ahead
				v = itoa(e.poll().now + 2*baseSettings().Window.Milliseconds())
			}
			switch be := b.(type) {
			case redisScripts:
				if err := be.srv.Client().HSet(context.Background(), e.key, "r:ghost", v).Err(); err != nil {
					t.Fatal(err)
				}
			case *pgScripts:
				be.exec(t, `UPDATE <p>circuits SET reports = reports || jsonb_build_object('ghost', $2::bigint) WHERE upstream = $1`, e.name, v)
			}
			if rep := e.flush("r1", 0, failures(2)); rep.state.State != breaker.Closed {
				t.Fatalf("report %s ms: one replica's failures tripped a circuit that needs 2 reporting: %+v", v, rep.state)
			}
			if _, ok := e.hgetall()["r:ghost"]; ok {
				t.Fatalf("report %s ms kept", v)
			}
		}
	})
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
