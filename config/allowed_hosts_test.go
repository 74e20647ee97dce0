package config

import (
	"strings"
	"testing"
)

// TestAdminAllowedHosts: admin.allowed_hosts takes host names; anything else is an error
// at its line.
func TestAdminAllowedHosts(t *testing.T) {
	cfg := mustParse(t, minimal+"admin:\n  allowed_hosts: [fuseproxy-admin, fuseproxy.ops.svc.cluster.local.]\n", nil)
	if got := strings.Join(cfg.Admin.AllowedHosts, ","); got != "fuseproxy-admin,fuseproxy.ops.svc.cluster.local." {
		t.Errorf("allowed_hosts = %q", got)
	}
	_, err := parse(t, minimal+`admin:
  allowed_hosts:
    - ok.example
    - http://x.example
    - x.example:8084
    - "*.svc"
    - ""
`, nil)
	want := `config.yaml:9: admin.allowed_hosts[1]: must be a host name (no scheme, port or wildcard), got "http://x.example"
config.yaml:10: admin.allowed_hosts[2]: must be a host name (no scheme, port or wildcard), got "x.example:8084"
config.yaml:11: admin.allowed_hosts[3]: must be a host name (no scheme, port or wildcard), got "*.svc"
config.yaml:12: admin.allowed_hosts[4]: must be a host name (no scheme, port or wildcard), got ""`
	if err == nil || err.Error() != want {
		t.Errorf("error\n%v\nwant\n%s", err, want)
	}
}
