package admin

import (
	"fmt"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// HeaderAdmin is the request header the admin client sends with every command. A
// command (any method but GET, HEAD and OPTIONS) must carry it, an Authorization header
// or a JSON Content-Type: a web page can send none of them to another origin without a
// CORS preflight, which this API never grants.
const HeaderAdmin = "X-Fuse-Admin"

// guard holds the checks that keep web pages the operator's browser opens from steering
// or reading the admin API. ServeHTTP applies them before routing to every route but
// /healthz (which answers only "ok"): the Host check before the token's, the command
// checks after it; so a route added later is covered too.
type guard struct {
	hosts       map[string]bool // admin.allowed_hosts, lower case, without a trailing dot
	crossOrigin *http.CrossOriginProtection
}

func newGuard(allowedHosts []string) *guard {
	g := &guard{hosts: make(map[string]bool, len(allowedHosts)), crossOrigin: http.NewCrossOriginProtection()}
	for _, h := range allowedHosts {
		g.hosts[hostKey(h)] = true
	}
	return g
}

// hostRefusal returns why r's Host is refused (403), or "" to let it through.
func (g *guard) hostRefusal(r *http.Request) string {
	if !g.hostAllowed(r.Host) {
		return fmt.Sprintf("Host %q is not a name of this admin API: use an IP address or localhost, or add the name to admin.allowed_hosts", r.Host)
	}
	return ""
}

// commandRefusal returns why r, if it is a command (any method but GET, HEAD and
// OPTIONS), is refused (403) as one a web page may have sent, or "" to let it through.
func (g *guard) commandRefusal(r *http.Request) string {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return ""
	}
	if err := g.crossOrigin.Check(r); err != nil {
		return "cross-origin request refused (Origin or Sec-Fetch-Site names another site)"
	}
	if !marked(r) {
		return "a command needs the header " + HeaderAdmin + ": 1, an Authorization header or Content-Type: application/json (what a web page cannot send to another site)"
	}
	return ""
}

// hostAllowed reports whether the Host header names this API. A DNS-rebinding page
// reaches the API under the attacker's own domain name, which its requests carry as
// Host; a browser sends an IP address as Host only for a page that was itself loaded
// from that address, so IP literals (whatever the address: a pod IP, a published
// port on the docker host) and localhost are accepted, and other names only when
// listed in admin.allowed_hosts. The port is not checked: a Kubernetes Service or a
// published container port may map another one. An empty Host (HTTP/1.0) is not sent by
// browsers.
func (g *guard) hostAllowed(host string) bool {
	if host == "" {
		return true
	}
	name := hostKey(host)
	if name == "localhost" {
		return true
	}
	if _, err := netip.ParseAddr(name); err == nil {
		return true
	}
	return g.hosts[name]
}

// hostKey returns the name in a Host value or an allowed_hosts entry: without the port,
// brackets or trailing dot, in lower case.
func hostKey(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	} else if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	return strings.ToLower(strings.TrimSuffix(host, "."))
}

// marked reports whether r carries something a browser sends to another origin only
// after a CORS preflight: the admin header, an Authorization header or a JSON body type.
// (The three content types a page may send freely are text/plain, multipart/form-data
// and application/x-www-form-urlencoded.)
func marked(r *http.Request) bool {
	if r.Header.Get(HeaderAdmin) != "" || r.Header.Get("Authorization") != "" {
		return true
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	return err == nil && mt == "application/json"
}
