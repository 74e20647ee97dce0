package config

import (
	"errors"
	"os"
	"testing"
)

// FuzzParse checks that Parse never panics, that it fails only with a non-empty
// *Errors, and that whatever it accepts is a valid config.
func FuzzParse(f *testing.F) {
	if example, err := os.ReadFile("../config.example.yaml"); err == nil {
		f.Add(example)
	}
	f.Add([]byte(minimal))
	f.Add([]byte("x-b: &b {failure_rate: 10}\nupstreams:\n  a: {targets: [http://a], breaker: {<<: *b, window: 1s}}\nroutes: [{upstream: a, host: '*.x.com', methods: [get]}]\n"))
	f.Add([]byte("listen: ${PORT:-:80}\nupstreams: {a: {targets: ['${URL}']}}\nroutes: [{upstream: a}]\n"))
	f.Add([]byte("a: [\n"))
	f.Add([]byte("upstreams:\n  a:\n    targets: [http://a]\n    targets: [http://b]\n"))

	lookup := env(map[string]string{"PORT": ":9000", "URL": "http://u.internal", "EMPTY": ""})
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseWithEnv("fuzz.yaml", data, lookup)
		if err != nil {
			var errs *Errors
			if !errors.As(err, &errs) || len(*errs) == 0 {
				t.Fatalf("error %v (%T) is not a non-empty *Errors", err, err)
			}
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("Parse accepted a config that Validate rejects:\n%v", err)
		}
		for _, r := range cfg.Routes {
			if cfg.Upstreams[r.Upstream] == nil {
				t.Fatalf("route to unknown upstream %q accepted", r.Upstream)
			}
		}
		for name, u := range cfg.Upstreams {
			if len(u.TargetURLs) != len(u.Targets) || len(u.Targets) == 0 {
				t.Fatalf("upstream %q: %d targets, %d parsed", name, len(u.Targets), len(u.TargetURLs))
			}
			_ = u.Breaker.Hash()
		}
		_ = cfg.Warnings()
	})
}
