package app

import (
	"context"
	"math"
	"runtime/debug"
	"strconv"
	"time"

	"go.uber.org/zap"
)

// DefaultGCPercent is the GOGC fuseproxy runs with when the environment sets none. The
// proxy's live heap is small and nearly constant (routing table, breakers, metric series)
// while every request allocates a few KiB that die with it, so at the runtime's default
// of 100 the collector runs often for little gain; at 200 it runs about half as often,
// for a peak heap of about three times the live heap instead of two
// (docs/BENCHMARKS.md has the measurement).
const DefaultGCPercent = 200

// StartGCPercent is the GOGC a replica is built with when the environment sets none
// (Serve): parsing the config and building the tables of thousands of upstreams make
// several times their size in garbage, and at DefaultGCPercent the heap grows to three
// times the live data between collections, which maps memory the runtime then keeps
// (its metadata, and the pages given back only when releaseMemory runs). Run switches to
// DefaultGCPercent (Options.ServeGCPercent) once the replica is built and what building
// it left is given back (docs/BENCHMARKS.md, "Memory").
const StartGCPercent = 25

// GCPercent decides the garbage collector's target percentage from the environment
// (getenv is os.Getenv): when GOGC is set (any value, "off" included) the runtime has
// applied it and set is false, so nothing is changed; otherwise it returns
// DefaultGCPercent and set is true. GOMEMLIMIT is never changed: the runtime applies it
// on its own, and it bounds the heap whatever the percentage.
func GCPercent(getenv func(string) string) (percent int, set bool) {
	if getenv("GOGC") != "" {
		return 0, false
	}
	return DefaultGCPercent, true
}

// GCSettings is the garbage collector configuration a replica runs with.
type GCSettings struct {
	GOGC     string // the percentage in effect, or "off"
	Source   string // "default" (set by fuseproxy) or "GOGC" (from the environment)
	MemLimit int64  // bytes (GOMEMLIMIT); math.MaxInt64 means no limit
}

// ApplyGCDefault sets DefaultGCPercent unless GOGC is set (see GCPercent) and returns
// the settings in effect. Call it once, early in the serve command.
func ApplyGCDefault(getenv func(string) string) GCSettings {
	s := GCSettings{Source: "GOGC"}
	pct, set := GCPercent(getenv)
	if set {
		debug.SetGCPercent(pct)
		s.Source = "default"
	} else {
		// SetGCPercent returns the previous value: read it, put it straight back.
		pct = debug.SetGCPercent(-1)
		debug.SetGCPercent(pct)
	}
	s.GOGC = strconv.Itoa(pct)
	if pct < 0 {
		s.GOGC = "off"
	}
	s.MemLimit = debug.SetMemoryLimit(-1) // a negative limit only reads it
	return s
}

// Fields are the settings as log fields.
func (s GCSettings) Fields() []zap.Field {
	limit := "none"
	if s.MemLimit != math.MaxInt64 {
		limit = strconv.FormatInt(s.MemLimit, 10)
	}
	return []zap.Field{zap.String("gogc", s.GOGC), zap.String("gogc_source", s.Source),
		zap.String("gomemlimit", limit)}
}

// releaseMemory collects now and returns the free heap to the operating system. Building
// the tables of a config (parsing it, compiling routes, transports and breakers) leaves
// garbage several times the size of what stays live with thousands of upstreams; at
// GOGC 200 the runtime keeps it mapped up to the next collection's goal, and its
// scavenger gives it back over minutes. Called once the replica is built (before it
// serves) and after each reload, it brings an idle replica's RSS down to about its live
// heap (docs/BENCHMARKS.md, "Memory").
func releaseMemory() { debug.FreeOSMemory() }

// releaseAfterResync asks releaser to give memory back: a shared store's resync (after
// its subscription at start, a resubscription, a recovery) reads every circuit, which
// with thousands of them leaves several megabytes of garbage; at start it runs after
// Run gave back what building the replica left, and at GOGC 200 what it leaves would
// stay mapped. It does not block (the store's loop calls it).
func (a *App) releaseAfterResync() {
	select {
	case a.release <- struct{}{}:
	default:
	}
}

// releaseEvery is the least time between two releases of releaser: each is a full
// collection (tens of milliseconds of CPU with 10,000 circuits), and resyncs repeat while
// Redis comes and goes.
const releaseEvery = time.Second

// releaser gives memory back when asked (releaseAfterResync), at most once every
// releaseEvery, until ctx ends. A request while it waits is kept (the channel holds one):
// at start the resync Attach asked for and the subscription's come a moment apart, and
// the second one's garbage is given back a second after the first's.
func (a *App) releaser(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.release:
		}
		releaseMemory()
		select {
		case <-ctx.Done():
			return
		case <-time.After(releaseEvery):
		}
	}
}
