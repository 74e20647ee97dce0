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
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return app.Serve(ctx, app.ServeOptions{ConfigPath: *path, LogFormat: *logFormat, LogOutput: stderr,
		WatchInterval: *watchEvery, Reload: hup, Version: version})
}

// validate loads a config and reports every error with its file:line and field.
func validate(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := configFlag(fs)
	if err := parse(fs, args); err != nil {
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

// demo runs the flaky upstream on 127.0.0.1:8081 and the proxy on the example config.
func demo(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "config.example.yaml", "config file")
	upstream := fs.String("upstream", "127.0.0.1:8081", "address of the bundled flaky upstream")
	if err := parse(fs, args); err != nil {
		return err
	}
	f, err := app.StartFlaky(*upstream)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "flaky demo upstream on http://%s (control: /_flaky/set?fail=on|off)\n", *upstream)
	err = serve(nil, stderr, *path)
	_ = f.Close()
	return err
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
