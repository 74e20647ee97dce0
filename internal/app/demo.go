package app

import (
	"errors"
	"net"
	"net/http"
	"time"

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
