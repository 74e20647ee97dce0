package proxy

import (
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/config"
)

// TestUpdateInFlight swaps the route of a request in flight: it completes on the old
// upstream while new requests take the new one.
func TestUpdateInFlight(t *testing.T) {
	slow := newBlockingBackend(t)
	next := echoBackend(t, "next")
	f := newFixture(t, &config.Config{
		Upstreams: map[string]*config.Upstream{"old": upstreamCfg(t, slow.URL)},
		Routes:    []config.Route{{PathPrefix: "/", Upstream: "old"}},
	})

	type result struct {
		status int
		body   string
		err    error
	}
	inflight := make(chan result, 1)
	go func() {
		resp, err := f.client.Get(f.srv.URL + "/slow")
		if err != nil {
			inflight <- result{err: err}
			return
		}
		defer resp.Body.Close()
		var buf [64]byte
		n, _ := resp.Body.Read(buf[:])
		inflight <- result{status: resp.StatusCode, body: string(buf[:n])}
	}()
	recv(t, "the slow request to reach its backend", slow.started)

	cfg2 := &config.Config{
		Upstreams: map[string]*config.Upstream{"new": upstreamCfg(t, next.URL)},
		Routes:    []config.Route{{PathPrefix: "/", Upstream: "new"}},
	}
	f.breakers = f.makeBreakers(t, cfg2)
	if err := f.p.Update(cfg2, f.breakers); err != nil {
		t.Fatalf("Update: %v", err)
	}
	if got := decodeEcho(t, f.get(t, "", "/slow")).Backend; got != "next" {
		t.Errorf("after Update: got backend %q, want next", got)
	}

	slow.Release()
	r := recv(t, "the in-flight request", inflight)
	if r.err != nil || r.status != http.StatusOK || r.body != "released" {
		t.Errorf("in-flight request: got %d %q (err %v), want 200 \"released\" from the old upstream", r.status, r.body, r.err)
	}
	calls := f.rec.wait(t, 2)
	if calls[0] != (call{"new", Success, 200}) || calls[1] != (call{"old", Success, 200}) {
		t.Errorf("recorder: got %v, want [new:success old:success]", calls)
	}
}

func TestUpdateTransportReuse(t *testing.T) {
	watched, _, closed := watchedBackend(t)
	other := echoBackend(t, "other")

	mk := func(rht time.Duration) *config.Config {
		a := upstreamCfg(t, watched.URL)
		a.ResponseHeaderTimeout = rht
		return &config.Config{
			Upstreams: map[string]*config.Upstream{"a": a, "b": upstreamCfg(t, other.URL)},
			Routes: []config.Route{
				{PathPrefix: "/a", Upstream: "a"},
				{PathPrefix: "/b", Upstream: "b"},
			},
		}
	}
	f := newFixture(t, mk(time.Second))
	transports := func() (a, b *http.Transport) {
		ups := f.p.table.Load().upstreams
		return ups["a"].transport, ups["b"].transport
	}
	a1, b1 := transports()

	wantStatus(t, f.get(t, "", "/a"), http.StatusOK) // leaves an idle connection to watched

	// Same settings: both transports, and their connections, are kept.
	if err := f.p.Update(mk(time.Second), f.breakers); err != nil {
		t.Fatal(err)
	}
	if a2, b2 := transports(); a2 != a1 || b2 != b1 {
		t.Errorf("unchanged upstreams: transports replaced (a %v, b %v), want reused", a2 != a1, b2 != b1)
	}
	if n := closed.Load(); n != 0 {
		t.Errorf("connections closed by an unchanged Update: got %d, want 0", n)
	}

	// a's transport settings change: a gets a new transport, the old one's idle
	// connection is closed; b keeps its transport.
	if err := f.p.Update(mk(2*time.Second), f.breakers); err != nil {
		t.Fatal(err)
	}
	a3, b3 := transports()
	if a3 == a1 || b3 != b1 {
		t.Errorf("after changing a: a replaced %v (want true), b replaced %v (want false)", a3 != a1, b3 != b1)
	}
	eventually(t, "the dropped transport's idle connection to close", func() bool { return closed.Load() == 1 })
	wantStatus(t, f.get(t, "", "/a"), http.StatusOK)
}

func TestUpdateErrorKeepsTable(t *testing.T) {
	backend := echoBackend(t, "b")
	f := newFixture(t, single(upstreamCfg(t, backend.URL)))
	bad := single(upstreamCfg(t, backend.URL))
	bad.Routes[0].Upstream = "missing"
	if err := f.p.Update(bad, f.breakers); err == nil {
		t.Fatal("Update with an unknown upstream: got nil error, want one")
	}
	if got := decodeEcho(t, f.get(t, "", "/")).Backend; got != "b" {
		t.Errorf("after a failed Update: got backend %q, want b", got)
	}
}

// TestUpdateConcurrent serves requests while the table is swapped repeatedly (run with
// -race).
func TestUpdateConcurrent(t *testing.T) {
	a, b := echoBackend(t, "a"), echoBackend(t, "b")
	cfgs := []*config.Config{single(upstreamCfg(t, a.URL)), single(upstreamCfg(t, b.URL))}
	f := newFixture(t, cfgs[0])

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var served atomic.Int64
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := f.client.Get(f.srv.URL + "/")
				if err != nil {
					t.Errorf("GET: %v", err)
					return
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Errorf("status: got %d, want 200", resp.StatusCode)
					return
				}
				served.Add(1)
			}
		})
	}
	for i := range 50 {
		if err := f.p.Update(cfgs[i%2], f.breakers); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "some requests", func() bool { return served.Load() >= 20 })
	close(stop)
	wg.Wait()
}

