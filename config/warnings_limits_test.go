package config

import (
	"slices"
	"strings"
	"testing"
)

// TestWarningsLimits: limits against exhaustion switched off, or a bulkhead as large as
// the connection cap, are warned about; the defaults are not.
func TestWarningsLimits(t *testing.T) {
	src := `server:
  max_connections: 100
  body_read_timeout: 0s
upstreams:
  a:
    targets: [http://a]
    max_concurrent_requests: 0
  b:
    targets: [http://b]
    max_concurrent_requests: 100
routes:
  - {upstream: a, path_prefix: /a/}
  - {upstream: b, path_prefix: /b/}
`
	got := mustParse(t, src, nil).Warnings()
	want := []string{
		`config.yaml:3: server.body_read_timeout: 0: request bodies have no deadline; a client that stops sending holds its connection and an upstream connection`,
		`config.yaml:7: upstreams.a.max_concurrent_requests: 0: no bulkhead; a slow upstream can hold every client connection`,
		`config.yaml:10: upstreams.b.max_concurrent_requests: 100 is not below server.max_connections (100): a slow upstream can still hold every client connection`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if w := mustParse(t, "server: {max_connections: 0}\n"+minimal, nil).Warnings(); !slices.Equal(w, []string{
		`config.yaml:1: server.max_connections: 0: no cap on client connections (each open one costs about 23 KiB, idle keep-alive ones included)`,
	}) {
		t.Errorf("warnings with max_connections 0: %q", w)
	}
	if w := mustParse(t, minimal, nil).Warnings(); len(w) != 0 {
		t.Errorf("warnings with the default limits: %q", w)
	}
}
