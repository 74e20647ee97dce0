package app

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/internal/watch"
)

// ServeOptions are what the command line hands Serve.
type ServeOptions struct {
	ConfigPath string
	// LogFormat, json or console, overrides log.format; empty keeps the file's.
	LogFormat string
	// LogOutput receives the log (the process's stderr).
	LogOutput io.Writer
	// WatchInterval is how often the config file is polled for changes; 0 disables the
	// watch.
	WatchInterval time.Duration
	// Reload reloads the config file on each value received (SIGHUP).
	Reload  <-chan os.Signal
	Version string
	// Getenv reads GOGC, GOMEMLIMIT and FUSE_TEST_CLOCK_OFFSET; nil means os.Getenv.
	Getenv func(string) string
	// Adjust, when set, changes the config read from the file, at start and at every
	// reload, before it is used; the result is validated again.
	Adjust func(*config.Config) error
}

// LoadConfig loads and validates the config file at path, as Serve does: `fuseproxy
// validate` checks exactly what `fuseproxy serve` would run.
func LoadConfig(path string) (*config.Config, error) { return config.Load(path) }

// loadAdjusted loads the config file at path and applies adjust, if any, validating the
// result again (adjust may change fields Validate derives others from).
func loadAdjusted(path string, adjust func(*config.Config) error) (*config.Config, error) {
	cfg, err := config.Load(path)
	if err != nil || adjust == nil {
		return cfg, err
	}
	if err := adjust(cfg); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// Serve runs a replica from its config file until ctx ends, as `fuseproxy serve` does:
// the garbage collector's default, the config (the file watch takes its reference
// first, so no change slips in between), the logger, a warning per risky setting, then
// New and Run.
func Serve(ctx context.Context, o ServeOptions) error {
	if o.Getenv == nil {
		o.Getenv = os.Getenv
	}
	gc := ApplyGCDefault(o.Getenv) // GOGC=200 unless the environment sets GOGC
	serveGC := 0
	if gc.Source == "default" { // built at StartGCPercent; Run sets the default when serving
		serveGC = DefaultGCPercent
		debug.SetGCPercent(StartGCPercent)
	}
	watcher := watch.New(o.ConfigPath)
	cfg, err := loadAdjusted(o.ConfigPath, o.Adjust)
	if err != nil {
		return err
	}
	if o.LogFormat != "" {
		cfg.Log.Format = o.LogFormat
	}
	log, err := newLogger(cfg.Log, o.LogOutput)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	log.Info("garbage collector", gc.Fields()...)
	for _, w := range cfg.Warnings() {
		log.Warn("risky config", zap.String("warning", w))
	}
	a, err := New(cfg, Options{Logger: log, Version: o.Version, Wall: wallClock(o.Getenv),
		Watch: watcher, WatchInterval: o.WatchInterval, Reload: o.Reload, Adjust: o.Adjust, ServeGCPercent: serveGC})
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

// wallClock returns the wall clock, skewed by FUSE_TEST_CLOCK_OFFSET (a Go duration) so
// tests can show that replicas with different clocks agree.
func wallClock(getenv func(string) string) func() time.Time {
	d, err := time.ParseDuration(getenv("FUSE_TEST_CLOCK_OFFSET"))
	if err != nil || d == 0 {
		return time.Now
	}
	return func() time.Time { return time.Now().Add(d) }
}

// newLogger returns the logger log.level and log.format describe, writing to w.
func newLogger(c config.Log, w io.Writer) (*zap.Logger, error) {
	level, err := zapcore.ParseLevel(c.Level)
	if err != nil {
		return nil, fmt.Errorf("log.level: %w", err)
	}
	ec := zap.NewProductionEncoderConfig()
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	switch c.Format {
	case "console":
		ec.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(ec)
	default:
		enc = zapcore.NewJSONEncoder(ec)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), level)), nil
}
