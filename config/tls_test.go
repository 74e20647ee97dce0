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

// The listeners' tls sections, h2c and grpc_codes are checked with file:line errors; the
// certificate files are loaded.
func TestListenerTLSAndProtocolErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	up := "upstreams:\n  api:\n    targets: [http://10.0.0.5]\nroutes:\n  - upstream: api\n"
	for _, tt := range []struct{ src, want string }{
		{"server:\n  tls:\n    min_version: \"1.0\"\n" + up, `config.yaml:3: server.tls.min_version: must be 1.2 or 1.3, got "1.0"`},
		{"server:\n  tls:\n    certificates:\n      - cert_file: " + notPEM + "\n" + up, "config.yaml:4: server.tls.certificates[0]: cert_file and key_file are both required"},
		{"server:\n  tls:\n    certificates:\n      - {cert_file: " + notPEM + ", key_file: " + notPEM + "}\n" + up,
			"config.yaml:4: server.tls.certificates[0].cert_file: " + notPEM + " and " + notPEM + ": tls: "},
		{"admin:\n  tls:\n    certificates: [{cert_file: /nonexistent.crt, key_file: /nonexistent.key}]\n" + up, "config.yaml:3: admin.tls.certificates[0].cert_file: "},
		{"server:\n  h2c: true\n  tls:\n    certificates: [{cert_file: " + notPEM + ", key_file: " + notPEM + "}]\n" + up, "config.yaml:2: server.h2c: h2c is cleartext HTTP/2"},
		{"upstreams:\n  api:\n    targets: [https://10.0.0.5]\n    h2c: true\nroutes:\n  - upstream: api\n", `config.yaml:4: upstreams.api.h2c: h2c is cleartext HTTP/2 to http:// targets, but targets[0] is "https://10.0.0.5"`},
		{"upstreams:\n  api:\n    targets: [http://10.0.0.5]\n    failure:\n      grpc_codes: [UNAVAILABLE, 17, NOPE]\nroutes:\n  - upstream: api\n",
			`config.yaml:5: upstreams.api.failure.grpc_codes[1]: must be a gRPC status code, a name such as "UNAVAILABLE" or a number 0-16, got "17"`},
	} {
		_, err := parse(t, tt.src, nil)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s\n got: %v\nwant: %s...", tt.src, err, tt.want)
		}
	}
	cfg := mustParse(t, "upstreams:\n  api:\n    targets: [http://10.0.0.5]\n    failure: {grpc_codes: [unavailable, 4, Internal]}\nroutes:\n  - upstream: api\n", nil)
	if got := cfg.Upstreams["api"].Failure.GRPCFailure; got != 1<<14|1<<4|1<<13 {
		t.Errorf("grpc_codes by name, number and any case: %b", got)
	}
}
