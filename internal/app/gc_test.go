package app

import (
	"context"
	"math"
	"runtime/debug"
	"testing"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestGCPercent(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     map[string]string
		percent int
		set     bool
	}{
		{"unset", nil, DefaultGCPercent, true},
		{"empty GOGC is unset, as for the runtime", map[string]string{"GOGC": ""}, DefaultGCPercent, true},
		{"GOGC set", map[string]string{"GOGC": "100"}, 0, false},
		{"GOGC off", map[string]string{"GOGC": "off"}, 0, false},
		{"GOGC set with GOMEMLIMIT", map[string]string{"GOGC": "50", "GOMEMLIMIT": "1GiB"}, 0, false},
		// The limit is the runtime's to apply; it bounds the heap at any percentage.
		{"GOMEMLIMIT alone", map[string]string{"GOMEMLIMIT": "1GiB"}, DefaultGCPercent, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			percent, set := GCPercent(env(tc.env))
			if percent != tc.percent || set != tc.set {
				t.Errorf("GCPercent = %d, %v; want %d, %v", percent, set, tc.percent, tc.set)
			}
		})
	}
}

func TestApplyGCDefault(t *testing.T) {
	prev := debug.SetGCPercent(100)
	prevLimit := debug.SetMemoryLimit(math.MaxInt64)
	t.Cleanup(func() {
		debug.SetGCPercent(prev)
		debug.SetMemoryLimit(prevLimit)
	})

	s := ApplyGCDefault(env(nil))
	if got := gcPercentNow(); got != DefaultGCPercent {
		t.Errorf("GOGC unset: percent in effect %d, want %d", got, DefaultGCPercent)
	}
	if s.GOGC != "200" || s.Source != "default" || s.MemLimit != math.MaxInt64 {
		t.Errorf("GOGC unset: settings %+v", s)
	}

	// GOGC in the environment: the runtime applied it (here: 100) and it is left alone.
	debug.SetGCPercent(100)
	s = ApplyGCDefault(env(map[string]string{"GOGC": "100"}))
	if got := gcPercentNow(); got != 100 {
		t.Errorf("GOGC set: percent in effect %d, want 100 untouched", got)
	}
	if s.GOGC != "100" || s.Source != "GOGC" {
		t.Errorf("GOGC set: settings %+v", s)
	}
	// GOGC=off (-1 in effect) is reported as such.
	debug.SetGCPercent(-1)
	if s = ApplyGCDefault(env(map[string]string{"GOGC": "off"})); s.GOGC != "off" {
		t.Errorf("GOGC off: settings %+v", s)
	}
	debug.SetGCPercent(100)

	// A memory limit is reported, never changed.
	debug.SetMemoryLimit(1 << 30)
	s = ApplyGCDefault(env(map[string]string{"GOMEMLIMIT": "1GiB"}))
	if s.MemLimit != 1<<30 || s.GOGC != "200" {
		t.Errorf("GOMEMLIMIT set: settings %+v", s)
	}
	if got := debug.SetMemoryLimit(-1); got != 1<<30 {
		t.Errorf("memory limit changed to %d", got)
	}
}

// gcPercentNow returns the GC percentage in effect without changing it.
func gcPercentNow() int {
	p := debug.SetGCPercent(-1)
	debug.SetGCPercent(p)
	return p
}

// TestServeGCPercent: a replica built at StartGCPercent (as Serve builds it) runs at
// Options.ServeGCPercent once serving, and a reload builds at StartGCPercent and then
// returns to it.
func TestServeGCPercent(t *testing.T) {
	prev := debug.SetGCPercent(StartGCPercent)
	t.Cleanup(func() { debug.SetGCPercent(prev) })
	cfg := benchConfig(t, 3)
	a, err := New(cfg, Options{ServeGCPercent: 137})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- a.Run(ctx) }()
	waitUntil(t, "ready", a.Ready)
	if got := gcPercentNow(); got != 137 {
		t.Errorf("serving at GOGC %d, want 137", got)
	}
	if err := a.Reload(benchConfig(t, 4)); err != nil {
		t.Fatal(err)
	}
	if got := gcPercentNow(); got != 137 {
		t.Errorf("after a reload: GOGC %d, want 137", got)
	}
	cancel()
	if err := <-stopped; err != nil {
		t.Errorf("Run: %v", err)
	}
}

// TestReleaseAfterResync never blocks: the store's loop calls it, and a request already
// waiting stands for the new one.
func TestReleaseAfterResync(t *testing.T) {
	a := &App{release: make(chan struct{}, 1)}
	for range 3 {
		a.releaseAfterResync()
	}
	if len(a.release) != 1 {
		t.Fatalf("%d release requests queued, want 1", len(a.release))
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.releaser(ctx)
	}()
	waitUntil(t, "the request taken", func() bool { return len(a.release) == 0 })
	cancel()
	<-done
}
