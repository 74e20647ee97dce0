package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// An upstream's tls section is checked as serve will use it: the files are loaded.
func TestUpstreamTLSErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	head := "upstreams:\n  api:\n    targets: [https://10.0.0.5]\n    tls:\n"
	tail := "routes:\n  - upstream: api\n"
	for _, tt := range []struct{ src, want string }{
		{"      min_version: \"1.1\"\n", `config.yaml:5: upstreams.api.tls.min_version: must be 1.2 or 1.3, got "1.1"`},
		{"      ca_file: " + notPEM + "\n", "config.yaml:5: upstreams.api.tls.ca_file: no PEM certificate in " + notPEM},
		{"      ca_file: " + missing + "\n", "config.yaml:5: upstreams.api.tls.ca_file: "},
		{"      cert_file: " + notPEM + "\n", "config.yaml:5: upstreams.api.tls.cert_file: cert_file and key_file go together"},
		{"      cert_file: " + notPEM + "\n      key_file: " + notPEM + "\n", "config.yaml:5: upstreams.api.tls.cert_file: " + notPEM + " and " + notPEM + ": tls: "},
		{"      server_name: \"a b\"\n", `config.yaml:5: upstreams.api.tls.server_name: must be a host name, got "a b"`},
	} {
		_, err := parse(t, head+tt.src+tail, nil)
		if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("%s\n got: %v\nwant: %s...", strings.TrimSpace(tt.src), err, tt.want)
		}
	}
}