// TestUpstreamsShareTransport: upstreams with the same targets and transport settings
// share one transport and one pool of connections; an Update keeps the shared pool while
// any upstream still uses it, and closes its idle connections when none does.
func TestUpstreamsShareTransport(t *testing.T) {
	backend, opened, closed := watchedBackend(t)

	mk := func(names ...string) *config.Config {
		cfg := &config.Config{Upstreams: map[string]*config.Upstream{}}
		for _, name := range names {
			u := upstreamCfg(t, backend.URL)
			if name == "slow" {
				u.ResponseHeaderTimeout = 5 * time.Second // another transport setting
			}
			cfg.Upstreams[name] = u
			cfg.Routes = append(cfg.Routes, config.Route{PathPrefix: "/" + name, Upstream: name})
		}
		return cfg
	}
	f := newFixture(t, mk("a", "b", "slow"))
	ups := f.p.table.Load().upstreams
	if ups["a"].transport != ups["b"].transport {
		t.Error("upstreams a and b, same targets and settings: separate transports, want one shared")
	}
	if ups["slow"].transport == ups["a"].transport {
		t.Error("upstream slow, another response_header_timeout: shares a's transport, want its own")
	}
	for _, path := range []string{"/a", "/b", "/a", "/b"} {
		wantStatus(t, f.get(t, "", path), http.StatusOK)
	}
	if n := opened.Load(); n != 1 {
		t.Errorf("sequential requests to a and b: backend saw %d connections, want 1 (a shared pool)", n)
	}
	wantStatus(t, f.get(t, "", "/slow"), http.StatusOK)
	if n := opened.Load(); n != 2 {
		t.Errorf("after a request to slow: backend saw %d connections, want 2", n)
	}

	// An Update after which upstream name still has the shared transport, with its idle
	// connection: no connection opened or closed.
	shared := ups["b"].transport
	keeps := func(what, name string, names ...string) {
		t.Helper()
		cfg := mk(names...)
		if err := f.p.Update(cfg, f.makeBreakers(t, cfg)); err != nil {
			t.Fatal(err)
		}
		if f.p.table.Load().upstreams[name].transport != shared {
			t.Errorf("%s: %s has a new transport, want the shared one", what, name)
		}
		wantStatus(t, f.get(t, "", "/"+name), http.StatusOK)
		if n, c := opened.Load(), closed.Load(); n != 2 || c != 0 {
			t.Errorf("%s: %d connections opened, %d closed; want 2 and 0", what, n, c)
		}
	}
	keeps("a removed, b unchanged", "b", "b", "slow")
	keeps("b renamed c, same targets and settings", "c", "c", "slow")

	// No upstream uses the shared transport any more: its idle connection is closed.
	if err := f.p.Update(mk("slow"), f.breakers); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the unused transport's idle connection to close", func() bool { return closed.Load() == 1 })
}

// TestSharedTransportSplit: of two upstreams sharing a transport, one changes a transport
// setting and gets a transport of its own; the other keeps the shared one, with its idle
// connection.
func TestSharedTransportSplit(t *testing.T) {
	backend, _, closed := watchedBackend(t)
	mk := func(aDial time.Duration) *config.Config {
		a, b := upstreamCfg(t, backend.URL), upstreamCfg(t, backend.URL)
		a.DialTimeout = aDial
		return &config.Config{
			Upstreams: map[string]*config.Upstream{"a": a, "b": b},
			Routes:    []config.Route{{PathPrefix: "/a", Upstream: "a"}, {PathPrefix: "/b", Upstream: "b"}},
		}
	}
	f := newFixture(t, mk(upstreamCfg(t).DialTimeout))
	shared := f.p.table.Load().upstreams["b"].transport
	if f.p.table.Load().upstreams["a"].transport != shared {
		t.Fatal("a and b, same settings: separate transports")
	}
	wantStatus(t, f.get(t, "", "/b"), http.StatusOK) // an idle connection in the shared pool

	if err := f.p.Update(mk(5*time.Second), f.breakers); err != nil {
		t.Fatal(err)
	}
	ups := f.p.table.Load().upstreams
	if ups["a"].transport == shared || ups["b"].transport != shared {
		t.Errorf("after a's dial_timeout changed: a kept the shared transport %v (want false), b kept it %v (want true)",
			ups["a"].transport == shared, ups["b"].transport == shared)
	}
	wantStatus(t, f.get(t, "", "/b"), http.StatusOK)
	if n := closed.Load(); n != 0 {
		t.Errorf("connections closed by the split: %d, want 0 (b still uses them)", n)
	}
}

// watchedBackend is a backend answering 200 to everything that counts the connections
// it has accepted and closed.
func watchedBackend(t *testing.T) (srv *httptest.Server, opened, closed *atomic.Int64) {
	opened, closed = new(atomic.Int64), new(atomic.Int64)
	srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			opened.Add(1)
		case http.StateClosed:
			closed.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, opened, closed
}
