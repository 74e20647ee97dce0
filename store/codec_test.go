package store

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// validReply is a well-formed script reply: open, gen 5, 100 ms left of 200, 2 trips.
func validReply() []any {
	return []any{int64(1), int64(0), int64(5), int64(100), int64(200), int64(2),
		int64(1_700_000_000_000), int64(1), "cfg", "r1", "", int64(1_600_000_000_000), "failure_rate", int64(0)}
}

func replyWith(i int, v any) []any {
	a := validReply()
	a[i] = v
	return a
}

func TestDecodeReply(t *testing.T) {
	t.Parallel()
	const maxMs = int64(1<<63-1) / int64(time.Millisecond)
	cases := []struct {
		name    string
		in      any
		want    reply // compared when wantErr is empty
		wantErr string
	}{
		{name: "valid", in: validReply(), want: reply{
			state: breaker.SharedState{State: breaker.Open, Mode: breaker.Normal, Generation: 5,
				OpenRemaining: 100 * time.Millisecond, OpenFor: 200 * time.Millisecond, Trips: 2,
				Reason: "failure_rate"},
			now: 1_700_000_000_000, epoch: 1_600_000_000_000, granted: 1, cfg: "cfg", cfgr: "r1"}},
		{name: "corrupt reason and half-open metrics-only",
			in: []any{int64(2), int64(3), int64(0), int64(0), int64(0), int64(0), int64(1), int64(0), "", "", "not a hash", int64(1), "corrupt", int64(1)},
			want: reply{state: breaker.SharedState{State: breaker.HalfOpen, Mode: breaker.MetricsOnly,
				Reason: "corrupt"}, now: 1, epoch: 1, corrupt: "not a hash", quiet: true}},
		{name: "closed: the time field is the time since the close",
			in: []any{int64(0), int64(0), int64(4), int64(25_000), int64(0), int64(3), int64(9), int64(0), "", "", "", int64(1), "trials_succeeded", int64(1)},
			want: reply{state: breaker.SharedState{State: breaker.Closed, Generation: 4, Trips: 3,
				ClosedFor: 25 * time.Second, Reason: "trials_succeeded"}, now: 9, epoch: 1, quiet: true}},
		{name: "non-string cfg is ignored", in: replyWith(8, int64(7)), want: reply{
			state: breaker.SharedState{State: breaker.Open, Generation: 5,
				OpenRemaining: 100 * time.Millisecond, OpenFor: 200 * time.Millisecond, Trips: 2,
				Reason: "failure_rate"},
			now: 1_700_000_000_000, epoch: 1_600_000_000_000, granted: 1, cfgr: "r1"}},
		{name: "nil", in: nil, wantErr: "want 14 elements"},
		{name: "not a slice", in: "OK", wantErr: "want 14 elements"},
		{name: "too short", in: validReply()[:13], wantErr: "want 14 elements"},
		{name: "too long", in: append(validReply(), int64(0)), wantErr: "want 14 elements"},
		{name: "string state", in: replyWith(0, "1"), wantErr: "element 0: want integer"},
		{name: "nil generation", in: replyWith(2, nil), wantErr: "element 2: want integer"},
		{name: "float granted", in: replyWith(7, 1.0), wantErr: "element 7: want integer"},
		{name: "string epoch", in: replyWith(11, "1"), wantErr: "element 11: want integer"},
		{name: "string quiet", in: replyWith(13, "1"), wantErr: "element 13: want integer"},
		{name: "state 3", in: replyWith(0, int64(3)), wantErr: "state 3 out of range"},
		{name: "state -1", in: replyWith(0, int64(-1)), wantErr: "state -1 out of range"},
		{name: "mode 4", in: replyWith(1, int64(4)), wantErr: "mode 4 out of range"},
		{name: "negative generation", in: replyWith(2, int64(-1)), wantErr: "negative"},
		{name: "negative remaining", in: replyWith(3, int64(-1)), wantErr: "negative"},
		{name: "negative open for", in: replyWith(4, int64(-1)), wantErr: "negative"},
		{name: "negative trips", in: replyWith(5, int64(-1)), wantErr: "negative"},
		{name: "remaining overflows a Duration", in: replyWith(3, maxMs+1), wantErr: "out of range"},
		{name: "open for overflows a Duration", in: replyWith(4, int64(1<<62)), wantErr: "out of range"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeReply(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("decodeReply = %+v, %v; want error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("decodeReply =\n%+v\nwant\n%+v", got, tc.want)
			}
		})
	}
	if _, err := decodeReply(replyWith(3, maxMs)); err != nil {
		t.Errorf("the largest representable remaining time was refused: %v", err)
	}
}

