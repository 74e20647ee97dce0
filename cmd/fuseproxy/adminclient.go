package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/internal/admin"
)

// defaultAdminURL is where the admin commands find the admin API without --admin or
// $FUSE_ADMIN_URL: the default admin.listen.
const defaultAdminURL = "http://127.0.0.1:9090"

// adminFlags are the flags every admin command takes.
type adminFlags struct {
	fs      *flag.FlagSet
	url     string
	token   string
	json    bool
	timeout time.Duration
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
	return fs, f
}

// parseInterleaved parses flags that may come before, between or after the positional
// arguments ("circuits show api --json"), and returns the positional arguments.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
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

// adminClient calls the admin API.
type adminClient struct {
	base  string
	token string
	http  *http.Client
}

// client returns the client the flags describe. The token is read as the server reads
// admin.token (config.CleanToken): a trailing newline from a secret file is dropped, and
// a control character inside is an error naming where the token came from.
func (f *adminFlags) client() (*adminClient, error) {
	base := strings.TrimRight(f.url, "/")
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	token, err := config.CleanToken(f.token)
	if err != nil {
		source := "env FUSE_ADMIN_TOKEN"
		f.fs.Visit(func(fl *flag.Flag) {
			if fl.Name == "token" {
				source = "--token"
			}
		})
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	return &adminClient{base: base, token: token, http: &http.Client{Timeout: f.timeout}}, nil
}

// apiError is an answer with a status other than 2xx.
type apiError struct {
	status int
	body   []byte
	msg    string
}

func (e *apiError) Error() string {
	msg := e.msg
	if msg == "" {
		msg = strings.TrimSpace(string(e.body))
	}
	if e.status == http.StatusUnauthorized {
		msg += " (set --token or FUSE_ADMIN_TOKEN)"
	}
	return fmt.Sprintf("admin API answered %d: %s", e.status, msg)
}

// call sends a request with an optional JSON body; it returns the answer's status and
// body, and an *apiError for a status other than 2xx.
func (c *adminClient) call(method, path string, in any) (int, []byte, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(context.Background(), method, c.base+path, body)
	if err != nil {
		return 0, nil, fmt.Errorf("admin URL %q: %w", c.base, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	// The admin API refuses a command without it, as one a web page could have sent.
	req.Header.Set(admin.HeaderAdmin, "1")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("admin API at %s: %w", c.base, unwrapURLError(err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return resp.StatusCode, nil, fmt.Errorf("admin API at %s: reading the answer: %w", c.base, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		var e admin.Error
		_ = json.Unmarshal(data, &e)
		return resp.StatusCode, data, &apiError{status: resp.StatusCode, body: data, msg: e.Error}
	}
	return resp.StatusCode, data, nil
}

// unwrapURLError drops net/http's "Get \"URL\": " prefix; the caller names the URL.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// printJSON writes an answer's body as it came, for --json.
func printJSON(w io.Writer, data []byte) {
	_, _ = w.Write(data)
	if len(data) > 0 && data[len(data)-1] != '\n' {
		fmt.Fprintln(w)
	}
}
