package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/fuseproxy/fuseproxy/internal/app"
)

// demo runs the flaky upstream and the proxy on the example config, until SIGINT or
// SIGTERM, or until the process that started it exits: `go run` does not pass SIGTERM on
// to the program it runs, so `kill` of a backgrounded `go run ./cmd/fuseproxy demo`
// would otherwise leave the demo holding its ports.
func demo(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "config.example.yaml", "config file")
	upstream := fs.String("upstream", app.DemoUpstream, "address of the flaky upstream; the config's targets at "+app.DemoUpstream+" move there")
	runFlaky := fs.Bool("flaky", true, "run the flaky upstream; -flaky=false uses the one another demo runs at -upstream")
	listen := fs.String("listen", "", "proxy address (overrides the config's listen)")
	adminAddr := fs.String("admin", "", "admin API address (overrides the config's admin.listen)")
	logFormat := fs.String("log-format", "", "json or console (overrides log.format)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := checkDemoUpstream(*upstream); err != nil {
		return err
	}
	if _, err := os.Stat(*path); err != nil {
		return fmt.Errorf("demo: %w (run it from the repository's root, where config.example.yaml is, or pass -config FILE)", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	if ppid := os.Getppid(); ppid > 1 {
		wg.Go(func() { stopWithParent(ctx, cancel, ppid, 200*time.Millisecond, stderr) })
	}

	if *runFlaky {
		f, err := app.StartFlaky(*upstream)
		if err != nil {
			if errors.Is(err, syscall.EADDRINUSE) {
				return fmt.Errorf("flaky upstream: %w (another demo running? stop it, or pass -flaky=false to share its upstream)", err)
			}
			return fmt.Errorf("flaky upstream: %w", err)
		}
		defer func() { _ = f.Close() }()
		fmt.Fprintf(stderr, "flaky demo upstream on http://%s (control: /_flaky/set?fail=on|off)\n", *upstream)
	}
	fmt.Fprintf(stderr, "fuseproxy demo: pid %d; stop it with Ctrl-C or kill %d\n", os.Getpid(), os.Getpid())
	o := app.DemoOverrides{Listen: *listen, Admin: *adminAddr, Upstream: *upstream}
	return serveUntil(ctx, app.ServeOptions{ConfigPath: *path, LogFormat: *logFormat, LogOutput: stderr,
		WatchInterval: time.Second, Adjust: o.Apply})
}

// checkDemoUpstream checks -upstream before anything listens: the flaky upstream
// listens there and the config's targets move there, so it needs a host and a port
// number other than 0.
func checkDemoUpstream(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err == nil && host == "" {
		err = errors.New("no host")
	}
	if n, perr := strconv.Atoi(port); err == nil && (perr != nil || n < 1 || n > 65535) {
		err = fmt.Errorf("port %q is not a number from 1 to 65535", port)
	}
	if err != nil {
		return fmt.Errorf("demo -upstream %q: %v: want host:port, as %s", addr, err, app.DemoUpstream)
	}
	return nil
}

// stopWithParent calls stop when this process's parent (ppid) is gone, checking every
// interval until ctx ends: an orphan is adopted by another process, so its parent's pid
// changes.
func stopWithParent(ctx context.Context, stop func(), ppid int, interval time.Duration, stderr io.Writer) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if os.Getppid() != ppid {
				fmt.Fprintf(stderr, "fuseproxy demo: the process that started it (pid %d) exited; stopping\n", ppid)
				stop()
				return
			}
		}
	}
}
