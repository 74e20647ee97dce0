package proxy

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
)

// keyedUpstream is upstreamCfg with per-key breakers on the X-Tenant header: a key trips
// after 3 failures in a row, the upstream after 10.
func keyedUpstream(t *testing.T, target string, from ...string) *config.Upstream {
	t.Helper()
	u := upstreamCfg(t, target)
	u.Breaker.ConsecutiveFailures = 10
	if len(from) == 0 {
		from = []string{"header:X-Tenant"}
	}
	u.Keyed = config.DefaultUpstream().Keyed
	u.Keyed.From = from
	u.Keyed.ConsecutiveFailures = 3
	for _, s := range from {
		src, err := config.ParseKeySource(s)
		if err != nil {
			t.Fatal(err)
		}
		u.Keyed.Sources = append(u.Keyed.Sources, src)
	}
	return u
}

type keyEvents struct {
	mu       sync.Mutex
	attached map[string]*breaker.Breaker
	detached []string
}

func newKeyedFixture(t *testing.T, cfg *config.Config) (*fixture, *keyEvents) {
	t.Helper()
	ev := &keyEvents{attached: map[string]*breaker.Breaker{}}
	f := &fixture{cfg: cfg, clock: &fakeClock{}, rec: &recorder{}}
	f.breakers = f.makeBreakers(t, cfg)
	p, err := New(cfg, f.breakers, Options{Recorder: f.rec, Keys: KeyOptions{
		Clock: f.clock,
		Attach: func(_, name string, b *breaker.Breaker) {
			ev.mu.Lock()
			ev.attached[name] = b
			ev.mu.Unlock()
		},
		Detach: func(name string, _ *breaker.Breaker) {
			ev.mu.Lock()
			delete(ev.attached, name)
			ev.detached = append(ev.detached, name)
			ev.mu.Unlock()
		},
	}})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	f.p = p
	f.srv = httptest.NewServer(p)
	tr := &http.Transport{}
	f.client = &http.Client{Transport: tr}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		f.srv.Close()
		p.Close()
	})
	return f, ev
}

func (f *fixture) tenant(t *testing.T, tenant, path string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, f.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if tenant != "" {
		req.Header.Set("X-Tenant", tenant)
	}
	resp := f.do(t, req)
	readBody(t, resp)
	return resp
}

// A key's failures open its own circuit only: its requests are rejected (marked
// X-Fuse-Scope: key) while another key's keep flowing; the upstream's trip rejects all;
// the key recovers through half-open.
func TestKeyedComposition(t *testing.T) {
	be := statusBackend(t)
	f, ev := newKeyedFixture(t, single(keyedUpstream(t, be.URL)))
	for range 3 {
		wantStatus(t, f.tenant(t, "a", "/status/500"), 500)
	}
	if st := ev.attached["svc#a"].State(); st != breaker.Open {
		t.Fatalf("key a: %v, want open", st)
	}
	resp := f.tenant(t, "a", "/status/200")
	wantStatus(t, resp, 503)
	if resp.Header.Get(HeaderScope) != "key" || resp.Header.Get(HeaderCircuit) != "open" {
		t.Fatalf("key rejection headers: %v", resp.Header)
	}
	for range 20 {
		wantStatus(t, f.tenant(t, "b", "/status/200"), 200)
	}
	if st := f.breakers["svc"].State(); st != breaker.Closed {
		t.Fatalf("upstream: %v, want closed (3 failures < 10)", st)
	}
	// The upstream's trip rejects every key, unmarked.
	f.breakers["svc"].Trip()
	resp = f.tenant(t, "b", "/status/200")
	wantStatus(t, resp, 503)
	if resp.Header.Get(HeaderScope) != "" {
		t.Fatalf("an upstream rejection carries %s: %q", HeaderScope, resp.Header.Get(HeaderScope))
	}
	f.breakers["svc"].Reset()
	// a's open period ends: one trial, which closes it.
	f.clock.Add(31 * time.Second)
	wantStatus(t, f.tenant(t, "a", "/status/200"), 200)
	if st := ev.attached["svc#a"].State(); st != breaker.Closed {
		t.Fatalf("key a after a good trial: %v, want closed", st)
	}
	stats := f.p.KeyStats()
	if len(stats) != 1 || stats[0].Tracked != 2 || stats[0].Open != 0 || stats[0].Rejected != 1 {
		t.Fatalf("KeyStats = %+v", stats)
	}
}

