// Package freeport hands out loopback TCP ports for the servers a test starts in other
// processes (fuseproxy, redis-server), which must be told a port before they bind it.
//
// Binding to port 0 and closing leaves a window in which the port is free for anyone:
// the kernel hands the same range to every other bind(":0") and to the source port of
// every outgoing connection, and a busy test run makes thousands of those. So ports come
// from below the kernel's ephemeral range (ip_local_port_range), which the kernel never
// picks on its own; they are chosen at random, checked by binding, and handed out at most
// once per process. Concurrent test binaries can still pick the same port, rarely: a
// caller that can tell (a server that fails to bind) should try another.
package freeport

import (
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// lowest is the first port handed out; the range ends below the ephemeral range.
const lowest = 20000

var (
	mu    sync.Mutex
	given = map[int]bool{}
)

// Port returns a loopback TCP port that nothing listened on when it was checked and that
// this process has not handed out before.
func Port() (int, error) {
	end := ephemeralStart()
	mu.Lock()
	defer mu.Unlock()
	for range 1000 {
		p := lowest + rand.IntN(end-lowest)
		if given[p] {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue // in use
		}
		l.Close()
		given[p] = true
		return p, nil
	}
	return 0, errors.New("freeport: no free port found below the ephemeral range")
}

// ephemeralStart is the first port of the kernel's ephemeral range (32768 if unknown).
func ephemeralStart() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 32768
	}
	n, err := strconv.Atoi(f[0])
	if err != nil || n <= lowest+1000 {
		return 32768
	}
	return n
}
