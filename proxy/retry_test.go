package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
)

// scriptBackend answers each request with the next of its statuses (the last one
// repeating), remembering each request's method and body. A status 0 resets the
// connection before any response.
type scriptBackend struct {
	*httptest.Server
	mu       sync.Mutex
	statuses []int
	bodies   []string
	hits     atomic.Int64
}

func newScriptBackend(t *testing.T, statuses ...int) *scriptBackend {
	t.Helper()
	b := &scriptBackend{statuses: statuses}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		b.mu.Lock()
		n := len(b.bodies)
		b.bodies = append(b.bodies, string(body))
		st := b.statuses[min(n, len(b.statuses)-1)]
		b.mu.Unlock()
		b.hits.Add(1)
		if st == 0 {
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				conn.Close()
			}
			return
		}
		w.Header().Set("X-Attempt-Of", b.URL)
		w.WriteHeader(st)
		_, _ = io.WriteString(w, strings.Repeat("x", 100))
	}))
	t.Cleanup(b.Close)
	return b
}

func (b *scriptBackend) received() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.bodies...)
}

// retrying returns an upstream over targets retrying 3 attempts on the defaults
// (connect failure, reset, 502/503/504), no backoff, a budget that never runs out.
func retrying(t *testing.T, targets ...string) *config.Upstream {
	t.Helper()
	u := upstreamCfg(t, targets...)
	u.Breaker.ConsecutiveFailures = 1000
	u.Retries = config.DefaultUpstream().Retries
	u.Retries.Attempts = 3
	u.Retries.BackoffBase, u.Retries.BackoffMax = 0, 0
	u.Retries.Budget = config.RetryBudget{Percent: 100, MinPerSecond: 1000, Window: 10 * time.Second}
	return u
}

func (f *fixture) send(t *testing.T, method, path, body string) *http.Response {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, f.srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	return f.do(t, req)
}

func (r *recorder) retryCount() (int, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.retries), r.denied
}

func TestRetryConnectFailureOnAnotherTarget(t *testing.T) {
	live := newScriptBackend(t, 200)
	f := newFixture(t, single(retrying(t, refusedURL(t), live.URL)))
	for range 10 {
		resp := f.get(t, "", "/x")
		wantStatus(t, resp, 200)
		readBody(t, resp)
	}
	if live.hits.Load() != 10 {
		t.Errorf("live target got %d requests, want 10", live.hits.Load())
	}
	retries, denied := f.rec.retryCount()
	if retries != 5 || denied != 0 { // round robin: every other first attempt goes to the dead one
		t.Errorf("retries %d, denied %d; want 5 and 0", retries, denied)
	}
	for _, c := range f.rec.snapshot() {
		if c.result != Success {
			t.Errorf("recorded %v, want every request a success", c.result)
		}
	}
	if f.rec.retries[0] != RetryConnect {
		t.Errorf("reason %v, want connect_failure", f.rec.retries[0])
	}
}

func TestRetryStatusDiscardsTheFailedAnswer(t *testing.T) {
	bad := newScriptBackend(t, 503)
	good := newScriptBackend(t, 200)
	f := newFixture(t, single(retrying(t, bad.URL, good.URL)))
	resp := f.get(t, "", "/x") // round robin starts with bad
	wantStatus(t, resp, 200)
	if got := resp.Header.Get("X-Attempt-Of"); got != good.URL {
		t.Errorf("answer from %q, want %q: headers of the failed attempt leaked", got, good.URL)
	}
	if got := readBody(t, resp); got != strings.Repeat("x", 100) {
		t.Errorf("body %q: not the second attempt's alone", got)
	}
	if bad.hits.Load() != 1 || good.hits.Load() != 1 {
		t.Errorf("hits bad %d good %d, want 1 and 1", bad.hits.Load(), good.hits.Load())
	}
	// The breaker counted the request once, a success.
	if c := f.breakers["svc"].Snapshot().Counts; c.Requests != 1 || c.Failures != 0 {
		t.Errorf("breaker counts %+v, want 1 request, 0 failures", c)
	}
}

