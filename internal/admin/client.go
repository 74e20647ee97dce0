package admin

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/fuseproxy/fuseproxy/config"
)

// Client calls the admin API, as the CLI's admin commands (circuits, health, reload)
// do. It lives beside the handler so that both ends of the API (its routes, HeaderAdmin,
// the Error body, how a token is read) are defined in one place.
type Client struct {
	base  string
	token string
	http  *http.Client
}

// NewClient returns a client of the admin API at base (a URL; "host:port" means
// http://host:port) that sends token as a bearer token, when not empty, and gives up on
// a request after timeout. The token is read as the server reads admin.token
// (config.CleanToken): a trailing newline from a secret file is dropped, and a control
// character inside is the only error.
func NewClient(base, token string, timeout time.Duration) (*Client, error) {
	base = strings.TrimRight(base, "/")
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	token, err := config.CleanToken(token)
	if err != nil {
		return nil, err
	}
	return &Client{base: base, token: token, http: &http.Client{Timeout: timeout}}, nil
}

// TrustCA makes the client verify an https admin API (admin.tls) against the PEM CA
// bundle in caFile rather than the system roots, for a private CA.
func (c *Client) TrustCA(caFile string) error {
	pool, err := config.LoadCAFile(caFile)
	if err != nil {
		return err
	}
	c.http.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, ForceAttemptHTTP2: true}
	return nil
}

// APIError is an answer with a status other than 2xx.
type APIError struct {
	Status int
	Body   []byte // the answer's body as it came
	Msg    string // the Error body's message, when the body is one
}

func (e *APIError) Error() string {
	msg := e.Msg
	if msg == "" {
		msg = strings.TrimSpace(string(e.Body))
	}
	if e.Status == http.StatusUnauthorized {
		msg += " (set --token or FUSE_ADMIN_TOKEN)"
	}
	return fmt.Sprintf("admin API answered %d: %s", e.Status, msg)
}

// Call sends a request with an optional JSON body; it returns the answer's status and
// body, and an *APIError for a status other than 2xx.
func (c *Client) Call(method, path string, in any) (int, []byte, error) {
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
	req.Header.Set(HeaderAdmin, "1")
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
		var e Error
		_ = json.Unmarshal(data, &e)
		return resp.StatusCode, data, &APIError{Status: resp.StatusCode, Body: data, Msg: e.Error}
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
