// Command fuseproxy is a reverse proxy that guards every named upstream with a circuit
// breaker. Run `fuseproxy help` for the commands.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// version is stamped at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

const usage = `fuseproxy: a reverse proxy with a circuit breaker per upstream

Usage:
  fuseproxy [serve] [-config FILE]     run the proxy (default command)
  fuseproxy validate [-config FILE]    check a config; exit 0 if valid, 1 if not
  fuseproxy demo [-config FILE]        run the proxy in front of a bundled flaky upstream
                                       (Ctrl-C stops it; so does its parent's exit)
  fuseproxy flaky [-listen ADDR]       run only the flaky demo upstream
  fuseproxy migrate [-config FILE] [-grants ROLE]
                                       create or upgrade the postgres store's tables
                                       (-grants: print a runtime role's GRANTs)
  fuseproxy circuits list|show NAME    see the circuits of a running replica
  fuseproxy circuits open|close|reset NAME
  fuseproxy circuits mode NAME MODE    steer a circuit (fleet-wide with Redis)
  fuseproxy targets [list]             see each target's health (outlier detection)
  fuseproxy targets eject|restore UPSTREAM HOST:PORT
  fuseproxy keys [list] [UPSTREAM]     see per-key circuits: counts, the keys open
  fuseproxy keys show|open|close|reset UPSTREAM KEY
  fuseproxy keys mode UPSTREAM KEY MODE
  fuseproxy health                     exit 0 if the replica is ready, 1 if not
  fuseproxy reload                     make the replica re-read its config file
  fuseproxy version                    print the version (also --version)
  fuseproxy help                       print this overview (also -h, --help)

The config defaults to $FUSE_CONFIG or config.yaml. The admin commands (circuits,
health, reload) take --admin URL (default $FUSE_ADMIN_URL, else
http://127.0.0.1:8084), --token TOKEN (default $FUSE_ADMIN_TOKEN), --ca FILE (a
PEM CA bundle for an https admin API, default $FUSE_ADMIN_CA) and --json.
Every command takes -h for its own flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// errUsage marks a command line that could not be understood (exit 2).
var errUsage = errors.New("usage")

func run(args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 {
		switch a := args[0]; {
		case a == "-h" || a == "-help" || a == "--help":
			cmd, args = "help", args[1:]
		case a == "-version" || a == "--version":
			cmd, args = "version", args[1:]
		case len(a) > 0 && a[0] != '-':
			cmd, args = a, args[1:]
		}
	}
	var err error
	switch cmd {
	case "serve":
		err = serve(args, stderr)
	case "validate":
		err = validate(args, stdout, stderr)
	case "demo":
		err = demo(args, stderr)
	case "flaky":
		err = flakyCmd(args, stderr)
	case "migrate":
		err = migrate(args, stdout, stderr)
	case "circuits":
		err = circuits(args, stdout, stderr)
	case "targets":
		err = targets(args, stdout, stderr)
	case "keys":
		err = keys(args, stdout, stderr)
	case "health":
		err = health(args, stdout, stderr)
	case "reload":
		err = reloadCmd(args, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "fuseproxy", version)
	case "help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "fuseproxy: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp): // -h: the command's flags were printed
		return 0
	case errors.Is(err, errUsage):
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

// missingConfig returns a clear error when the config file the flag set names does not
// exist (the container image has none of its own), saying where its path came from and
// how to give one; nil otherwise, and Load reports any other problem.
func missingConfig(flags *flag.FlagSet, path string) error {
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	from := "the default"
	if os.Getenv("FUSE_CONFIG") != "" {
		from = "$FUSE_CONFIG"
	}
	flags.Visit(func(f *flag.Flag) {
		if f.Name == "config" {
			from = "-config"
		}
	})
	msg := fmt.Sprintf("no config file at %s (%s): write one (config.example.yaml is a commented start, README lists every key) "+
		"and name it with -config FILE or $FUSE_CONFIG", path, from)
	if filepath.IsAbs(path) {
		msg += fmt.Sprintf("; in a container, mount it: -v $PWD/config.yaml:%s:ro", path)
	}
	return errors.New(msg)
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "unexpected argument %q\n", fs.Arg(0))
		return errUsage
	}
	return nil
}
