package config

import (
	"strings"
	"testing"
)

// TestAdminTokenAsWritten: a token is read the way operators write it, wherever it comes
// from: the trailing newline of a Kubernetes secret made from a file (in the environment,
// in the file through ${VAR} or as a YAML block scalar) and surrounding blanks are
// dropped; a control character inside is an error naming where the token came from.
func TestAdminTokenAsWritten(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		env       map[string]string
	}{
		{"env with a newline", minimal, map[string]string{"FUSE_ADMIN_TOKEN": "s3cret\n"}},
		{"env with CRLF and blanks", minimal, map[string]string{"FUSE_ADMIN_TOKEN": " \ts3cret\r\n"}},
		{"file through ${VAR}", minimal + "admin:\n  token: ${TOKEN}\n", map[string]string{"TOKEN": "s3cret\n"}},
		{"file, block scalar", minimal + "admin:\n  token: |\n    s3cret\n", nil},
		{"file, quoted with blanks", minimal + "admin:\n  token: \"  s3cret \\n\"\n", nil},
	} {
		cfg := mustParse(t, tc.src, tc.env)
		if cfg.Admin.Token != "s3cret" {
			t.Errorf("%s: admin.token = %q, want %q", tc.name, cfg.Admin.Token, "s3cret")
		}
	}

	for _, tc := range []struct {
		name, src string
		env       map[string]string
		want      string
	}{
		{"env with a newline inside", minimal, map[string]string{"FUSE_ADMIN_TOKEN": "s3c\nret\n"},
			`admin.token: the token has a control character ('\n') at byte 3; a bearer token must be printable (set by env FUSE_ADMIN_TOKEN)`},
		{"file with a control character", minimal + "admin:\n  token: \"s3c\\x01ret\"\n", nil,
			`config.yaml:7: admin.token: the token has a control character ('\x01') at byte 3; a bearer token must be printable`},
		{"blank token on every interface", minimal + "admin:\n  listen: \":8084\"\n", map[string]string{"FUSE_ADMIN_TOKEN": " \n"},
			`config.yaml:7: admin.listen: ":8084" is not a loopback address, so an admin token is required (set admin.token or env FUSE_ADMIN_TOKEN)`},
	} {
		_, err := parse(t, tc.src, tc.env)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s: error\n%v\nwant\n%s", tc.name, err, tc.want)
		}
	}
}

func TestCleanToken(t *testing.T) {
	for raw, want := range map[string]string{"": "", "\n": "", "a b": "a b", "tok\n": "tok", "\u00e9t\u00e9\n": "\u00e9t\u00e9"} {
		if got, err := CleanToken(raw); err != nil || got != want {
			t.Errorf("CleanToken(%q) = %q, %v; want %q", raw, got, err, want)
		}
	}
	for _, raw := range []string{"a\tb", "a\rb", "a\x00b", "a\x7fb", "a\x1bb"} {
		if _, err := CleanToken(raw); err == nil || strings.Contains(err.Error(), raw) {
			t.Errorf("CleanToken(%q): %v, want an error that does not repeat the token", raw, err)
		}
	}
}