func TestRetryAttemptsCapAndLastFailureToClient(t *testing.T) {
	a, b := newScriptBackend(t, 502), newScriptBackend(t, 0) // b resets
	f := newFixture(t, single(retrying(t, a.URL, b.URL)))
	resp := f.get(t, "", "/x")
	// 3 attempts: a (502), b (reset), then a again (every target tried): its 502 goes out.
	wantStatus(t, resp, 502)
	readBody(t, resp)
	if got := a.hits.Load() + b.hits.Load(); got != 3 {
		t.Errorf("attempts reaching backends %d, want 3", got)
	}
	if r, _ := f.rec.retryCount(); r != 2 {
		t.Errorf("retries %d, want 2", r)
	}
	calls := f.rec.snapshot()
	if len(calls) != 1 || calls[0].result != FailureStatus || calls[0].status != 502 {
		t.Errorf("recorded %+v, want one failure_status 502", calls)
	}
	if c := f.breakers["svc"].Snapshot().Counts; c.Requests != 1 || c.Failures != 1 {
		t.Errorf("breaker counts %+v: a request counts once, with its final outcome", c)
	}
}

func TestRetryMethodsAndStreamedBodiesSentOnce(t *testing.T) {
	a, b := newScriptBackend(t, 503), newScriptBackend(t, 503)
	f := newFixture(t, single(retrying(t, a.URL, b.URL)))
	// POST is not an idempotent method: sent once.
	resp := f.send(t, http.MethodPost, "/x", "payload")
	wantStatus(t, resp, 503)
	readBody(t, resp)
	// PUT is, but its body is not buffered (buffer_body 0): streamed, sent once.
	resp = f.send(t, http.MethodPut, "/x", "payload")
	wantStatus(t, resp, 503)
	readBody(t, resp)
	if got := a.hits.Load() + b.hits.Load(); got != 2 {
		t.Errorf("backends got %d requests, want 2 (each sent exactly once)", got)
	}
	if r, _ := f.rec.retryCount(); r != 0 {
		t.Errorf("%d retries, want none", r)
	}
}

func TestRetryBufferedBodyResent(t *testing.T) {
	a, b := newScriptBackend(t, 0), newScriptBackend(t, 200) // a resets after reading
	u := retrying(t, a.URL, b.URL)
	u.Retries.BufferBody = 1024
	f := newFixture(t, single(u))
	body := strings.Repeat("0123456789", 50)
	resp := f.send(t, http.MethodPut, "/x", body)
	wantStatus(t, resp, 200)
	readBody(t, resp)
	if got := a.received(); len(got) != 1 || got[0] != body {
		t.Errorf("first target received %q", got)
	}
	if got := b.received(); len(got) != 1 || got[0] != body {
		t.Errorf("retry target received %q, want the same body again", got)
	}

	// Longer than buffer_body: streamed and sent once, whatever happens.
	a.mu.Lock()
	a.bodies = nil
	a.mu.Unlock()
	long := strings.Repeat("y", 1025)
	resp = f.send(t, http.MethodPut, "/x", long)
	readBody(t, resp)
	got := append(a.received(), b.received()[1:]...)
	if len(got) != 1 || got[0] != long {
		t.Errorf("a body over buffer_body reached the backends %d times, want exactly once", len(got))
	}
}

func TestRetryChunkedBodyBuffered(t *testing.T) {
	a, b := newScriptBackend(t, 503), newScriptBackend(t, 200)
	u := retrying(t, a.URL, b.URL)
	u.Retries.BufferBody = 1024
	f := newFixture(t, single(u))
	req, _ := http.NewRequest(http.MethodPut, f.srv.URL+"/x", io.NopCloser(strings.NewReader("chunky")))
	req.ContentLength = -1 // chunked
	resp := f.do(t, req)
	wantStatus(t, resp, 200)
	readBody(t, resp)
	if a.received()[0] != "chunky" || b.received()[0] != "chunky" {
		t.Errorf("bodies %q and %q, want the chunked body twice", a.received(), b.received())
	}
}

func TestRetryNeverWhileOpenOrOnATrial(t *testing.T) {
	a, b := newScriptBackend(t, 503), newScriptBackend(t, 503)
	u := retrying(t, a.URL, b.URL)
	u.Breaker.ConsecutiveFailures = 1
	f := newFixture(t, single(u))
	resp := f.get(t, "", "/x") // a: 503, retried on b: 503, retried on a: 503 → opens
	readBody(t, resp)
	if s := f.breakers["svc"].State(); s != breaker.Open {
		t.Fatalf("circuit %v, want open", s)
	}
	hits := a.hits.Load() + b.hits.Load()
	if hits != 3 {
		t.Fatalf("%d attempts, want 3", hits)
	}
	// Open: rejected, nothing sent.
	wantStatus(t, f.get(t, "", "/x"), 503)
	// Half-open: the trial goes out once, not retried.
	f.clock.Add(31 * time.Second)
	resp = f.get(t, "", "/x")
	readBody(t, resp)
	if got := a.hits.Load() + b.hits.Load() - hits; got != 1 {
		t.Errorf("the half-open trial was sent %d times, want once", got)
	}
}

