package admin

import (
	"context"
	"embed"
	"encoding/json"
	"io/fs"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/store"
)

// The dashboard: a page at /ui/ (static files embedded in the binary, served without the
// token because they hold no data) that reads GET /events/circuits, a server-sent event
// stream of DashboardFrame, and steers the circuits through the admin API's commands.

//go:embed ui
var uiFiles embed.FS

// uiCSP is the Content-Security-Policy of every /ui/ answer: the page runs only its own
// script and style files, talks only to this API, and cannot be framed.
const uiCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Dashboard defaults (Options fields left zero).
const (
	defaultStreamInterval = 500 * time.Millisecond
	defaultSampleInterval = 5 * time.Second
	defaultSamples        = 120 // 10 minutes of 5 s samples
	defaultMaxStreams     = 16
	// watchInterval is how often a stream looks for a transition (a change of any
	// circuit's state or mode, or of the set of circuits) between frames.
	watchInterval = 50 * time.Millisecond
	// agreementInterval is how often Run compares each circuit with the store.
	agreementInterval = time.Second
)

// DashboardFrame is one event of GET /events/circuits: every circuit as this replica
// sees it, with its recent history and its agreement with the store.
type DashboardFrame struct {
	Replica string       `json:"replica"`
	Store   store.Status `json:"store"`
	Time    string       `json:"time"` // RFC 3339 with milliseconds, UTC
	// WithHistory is true when the circuits carry their History: in a stream's first
	// frame and after each new sample; other frames leave it out (the page keeps the
	// last one), so that a frame stays small.
	WithHistory bool `json:"with_history"`
	// HistoryAppended is true when History holds only the samples taken since the
	// stream's previous frame, to append to those sent before: in every frame
	// WithHistory but the first, which holds all of them.
	HistoryAppended bool               `json:"history_appended"`
	Circuits        []DashboardCircuit `json:"circuits"`
}

// DashboardCircuit is one circuit in a DashboardFrame.
type DashboardCircuit struct {
	Circuit
	// TrialSlots is the half-open trial limit (half_open_max_requests); 0 when the
	// breaker is disabled.
	TrialSlots int `json:"trial_slots"`
	// History holds the samples Run took, oldest first (at most Options.Samples), when
	// the frame is WithHistory: all of them, or when HistoryAppended those taken since
	// the previous frame.
	History []Sample `json:"history,omitempty"`
	// Agreement is the last comparison with the store; nil before the first.
	Agreement *Agreement `json:"agreement,omitempty"`
}

// Sample is a circuit at one moment of its history.
type Sample struct {
	At          int64   `json:"t"` // Unix milliseconds
	State       string  `json:"state"`
	Requests    int     `json:"requests"`     // in the window
	FailureRate float64 `json:"failure_rate"` // of the window, percent
}

// Agreement compares this replica's view of a circuit with what the store holds.
type Agreement struct {
	Checked string `json:"checked"` // RFC 3339, UTC
	// Agrees is true when the store's state, mode and generation are this replica's
	// (with the memory store, always: the breaker is the store).
	Agrees bool `json:"agrees"`
	// Empty is true when the store holds nothing for the circuit yet (Redis: no
	// failure was ever flushed); it then agrees with a closed circuit in normal mode.
	Empty      bool   `json:"empty,omitempty"`
	State      string `json:"state,omitempty"`
	Mode       string `json:"mode,omitempty"`
	Generation uint64 `json:"generation"`
	// Reporting are the replicas whose failure reports the store holds for the quorum
	// rule (Redis "r:<replica>" fields), sorted.
	Reporting []string `json:"reporting,omitempty"`
	// Window is the fleet's window as the store holds it (Redis: the live "b:<k>"
	// buckets, by this host's clock), and its rates: a shared circuit's own counts
	// are only what this replica has not flushed yet.
	Window *breaker.Counts `json:"window,omitempty"`
	Rates  *Rates          `json:"rates,omitempty"`
	Error  string          `json:"error,omitempty"`
}

