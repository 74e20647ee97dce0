package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/fuseproxy/fuseproxy/internal/app"
)

// serve runs the proxy until SIGINT or SIGTERM; SIGHUP reloads the config.
func serve(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := configFlag(fs)
	logFormat := fs.String("log-format", "", "json or console (overrides log.format)")
	watchEvery := fs.Duration("watch", time.Second, "poll the config file this often and reload it when it changes; 0 disables")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := missingConfig(fs, *path); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return serveUntil(ctx, app.ServeOptions{ConfigPath: *path, LogFormat: *logFormat, LogOutput: stderr,
		WatchInterval: *watchEvery})
}

// serveUntil runs the proxy as o says until ctx ends; SIGHUP reloads the config.
func serveUntil(ctx context.Context, o app.ServeOptions) error {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	o.Reload, o.Version = hup, version
	return app.Serve(ctx, o)
}

// validate loads a config and reports every error with its file:line and field.
func validate(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := configFlag(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := missingConfig(fs, *path); err != nil {
		return err
	}
	cfg, err := app.LoadConfig(*path)
	if err != nil {
		return err
	}
	for _, w := range cfg.Warnings() {
		fmt.Fprintln(stdout, "warning:", w)
	}
	fmt.Fprintf(stdout, "%s: ok (%d upstreams, %d routes, store %s)\n", *path, len(cfg.Upstreams), len(cfg.Routes), cfg.Store.Driver)
	return nil
}

func flakyCmd(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("flaky", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:8081", "listen address")
	if err := parse(fs, args); err != nil {
		return err
	}
	f, err := app.StartFlaky(*listen)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "flaky upstream listening on http://%s\n", *listen)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	select {
	case <-ctx.Done():
		return f.Close()
	case <-f.Done():
		return f.Err()
	}
}