func TestRetryBudgetExhaustedSendsTheFailure(t *testing.T) {
	a, b := newScriptBackend(t, 503), newScriptBackend(t, 200)
	u := retrying(t, a.URL, b.URL)
	u.Retries.Budget = config.RetryBudget{Percent: 50, MinPerSecond: 0, Window: 10 * time.Second}
	f := newFixture(t, single(u))
	// Half the requests meet a (503) first. 50 % of the window's requests may be
	// retried, so some of those retries are refused, and their 503 goes to the client.
	var ok, failed int
	for range 40 {
		resp := f.get(t, "", "/x")
		readBody(t, resp)
		if resp.StatusCode == 200 {
			ok++
		} else {
			failed++
		}
	}
	retries, denied := f.rec.retryCount()
	if retries+denied != 20 {
		t.Errorf("retries %d + denied %d, want 20 (every request to a)", retries, denied)
	}
	if float64(retries) > 0.5*40 || denied == 0 && retries < 20 {
		t.Errorf("retries %d over 40 requests at 50 %%", retries)
	}
	if failed != denied {
		t.Errorf("%d failures to the client, want one per denied retry (%d)", failed, denied)
	}
	if got := a.hits.Load() + b.hits.Load(); got != int64(40+retries) {
		t.Errorf("backends got %d requests, want 40 + %d retries", got, retries)
	}
}

func TestRetryTimeoutOnlyWhenListed(t *testing.T) {
	slow := newBlockingBackend(t)
	t.Cleanup(slow.Release)
	good := newScriptBackend(t, 200)
	u := retrying(t, slow.URL, good.URL)
	u.Retries.PerTryTimeout = 50 * time.Millisecond
	f := newFixture(t, single(u))
	resp := f.get(t, "", "/x") // slow first: per-try timeout, not retried by default
	wantStatus(t, resp, 504)
	readBody(t, resp)

	u2 := retrying(t, slow.URL, good.URL)
	u2.Retries.PerTryTimeout = 50 * time.Millisecond
	u2.Retries.On = append(u2.Retries.On, "timeout")
	f2 := newFixture(t, single(u2))
	resp = f2.get(t, "", "/x")
	wantStatus(t, resp, 200)
	readBody(t, resp)
	if f2.rec.retries[0] != RetryTimeout {
		t.Errorf("reason %v, want timeout", f2.rec.retries[0])
	}
}

func TestRetryTargetsCountEachAttempt(t *testing.T) {
	dead := refusedURL(t)
	live := newScriptBackend(t, 200)
	u := retrying(t, dead, live.URL)
	u.Outlier = config.DefaultUpstream().Outlier
	u.Outlier.Enabled, u.Outlier.ConsecutiveGatewayErrors = true, 3
	f := newFixture(t, single(u))
	for range 6 {
		resp := f.get(t, "", "/x")
		wantStatus(t, resp, 200)
		readBody(t, resp)
	}
	// The dead target's circuit saw its three failed attempts and ejected it, while every
	// client got a 200.
	name := config.TargetName("svc", u.TargetURLs[0])
	if s := f.breakers[name].State(); s != breaker.Open {
		t.Errorf("dead target's circuit %v, want open (ejected)", s)
	}
	if c := f.breakers["svc"].Snapshot().Counts; c.Failures != 0 {
		t.Errorf("upstream breaker counted %d failures; retries absorbed them all", c.Failures)
	}
}

func TestRetryBudgetBound(t *testing.T) {
	b := NewRetryBudget(config.RetryBudget{Percent: 20, MinPerSecond: 1, Window: 10 * time.Second}, false)
	t0 := time.Unix(1000, 0)
	// 100 requests, then retries: 20 % of 100 plus 1/s × 10 s = 30.
	for i := range 100 {
		b.deposit(t0.Add(time.Duration(i) * time.Millisecond))
	}
	now := t0.Add(time.Second)
	n := 0
	for b.take(now) {
		n++
	}
	if n != 30 {
		t.Errorf("%d retries allowed, want 30", n)
	}
	// A window later the requests and retries are gone: only the floor is left.
	later := t0.Add(12 * time.Second)
	n = 0
	for b.take(later) {
		n++
	}
	if n != 10 {
		t.Errorf("%d retries allowed on an empty window, want the floor (10)", n)
	}
	v := b.View(later)
	if v.Retries != 10 || v.Denied != 2 {
		t.Errorf("view %+v, want 10 retries, 2 denied", v)
	}
}

