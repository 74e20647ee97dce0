package config

import (
	"fmt"
	"strings"
)

// CleanToken returns a bearer token as operators write it: surrounding whitespace is
// removed, so the trailing newline of a Kubernetes secret made from a file (or of
// `echo token > file`) does not lock everyone out. A token with a control character
// left inside cannot be sent in an HTTP header and is refused. Every place a token is
// read (admin.token, FUSE_ADMIN_TOKEN, the CLI's --token) goes through CleanToken.
func CleanToken(raw string) (string, error) {
	tok := strings.TrimSpace(raw)
	if i := strings.IndexFunc(tok, func(r rune) bool { return r < 0x20 || r == 0x7f }); i >= 0 {
		return "", fmt.Errorf("the token has a control character (%q) at byte %d; a bearer token must be printable", tok[i], i)
	}
	return tok, nil
}