// dashboard holds what the page shows beyond a snapshot: each circuit's recent samples
// and its last agreement with the store, both written by Run.
type dashboard struct {
	mu      sync.Mutex
	hist    history
	version uint64 // counts takeSamples
	agree   map[string]Agreement
	// streams counts the open event streams (at most Options.MaxStreams).
	streams   int
	done      chan struct{} // closed by Close: the streams end
	closeOnce sync.Once
}

// ring is one circuit's samples. Every circuit is sampled in the same rounds, so the
// rounds' times live once, in history, and a ring holds 8 bytes a sample: its requests
// (saturated at 2^32-1) and its failure rate in hundredths of a percent (Sample's is
// rounded to that) with the state. A circuit whose samples are all idle (closed, no
// requests) holds none: with 10,000 mostly idle circuits the history takes a few hundred
// KiB, not the 46 MiB of 120 Samples each.
type ring struct {
	first uint64         // the round of the circuit's first sample
	buf   []packedSample // slot round % len; nil while every sample is idle
}

type packedSample struct {
	requests uint32
	meta     uint32 // rate hundredths << 2 | state; the zero value is an idle sample
}

// history is the rounds' times and the circuits' rings.
type history struct {
	n     int     // samples kept per circuit
	round uint64  // the latest round (0: none yet)
	times []int64 // Unix ms of each round, slot round % n
	rings map[string]*ring
}

func newHistory(n int) history {
	return history{n: max(n, 1), rings: make(map[string]*ring)}
}

// startRound begins sampling round round+1 at time at (Unix ms).
func (h *history) startRound(at int64) {
	if h.times == nil {
		h.times = make([]int64, h.n)
	}
	h.round++
	h.times[h.round%uint64(h.n)] = at
}

// add records the current round's sample of the named circuit.
func (h *history) add(name string, s Sample) {
	r := h.rings[name]
	if r == nil {
		r = &ring{first: h.round}
		h.rings[name] = r
	}
	st, _ := breaker.ParseState(s.State)
	rate := uint32(min(max(math.Round(s.FailureRate*100), 0), 1<<29))
	p := packedSample{requests: uint32(min(max(int64(s.Requests), 0), math.MaxUint32)), meta: rate<<2 | uint32(st)&3}
	if p != (packedSample{}) && r.buf == nil {
		r.buf = make([]packedSample, h.n) // the rounds before were idle: zero
	}
	if r.buf != nil {
		r.buf[h.round%uint64(h.n)] = p
	}
}

// tail returns the named circuit's last k samples (all it has when fewer), oldest first;
// nil for a circuit never sampled.
func (h *history) tail(name string, k uint64) []Sample {
	r := h.rings[name]
	if r == nil || h.round < r.first {
		return nil
	}
	k = min(k, h.round-r.first+1, uint64(h.n))
	out := make([]Sample, k)
	for i := range out {
		v := h.round - k + 1 + uint64(i)
		var p packedSample
		if r.buf != nil {
			p = r.buf[v%uint64(h.n)]
		}
		out[i] = Sample{At: h.times[v%uint64(h.n)], State: breaker.State(p.meta & 3).String(),
			Requests: int(p.requests), FailureRate: float64(p.meta>>2) / 100}
	}
	return out
}

// list returns every sample the named circuit has, oldest first.
func (h *history) list(name string) []Sample { return h.tail(name, math.MaxUint64) }

// Run takes the dashboard's samples (one per circuit every Options.SampleInterval) and,
// while an event stream is open, compares each circuit with the store every second,
// until ctx ends. Without Run the
// dashboard still streams every circuit, without history or agreement.
func (h *Handler) Run(ctx context.Context) {
	sample := time.NewTicker(h.o.SampleInterval)
	defer sample.Stop()
	check := time.NewTicker(agreementInterval)
	defer check.Stop()
	h.takeSamples()
	h.checkAgreement(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-sample.C:
			h.takeSamples()
		case <-check.C:
			h.checkAgreement(ctx)
		}
	}
}

