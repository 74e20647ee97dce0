package store

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// reply is a script's answer (see lua/prelude.lua, reply) or a pub/sub message: a
// circuit's shared state as a replica must apply it.
type reply struct {
	state     breaker.SharedState
	now       int64 // Redis ms when the script ran
	epoch     int64
	granted   int
	cfg, cfgr string // the settings hash stored before this call, and who wrote it
	corrupt   string // why the stored value was unreadable and replaced, if it was
	quiet     bool   // closed with nothing bad in the window: successes may be held
	deciding  bool   // closed, and the rate rules wait for a failure onset's grace to end
}

// decodeReply decodes a script's reply. Anything that is not the expected shape is an
// error naming the field: a foreign script or a future version must never be applied.
func decodeReply(v any) (reply, error) {
	a, ok := v.([]any)
	if !ok || len(a) != 14 {
		return reply{}, fmt.Errorf("script reply: want 14 elements, got %T %v", v, v)
	}
	var n [8]int64
	for i := range n {
		x, ok := a[i].(int64)
		if !ok {
			return reply{}, fmt.Errorf("script reply element %d: want integer, got %T", i, a[i])
		}
		n[i] = x
	}
	ep, ok := a[11].(int64)
	if !ok {
		return reply{}, fmt.Errorf("script reply element 11: want integer, got %T", a[11])
	}
	q, ok := a[13].(int64)
	if !ok {
		return reply{}, fmt.Errorf("script reply element 13: want integer, got %T", a[13])
	}
	r := reply{now: n[6], granted: int(n[7]), epoch: ep, quiet: q == 1, deciding: q == 2}
	r.cfg, _ = a[8].(string)
	r.cfgr, _ = a[9].(string)
	r.corrupt, _ = a[10].(string)
	var err error
	r.state, err = sharedState(n[0], n[1], n[2], n[3], n[4], n[5])
	r.state.Reason, _ = a[12].(string)
	return r, err
}

// maxMillis is the longest time in ms a time.Duration holds; more would wrap negative.
const maxMillis = math.MaxInt64 / int64(time.Millisecond)

// sharedState checks and converts the fields replies and messages share. The time field
// (timing in lua/prelude.lua) is the rest of the open period while open, and how long ago
// the circuit closed while closed (for trip decay; replicas before it ignored the field
// then, so the message format did not change).
func sharedState(st, md, gen, timing, openFor, trips int64) (breaker.SharedState, error) {
	switch {
	case st < 0 || st > int64(breaker.HalfOpen):
		return breaker.SharedState{}, fmt.Errorf("state %d out of range", st)
	case md < 0 || md > int64(breaker.MetricsOnly):
		return breaker.SharedState{}, fmt.Errorf("mode %d out of range", md)
	case gen < 0 || timing < 0 || openFor < 0 || trips < 0:
		return breaker.SharedState{}, fmt.Errorf("negative generation, time or trips")
	case timing > maxMillis || openFor > maxMillis:
		return breaker.SharedState{}, fmt.Errorf("time out of range (remaining or closed %d ms, open for %d ms)", timing, openFor)
	}
	s := breaker.SharedState{
		State: breaker.State(st), Mode: breaker.Mode(md), Generation: uint64(gen),
		OpenFor: time.Duration(openFor) * time.Millisecond, Trips: int(trips),
	}
	switch s.State {
	case breaker.Open:
		s.OpenRemaining = time.Duration(timing) * time.Millisecond
	case breaker.Closed:
		s.ClosedFor = time.Duration(timing) * time.Millisecond
	}
	return s, nil
}

// decodeMessage decodes a transition published by a script:
// "name state mode generation timing_ms open_for_ms trips now_ms epoch reason", timing as
// in sharedState.
func decodeMessage(payload string) (name string, r reply, err error) {
	f := strings.Fields(payload)
	if len(f) < 9 || len(f) > 10 {
		return "", reply{}, fmt.Errorf("message %q: want 9 or 10 fields, got %d", payload, len(f))
	}
	var n [8]int64
	for i := range n {
		if n[i], err = strconv.ParseInt(f[i+1], 10, 64); err != nil {
			return "", reply{}, fmt.Errorf("message %q field %d: %w", payload, i+1, err)
		}
	}
	r = reply{now: n[6], epoch: n[7]}
	r.state, err = sharedState(n[0], n[1], n[2], n[3], n[4], n[5])
	if err != nil {
		return "", reply{}, fmt.Errorf("message %q: %w", payload, err)
	}
	if len(f) == 10 {
		r.state.Reason = f[9]
	}
	return f[0], r, nil
}
