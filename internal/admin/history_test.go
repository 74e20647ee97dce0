package admin_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/fuseproxy/fuseproxy/internal/admin"
	"github.com/fuseproxy/fuseproxy/store"
)

func TestHistory(t *testing.T) {
	f := newBackend(t)
	srv := server(t, f, admin.Options{})
	empty := decode[admin.History](t, do(t, "GET", srv.URL+"/circuits/api/history", "", ""))
	if empty.Upstream != "api" || empty.Transitions == nil || len(empty.Transitions) != 0 {
		t.Fatalf("history before any transition = %+v (want an empty list, not null)", empty)
	}
	trip(f.breakers["api"], 2)
	if a := do(t, "POST", srv.URL+"/circuits/api/close", "", ""); a.status != http.StatusOK {
		t.Fatalf("close: %d %s", a.status, a.body)
	}
	a := do(t, "GET", srv.URL+"/circuits/api/history", "", "")
	if a.status != http.StatusOK || a.header.Get("Content-Type") != "application/json" {
		t.Fatalf("history: %d %s", a.status, a.header.Get("Content-Type"))
	}
	h := decode[admin.History](t, a)
	if len(h.Transitions) != 2 {
		t.Fatalf("history = %+v, want the trip and the close", h)
	}
	if tr := h.Transitions[1]; tr.From != "closed" || tr.To != "open" || tr.Reason != "consecutive_failures" ||
		tr.Failures != 2 || tr.Consecutive != 2 || tr.Generation != 1 || tr.Replica != "replica-1" || tr.At.IsZero() {
		t.Errorf("the trip = %+v", tr)
	}
	if tr := h.Transitions[0]; tr.From != "open" || tr.To != "closed" || tr.Reason != "mode" || tr.Generation != 2 {
		t.Errorf("the close = %+v", tr)
	}
	for _, want := range []string{`"from": "closed"`, `"to": "open"`, `"generation": 1`, `"replica": "replica-1"`, `"at": "`} {
		if !strings.Contains(a.body, want) {
			t.Errorf("body lacks %s:\n%s", want, a.body)
		}
	}
	if h := decode[admin.History](t, do(t, "GET", srv.URL+"/circuits/api/history?limit=1", "", "")); len(h.Transitions) != 1 || h.Transitions[0].To != "closed" {
		t.Errorf("limit=1: %+v", h)
	}
	for _, bad := range []string{"0", "-1", "abc", "10001", ""} {
		a := do(t, "GET", srv.URL+"/circuits/api/history?limit="+bad, "", "")
		e := decode[admin.Error](t, a)
		if a.status != http.StatusBadRequest || e.Field != "limit" || !strings.Contains(e.Error, "limit must be a whole number from 1 to 10000") {
			t.Errorf("limit=%q: %d %+v", bad, a.status, e)
		}
	}
	for _, name := range []string{"nope", "legacy"} { // legacy has its breaker disabled: no circuit
		a := do(t, "GET", srv.URL+"/circuits/"+name+"/history", "", "")
		if e := decode[admin.Error](t, a); a.status != http.StatusNotFound || e.Upstream != name {
			t.Errorf("%s: %d %+v", name, a.status, e)
		}
	}

	f.store = store.NewMemory("replica-1") // history off (store.history.retention: 0)
	f.store.Attach(map[string]store.Circuit{"api": {Breaker: f.breakers["api"]}})
	a = do(t, "GET", srv.URL+"/circuits/api/history", "", "")
	if e := decode[admin.Error](t, a); a.status != http.StatusNotFound || !strings.Contains(e.Error, "history disabled") {
		t.Errorf("history off: %d %+v", a.status, e)
	}
}