// A key's half-open trial that the upstream's circuit then rejects gives its slot back.
func TestKeyedTrialReleasedWhenUpstreamRejects(t *testing.T) {
	be := statusBackend(t)
	f, ev := newKeyedFixture(t, single(keyedUpstream(t, be.URL)))
	for range 3 {
		f.tenant(t, "a", "/status/500")
	}
	f.clock.Add(31 * time.Second)
	f.breakers["svc"].Trip()
	wantStatus(t, f.tenant(t, "a", "/status/200"), 503)
	if sn := ev.attached["svc#a"].Snapshot(); sn.State != breaker.HalfOpen || sn.TrialsInFlight != 0 {
		t.Fatalf("key a: %+v, want half-open with no trial held", sn)
	}
	f.breakers["svc"].Reset()
	wantStatus(t, f.tenant(t, "a", "/status/200"), 200)
}

// No key: the default_key's circuit, or the upstream's alone.
func TestKeyedDefault(t *testing.T) {
	be := statusBackend(t)
	u := keyedUpstream(t, be.URL)
	f, ev := newKeyedFixture(t, single(u))
	for range 3 {
		f.tenant(t, "", "/status/500")
	}
	if len(ev.attached) != 0 {
		t.Fatalf("keys without a default key: %v", ev.attached)
	}
	wantStatus(t, f.tenant(t, "", "/status/200"), 200)

	u = keyedUpstream(t, be.URL)
	u.Keyed.DefaultKey = "anonymous"
	f, ev = newKeyedFixture(t, single(u))
	for range 3 {
		f.tenant(t, "", "/status/500")
	}
	if b := ev.attached["svc#anonymous"]; b == nil || b.State() != breaker.Open {
		t.Fatalf("default key: %v", ev.attached)
	}
	wantStatus(t, f.tenant(t, "", "/status/200"), 503)
	wantStatus(t, f.tenant(t, "b", "/status/200"), 200)
}

// A million distinct keys never hold more than max_keys, never evict an open key (nor a
// key with requests in the last window), and never open another key.
func TestKeyedBoundedAgainstKeyFlood(t *testing.T) {
	be := statusBackend(t)
	u := keyedUpstream(t, be.URL)
	u.Keyed.MaxKeys = 100
	u.Breaker.Window = 10 * time.Second
	f, ev := newKeyedFixture(t, single(u))
	for range 3 {
		f.tenant(t, "victim", "/status/500")
	}
	up := f.p.table.Load().upstreams["svc"]
	kt := up.keys
	r := httptest.NewRequest(http.MethodGet, "/status/200", nil)
	admit := func(key string) (keyAdmission, error) {
		r.Header["X-Tenant"] = []string{key}
		return up.admitKey(r, "/status/200")
	}
	busy := 0
	for i := range 1_000_000 {
		if i%10_000 == 0 {
			f.clock.Add(time.Second) // the flood lasts 100 s of the fake clock
			busy++
			if _, err := admit("busy"); err != nil { // a tenant with steady traffic
				t.Fatal(err)
			}
		}
		ka, err := admit("k" + strconv.Itoa(i))
		if err != nil {
			t.Fatalf("new key %d rejected: %v", i, err)
		}
		ka.release()
		if n := kt.count.Load(); n > 100 {
			t.Fatalf("%d keys tracked, max_keys 100", n)
		}
	}
	if b := ev.attached["svc#victim"]; b == nil || b.State() != breaker.Open {
		t.Fatalf("the open key was evicted or closed: %v", b)
	}
	if b := ev.attached["svc#busy"]; b == nil {
		t.Fatal("a key with requests in the last window was evicted")
	}
	open := 0
	kt.each(func(c *keyCircuit) {
		if c.b.State() != breaker.Closed {
			open++
		}
	})
	if open != 1 {
		t.Fatalf("%d keys not closed, want 1 (the victim)", open)
	}
	st := f.p.KeyStats()[0]
	if st.Tracked > 100 || st.Evictions == 0 || st.Overflow == 0 {
		t.Fatalf("KeyStats = %+v: want evictions and overflow", st)
	}
	t.Logf("after 1,000,000 keys: %+v", st)
}

// Idle keys are swept after idle_ttl; an open key not before its open period ends.
func TestKeyedIdleSweep(t *testing.T) {
	be := statusBackend(t)
	u := keyedUpstream(t, be.URL)
	u.Keyed.IdleTTL = time.Minute
	u.Breaker.OpenDuration = 10 * time.Minute
	u.Breaker.MaxOpenDuration = 10 * time.Minute
	f, ev := newKeyedFixture(t, single(u))
	for range 3 {
		f.tenant(t, "open", "/status/500")
	}
	for i := range 50 {
		f.tenant(t, "idle"+strconv.Itoa(i), "/status/200")
	}
	f.clock.Add(2 * time.Minute)
	f.p.KeyStats() // a scrape sweeps: the idle keys go, the open key's requests are seen
	f.clock.Add(2 * time.Minute)
	f.tenant(t, "fresh", "/status/200")
	if st := f.p.KeyStats()[0]; st.Tracked != 2 { // the open key idle, but in its open period
		t.Fatalf("KeyStats after the sweep: %+v", st)
	}
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if len(ev.attached) != 2 || ev.attached["svc#open"] == nil || ev.attached["svc#fresh"] == nil {
		names := make([]string, 0, len(ev.attached))
		for n := range ev.attached {
			names = append(names, n)
		}
		t.Fatalf("after the sweep: %v, want svc#open and svc#fresh", names)
	}
}

