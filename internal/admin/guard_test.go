package admin_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/fuseproxy/fuseproxy/internal/admin"
	"github.com/fuseproxy/fuseproxy/internal/telemetry"
)

// send sends method path with exactly the given headers (Host among them) and body.
func send(t testing.TB, method, url string, header map[string]string, body string) answer {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		if k == "Host" {
			req.Host = v
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header, string(b)}
}

// TestCommandsRefuseWhatAPageCanSend: every command (every method but GET, HEAD and
// OPTIONS, on any path, existing or not) answers 403 to the requests a web page can send
// to another origin without a CORS preflight (no header, or a text/plain, form or
// multipart body), and to any request whose Sec-Fetch-Site or Origin names another
// origin; nothing changes. The admin client's header, a JSON body type or an
// Authorization header let it through.
func TestCommandsRefuseWhatAPageCanSend(t *testing.T) {
	f := newBackend(t)
	srv := server(t, f, admin.Options{})
	before := f.breakers["api"].Snapshot()
	var commands []route
	for _, rt := range allRoutes {
		if rt.method == "POST" {
			commands = append(commands, rt)
		}
	}
	commands = append(commands, route{"PUT", "/circuits/api/open", ""}, route{"DELETE", "/circuits/api", ""},
		route{"PATCH", "/flush", ""}, route{"POST", "/a-future-endpoint", ""})
	refused := []map[string]string{
		{},
		{"Content-Type": "text/plain"},
		{"Content-Type": "text/plain; charset=utf-8"},
		{"Content-Type": "application/x-www-form-urlencoded"},
		{"Content-Type": "multipart/form-data; boundary=x"},
		{"Content-Type": "text/plain; a=application/json"},
		{"X-Fuse-Admin": "1", "Sec-Fetch-Site": "cross-site"},
		{"X-Fuse-Admin": "1", "Sec-Fetch-Site": "same-site"},
		{"Content-Type": "application/json", "Origin": "http://evil.example"},
		{"Content-Type": "application/json", "Origin": "http://127.0.0.1:1"},
		{"Content-Type": "application/json", "Origin": "null"},
	}
	for _, rt := range commands {
		for _, h := range refused {
			if a := send(t, rt.method, srv.URL+rt.path, h, rt.body); a.status != 403 || !strings.Contains(a.body, `"error"`) {
				t.Errorf("%s %s with %v: %d %s, want 403", rt.method, rt.path, h, a.status, a.body)
			}
		}
	}
	if after := f.breakers["api"].Snapshot(); after.State != before.State || after.Mode != before.Mode || after.Generation != before.Generation {
		t.Errorf("circuit after refused commands: %+v, want %+v", after, before)
	}
	if n := f.reloads.Load(); n != 0 {
		t.Errorf("%d reloads after refused commands", n)
	}

	accepted := []map[string]string{
		{"X-Fuse-Admin": "1"},
		{"Content-Type": "application/json"},
		{"Content-Type": "Application/JSON; charset=utf-8"},
		{"X-Fuse-Admin": "1", "Sec-Fetch-Site": "same-origin", "Origin": srv.URL},
		{"X-Fuse-Admin": "1", "Sec-Fetch-Site": "none"},
		{"X-Fuse-Admin": "1", "Content-Type": "text/plain"},
	}
	for _, rt := range allRoutes {
		if rt.method != "POST" {
			continue
		}
		for _, h := range accepted {
			if a := send(t, rt.method, srv.URL+rt.path, h, rt.body); a.status != 200 {
				t.Errorf("%s %s with %v: %d %s, want 200", rt.method, rt.path, h, a.status, a.body)
			}
		}
	}
	if n := f.reloads.Load(); n != int32(len(accepted)) {
		t.Errorf("%d reloads after %d accepted ones", n, len(accepted))
	}

	// With a token the bearer header is what a page cannot send; the origin checks stay.
	tsrv := server(t, newBackend(t), admin.Options{Token: "s3cret"})
	auth := map[string]string{"Authorization": "Bearer s3cret", "Content-Type": "text/plain"}
	if a := send(t, "POST", tsrv.URL+"/circuits/api/open", auth, ""); a.status != 200 {
		t.Errorf("POST with the token: %d %s, want 200", a.status, a.body)
	}
	auth["Sec-Fetch-Site"] = "cross-site"
	if a := send(t, "POST", tsrv.URL+"/circuits/api/reset", auth, ""); a.status != 403 {
		t.Errorf("POST with the token, cross-site: %d %s, want 403", a.status, a.body)
	}
}

// TestHostMustNameTheAPI: against DNS rebinding, every route but /healthz answers 403
// to a Host that is not an IP address, localhost or a name in AllowedHosts (any port,
// any case, a trailing dot allowed), with or without a token.
func TestHostMustNameTheAPI(t *testing.T) {
	f := newBackend(t)
	m := telemetry.New(telemetry.Options{Circuits: f.Breakers, NoRuntimeCollectors: true})
	for _, token := range []string{"", "s3cret"} {
		srv := server(t, f, admin.Options{Token: token, Gatherer: m.Registry(), AllowedHosts: []string{"FuseProxy-Admin.ops.svc", "admin.example."}})
		for _, rt := range allRoutes {
			for _, tc := range []struct {
				host string
				ok   bool
			}{
				{"attacker.example", false},
				{"attacker.example:8084", false},
				{"127.0.0.1.nip.io", false},
				{"localhost.attacker.example", false},
				{"fuseproxy-admin", false},
				{"127.0.0.1:8084", true},
				{"10.1.2.3", true},
				{"[::1]:8084", true},
				{"[fe80::1]", true},
				{"localhost:8084", true},
				{"LOCALHOST.", true},
				{"fuseproxy-admin.ops.svc:80", true},
				{"FUSEPROXY-ADMIN.OPS.SVC.", true},
				{"admin.example", true},
			} {
				h := map[string]string{"Host": tc.host, "X-Fuse-Admin": "1"}
				if token != "" {
					h["Authorization"] = "Bearer " + token
				}
				a := send(t, rt.method, srv.URL+rt.path, h, rt.body)
				ok := a.status != 403
				if rt.path == "/healthz" {
					tc.ok = true
				}
				if ok != tc.ok {
					t.Errorf("token %q: %s %s with Host %q: %d %s, want allowed=%v", token, rt.method, rt.path, tc.host, a.status, a.body, tc.ok)
				}
				if !ok && !strings.Contains(a.body, "admin.allowed_hosts") {
					t.Errorf("403 for Host %q does not say what to do: %s", tc.host, a.body)
				}
			}
		}
	}
}

// A page on another site cannot take the dashboard's stream slots.
func TestEventsStreamRefusesOtherSites(t *testing.T) {
	srv := server(t, newBackend(t), admin.Options{})
	for _, site := range []string{"cross-site", "same-site"} {
		if a := send(t, "GET", srv.URL+"/events/circuits", map[string]string{"Sec-Fetch-Site": site}, ""); a.status != http.StatusForbidden {
			t.Errorf("Sec-Fetch-Site %s: status %d, want 403", site, a.status)
		}
	}
	// The dashboard's own page (same-origin) and tools without the header get a stream:
	// HEAD answers the stream's headers and returns.
	for _, h := range []map[string]string{{"Sec-Fetch-Site": "same-origin"}, {}} {
		if a := send(t, "HEAD", srv.URL+"/events/circuits", h, ""); a.status != http.StatusOK {
			t.Errorf("%v: status %d, want 200", h, a.status)
		}
	}
}