func TestRetryBudgetFleetShare(t *testing.T) {
	shared := NewRetryBudget(config.RetryBudget{Percent: 10, MinPerSecond: 3, Window: 10 * time.Second}, true)
	t0 := time.Unix(2000, 0)
	for range 100 {
		shared.deposit(t0)
	}
	// Before the store spoke: no floor, 10 % of its own 100 requests.
	if got := shared.View(t0).Allowed; got != 10 {
		t.Errorf("allowed %v before any fleet report, want 10", got)
	}
	// The fleet has 400 requests: this replica's 100 earn a quarter of the floor (30).
	shared.Fleet(400, 0, 3, 100, t0)
	if got := shared.View(t0).Allowed; got != 10+7.5 {
		t.Errorf("allowed %v, want 17.5", got)
	}
	// Three replicas, each its part: together 10 % of 400 + 30, the fleet's budget.
	var sum float64
	for _, own := range []int64{100, 100, 200} {
		r := NewRetryBudget(config.RetryBudget{Percent: 10, MinPerSecond: 3, Window: 10 * time.Second}, true)
		for range own {
			r.deposit(t0)
		}
		r.Fleet(400, 0, 3, own, t0)
		sum += r.View(t0).Allowed
	}
	if sum != 40+30 {
		t.Errorf("replicas' parts sum to %v, want the fleet's budget 70", sum)
	}
}

func TestRetryBackoffFullJitter(t *testing.T) {
	rp := &retryPolicy{backoffBase: 10 * time.Millisecond, backoffMax: 35 * time.Millisecond}
	for n, limit := range map[int]time.Duration{1: 10 * time.Millisecond, 2: 20 * time.Millisecond, 3: 35 * time.Millisecond, 40: 35 * time.Millisecond} {
		var top time.Duration
		for range 2000 {
			d := rp.backoff(n)
			if d < 0 || d > limit {
				t.Fatalf("backoff(%d) = %v, outside [0, %v]", n, d, limit)
			}
			top = max(top, d)
		}
		if top < limit*8/10 {
			t.Errorf("backoff(%d) never above %v in 2000 draws: not spread up to %v", n, top, limit)
		}
	}
}

func TestRetryDoesNotReuseABrokenReplay(t *testing.T) {
	// A body of exactly buffer_body bytes is buffered; one byte more is not.
	a, b := newScriptBackend(t, 503), newScriptBackend(t, 200)
	u := retrying(t, a.URL, b.URL)
	u.Retries.BufferBody = 8
	f := newFixture(t, single(u))
	resp := f.send(t, http.MethodPut, "/x", "12345678")
	wantStatus(t, resp, 200)
	readBody(t, resp)
	resp = f.send(t, http.MethodPut, "/x", "123456789")
	readBody(t, resp)
	got := append(a.received(), b.received()...)
	slices.Sort(got)
	if !slices.Equal(got, []string{"12345678", "12345678", "123456789"}) {
		t.Errorf("backends received %q: want the buffered body twice, the longer one once", got)
	}
}

// A streamed body is sent exactly once even when the method is listed and the failure
// is one that retries: the target reset the connection after reading it.
func TestRetryStreamedPostSentOnce(t *testing.T) {
	a, b := newScriptBackend(t, 0), newScriptBackend(t, 0)
	u := retrying(t, a.URL, b.URL)
	u.Retries.Methods = append(u.Retries.Methods, "POST")
	f := newFixture(t, single(u))
	resp := f.send(t, http.MethodPost, "/x", strings.Repeat("z", 4096))
	wantStatus(t, resp, 502)
	readBody(t, resp)
	if got := append(a.received(), b.received()...); len(got) != 1 || len(got[0]) != 4096 {
		t.Errorf("the streamed POST reached the backends %d times, want exactly once", len(got))
	}
	if r, _ := f.rec.retryCount(); r != 0 {
		t.Errorf("%d retries of a streamed body", r)
	}
	// The same with buffer_body: now it may be sent again, and is.
	u2 := retrying(t, a.URL, b.URL)
	u2.Retries.Methods = append(u2.Retries.Methods, "POST")
	u2.Retries.BufferBody = 8192
	f2 := newFixture(t, single(u2))
	resp = f2.send(t, http.MethodPost, "/x", strings.Repeat("z", 4096))
	readBody(t, resp)
	if r, _ := f2.rec.retryCount(); r != 2 {
		t.Errorf("%d retries of a buffered body, want 2 (3 attempts)", r)
	}
}

