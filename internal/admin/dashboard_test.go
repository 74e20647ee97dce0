package admin_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/internal/admin"
	"github.com/fuseproxy/fuseproxy/store"
)

// eventStream is an open GET /events/circuits.
type eventStream struct {
	resp   *http.Response
	frames chan admin.DashboardFrame
	done   chan struct{} // closed when the stream ended
}

// openStream opens the event stream at base and reads its frames into a channel.
func openStream(t *testing.T, base, token string) *eventStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/events/circuits", nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET /events/circuits: %v", err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		cancel()
		resp.Body.Close()
		t.Fatalf("GET /events/circuits: %d %s, want 200 text/event-stream", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	s := &eventStream{resp: resp, frames: make(chan admin.DashboardFrame, 100), done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(s.done)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		event := ""
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				event = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				var f admin.DashboardFrame
				if event != "circuits" || json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &f) != nil {
					t.Errorf("bad event %q: %s", event, line)
					return
				}
				select {
				case s.frames <- f:
				default:
				}
			}
		}
	})
	t.Cleanup(func() { cancel(); resp.Body.Close(); wg.Wait() })
	return s
}

// next returns the next frame that satisfies ok, within timeout.
func (s *eventStream) next(t *testing.T, timeout time.Duration, what string, ok func(admin.DashboardFrame) bool) (admin.DashboardFrame, time.Duration) {
	t.Helper()
	start := time.Now()
	deadline := time.After(timeout)
	for {
		select {
		case f := <-s.frames:
			if ok(f) {
				return f, time.Since(start)
			}
		case <-s.done:
			t.Fatalf("the stream ended while waiting for %s", what)
		case <-deadline:
			t.Fatalf("no frame with %s within %v", what, timeout)
		}
	}
}

func frameCircuit(f admin.DashboardFrame, name string) (admin.DashboardCircuit, bool) {
	for _, c := range f.Circuits {
		if c.Name == name {
			return c, true
		}
	}
	return admin.DashboardCircuit{}, false
}

// TestDashboardPage: the page's files are served without the token (they hold no data)
// under a strict Content-Security-Policy, while the event stream, like every route that
// shows a circuit, needs the token; and the page's own files run no inline script and
// put no API value into markup.
func TestDashboardPage(t *testing.T) {
	f := newBackend(t)
	srv := server(t, f, admin.Options{Token: "s3cret"})
	for path, ctype := range map[string]string{
		"/ui/": "text/html; charset=utf-8", "/ui/app.js": "text/javascript; charset=utf-8",
		"/ui/app.css": "text/css; charset=utf-8", "/ui/favicon.svg": "image/svg+xml",
	} {
		a := do(t, "GET", srv.URL+path, "", "")
		if a.status != http.StatusOK || a.header.Get("Content-Type") != ctype {
			t.Errorf("GET %s without a token: %d %q, want 200 %q", path, a.status, a.header.Get("Content-Type"), ctype)
		}
		csp := a.header.Get("Content-Security-Policy")
		for _, want := range []string{"default-src 'none'", "script-src 'self'", "frame-ancestors 'none'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("GET %s: Content-Security-Policy %q lacks %q", path, csp, want)
			}
		}
		if strings.Contains(csp, "unsafe") {
			t.Errorf("GET %s: Content-Security-Policy %q allows unsafe sources", path, csp)
		}
	}
	if a := do(t, "GET", srv.URL+"/ui", "", ""); a.status != http.StatusOK { // redirected to /ui/
		t.Errorf("GET /ui: %d, want the page", a.status)
	}
	if a := do(t, "GET", srv.URL+"/ui/nothing", "", ""); a.status != http.StatusNotFound {
		t.Errorf("GET /ui/nothing: %d, want 404", a.status)
	}
	if a := do(t, "GET", srv.URL+"/events/circuits", "", ""); a.status != http.StatusUnauthorized {
		t.Errorf("GET /events/circuits without the token: %d, want 401", a.status)
	}
	if a := do(t, "GET", srv.URL+"/events/circuits", "wrong", ""); a.status != http.StatusUnauthorized {
		t.Errorf("GET /events/circuits with a wrong token: %d, want 401", a.status)
	}
	// A command is no asset: the page's files are GET only.
	if a := do(t, "POST", srv.URL+"/ui/", "", ""); a.status != http.StatusUnauthorized {
		t.Errorf("POST /ui/ without the token: %d, want 401", a.status)
	}
	// The Host check still holds for the page.
	req, _ := http.NewRequest("GET", srv.URL+"/ui/", nil)
	req.Host = "attacker.example"
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("GET /ui/ with a foreign Host: %v %v, want 403", resp.StatusCode, err)
	} else {
		resp.Body.Close()
	}

	files := os.DirFS("ui")
	html, _ := fs.ReadFile(files, "index.html")
	if m := regexp.MustCompile(`<script(?:\s[^>]*)?>`).FindAllString(string(html), -1); len(m) != 1 || !strings.Contains(m[0], `src="app.js"`) {
		t.Errorf("index.html scripts %q: want only <script src=\"app.js\">", m)
	}
	if regexp.MustCompile(`\son[a-z]+=|style=`).Match(html) {
		t.Error("index.html has an inline handler or style attribute, which the CSP refuses")
	}
	js, _ := fs.ReadFile(files, "app.js")
	for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"} {
		if strings.Contains(string(js), bad) {
			t.Errorf("app.js uses %s: API values must reach the page as text", bad)
		}
	}
}

