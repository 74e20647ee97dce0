package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/internal/app"
	"github.com/fuseproxy/fuseproxy/internal/flaky"
	"github.com/fuseproxy/fuseproxy/internal/watch"
	"github.com/fuseproxy/fuseproxy/store"
)

// serve runs the proxy until SIGINT or SIGTERM; SIGHUP reloads the config.
func serve(args []string, stderr io.Writer, defaultConfig string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := configFlag(fs)
	if defaultConfig != "" {
		*path = defaultConfig
	}
	logFormat := fs.String("log-format", "", "json or console (overrides log.format)")
	watchEvery := fs.Duration("watch", time.Second, "poll the config file this often and reload it when it changes; 0 disables")
	if err := parse(fs, args); err != nil {
		return err
	}
	gc := app.ApplyGCDefault(os.Getenv) // GOGC=200 unless the environment sets GOGC
	watcher := watch.New(*path)         // before loading, so no change slips in between
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	if *logFormat != "" {
		cfg.Log.Format = *logFormat
	}
	log, err := newLogger(cfg.Log, stderr)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	store.RouteClientLogs(log)
	log.Info("garbage collector", gc.Fields()...)
	for _, w := range cfg.Warnings() {
		log.Warn("risky config", zap.String("warning", w))
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	a, err := app.New(cfg, app.Options{Logger: log, Version: version, Wall: wallClock(),
		Watch: watcher, WatchInterval: *watchEvery, Reload: hup})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return a.Run(ctx)
}

// wallClock returns the wall clock, skewed by FUSE_TEST_CLOCK_OFFSET (a Go duration) so
// tests can show that replicas with different clocks agree.
func wallClock() func() time.Time {
	d, err := time.ParseDuration(os.Getenv("FUSE_TEST_CLOCK_OFFSET"))
	if err != nil || d == 0 {
		return time.Now
	}
	return func() time.Time { return time.Now().Add(d) }
}

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

// validate loads a config and reports every error with its file:line and field.
func validate(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := configFlag(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	for _, w := range cfg.Warnings() {
		fmt.Fprintln(stdout, "warning:", w)
	}
	fmt.Fprintf(stdout, "%s: ok (%d upstreams, %d routes, store %s)\n", *path, len(cfg.Upstreams), len(cfg.Routes), cfg.Store.Driver)
	return nil
}

// demo runs the flaky upstream on 127.0.0.1:8081 and the proxy on the example config.
func demo(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "config.example.yaml", "config file")
	upstream := fs.String("upstream", "127.0.0.1:8081", "address of the bundled flaky upstream")
	if err := parse(fs, args); err != nil {
		return err
	}
	srv, errc, err := startFlaky(*upstream)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "flaky demo upstream on http://%s (control: /_flaky/set?fail=on|off)\n", *upstream)
	err = serve(nil, stderr, *path)
	_ = srv.Close()
	<-errc
	return err
}

func flakyCmd(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("flaky", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:8081", "listen address")
	if err := parse(fs, args); err != nil {
		return err
	}
	srv, errc, err := startFlaky(*listen)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "flaky upstream listening on http://%s\n", *listen)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	select {
	case <-ctx.Done():
		_ = srv.Close()
		<-errc
		return nil
	case err := <-errc:
		return err
	}
}

// startFlaky serves the flaky upstream; errc receives Serve's result when it stops.
func startFlaky(addr string) (*http.Server, <-chan error, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	srv := &http.Server{Handler: flaky.New(), ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() {
		err := srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		errc <- err
	}()
	return srv, errc, nil
}
