package store

import (
	"context"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/internal/testutil/pgtest"
)

func TestPostgresMigrateSmoke(t *testing.T) {
	t.Parallel()
	srv := pgtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := Migrate(ctx, srv.Pool(), "fuse_")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	var out []*string
	if err := srv.Pool().QueryRow(ctx, "SELECT fuse_flush($1, $2)", "api", []string{"r1", "0", "3", "3", "0", "3", "0",
		settingsArg(baseSettings(), 1), "h", "0.5", "fuse_events", "api", "fuse_onsets", "0", "0", "1", "0"}).Scan(&out); err != nil {
		t.Fatal(err)
	}
	for _, s := range out {
		if s == nil {
			t.Log("nil")
		} else {
			t.Log(*s)
		}
	}
}