func TestDecodeMessage(t *testing.T) {
	t.Parallel()
	open := breaker.SharedState{State: breaker.Open, Mode: breaker.Normal, Generation: 3,
		OpenRemaining: 1500 * time.Millisecond, OpenFor: 2 * time.Second, Trips: 1}
	cases := []struct {
		name     string
		in       string
		wantName string
		want     reply
		wantErr  string
	}{
		{name: "with reason", in: "api 1 0 3 1500 2000 1 1700000000000 1600000000000 consecutive_failures",
			wantName: "api", want: reply{state: withReason(open, "consecutive_failures"),
				now: 1_700_000_000_000, epoch: 1_600_000_000_000}},
		{name: "empty reason (trailing space)", in: "api 1 0 3 1500 2000 1 5 6 ",
			wantName: "api", want: reply{state: open, now: 5, epoch: 6}},
		{name: "extra whitespace", in: "  api\t1 0 3 1500  2000 1 5 6\n", wantName: "api",
			want: reply{state: open, now: 5, epoch: 6}},
		{name: "half-open forced closed", in: "a.b-c 2 2 9 0 0 0 1 1 open_timeout", wantName: "a.b-c",
			want: reply{state: breaker.SharedState{State: breaker.HalfOpen, Mode: breaker.ForcedClosed,
				Generation: 9, Reason: "open_timeout"}, now: 1, epoch: 1}},
		{name: "closed: the time field is the time since the close", in: "api 0 0 4 25000 0 3 5 6 trials_succeeded",
			wantName: "api", want: reply{state: breaker.SharedState{State: breaker.Closed, Generation: 4, Trips: 3,
				ClosedFor: 25 * time.Second, Reason: "trials_succeeded"}, now: 5, epoch: 6}},
		{name: "half-open: the time field means nothing", in: "api 2 0 4 25000 0 3 5 6",
			wantName: "api", want: reply{state: breaker.SharedState{State: breaker.HalfOpen, Generation: 4, Trips: 3},
				now: 5, epoch: 6}},
		{name: "empty", in: "", wantErr: "want 9 or 10 fields, got 0"},
		{name: "too few", in: "api 1 0 3 1500 2000 1 5", wantErr: "got 8"},
		{name: "too many", in: "api 1 0 3 1500 2000 1 5 6 reason extra", wantErr: "got 11"},
		{name: "name with a space", in: "my api 1 0 3 1500 2000 1 5 6 mode", wantErr: "field"},
		{name: "not a number", in: "api open 0 3 1500 2000 1 5 6", wantErr: "field 1"},
		{name: "float", in: "api 1 0 3 1.5 2000 1 5 6", wantErr: "field 4"},
		{name: "overflowing int", in: "api 1 0 99999999999999999999 0 0 0 5 6", wantErr: "field 3"},
		{name: "state 7", in: "api 7 0 3 0 0 0 5 6", wantErr: "state 7 out of range"},
		{name: "mode 9", in: "api 0 9 3 0 0 0 5 6", wantErr: "mode 9 out of range"},
		{name: "negative trips", in: "api 0 0 3 0 0 -1 5 6", wantErr: "negative"},
		{name: "remaining overflows a Duration", in: "api 1 0 3 9223372036854775 0 0 5 6", wantErr: "out of range"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			name, got, err := decodeMessage(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("decodeMessage = %q %+v, %v; want error containing %q", name, got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if name != tc.wantName || got != tc.want {
				t.Fatalf("decodeMessage = %q %+v, want %q %+v", name, got, tc.wantName, tc.want)
			}
		})
	}
}

// checkDecoded is what every successful decode must satisfy, whatever its input.
func checkDecoded(t *testing.T, r reply) {
	t.Helper()
	s := r.state
	if s.State > breaker.HalfOpen || s.Mode > breaker.MetricsOnly {
		t.Fatalf("decoded an out-of-range state %v or mode %v", s.State, s.Mode)
	}
	if s.OpenRemaining < 0 || s.OpenFor < 0 || s.Trips < 0 {
		t.Fatalf("decoded negative times or trips: %+v", s)
	}
	if _, err := breaker.ParseState(s.State.String()); err != nil {
		t.Fatal(err)
	}
	if _, err := breaker.ParseMode(s.Mode.String()); err != nil {
		t.Fatal(err)
	}
}

// encodeMessage is the message format lua/prelude.lua publishes.
func encodeMessage(name string, r reply) string {
	s := r.state
	return fmt.Sprintf("%s %d %d %d %d %d %d %d %d %s", name, s.State, s.Mode, s.Generation,
		s.OpenRemaining.Milliseconds(), s.OpenFor.Milliseconds(), s.Trips, r.now, r.epoch, r.state.Reason)
}

func FuzzDecodeMessage(f *testing.F) {
	for _, s := range []string{
		"api 1 0 3 1500 2000 1 1700000000000 1600000000000 consecutive_failures",
		"api 0 0 4 0 0 0 1 1 ",
		"x 2 3 9 0 100 2 5 6 open_timeout",
		"api 1 0 3 9223372036854775 0 0 5 6",
		"api 7 0 3 0 0 0 5 6",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, payload string) {
		name, r, err := decodeMessage(payload)
		if err != nil {
			return
		}
		checkDecoded(t, r)
		if name == "" || strings.ContainsFunc(name, unicode.IsSpace) || strings.ContainsFunc(r.state.Reason, unicode.IsSpace) {
			t.Fatalf("decoded name %q reason %q", name, r.state.Reason)
		}
		// What decodes re-encodes to a message that decodes the same.
		name2, r2, err := decodeMessage(encodeMessage(name, r))
		if err != nil || name2 != name || r2 != r {
			t.Fatalf("round trip of %q: %q %+v, %v; want %q %+v", payload, name2, r2, err, name, r)
		}
	})
}

