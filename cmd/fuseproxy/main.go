// Command fuseproxy is a reverse proxy that guards every named upstream with a circuit
// breaker. Run `fuseproxy help` for the commands.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

// version is stamped at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

const usage = `fuseproxy: a reverse proxy with a circuit breaker per upstream

Usage:
  fuseproxy [serve] [-config FILE]     run the proxy (default command)
  fuseproxy validate [-config FILE]    check a config; exit 0 if valid, 1 if not
  fuseproxy demo [-config FILE]        run the proxy in front of a bundled flaky upstream
  fuseproxy flaky [-listen ADDR]       run only the flaky demo upstream
  fuseproxy circuits list|show NAME    see the circuits of a running replica
  fuseproxy circuits open|close|reset NAME
  fuseproxy circuits mode NAME MODE    steer a circuit (fleet-wide with Redis)
  fuseproxy targets [list]             see each target's health (outlier detection)
  fuseproxy targets eject|restore UPSTREAM HOST:PORT
  fuseproxy health                     exit 0 if the replica is ready, 1 if not
  fuseproxy reload                     make the replica re-read its config file
  fuseproxy version                    print the version

The config defaults to $FUSE_CONFIG or config.yaml. The admin commands (circuits,
health, reload) take --admin URL (default $FUSE_ADMIN_URL, else
http://127.0.0.1:9090), --token TOKEN (default $FUSE_ADMIN_TOKEN) and --json.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// errUsage marks a command line that could not be understood (exit 2).
var errUsage = errors.New("usage")

func run(args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "serve":
		err = serve(args, stderr, "")
	case "validate":
		err = validate(args, stdout, stderr)
	case "demo":
		err = demo(args, stderr)
	case "flaky":
		err = flakyCmd(args, stderr)
	case "circuits":
		err = circuits(args, stdout, stderr)
	case "targets":
		err = targets(args, stdout, stderr)
	case "health":
		err = health(args, stdout, stderr)
	case "reload":
		err = reloadCmd(args, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "fuseproxy", version)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "fuseproxy: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsage), errors.Is(err, flag.ErrHelp):
		return 2
	default:
		fmt.Fprintln(stderr, "fuseproxy:", err)
		return 1
	}
}

func configFlag(fs *flag.FlagSet) *string {
	def := os.Getenv("FUSE_CONFIG")
	if def == "" {
		def = "config.yaml"
	}
	return fs.String("config", def, "config file")
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "unexpected argument %q\n", fs.Arg(0))
		return errUsage
	}
	return nil
}
