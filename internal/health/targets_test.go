package health

import (
	"net/url"
	"testing"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
)

func TestTargets(t *testing.T) {
	up := func(outlier bool, path string, targets ...string) *config.Upstream {
		u := config.DefaultUpstream()
		u.Outlier.Enabled, u.HealthCheck.Path = outlier, path
		for _, s := range targets {
			tu, _ := url.Parse(s)
			u.TargetURLs = append(u.TargetURLs, tu)
		}
		return u
	}
	ups := map[string]*config.Upstream{
		"b":   up(true, "/h", "http://10.0.0.2:8080", "https://api.internal/v1"),
		"a":   up(true, "/ready", "http://10.0.0.1"),
		"off": up(true, "", "http://10.0.0.3"),
		"no":  up(false, "/h", "http://10.0.0.4"),
	}
	known := map[string]breaker.Control{}
	for _, n := range []string{"a@10.0.0.1:80", "b@10.0.0.2:8080", "b@api.internal:443", "off@10.0.0.3:80", "no@10.0.0.4:80"} {
		known[n] = breaker.New(n, breaker.Settings{}, breaker.Options{})
	}
	delete(known, "b@10.0.0.2:8080") // not attached (yet): left out
	got := Targets(ups, func(n string) breaker.Control {
		if b, ok := known[n]; ok {
			return b
		}
		return nil
	})
	var names []string
	for _, tg := range got {
		names = append(names, tg.Upstream+" "+tg.Circuit+" "+tg.URL.String()+" "+tg.Check.Path)
		if tg.Breaker != known[tg.Circuit] {
			t.Errorf("%s: wrong breaker", tg.Circuit)
		}
	}
	want := []string{"a a@10.0.0.1:80 http://10.0.0.1 /ready", "b b@api.internal:443 https://api.internal/v1 /h"}
	if len(names) != len(want) || names[0] != want[0] || names[1] != want[1] {
		t.Errorf("targets %q, want %q", names, want)
	}
}