// A switch to a protocol the request did not ask for is refused (502) and the upstream's
// connection closed: ReverseProxy alone would leave it open, one leaked connection per
// such answer, and per retry of it.
func TestBadSwitchClosesTheUpstreamConnection(t *testing.T) {
	closed := make(chan struct{}, 4)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		_, _ = rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: other\r\n\r\n")
		_ = rw.Flush()
		_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := conn.Read(make([]byte, 1)); err == io.EOF {
			closed <- struct{}{}
		}
		conn.Close()
	}))
	t.Cleanup(backend.Close)
	f := newFixture(t, single(upstreamCfg(t, backend.URL)))
	req, _ := http.NewRequest(http.MethodGet, f.srv.URL+"/ws", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	resp := f.do(t, req)
	wantStatus(t, resp, 502)
	readBody(t, resp)
	recv(t, "the proxy closing the upstream's connection", closed)
}

// A 503 with Retry-After, honoured, is not retried: it is served as it came (headers,
// body) through the set-aside path, and it opens the circuit for the pause.
func TestRetryHonouredRetryAfterServedAsItCame(t *testing.T) {
	b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "7")
		w.Header().Set("X-Upstream", "a")
		w.WriteHeader(503)
		_, _ = io.WriteString(w, "come back later")
	}))
	t.Cleanup(b.Close)
	other := newScriptBackend(t, 200)
	u := retrying(t, b.URL, other.URL)
	u.Breaker.HonorRetryAfter = true
	f := newFixture(t, single(u))
	resp := f.get(t, "", "/x")
	wantStatus(t, resp, 503)
	if resp.Header.Get("Retry-After") != "7" || resp.Header.Get("X-Upstream") != "a" {
		t.Errorf("headers %v, want the upstream's", resp.Header)
	}
	if got := readBody(t, resp); got != "come back later" {
		t.Errorf("body %q, want the upstream's", got)
	}
	if other.hits.Load() != 0 {
		t.Errorf("retried on the other target despite Retry-After")
	}
	if s := f.breakers["svc"].State(); s != breaker.Open {
		t.Errorf("circuit %v, want open for the pause", s)
	}
	calls := f.rec.snapshot()
	if len(calls) != 1 || calls[0].status != 503 {
		t.Errorf("recorded %+v, want one request with status 503", calls)
	}
}

// Retries and per-key circuits: a key's half-open trial is sent once, not retried; while
// the key passes, its failed attempts are retried like any request's and the key counts
// the request once, with its final outcome.
func TestRetryKeyedTrialSentOnce(t *testing.T) {
	a, b := newScriptBackend(t, 503), newScriptBackend(t, 503)
	u := keyedUpstream(t, a.URL)
	u.Targets, u.TargetURLs = nil, nil
	for _, s := range []string{a.URL, b.URL} {
		tu, _ := url.Parse(s)
		u.Targets, u.TargetURLs = append(u.Targets, s), append(u.TargetURLs, tu)
	}
	u.Retries = config.DefaultUpstream().Retries
	u.Retries.Attempts, u.Retries.BackoffBase, u.Retries.BackoffMax = 3, 0, 0
	u.Retries.Budget = config.RetryBudget{Percent: 100, MinPerSecond: 1000, Window: 10 * time.Second}
	f, ev := newKeyedFixture(t, single(u))
	for range 3 { // 3 requests × 3 attempts: the key counts 3 failures and opens
		readBody(t, f.tenant(t, "acme", "/x"))
	}
	if got := a.hits.Load() + b.hits.Load(); got != 9 {
		t.Fatalf("%d attempts, want 9 (3 requests retried twice each)", got)
	}
	ev.mu.Lock()
	var kb *breaker.Breaker
	for _, br := range ev.attached {
		kb = br
	}
	ev.mu.Unlock()
	if kb == nil || kb.State() != breaker.Open {
		t.Fatalf("key circuit %v, want open after 3 failed requests", kb)
	}
	f.clock.Add(31 * time.Second) // the key half-open: its trial goes out once
	readBody(t, f.tenant(t, "acme", "/x"))
	if got := a.hits.Load() + b.hits.Load(); got != 10 {
		t.Errorf("the key's trial was sent %d times, want once", got-9)
	}
}
