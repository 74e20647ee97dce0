//go:build !unix

package config

import "os"

// openNonBlocking opens path for reading (named pipes that block on open are a unix
// matter).
func openNonBlocking(path string) (*os.File, error) { return os.Open(path) }
