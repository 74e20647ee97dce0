package freeport

import (
	"net"
	"strconv"
	"testing"
)

// TestPortDistinctFreeAndBelowEphemeral: ports are never handed out twice, can be bound,
// and lie below the kernel's ephemeral range.
func TestPortDistinctFreeAndBelowEphemeral(t *testing.T) {
	end := ephemeralStart()
	seen := map[int]bool{}
	for range 200 {
		p, err := Port()
		if err != nil {
			t.Fatal(err)
		}
		if p < lowest || p >= end {
			t.Fatalf("port %d outside [%d, %d)", p, lowest, end)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Fatalf("port %d: %v", p, err)
		}
		l.Close()
	}
}

// TestPortSkipsPortsInUse: a port something listens on is never handed out.
func TestPortSkipsPortsInUse(t *testing.T) {
	var held []net.Listener
	busy := map[int]bool{}
	for p := lowest; p < lowest+50; p++ { // some of the range, taken
		if l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p))); err == nil {
			held = append(held, l)
			busy[p] = true
		}
	}
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	for range 500 {
		p, err := Port()
		if err != nil {
			t.Fatal(err)
		}
		if busy[p] {
			t.Fatalf("port %d handed out while something listens on it", p)
		}
	}
}