// Close ends the open event streams (NewServer calls it when its server shuts down,
// which then waits for them) and refuses new ones.
func (h *Handler) Close() {
	h.dash.closeOnce.Do(func() { close(h.dash.done) })
}

// takeSamples adds one sample per circuit and forgets the circuits no longer configured.
func (h *Handler) takeSamples() {
	breakers := h.b.Breakers()
	now := h.o.Now()
	d := &h.dash
	d.mu.Lock()
	defer d.mu.Unlock()
	d.version++
	d.hist.startRound(now.UnixMilli())
	for name := range d.hist.rings {
		if breakers[name] == nil {
			delete(d.hist.rings, name)
		}
	}
	for name, b := range breakers {
		if b == nil {
			continue
		}
		s := b.Snapshot()
		counts := s.Counts
		if a, ok := d.agree[name]; ok && s.Shared && a.Window != nil {
			counts = *a.Window // the fleet's, as of the last check
		}
		d.hist.add(name, Sample{At: now.UnixMilli(), State: s.State.String(), Requests: int(counts.Requests),
			FailureRate: round2(counts.FailureRate())})
	}
}

// checkAgreement compares every circuit with what the store holds, while an event
// stream is open: it costs one store exchange per circuit (a Redis round trip), which
// nobody needs while nobody watches. One pass takes at most 2 s (a store that does not
// answer): the circuits it did not reach keep their last agreement. Unwatched, the
// agreements are dropped (the samples of a shared circuit then hold this replica's own
// counts, not a fleet window that would go stale).
func (h *Handler) checkAgreement(ctx context.Context) {
	h.dash.mu.Lock()
	watched := h.dash.streams > 0
	if !watched {
		clear(h.dash.agree)
	}
	h.dash.mu.Unlock()
	if !watched {
		return
	}
	breakers := h.b.Breakers()
	st := h.b.Store()
	pass, cancel := context.WithTimeout(ctx, min(h.o.StoreTimeout, 2*agreementInterval))
	defer cancel()
	out := make(map[string]Agreement, len(breakers))
	for name, b := range breakers {
		if b == nil || pass.Err() != nil {
			continue
		}
		raw, err := st.Inspect(pass, name)
		if pass.Err() != nil {
			continue
		}
		out[name] = agreement(b.Snapshot(), b.Settings(), raw, err, h.o.Now())
	}
	if ctx.Err() != nil {
		return
	}
	h.dash.mu.Lock()
	defer h.dash.mu.Unlock()
	for name, a := range h.dash.agree {
		if _, ok := out[name]; !ok && breakers[name] != nil {
			out[name] = a
		}
	}
	h.dash.agree = out
}

// agreement reads store.Inspect's answer: the Redis hash (st, md, gen as numbers) or the
// memory store's (state, mode, generation as names).
func agreement(s breaker.Snapshot, set breaker.Settings, raw map[string]string, err error, now time.Time) Agreement {
	a := Agreement{Checked: now.UTC().Format(time.RFC3339)}
	if err != nil {
		a.Error = err.Error()
		return a
	}
	if v, ok := raw["state"]; ok { // memory: the breaker is the store
		a.State, a.Mode = v, raw["mode"]
		a.Generation, _ = strconv.ParseUint(raw["generation"], 10, 64)
		a.Agrees = true
		return a
	}
	stNum, hasSt := raw["st"]
	if !hasSt {
		a.Empty = true
		a.Agrees = s.State == breaker.Closed && s.Mode == breaker.Normal
		return a
	}
	a.State = numberedName(stNum, []string{"closed", "open", "half_open"})
	a.Mode = numberedName(raw["md"], []string{"normal", "forced_open", "forced_closed", "metrics_only"})
	a.Generation, _ = strconv.ParseUint(raw["gen"], 10, 64)
	for k := range raw {
		if id, ok := strings.CutPrefix(k, "r:"); ok {
			a.Reporting = append(a.Reporting, id)
		}
	}
	slices.Sort(a.Reporting)
	a.Window = storeWindow(raw, set, now)
	a.Rates = &Rates{FailureRate: round2(a.Window.FailureRate()), SlowRate: round2(a.Window.SlowRate())}
	a.Agrees = a.State == s.State.String() && a.Mode == s.Mode.String() && a.Generation == s.Generation
	return a
}