// TestEventsStream: the stream sends a frame at once, then one as soon as a circuit
// changes state (well before the next periodic frame), the frames carry what the page
// shows, at most MaxStreams streams are open at once, and Close ends them.
func TestEventsStream(t *testing.T) {
	f := newBackend(t)
	h := admin.NewHandler(f, admin.Options{StreamInterval: time.Hour, MaxStreams: 2})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	s := openStream(t, srv.URL, "")
	first, _ := s.next(t, 5*time.Second, "the first frame", func(admin.DashboardFrame) bool { return true })
	api, ok := frameCircuit(first, "api")
	if !ok || api.State != "closed" || api.Mode != "normal" || api.TrialSlots != 1 || !first.WithHistory || len(api.History) != 0 {
		t.Fatalf("first frame's api: %+v (found %v, with history %v), want closed, normal, 1 trial slot, an empty history", api, ok, first.WithHistory)
	}
	if legacy, ok := frameCircuit(first, "legacy"); !ok || legacy.State != admin.StateDisabled {
		t.Errorf("first frame's legacy: %+v, want disabled", legacy)
	}
	if first.Replica != "replica-1" || first.Store.Driver != "memory" {
		t.Errorf("first frame: replica %q store %q", first.Replica, first.Store.Driver)
	}

	f.breakers["api"].Trip()
	open, took := s.next(t, 5*time.Second, "api open", func(fr admin.DashboardFrame) bool {
		c, _ := frameCircuit(fr, "api")
		return c.State == "open"
	})
	t.Logf("the trip reached the stream in %v", took)
	if c, _ := frameCircuit(open, "api"); c.OpenRemainingSeconds <= 0 || c.Trips != 1 {
		t.Errorf("api after the trip: %+v, want time left open and 1 trip", c)
	}
	if open.WithHistory { // no sample was taken since the first frame
		t.Errorf("a later frame without a new sample carries the history")
	}
	f.breakers["api"].SetMode(2) // forced_closed
	s.next(t, 5*time.Second, "api forced_closed", func(fr admin.DashboardFrame) bool {
		c, _ := frameCircuit(fr, "api")
		return c.Mode == "forced_closed"
	})

	if a := do(t, "HEAD", srv.URL+"/events/circuits", "", ""); a.status != http.StatusOK || a.header.Get("Content-Type") != "text/event-stream" {
		t.Errorf("HEAD /events/circuits: %d %q, want 200 text/event-stream at once", a.status, a.header.Get("Content-Type"))
	}

	s2 := openStream(t, srv.URL, "")
	s2.next(t, 5*time.Second, "the second stream's first frame", func(admin.DashboardFrame) bool { return true })
	if a := do(t, "GET", srv.URL+"/events/circuits", "", ""); a.status != http.StatusServiceUnavailable {
		t.Errorf("a third stream with MaxStreams 2: %d %s, want 503", a.status, a.body)
	}

	h.Close()
	for i, st := range []*eventStream{s, s2} {
		select {
		case <-st.done:
		case <-time.After(5 * time.Second):
			t.Fatalf("stream %d still open 5s after Close", i+1)
		}
	}
	if a := do(t, "GET", srv.URL+"/events/circuits", "", ""); a.status != http.StatusServiceUnavailable {
		t.Errorf("a stream after Close: %d, want 503", a.status)
	}
}

// TestEventsStreamEndsAtShutdown: the admin server's Shutdown ends an open stream at
// once (NewServer registers Close), instead of waiting for its deadline.
func TestEventsStreamEndsAtShutdown(t *testing.T) {
	f := newBackend(t)
	h := admin.NewHandler(f, admin.Options{})
	srv := httptest.NewUnstartedServer(nil)
	srv.Config = admin.NewServer(h, nil)
	srv.Start()
	s := openStream(t, srv.URL, "")
	s.next(t, 5*time.Second, "the first frame", func(admin.DashboardFrame) bool { return true })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := srv.Config.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown with a stream open: %v after %v", err, time.Since(start))
	}
	srv.Close()
	<-s.done
}

