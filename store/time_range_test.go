package store

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// TestTimeFieldsBeyondTheReplyRangeStartFresh: a stored open_until or open_for that
// parses as a count (at most 15 digits) but whose reply's time would exceed what a
// replica decodes (maxMillis, a time.Duration in ms) is corrupt: every script answers
// with a fresh closed state instead of a reply no replica can decode, on every call,
// which failed every exchange of the store and degraded it for good.
func TestTimeFieldsBeyondTheReplyRangeStartFresh(t *testing.T) {
	// the scripts' copy of the bound is the decoder's
	sql, err := pgMigrations.ReadFile("sql/002_functions.sql")
	if err != nil {
		t.Fatal(err)
	}
	bound := strconv.FormatInt(maxMillis, 10)
	if !strings.Contains(prelude, "local max_ms = "+bound+"\n") || !strings.Contains(string(sql), "> "+bound+" THEN") {
		t.Fatalf("lua/prelude.lua's max_ms or sql/002_functions.sql's bound is not maxMillis (%s)", bound)
	}
	eachBackend(t, func(t *testing.T, b scriptBackend) {
		for _, tc := range []struct {
			name, field string
			v           int64
		}{
			{"open until far ahead", "ou", 999999999999999},
			{"open until just past the range", "ou", -1}, // now + maxMillis + 1 ms
			{"open for far ahead", "of", 999999999999999},
			{"open for just past the range", "of", maxMillis + 1},
		} {
			t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
				e := env(t, b, strings.ReplaceAll(tc.name, " ", "_"), baseSettings(), 1)
				for i, step := range []func() reply{
					e.poll,
					func() reply { return e.acquire("r1", time.Second) },
					func() reply { return e.trial("r1", 1, 1, 0) },
					func() reply { return e.control("mode", breaker.Normal) },
				} {
					e.control("open", 0)
					v := tc.v
					if v < 0 {
						v = e.poll().now + maxMillis + 1000
					}
					if err := b.setField(e, tc.field, v); err != nil {
						t.Fatal(err)
					}
					rep := step() // e.run fails the test on a reply that does not decode
					if !strings.Contains(rep.corrupt, "field "+tc.field) {
						t.Fatalf("step %d: corrupt = %q, want it to name field %s", i, rep.corrupt, tc.field)
					}
					if rep.state.State != breaker.Closed || rep.state.Trips != 0 {
						t.Fatalf("step %d: state %+v, want fresh closed", i, rep.state)
					}
				}
				if rep := e.poll(); rep.corrupt != "" {
					t.Fatalf("still corrupt: %q", rep.corrupt)
				}
			})
		}
		t.Run("the longest open period stays", func(t *testing.T) {
			s := baseSettings()
			s.OpenDuration = time.Duration(maxMillis/2) * time.Millisecond
			s.MaxOpenDuration = s.OpenDuration
			e := env(t, b, "longest", s, 1)
			rep := e.control("open", 0)
			if rep.state.State != breaker.Open || rep.corrupt != "" {
				t.Fatalf("open: %+v corrupt %q", rep.state, rep.corrupt)
			}
			if rep = e.poll(); rep.state.State != breaker.Open || rep.corrupt != "" {
				t.Fatalf("poll: %+v corrupt %q", rep.state, rep.corrupt)
			}
		})
	})
}