// storeWindow sums the Redis hash's live window buckets ("b:<k>" = "requests failures
// slow", k the bucket's index in Unix milliseconds / bucket width), as the scripts do
// with Redis's clock (store/lua/prelude.lua, window).
func storeWindow(raw map[string]string, set breaker.Settings, now time.Time) *breaker.Counts {
	var c breaker.Counts
	buckets := int64(max(set.Buckets, 1))
	width := max(set.Window.Milliseconds()/buckets, 1)
	k := now.UnixMilli() / width
	for f, v := range raw {
		idx, ok := strings.CutPrefix(f, "b:")
		if !ok {
			continue
		}
		i, err := strconv.ParseInt(idx, 10, 64)
		parts := strings.Fields(v)
		if err != nil || i <= k-buckets || i > k || len(parts) != 3 {
			continue
		}
		var n [3]uint64
		for j, p := range parts {
			n[j], _ = strconv.ParseUint(p, 10, 32)
		}
		c.Requests += uint32(n[0])
		c.Failures += uint32(n[1])
		c.Slow += uint32(n[2])
	}
	return &c
}

func numberedName(v string, names []string) string {
	if i, err := strconv.Atoi(v); err == nil && i >= 0 && i < len(names) {
		return names[i]
	}
	return "unknown(" + v + ")"
}

// frame builds the event stream's next message, with the circuits' history unless
// the samples are those of version (the last frame's); it returns their version.
func (h *Handler) frame(version uint64, first bool) (DashboardFrame, uint64) {
	st := h.b.Store().Status()
	now := h.o.Now()
	f := DashboardFrame{Replica: h.b.ReplicaID(), Store: st, Time: now.UTC().Format("2006-01-02T15:04:05.000Z07:00")}
	breakers := h.b.Breakers()
	names := h.names()
	f.Circuits = make([]DashboardCircuit, 0, len(names))
	h.dash.mu.Lock()
	defer h.dash.mu.Unlock()
	f.WithHistory = first || h.dash.version != version
	// Each sample since the previous frame added one to every ring that existed then;
	// a ring made since holds no more than that.
	f.HistoryAppended = f.WithHistory && !first
	for _, name := range names {
		c, _, ok := h.circuit(name, st)
		if !ok {
			continue
		}
		dc := DashboardCircuit{Circuit: c}
		if b := breakers[name]; b != nil {
			dc.TrialSlots = b.Settings().HalfOpenMaxRequests
		}
		if f.HistoryAppended {
			dc.History = h.dash.hist.tail(name, h.dash.version-version)
		} else if f.WithHistory {
			dc.History = h.dash.hist.list(name)
		}
		if a, ok := h.dash.agree[name]; ok {
			dc.Agreement = &a
		}
		f.Circuits = append(f.Circuits, dc)
	}
	return f, h.dash.version
}

// fingerprint is every circuit's name, state and mode: a stream sends a frame at once
// when it changes.
func (h *Handler) fingerprint(buf []byte) []byte {
	buf = buf[:0]
	breakers := h.b.Breakers()
	for _, name := range h.names() {
		buf = append(buf, name...)
		buf = append(buf, 0)
		if b := breakers[name]; b != nil {
			buf = append(buf, byte(b.State()), byte(b.Mode()))
		}
	}
	return buf
}

