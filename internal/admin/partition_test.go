package admin_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// sumSeries adds up every sample of a metric in an exposition (its _total samples), and
// returns them by label set too.
func sumSeries(text, name string) (float64, map[string]float64) {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `\{([^}]*)\} (\S+)$`)
	by := map[string]float64{}
	var sum float64
	for _, m := range re.FindAllStringSubmatch(text, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		by[m[1]] = v
		sum += v
	}
	return sum, by
}

// TestRequestsTotalIsAPartition sends N requests of every outcome through a real app
// (success, failure_status, failure_transport, failure_timeout, rejected, ignored,
// rejected_concurrency, and the facts besides: a body broken after a success, a
// metrics_only circuit that would have rejected) and checks that
// sum(fuseproxy_requests_total) and sum(fuseproxy_responses_total) are N, while the
// facts are counted on their own. A request a fallback upstream served is the one
// counted twice in requests_total (rejected, and under the fallback upstream) and once
// in responses_total.
func TestRequestsTotalIsAPartition(t *testing.T) {
	hold := make(chan struct{})
	held := make(chan struct{}, 1)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			io.WriteString(w, "ok")
		case "/missing":
			http.NotFound(w, r)
		case "/fail":
			http.Error(w, "failing", http.StatusInternalServerError)
		case "/slow": // until the proxy's upstream timeout cancels it
			<-r.Context().Done()
		case "/hold":
			held <- struct{}{}
			<-hold
			io.WriteString(w, "held")
		case "/cut": // promises 100 bytes, sends 10, then resets
			w.Header().Set("Content-Length", "100")
			io.WriteString(w, "0123456789")
			w.(http.Flusher).Flush()
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				conn.(*net.TCPConn).SetLinger(0)
				conn.Close()
			}
		}
	}))
	defer backend.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + l.Addr().String()
	l.Close()

	r := startReplica(t, `
listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
store:
  replica_id: solo
upstreams:
  api:
    targets: ["`+backend.URL+`"]
    timeout: 200ms
    breaker: {consecutive_failures: 3, open_duration: 4m}
  down:
    targets: ["`+closed+`"]
    breaker: {consecutive_failures: 100}
  lenient:
    targets: ["`+closed+`"]
    failure: {transport_errors: false}
  dry:
    targets: ["`+backend.URL+`"]
    breaker: {mode: metrics_only, consecutive_failures: 1, open_duration: 4m}
  narrow:
    targets: ["`+backend.URL+`"]
    max_concurrent_requests: 1
  guarded:
    targets: ["`+backend.URL+`"]
    breaker: {consecutive_failures: 1, open_duration: 4m}
    fallback: {upstream: spare}
  spare:
    targets: ["`+backend.URL+`"]
routes:
  - {path_prefix: /api, strip_prefix: true, upstream: api}
  - {path_prefix: /down, strip_prefix: true, upstream: down}
  - {path_prefix: /lenient, strip_prefix: true, upstream: lenient}
  - {path_prefix: /dry, strip_prefix: true, upstream: dry}
  - {path_prefix: /narrow, strip_prefix: true, upstream: narrow}
  - {path_prefix: /guarded, strip_prefix: true, upstream: guarded}
`)
	sent := 0
	// POST: Go's client retries an idempotent request whose connection closed early
	// by itself (the cut body), which would send more requests than counted here.
	send := func(path string, want int) {
		t.Helper()
		sent++
		resp, err := http.Post(r.proxy+path, "text/plain", nil)
		if err != nil {
			if want == 0 { // a broken body may surface as an error
				return
			}
			t.Fatalf("GET %s: %v", path, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if want != 0 && resp.StatusCode != want {
			t.Fatalf("GET %s: %d, want %d", path, resp.StatusCode, want)
		}
	}
	for range 5 {
		send("/api/ok", 200)
	}
	send("/api/missing", 404)
	send("/api/cut", 0) // success at the headers, then the body breaks
	send("/api/slow", 504)
	send("/down/x", 502)
	send("/lenient/x", 502)
	send("/dry/fail", 500) // opens the dry-run circuit
	send("/dry/ok", 200)   // would have been rejected
	send("/dry/ok", 200)
	send("/api/fail", 500) // with /cut and /slow, the third failure in a row: opens
	for range 3 {
		send("/api/ok", 503)
	}
	// A fallback upstream: guarded's circuit opens, and spare serves what it rejects.
	send("/guarded/fail", 500)
	send("/guarded/ok", 200)
	const servedByFallback = 1
	// The bulkhead: one request holds narrow's only slot, the next is refused.
	var wg sync.WaitGroup
	wg.Add(1)
	sent++
	go func() {
		defer wg.Done()
		resp, err := http.Get(r.proxy + "/narrow/hold")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	<-held
	send("/narrow/ok", 503)
	close(hold)
	wg.Wait()

	var text string
	waitFor(t, 5*time.Second, "every request counted", func() bool {
		text = scrape(t, r)
		sum, _ := sumSeries(text, "fuseproxy_requests_total")
		return sum >= float64(sent+servedByFallback)
	})
	// Each request once, but for the one a fallback upstream served: rejected under its
	// upstream, and success under the fallback upstream.
	sum, by := sumSeries(text, "fuseproxy_requests_total")
	if sum != float64(sent+servedByFallback) {
		t.Errorf("sum(fuseproxy_requests_total) = %v, %d requests sent, %d served by a fallback upstream; by outcome: %v",
			sum, sent, servedByFallback, by)
	}
	responses, byCode := sumSeries(text, "fuseproxy_responses_total")
	if responses != float64(sent) {
		t.Errorf("sum(fuseproxy_responses_total) = %v, %d requests sent; by code: %v", responses, sent, byCode)
	}
	outcomes := map[string]float64{}
	for labels, v := range by {
		outcomes[regexp.MustCompile(`outcome="(\w+)"`).FindStringSubmatch(labels)[1]] += v
	}
	for _, o := range []string{"success", "failure_status", "failure_transport", "failure_timeout", "rejected", "ignored", "rejected_concurrency"} {
		if outcomes[o] == 0 {
			t.Errorf("no request counted as %s: %v", o, outcomes)
		}
	}
	if len(outcomes) != 7 {
		t.Errorf("outcomes %v, want the 7 of the partition", outcomes)
	}
	for series, want := range map[string]float64{
		`fuseproxy_response_body_failures_total{upstream="api"}`:          1,
		`fuseproxy_requests_would_reject_total{upstream="dry"}`:           2,
		`fuseproxy_requests_total{outcome="success",upstream="api"}`:      7, // 5 ok, missing, cut
		`fuseproxy_responses_total{code="4xx",upstream="api"}`:            1,
		`fuseproxy_circuit_failure_rate{upstream="down"}`:                 1,
		`fuseproxy_requests_total{outcome="rejected",upstream="guarded"}`: 1,
		`fuseproxy_responses_total{code="2xx",upstream="guarded"}`:        0, // spare answered
		`fuseproxy_responses_total{code="2xx",upstream="spare"}`:          1,
	} {
		if got := metric(text, series); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	if strings.Contains(text, `outcome="failure_body"`) || strings.Contains(text, `outcome="would_reject"`) {
		t.Errorf("an extra fact is still an outcome")
	}
}