func TestReadKey(t *testing.T) {
	parse := func(from ...string) []config.KeySource {
		var out []config.KeySource
		for _, s := range from {
			src, err := config.ParseKeySource(s)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, src)
		}
		return out
	}
	long := string(make([]byte, config.MaxKeyLength+1))
	for _, tt := range []struct {
		from   []string
		url    string
		header string
		want   string
		ok     bool
	}{
		{[]string{"header:X-Tenant"}, "http://h/x", "acme", "acme", true},
		{[]string{"header:X-Tenant"}, "http://h/x", "", "", false},
		{[]string{"path:2"}, "http://h/t/acme/items", "", "acme", true},
		{[]string{"path:4"}, "http://h/t/acme/items", "", "", false},
		{[]string{"query:tenant"}, "http://h/x?a=1&tenant=ac%20me", "", "ac me", true},
		{[]string{"query:tenant"}, "http://h/x?tenant=", "", "", false},
		{[]string{"host"}, "http://API.Example.com:8080/x", "", "api.example.com", true},
		{[]string{"header:X-Tenant", "path:1", "host"}, "http://h/eu/x", "acme", "acme|eu|h", true},
		{[]string{"header:X-Tenant", "path:3"}, "http://h/eu/x", "acme", "", false},
		{[]string{"header:X-Tenant"}, "http://h/x", long, "", false},
	} {
		r := httptest.NewRequest(http.MethodGet, tt.url, nil)
		if tt.header != "" {
			r.Header.Set("X-Tenant", tt.header)
		}
		cleaned, _ := routingPath(r.URL)
		var buf [config.MaxKeyLength]byte
		got, ok := readKey(parse(tt.from...), r, cleaned, &buf)
		if got != tt.want || ok != tt.ok {
			t.Errorf("%v %s %q: got %q, %v; want %q, %v", tt.from, tt.url, tt.header, got, ok, tt.want, tt.ok)
		}
	}
}

// Admission by a header key, existing or combined, allocates nothing.
func TestKeyedAdmissionAllocs(t *testing.T) {
	for _, from := range [][]string{{"header:X-Tenant"}, {"header:X-Tenant", "path:1"}} {
		u := keyedUpstream(t, "http://127.0.0.1:1", from...)
		f, _ := newKeyedFixture(t, single(u))
		up := f.p.table.Load().upstreams["svc"]
		r := httptest.NewRequest(http.MethodGet, "/eu/x", nil)
		r.Header.Set("X-Tenant", "acme")
		if _, err := up.admitKey(r, "/eu/x"); err != nil {
			t.Fatal(err)
		}
		allocs := testing.AllocsPerRun(1000, func() {
			ka, err := up.admitKey(r, "/eu/x")
			if err != nil || ka.kc == nil {
				t.Fatal("not admitted")
			}
			ka.kc.b.Done(ka.ticket, breaker.Success, time.Millisecond)
		})
		if allocs != 0 {
			t.Errorf("%v: %v allocations per admission, want 0", from, allocs)
		}
	}
}

// A reload keeps the keys of an upstream that keeps per-key breakers, with the new
// settings, and drops them when it loses them.
func TestKeyedReload(t *testing.T) {
	be := statusBackend(t)
	cfg := single(keyedUpstream(t, be.URL))
	f, ev := newKeyedFixture(t, cfg)
	for range 3 {
		f.tenant(t, "a", "/status/500")
	}
	cfg2 := single(keyedUpstream(t, be.URL))
	cfg2.Upstreams["svc"].Keyed.ConsecutiveFailures = 7
	if err := f.p.Update(cfg2, f.breakers); err != nil {
		t.Fatal(err)
	}
	b := ev.attached["svc#a"]
	if b == nil || b.State() != breaker.Open || b.Settings().ConsecutiveFailures != 7 {
		t.Fatalf("after reload: %v", b)
	}
	cfg3 := single(upstreamCfg(t, be.URL))
	if err := f.p.Update(cfg3, f.breakers); err != nil {
		t.Fatal(err)
	}
	if len(ev.attached) != 0 || len(ev.detached) != 1 {
		t.Fatalf("after keyed removed: attached %v, detached %v", ev.attached, ev.detached)
	}
	wantStatus(t, f.tenant(t, "a", "/status/200"), 200)
}

var _ = fmt.Sprint
