// Package e2e runs fuseproxy as its users do: the real binary, started as processes with
// temporary YAML configs on free loopback ports, in front of the bundled flaky backend
// (also a process), sharing breaker state through real redis-server processes. Tests
// drive it over HTTP only and read its JSON log lines; they never import the product.
//
//	go test -count=1 -v ./e2e/                   # plain build
//	FUSE_E2E_RACE=1 go test -count=1 -v ./e2e/   # the binary built with -race
//	FUSE_E2E_BINARY=/path/fuseproxy go test ./e2e/  # a prebuilt binary (e.g. the static one)
//	FUSE_E2E_REPORT=/tmp/e2e.jsonl go test ./e2e/   # also write the measured figures
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// binary is the fuseproxy executable under test, built once by TestMain.
var binary string

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

func runTests(m *testing.M) int {
	if p := os.Getenv("FUSE_E2E_BINARY"); p != "" {
		abs, err := filepath.Abs(p)
		if err == nil {
			_, err = os.Stat(abs)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "e2e: FUSE_E2E_BINARY=%s: %v\n", p, err)
			return 1
		}
		binary = abs
		fmt.Fprintf(os.Stderr, "e2e: testing prebuilt binary %s\n", binary)
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "fuseproxy-e2e-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "fuseproxy")
	race := os.Getenv("FUSE_E2E_RACE") == "1"
	args := []string{"build"}
	if race {
		args = append(args, "-race")
	}
	args = append(args, "-o", binary, "./cmd/fuseproxy")
	cmd := exec.Command("go", args...)
	cmd.Dir = ".." // the module root: this package lives in <root>/e2e
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go %v: %v\n", args, err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "e2e: built %s (race=%t) in %v\n", binary, race, time.Since(start).Round(time.Millisecond))
	return m.Run()
}
