package redistest

import (
	"github.com/fuseproxy/fuseproxy/internal/testutil/freeport"

	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// Sentinels is a master, its replica and three Sentinels watching them, on loopback,
// owned by one test (down-after-milliseconds 1000, so a killed master's replica is
// promoted within a few seconds).
type Sentinels struct {
	t         testing.TB
	Name      string // the master's name for the Sentinels
	Master    *Server
	Replica   *Server
	Sentinels []*Server
}

// StartSentinels starts the master, the replica (replicaof the master), and three
// Sentinels monitoring the master as name with a quorum of 2, then waits until every
// Sentinel knows the replica and the other Sentinels.
func StartSentinels(t testing.TB, name string) *Sentinels {
	t.Helper()
	s := &Sentinels{t: t, Name: name}
	s.Master = Start(t)
	s.Replica = Start(t, "--replicaof", "127.0.0.1", portOf(s.Master))
	conf := fmt.Sprintf("sentinel monitor %s 127.0.0.1 %s 2\n"+
		"sentinel down-after-milliseconds %s 1000\n"+
		"sentinel failover-timeout %s 10000\n"+
		"sentinel parallel-syncs %s 1\n", name, portOf(s.Master), name, name, name)
	for range 3 {
		s.Sentinels = append(s.Sentinels, startSentinel(t, conf))
	}
	deadline := time.Now().Add(clusterTimeout)
	for _, sn := range s.Sentinels {
		for {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			m, err := sn.Client().Do(ctx, "SENTINEL", "MASTER", name).Result()
			cancel()
			if err == nil && sentinelField(m, "num-slaves") == "1" && sentinelField(m, "num-other-sentinels") == "2" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("redistest: sentinel %s does not know the replica and the other sentinels within %v: %v %v",
					sn.Addr(), clusterTimeout, m, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return s
}

func portOf(s *Server) string { return s.Addr()[strings.LastIndexByte(s.Addr(), ':')+1:] }

// startSentinel starts one Sentinel with the given directives on a free port.
func startSentinel(t testing.TB, conf string) *Server {
	t.Helper()
	s := &Server{t: t, dir: t.TempDir(), sentinel: conf}
	t.Cleanup(s.cleanup)
	var err error
	for range 3 {
		if s.port, err = freeport.Port(); err != nil {
			t.Fatalf("redistest: no free port: %v", err)
		}
		if err = s.start(); err == nil {
			return s
		}
	}
	t.Fatalf("redistest: sentinel: %v", err)
	return nil
}

// sentinelField reads a field of SENTINEL MASTER's reply (a flat list or a map,
// depending on the protocol).
func sentinelField(reply any, field string) string {
	switch r := reply.(type) {
	case []any:
		for i := 0; i+1 < len(r); i += 2 {
			if fmt.Sprint(r[i]) == field {
				return fmt.Sprint(r[i+1])
			}
		}
	case map[any]any:
		if v, ok := r[field]; ok {
			return fmt.Sprint(v)
		}
	}
	return ""
}

// Addrs are the Sentinels' host:port.
func (s *Sentinels) Addrs() []string {
	var a []string
	for _, sn := range s.Sentinels {
		a = append(a, sn.Addr())
	}
	return a
}

// WaitPromoted waits until the Sentinels name the replica as the master (after the master
// was killed) and the replica says it is one, and returns the time the test saw it.
func (s *Sentinels) WaitPromoted(timeout time.Duration) time.Time {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	want := []string{"127.0.0.1", portOf(s.Replica)}
	for {
		ok := true
		for _, sn := range s.Sentinels {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			addr, err := sn.Client().Do(ctx, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", s.Name).StringSlice()
			cancel()
			if err != nil || len(addr) != 2 || addr[0] != want[0] || addr[1] != want[1] {
				ok = false
				break
			}
		}
		if ok {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			info, err := s.Replica.Client().Info(ctx, "replication").Result()
			cancel()
			if err == nil && strings.Contains(info, "role:master") {
				return time.Now()
			}
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("redistest: the sentinels did not promote %s within %v", s.Replica.Addr(), timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
