// Package flaky is the demo upstream: an HTTP service whose failures an operator (or a
// test) switches on and off at run time, and which counts what it received, so a demo or
// an end-to-end test can tell exactly how many requests got past the breaker.
//
// Control endpoints (never counted):
//
//	/_flaky/set?fail=on|off&rate=0.5&status=503&latency=50ms&retry_after=7   change behaviour
//	/_flaky/set?fail_only=X-Tenant-ID:acme   fail (when on) only requests with this header value;
//	                                         fail_only= (empty) fails every request again
//	/_flaky/stats                                              counts as JSON
//	/_flaky/reset                                              healthy, counts zeroed
//
// Any other path answers 200 with a small JSON body, or fails as configured.
package flaky

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Server is the flaky upstream. Its zero value is not usable; call New.
type Server struct {
	mu      sync.Mutex // guards everything below
	fail    bool
	rate    float64 // probability of failure when fail is on (1 = always)
	status  int
	latency time.Duration
	retry   string // Retry-After of failed answers; "" for none
	// onlyHeader and onlyValue restrict failures to requests carrying that header value
	// (one tenant failing); onlyHeader "" fails every request.
	onlyHeader, onlyValue string
	requests              int64
	failed                int64
	inFlight              int64
	maxIn                 int64
}

// Stats is what /_flaky/stats reports.
type Stats struct {
	Requests    int64 `json:"requests"`
	Failed      int64 `json:"failed"`
	InFlight    int64 `json:"in_flight"`
	MaxInFlight int64 `json:"max_in_flight"`
	Failing     bool  `json:"failing"`
}

// New returns a healthy server.
func New() *Server { return &Server{rate: 1, status: http.StatusServiceUnavailable} }

// Stats returns the counts so far.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Requests: s.requests, Failed: s.failed, InFlight: s.inFlight, MaxInFlight: s.maxIn, Failing: s.fail}
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/_flaky/set":
		s.set(w, r)
		return
	case "/_flaky/stats":
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.Stats())
		return
	case "/_flaky/reset":
		s.mu.Lock()
		s.fail, s.rate, s.status, s.latency, s.retry = false, 1, http.StatusServiceUnavailable, 0, ""
		s.onlyHeader, s.onlyValue = "", ""
		s.requests, s.failed, s.maxIn = 0, 0, s.inFlight
		s.mu.Unlock()
		return
	}
	s.mu.Lock()
	s.requests++
	s.inFlight++
	s.maxIn = max(s.maxIn, s.inFlight)
	failing := s.fail && rand.Float64() < s.rate && (s.onlyHeader == "" || r.Header.Get(s.onlyHeader) == s.onlyValue)
	status, latency, retry := s.status, s.latency, s.retry
	if failing {
		s.failed++
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.inFlight--
		s.mu.Unlock()
	}()
	if latency > 0 {
		select {
		case <-time.After(latency):
		case <-r.Context().Done():
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	if failing {
		if retry != "" {
			w.Header().Set("Retry-After", retry)
		}
		w.WriteHeader(status)
		fmt.Fprintf(w, `{"ok":false,"status":%d}`+"\n", status)
		return
	}
	fmt.Fprintf(w, `{"ok":true,"path":%q}`+"\n", r.URL.Path)
}

func (s *Server) set(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	s.mu.Lock()
	defer s.mu.Unlock()
	if v := q.Get("fail"); v != "" {
		s.fail = v == "on" || v == "1" || v == "true"
	}
	if v := q.Get("rate"); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f < 0 || f > 1 {
			http.Error(w, "rate: want a number from 0 to 1", http.StatusBadRequest)
			return
		}
		s.rate = f
	}
	if v := q.Get("status"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 100 || n > 599 {
			http.Error(w, "status: want an HTTP status code", http.StatusBadRequest)
			return
		}
		s.status = n
	}
	if v := q.Get("latency"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			http.Error(w, "latency: want a duration such as 50ms", http.StatusBadRequest)
			return
		}
		s.latency = d
	}
	if q.Has("fail_only") {
		s.onlyHeader, s.onlyValue, _ = strings.Cut(q.Get("fail_only"), ":")
	}
	if q.Has("retry_after") {
		s.retry = q.Get("retry_after")
	}
	fmt.Fprintf(w, "fail=%t rate=%g status=%d latency=%s retry_after=%q\n", s.fail, s.rate, s.status, s.latency, s.retry)
}