// fuzzReply turns a fuzzer's string into a script reply: fields separated by "|", each an
// integer, "nil", "f<float>", "[" (a nested empty array) or else a string. A leading "!"
// makes the whole input a single string instead of an array.
func fuzzReply(s string) any {
	if rest, ok := strings.CutPrefix(s, "!"); ok {
		return rest
	}
	var a []any
	for field := range strings.SplitSeq(s, "|") {
		if n, err := strconv.ParseInt(field, 10, 64); err == nil {
			a = append(a, n)
			continue
		}
		switch {
		case field == "nil":
			a = append(a, nil)
		case field == "[":
			a = append(a, []any{})
		case strings.HasPrefix(field, "f"):
			x, _ := strconv.ParseFloat(field[1:], 64)
			a = append(a, x)
		default:
			a = append(a, field)
		}
	}
	return a
}

func FuzzDecodeReply(f *testing.F) {
	for _, s := range []string{
		"1|0|5|100|200|2|1700000000000|1|cfg|r1||1600000000000|failure_rate|0",
		"0|0|0|0|0|0|1|0||||1||1",
		"2|3|7|0|0|0|1|1|h|r|not a hash|2|corrupt|0",
		"1|0|5|9223372036854775807|200|2|1|1|cfg|r1||1||0",
		"3|0|5|100|200|2|1|1|cfg|r1||1||0",
		"1|nil|5|100|200|2|1|1|[|f1.5||1||nil",
		"!OK",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := decodeReply(fuzzReply(s))
		if err != nil {
			return
		}
		checkDecoded(t, r)
	})
}

func withReason(s breaker.SharedState, reason string) breaker.SharedState {
	s.Reason = reason
	return s
}
