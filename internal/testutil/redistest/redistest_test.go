package redistest

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestServerLifecycle(t *testing.T) {
	srv := Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := srv.Client()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if got := srv.CommandStats()["set"]; got != 1 {
		t.Errorf("CommandStats()[set] = %d, want 1", got)
	}
	if want := "redis://" + srv.Addr() + "/0"; srv.URL() != want {
		t.Errorf("URL() = %q, want %q", srv.URL(), want)
	}

	srv.Kill()
	if err := ping(srv.Addr()); err == nil {
		t.Fatal("PING answered after Kill")
	}
	srv.Kill() // idempotent

	srv.Restart()
	if n, err := c.Exists(ctx, "k").Result(); err != nil || n != 0 {
		t.Fatalf("after Restart: EXISTS k = %d, %v; want 0 (fresh data)", n, err)
	}
}

func TestParseCommandStats(t *testing.T) {
	info := "# Commandstats\r\n" +
		"cmdstat_evalsha:calls=12,usec=300,usec_per_call=25.00,rejected_calls=0,failed_calls=1\r\n" +
		"cmdstat_client|kill:calls=1,usec=9,usec_per_call=9.00\r\n" +
		"garbage\r\n"
	got := parseCommandStats(info)
	if got["evalsha"] != 12 || got["client|kill"] != 1 || len(got) != 2 {
		t.Fatalf("parseCommandStats = %v", got)
	}
}
