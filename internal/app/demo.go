package app

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/internal/flaky"
)

// Flaky is the bundled demo upstream (internal/flaky) serving on its own listener, for
// `fuseproxy demo` and `fuseproxy flaky`.
type Flaky struct {
	srv  *http.Server
	done chan struct{} // closed when Serve returned
	err  error         // Serve's error (nil once closed), once done is closed
}

// StartFlaky serves the demo upstream on addr until Close.
func StartFlaky(addr string) (*Flaky, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	f := &Flaky{srv: &http.Server{Handler: flaky.New(), ReadHeaderTimeout: 5 * time.Second}, done: make(chan struct{})}
	go func() {
		defer close(f.done)
		if err := f.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			f.err = err
		}
	}()
	return f, nil
}

// Done is closed when the server stopped, by Close or because its listener failed (Err
// says why).
func (f *Flaky) Done() <-chan struct{} { return f.done }

// Err returns why the server stopped, once Done is closed; nil after Close.
func (f *Flaky) Err() error {
	<-f.done
	return f.err
}

// Close stops the server and waits for it; it returns Err.
func (f *Flaky) Close() error {
	_ = f.srv.Close()
	return f.Err()
}

// DemoUpstream is where the demo's flaky upstream listens by default, and the target
// config.example.yaml gives its upstream.
const DemoUpstream = "127.0.0.1:8081"

// DemoOverrides are the demo's command-line changes to its config: where the proxy and
// the admin API listen, and where the flaky upstream is. They are applied at start and at
// every reload (Apply is ServeOptions.Adjust), so a second demo replica can run beside
// the first.
type DemoOverrides struct {
	Listen   string // listen, when not empty
	Admin    string // admin.listen, when not empty
	Upstream string // the flaky upstream's host:port; every target at DemoUpstream moves there
}

// Apply changes cfg as o says. Moving the upstream with no target at DemoUpstream to
// move is an error: the proxy would not reach the flaky upstream.
func (o DemoOverrides) Apply(cfg *config.Config) error {
	if o.Listen != "" {
		cfg.Listen = o.Listen
	}
	if o.Admin != "" {
		cfg.Admin.Listen = o.Admin
	}
	if o.Upstream == "" || o.Upstream == DemoUpstream {
		return nil
	}
	moved := 0
	for _, u := range cfg.Upstreams {
		for i, t := range u.Targets {
			tu, err := url.Parse(t)
			if err != nil || tu.Host != DemoUpstream {
				continue
			}
			tu.Host = o.Upstream
			u.Targets[i] = tu.String()
			moved++
		}
	}
	if moved == 0 {
		return fmt.Errorf("demo -upstream %s: no target of %s is at %s, so none can be moved there", o.Upstream, cfg.Path, DemoUpstream)
	}
	return nil
}
