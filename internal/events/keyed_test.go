package events

import (
	"encoding/json"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
)

// A storm of key transitions writes at most events_per_second lines (and webhook events)
// a second per upstream, then one line saying how many were suppressed; each carries
// the upstream and the key apart.
func TestKeyObserverRateLimited(t *testing.T) {
	rcv := newReceiver(t, nil)
	core, logs := observer.New(zap.InfoLevel)
	var mu sync.Mutex
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	d := New(config.Events{Enabled: true, QueueSize: 100, Webhooks: []config.Webhook{hook(rcv.srv.URL)}},
		Options{Logger: zap.New(core), Now: func() time.Time { mu.Lock(); defer mu.Unlock(); return now }})
	d.Start()
	obs := d.KeyObserver("api", func() int { return 3 })
	for i := range 1000 {
		obs.OnTransition(breaker.Transition{Upstream: config.KeyName("api", "t "+strconv.Itoa(i)), To: breaker.Open})
	}
	mu.Lock()
	now = now.Add(time.Second)
	mu.Unlock()
	obs.OnTransition(breaker.Transition{Upstream: config.KeyName("api", "late"), To: breaker.Open})
	rcv.wait(t, 4)
	closeDispatcher(t, d)
	lines := logs.FilterMessage("key transition").All()
	if len(lines) != 4 {
		t.Fatalf("%d key transition lines, want 4 (3 in the first second, 1 in the next)", len(lines))
	}
	if m := lines[0].ContextMap(); m["upstream"] != "api" || m["key"] != "t 0" {
		t.Errorf("first line: %v", m)
	}
	sum := logs.FilterMessage("key transitions suppressed").All()
	if len(sum) != 1 || sum[0].ContextMap()["suppressed"] != int64(997) {
		t.Fatalf("summary lines: %v", sum)
	}
	var ev Event
	if err := json.Unmarshal(rcv.bodies[0], &ev); err != nil || ev.Event != KeyEventType || ev.Upstream != "api" || ev.Key != "t 0" {
		t.Fatalf("webhook event: %+v, %v", ev, err)
	}
	if n := rcv.count(); n != 4 {
		t.Errorf("webhook got %d events, want 4", n)
	}
}