// TestDashboardHistory: Run keeps at most Samples samples per circuit, oldest first,
// and compares each circuit with the store (the memory store always agrees).
func TestDashboardHistory(t *testing.T) {
	f := newBackend(t)
	h := admin.NewHandler(f, admin.Options{SampleInterval: 5 * time.Millisecond, Samples: 3, StreamInterval: 20 * time.Millisecond})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { h.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	s := openStream(t, srv.URL, "")
	s.next(t, 10*time.Second, "an agreement", func(fr admin.DashboardFrame) bool {
		c, _ := frameCircuit(fr, "api")
		return c.Agreement != nil
	})
	f.breakers["api"].Trip()
	s.next(t, 10*time.Second, "an open sample", func(fr admin.DashboardFrame) bool {
		c, _ := frameCircuit(fr, "api")
		return len(c.History) > 0 && c.History[len(c.History)-1].State == "open"
	})
	// A new stream's first frame holds the whole history.
	fr, _ := openStream(t, srv.URL, "").next(t, 10*time.Second, "the first frame", func(admin.DashboardFrame) bool { return true })
	c, _ := frameCircuit(fr, "api")
	if len(c.History) != 3 || c.History[2].State != "open" {
		t.Errorf("history of %d samples with Samples 3: %+v", len(c.History), c.History)
	}
	for i := 1; i < len(c.History); i++ {
		if c.History[i].At < c.History[i-1].At {
			t.Errorf("history not oldest first: %+v", c.History)
		}
	}
	if a := c.Agreement; a == nil || !a.Agrees || a.State == "" {
		t.Errorf("api's agreement with the memory store: %+v, want agrees", a)
	}
	if legacy, _ := frameCircuit(fr, "legacy"); len(legacy.History) != 0 || legacy.Agreement != nil {
		t.Errorf("disabled legacy: %+v, want no history or agreement", legacy)
	}
}

// inspectCounter counts the store reads (Inspect) the dashboard makes.
type inspectCounter struct {
	store.Store
	n atomic.Int32
}

func (s *inspectCounter) Inspect(ctx context.Context, name string) (map[string]string, error) {
	s.n.Add(1)
	return s.Store.Inspect(ctx, name)
}

// countingBackend counts the dashboard's reads of the circuits (one per sample).
type countingBackend struct {
	*fakeBackend
	reads atomic.Int32
}

func (b *countingBackend) Breakers() map[string]*breaker.Breaker {
	b.reads.Add(1)
	return b.fakeBackend.Breakers()
}

// TestAgreementOnlyWhileWatched: Run compares the circuits with the store (one store
// exchange per circuit, every second: with Redis, 10,000 upstreams made 10,000 round
// trips a second per replica) only while a dashboard stream is open; its samples,
// which read nothing from the store, go on.
func TestAgreementOnlyWhileWatched(t *testing.T) {
	f := newBackend(t)
	st := &inspectCounter{Store: f.store}
	f.store = st
	b := &countingBackend{fakeBackend: f}
	h := admin.NewHandler(b, admin.Options{SampleInterval: 5 * time.Millisecond, StreamInterval: 20 * time.Millisecond})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { h.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	waitFor(t, 10*time.Second, "samples taken", func() bool { return b.reads.Load() >= 5 })
	if n := st.n.Load(); n != 0 {
		t.Errorf("no stream open: the store was read %d times", n)
	}
	s := openStream(t, srv.URL, "")
	s.next(t, 10*time.Second, "an agreement", func(fr admin.DashboardFrame) bool {
		c, _ := frameCircuit(fr, "api")
		return c.Agreement != nil
	})
	if st.n.Load() == 0 {
		t.Error("a stream shows an agreement the store was never asked for")
	}
}

// TestHistoryAppended: after the first frame, a frame carries only the samples taken
// since the previous one (HistoryAppended), which the page appends: each new sample
// resent every circuit's whole history, 8.4 MB a frame with 1,000 circuits and 120
// samples, every 5 s per open stream.
func TestHistoryAppended(t *testing.T) {
	const samples = 100
	f := newBackend(t)
	h := admin.NewHandler(f, admin.Options{SampleInterval: 5 * time.Millisecond, Samples: samples, StreamInterval: 20 * time.Millisecond})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { h.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	s := openStream(t, srv.URL, "")
	first, _ := s.next(t, 5*time.Second, "the first frame", func(admin.DashboardFrame) bool { return true })
	c, _ := frameCircuit(first, "api")
	hist := c.History
	if first.HistoryAppended {
		t.Fatal("the first frame is appended to nothing")
	}
	for len(hist) < samples+20 {
		fr, _ := s.next(t, 5*time.Second, "a frame with new samples", func(fr admin.DashboardFrame) bool { return fr.WithHistory })
		c, _ := frameCircuit(fr, "api")
		if !fr.HistoryAppended || len(c.History) == 0 || len(c.History) >= samples {
			t.Fatalf("a later frame: appended %v, %d samples; want only the few new ones", fr.HistoryAppended, len(c.History))
		}
		if len(hist) > 0 && c.History[0].At < hist[len(hist)-1].At {
			t.Fatalf("appended samples start at %d, before the last one already sent (%d)", c.History[0].At, hist[len(hist)-1].At)
		}
		hist = append(hist, c.History...)
	}
	// A new stream's first frame holds the whole ring.
	s2 := openStream(t, srv.URL, "")
	fr, _ := s2.next(t, 5*time.Second, "the first frame", func(admin.DashboardFrame) bool { return true })
	if c, _ := frameCircuit(fr, "api"); len(c.History) != samples || fr.HistoryAppended {
		t.Errorf("a new stream's first frame: %d samples, appended %v; want all %d", len(c.History), fr.HistoryAppended, samples)
	}
}
