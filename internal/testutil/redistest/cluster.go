package redistest

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cluster is a Redis Cluster on loopback owned by one test: masters, each with
// replicas, every node a redis-server of its own (cluster-node-timeout 1 s, so a killed
// master's replica is promoted within a few seconds).
//
//	c := redistest.StartCluster(t, 3, 1)
//	m := c.MasterFor("fuse:{api}:state")
//	reps := c.ReplicasOf(m)
//	m.Kill()
//	promoted, at := c.WaitPromoted(m, reps, 20*time.Second)
type Cluster struct {
	t     testing.TB
	Nodes []*Server
}

// clusterTimeout bounds how long the cluster may take to form and to fail over.
const clusterTimeout = 30 * time.Second

// NodeTimeout is the cluster-node-timeout of the nodes StartCluster starts.
const NodeTimeout = time.Second

// StartCluster starts masters × (1 + replicas) nodes and joins them with
// `redis-cli --cluster create`, then waits until every node says cluster_state:ok.
func StartCluster(t testing.TB, masters, replicas int) *Cluster {
	t.Helper()
	if _, err := exec.LookPath("redis-cli"); err != nil {
		t.Fatalf("redis-cli not found: apt-get install -y redis-tools")
	}
	c := &Cluster{t: t}
	for range masters * (1 + replicas) {
		c.Nodes = append(c.Nodes, Start(t, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", strconv.FormatInt(NodeTimeout.Milliseconds(), 10),
			// a replica may fail over however long its link was down (a loaded machine)
			"--cluster-replica-validity-factor", "0"))
	}
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	c.waitOK(c.Nodes, clusterTimeout)
	// Every node knows every other, each master with its replicas.
	deadline := time.Now().Add(clusterTimeout)
	for _, n := range c.Nodes {
		for !formed(n, masters, replicas) {
			if time.Now().After(deadline) {
				text, err := n.Client().ClusterNodes(context.Background()).Result()
				t.Fatalf("redistest: cluster node %s does not see %d masters with %d replicas each within %v:\n%s %v",
					n.Addr(), masters, replicas, clusterTimeout, text, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// Every replica has synced with its master.
	for _, n := range c.Nodes {
		for {
			info, err := n.Client().Info(context.Background(), "replication").Result()
			if err == nil && (strings.Contains(info, "role:master") || strings.Contains(info, "master_link_status:up")) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("redistest: cluster replica %s not in sync within %v: %q %v", n.Addr(), clusterTimeout, info, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return c
}

// formed reports whether n sees masters connected masters, each with replicas connected
// replicas.
func formed(n *Server, masters, replicas int) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	text, err := n.Client().ClusterNodes(ctx).Result()
	if err != nil {
		return false
	}
	ms, reps := map[string]bool{}, map[string]int{}
	for line := range strings.Lines(text) {
		f := strings.Fields(line)
		if len(f) < 8 || f[7] != "connected" || strings.Contains(f[2], "fail") || strings.Contains(f[2], "handshake") {
			return false
		}
		if strings.Contains(f[2], "master") {
			ms[f[0]] = true
		} else {
			reps[f[3]]++
		}
	}
	if len(ms) != masters {
		return false
	}
	for id := range ms {
		if reps[id] != replicas {
			return false
		}
	}
	return true
}

// Addrs are every node's host:port.
func (c *Cluster) Addrs() []string {
	var a []string
	for _, n := range c.Nodes {
		a = append(a, n.Addr())
	}
	return a
}

// waitOK waits until each of nodes says cluster_state:ok and knows every slot served.
func (c *Cluster) waitOK(nodes []*Server, timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for _, n := range nodes {
		for {
			info, err := n.Client().ClusterInfo(context.Background()).Result()
			if err == nil && strings.Contains(info, "cluster_state:ok") && strings.Contains(info, "cluster_slots_ok:16384") {
				break
			}
			if time.Now().After(deadline) {
				c.t.Fatalf("redistest: cluster node %s not ok within %v: %q, %v", n.Addr(), timeout, info, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// node is one line of CLUSTER NODES.
type node struct {
	id, addr, masterID string
	master, failed     bool
	slots              [][2]int
}

// nodes reads CLUSTER NODES from any node that answers.
func (c *Cluster) nodes() ([]node, error) {
	var lastErr error
	for _, n := range c.Nodes {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		text, err := n.Client().ClusterNodes(ctx).Result()
		cancel()
		if err != nil {
			lastErr = err
			continue
		}
		var out []node
		for line := range strings.Lines(text) {
			f := strings.Fields(line)
			if len(f) < 8 {
				continue
			}
			nd := node{id: f[0], addr: strings.Split(f[1], "@")[0], masterID: f[3],
				master: strings.Contains(f[2], "master"), failed: strings.Contains(f[2], "fail")}
			for _, r := range f[8:] {
				lo, hi, ok := strings.Cut(r, "-")
				if !ok {
					hi = lo
				}
				a, err1 := strconv.Atoi(lo)
				b, err2 := strconv.Atoi(hi)
				if err1 == nil && err2 == nil {
					nd.slots = append(nd.slots, [2]int{a, b})
				}
			}
			out = append(out, nd)
		}
		return out, nil
	}
	return nil, fmt.Errorf("no cluster node answered CLUSTER NODES: %w", lastErr)
}

func (c *Cluster) server(addr string) *Server {
	for _, n := range c.Nodes {
		if n.Addr() == addr {
			return n
		}
	}
	return nil
}

// MasterFor is the node serving key's slot.
func (c *Cluster) MasterFor(key string) *Server {
	c.t.Helper()
	slot := int(Slot(key))
	ns, err := c.nodes()
	if err != nil {
		c.t.Fatalf("redistest: %v", err)
	}
	for _, n := range ns {
		for _, r := range n.slots {
			if n.master && !n.failed && slot >= r[0] && slot <= r[1] {
				return c.server(n.addr)
			}
		}
	}
	c.t.Fatalf("redistest: no master serves slot %d", slot)
	return nil
}

// Slot is key's hash slot, as Redis Cluster computes it (the {hash tag} when there is one).
func Slot(key string) uint16 {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	return crc16(key) % 16384
}

// crc16 is CRC16-CCITT (XMODEM), Redis Cluster's key hash.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// ReplicasOf are the nodes replicating master now.
func (c *Cluster) ReplicasOf(master *Server) []*Server {
	c.t.Helper()
	ns, err := c.nodes()
	if err != nil {
		c.t.Fatalf("redistest: %v", err)
	}
	var id string
	for _, n := range ns {
		if n.addr == master.Addr() {
			id = n.id
		}
	}
	var out []*Server
	for _, n := range ns {
		if id != "" && n.masterID == id {
			out = append(out, c.server(n.addr))
		}
	}
	return out
}

// WaitPromoted waits until one of replicas (of a killed master) says it is a master, and
// returns it with the time the test saw it; then it waits until every node but old says
// cluster_state:ok.
func (c *Cluster) WaitPromoted(old *Server, replicas []*Server, timeout time.Duration) (*Server, time.Time) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, r := range replicas {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			info, err := r.Client().Info(ctx, "replication").Result()
			cancel()
			if err == nil && strings.Contains(info, "role:master") {
				at := time.Now()
				var live []*Server
				for _, s := range c.Nodes {
					if s != old {
						live = append(live, s)
					}
				}
				c.waitOK(live, time.Until(deadline))
				return r, at
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("redistest: no replica of %s promoted within %v", old.Addr(), timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Client returns a cluster client of the test's own, closed when the test ends.
func (c *Cluster) Client() *redis.ClusterClient {
	cl := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	c.t.Cleanup(func() { _ = cl.Close() })
	return cl
}
