package config

import "testing"

// TestCompact: upstreams with equal settings share one Upstream without targets, others
// keep theirs; the routes and the file's lines are gone; c itself is unchanged.
func TestCompact(t *testing.T) {
	c, err := Parse("c.yaml", []byte(`upstreams:
  a: {targets: ["http://127.0.0.1:1"]}
  b: {targets: ["http://127.0.0.1:2", "http://127.0.0.1:3"]}
  c: {targets: ["http://127.0.0.1:4"], breaker: {consecutive_failures: 9}}
routes:
  - {path_prefix: /a/, upstream: a}
  - {path_prefix: /b/, upstream: b}
  - {path_prefix: /c/, upstream: c}
`))
	if err != nil {
		t.Fatal(err)
	}
	k := c.Compact()
	if len(k.Upstreams) != 3 || k.Upstreams["a"] != k.Upstreams["b"] || k.Upstreams["a"] == k.Upstreams["c"] {
		t.Fatalf("compacted upstreams %v: want a and b shared, c apart", k.Upstreams)
	}
	if u := k.Upstreams["c"]; u.Breaker.ConsecutiveFailures != 9 || u.Targets != nil || u.TargetURLs != nil {
		t.Errorf("compacted c: consecutive_failures %d, targets %v %v", u.Breaker.ConsecutiveFailures, u.Targets, u.TargetURLs)
	}
	if k.Routes != nil || k.origin != nil || k.Path != c.Path {
		t.Errorf("compacted: routes %v, origin %v, path %q", k.Routes, k.origin, k.Path)
	}
	if len(c.Routes) != 3 || c.origin == nil || len(c.Upstreams["b"].TargetURLs) != 2 || c.Upstreams["a"] == c.Upstreams["b"] {
		t.Error("Compact changed the config it copies")
	}
}