// events serves GET /events/circuits: a frame at once, then one every
// Options.StreamInterval and one as soon as a circuit changes state or mode, until the
// client goes or the server shuts down (Close).
func (h *Handler) events(w http.ResponseWriter, r *http.Request) {
	// A page on another site cannot read the stream, but could hold stream slots open
	// (no-cors GETs): only the dashboard's own origin, the CLI and scripts may open one.
	if site := r.Header.Get("Sec-Fetch-Site"); site == "cross-site" || site == "same-site" {
		writeJSON(w, http.StatusForbidden, Error{Error: "a stream is not opened for another site's page (Sec-Fetch-Site: " + site + ")"})
		return
	}
	d := &h.dash
	d.mu.Lock()
	select {
	case <-d.done:
		d.mu.Unlock()
		writeJSON(w, http.StatusServiceUnavailable, Error{Error: "the admin API is shutting down"})
		return
	default:
	}
	if d.streams >= h.o.MaxStreams {
		d.mu.Unlock()
		w.Header().Set("Retry-After", "5")
		writeJSON(w, http.StatusServiceUnavailable, Error{Error: "too many event streams open (at most " + strconv.Itoa(h.o.MaxStreams) + ")"})
		return
	}
	d.streams++
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.streams--
		d.mu.Unlock()
	}()

	rc := http.NewResponseController(w)
	// The server's read timeout would end the stream: the client sends nothing more,
	// and its going is seen by the request's context.
	_ = rc.SetReadDeadline(time.Time{})
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	var version uint64
	first := true
	send := func() bool {
		f, v := h.frame(version, first)
		version, first = v, false
		body, err := json.Marshal(f)
		if err != nil {
			h.log.Error("dashboard frame", zap.Error(err))
			return false
		}
		_ = rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := w.Write(append(append([]byte("event: circuits\ndata: "), body...), "\n\n"...)); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	// The fingerprint is taken before the frame is built: a change in between is seen
	// at the next watch and sent again, never missed.
	last := h.fingerprint(nil)
	if !send() {
		return
	}
	tick := time.NewTicker(h.o.StreamInterval)
	defer tick.Stop()
	watch := time.NewTicker(watchInterval)
	defer watch.Stop()
	var cur []byte
	for {
		select {
		case <-r.Context().Done():
			return
		case <-d.done:
			return
		case <-watch.C:
			cur = h.fingerprint(cur)
			if string(cur) == string(last) {
				continue
			}
			last, cur = cur, last
			tick.Reset(h.o.StreamInterval)
		case <-tick.C:
			last = h.fingerprint(last)
		}
		if !send() {
			return
		}
	}
}

// names are the circuits' names, sorted: every configured upstream and every breaker.
func (h *Handler) names() []string {
	upstreams, breakers := h.b.Config().Upstreams, h.b.Breakers()
	names := make([]string, 0, len(breakers)+len(upstreams))
	for name := range upstreams {
		names = append(names, name)
	}
	for name := range breakers {
		if _, ok := upstreams[name]; !ok {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// uiHandler serves the embedded page under /ui/.
func uiHandler() http.Handler {
	sub, err := fs.Sub(uiFiles, "ui")
	if err != nil {
		panic(err) // the embedded tree has the directory: a build error otherwise
	}
	files := http.StripPrefix("/ui/", http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", uiCSP)
		w.Header().Set("Referrer-Policy", "no-referrer")
		w.Header().Set("X-Frame-Options", "DENY")
		files.ServeHTTP(w, r)
	})
}

// isAsset reports whether r asks for one of the page's static files, which hold no data
// and are served without the token (a browser cannot send it with a navigation); the
// page then sends the token with every API call.
func isAsset(r *http.Request) bool {
	return (r.Method == http.MethodGet || r.Method == http.MethodHead) &&
		(r.URL.Path == "/ui" || strings.HasPrefix(r.URL.Path, "/ui/"))
}
