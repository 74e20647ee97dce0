package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/fuseproxy/fuseproxy/internal/admin"
)

// defaultAdminURL is where the admin commands find the admin API without --admin or
// $FUSE_ADMIN_URL: the default admin.listen.
const defaultAdminURL = "http://127.0.0.1:8084"

// adminFlags are the flags every admin command takes.
type adminFlags struct {
	fs      *flag.FlagSet
	url     string
	token   string
	json    bool
	timeout time.Duration
	ca      string
}

// newAdminFlagSet returns a flag set with --admin, --token, --json and --timeout.
func newAdminFlagSet(name string, stderr io.Writer, timeout time.Duration) (*flag.FlagSet, *adminFlags) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := &adminFlags{fs: fs}
	def := os.Getenv("FUSE_ADMIN_URL")
	if def == "" {
		def = defaultAdminURL
	}
	fs.StringVar(&f.url, "admin", def, "admin API base URL (env FUSE_ADMIN_URL)")
	fs.StringVar(&f.token, "token", os.Getenv("FUSE_ADMIN_TOKEN"), "admin bearer token (env FUSE_ADMIN_TOKEN)")
	fs.BoolVar(&f.json, "json", false, "print the API's JSON instead of a table")
	fs.DurationVar(&f.timeout, "timeout", timeout, "timeout of the request")
	fs.StringVar(&f.ca, "ca", os.Getenv("FUSE_ADMIN_CA"), "PEM CA bundle to verify an https admin API with, instead of the system roots (env FUSE_ADMIN_CA)")
	return fs, f
}

// parseInterleaved parses flags that may come before, between or after the positional
// arguments ("circuits show api --json"), and returns the positional arguments.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, errUsage
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos, args = append(pos, args[0]), args[1:]
	}
}

// client returns the admin client the flags describe; a bad token is an error naming
// where the token came from.
func (f *adminFlags) client() (*admin.Client, error) {
	c, err := admin.NewClient(f.url, f.token, f.timeout)
	if err != nil {
		source := "env FUSE_ADMIN_TOKEN"
		f.fs.Visit(func(fl *flag.Flag) {
			if fl.Name == "token" {
				source = "--token"
			}
		})
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	if f.ca != "" {
		if err := c.TrustCA(f.ca); err != nil {
			return nil, fmt.Errorf("--ca: %w", err)
		}
	}
	return c, nil
}

// printJSON writes an answer's body as it came, for --json.
func printJSON(w io.Writer, data []byte) {
	_, _ = w.Write(data)
	if len(data) > 0 && data[len(data)-1] != '\n' {
		fmt.Fprintln(w)
	}
}
