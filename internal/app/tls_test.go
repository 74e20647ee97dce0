package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/fuseproxy/fuseproxy/internal/testutil/testca"
)

// tlsBackend answers every request with "ok" and the protocol it got.
func tlsBackend(t *testing.T) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok "+r.Proto)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// tlsClient trusts pool, asks for serverName (SNI) and speaks HTTP/2 when offered
// (h2) or HTTP/1.1 only.
func tlsClient(pool *x509.CertPool, serverName string, h2 bool) *http.Client {
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: serverName}, ForceAttemptHTTP2: h2}
	if !h2 {
		tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return &http.Client{Transport: tr, Timeout: 5 * time.Second}
}

// get fetches url and returns the answer's protocol, the certificate's first DNS name
// and the body.
func get(c *http.Client, url string) (proto, name, body string, err error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", "", "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", "", "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", "", "", fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	if resp.TLS != nil && len(resp.TLS.PeerCertificates) > 0 && len(resp.TLS.PeerCertificates[0].DNSNames) > 0 {
		name = resp.TLS.PeerCertificates[0].DNSNames[0]
	}
	return resp.Proto, name, string(b), nil
}

// Inbound TLS: each of two SNI names gets its own certificate (an unknown name or none
// the first), HTTP/2 is negotiated by ALPN by default and HTTP/1.1 clients are served
// too; with server.http2 off, HTTP/2 is not offered.
func TestInboundTLSTwoSNINamesAndALPN(t *testing.T) {
	ca := testca.New(t, "inbound CA")
	dir := t.TempDir()
	aCrt, aKey := ca.IssueFiles(t, dir, "a", "a.test", []string{"a.test"}, net.ParseIP("127.0.0.1"))
	bCrt, bKey := ca.IssueFiles(t, dir, "b", "b.test", []string{"b.test"})
	backend := tlsBackend(t)
	server := fmt.Sprintf(`  tls:
    certificates:
      - {cert_file: %q, key_file: %q}
      - {cert_file: %q, key_file: %q}`, aCrt, aKey, bCrt, bKey)
	_, addr := startLimitsApp(t, server, "", backend.URL)
	url := "https://" + addr + "/x"
	for _, tt := range []struct {
		sni, wantName string
		h2            bool
		wantProto     string
	}{
		{"a.test", "a.test", true, "HTTP/2.0"},
		{"b.test", "b.test", true, "HTTP/2.0"},
		{"b.test", "b.test", false, "HTTP/1.1"},
		{"", "a.test", true, "HTTP/2.0"}, // no SNI (an IP address): the first certificate
	} {
		c := tlsClient(ca.Pool(), tt.sni, tt.h2)
		if tt.sni == "" {
			c.Transport.(*http.Transport).TLSClientConfig.ServerName = "" // verified against 127.0.0.1
		}
		proto, name, body, err := get(c, url)
		if err != nil {
			t.Fatalf("SNI %q: %v", tt.sni, err)
		}
		if name != tt.wantName || proto != tt.wantProto || body != "ok HTTP/1.1" {
			t.Errorf("SNI %q (h2 %v): certificate %s, %s, body %q; want %s, %s, \"ok HTTP/1.1\"",
				tt.sni, tt.h2, name, proto, body, tt.wantName, tt.wantProto)
		}
	}
	// Plain HTTP on the TLS port is refused.
	if resp, err := http.Get("http://" + addr + "/x"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("plain HTTP on the TLS listener was served")
		}
	}

	_, addr2 := startLimitsApp(t, server+"\n  http2: false", "", backend.URL)
	proto, _, _, err := get(tlsClient(ca.Pool(), "a.test", true), "https://"+addr2+"/x")
	if err != nil || proto != "HTTP/1.1" {
		t.Errorf("server.http2 false: %s, %v; want HTTP/1.1", proto, err)
	}
}

// h2c (cleartext HTTP/2, prior knowledge) is served only with server.h2c; without it the
// connection is refused, and HTTP/1.1 on the same listener is served either way.
func TestInboundH2COnlyWhenEnabled(t *testing.T) {
	backend := tlsBackend(t)
	h2c := func() *http.Client {
		p := new(http.Protocols)
		p.SetUnencryptedHTTP2(true)
		return &http.Client{Transport: &http.Transport{Protocols: p}, Timeout: 5 * time.Second}
	}
	_, on := startLimitsApp(t, "  h2c: true", "", backend.URL)
	proto, _, body, err := get(h2c(), "http://"+on+"/x")
	if err != nil || proto != "HTTP/2.0" || body != "ok HTTP/1.1" {
		t.Errorf("h2c on: %s %q %v; want HTTP/2.0", proto, body, err)
	}
	if proto, _, _, err := get(http.DefaultClient, "http://"+on+"/x"); err != nil || proto != "HTTP/1.1" {
		t.Errorf("h2c on, HTTP/1.1 client: %s %v", proto, err)
	}

	_, off := startLimitsApp(t, "", "", backend.URL)
	if proto, _, _, err := get(h2c(), "http://"+off+"/x"); err == nil {
		t.Errorf("h2c off: served over %s; want the connection refused", proto)
	}
	if proto, _, _, err := get(http.DefaultClient, "http://"+off+"/x"); err != nil || proto != "HTTP/1.1" {
		t.Errorf("h2c off, HTTP/1.1 client: %s %v", proto, err)
	}
}

// A certificate rotated on disk under load (the key written first, so that for a while
// the pair does not match; then the certificate) is picked up without a restart and
// without a failed request: a handshake keeps the last good pair until the new one loads.
func TestInboundTLSRotationUnderLoad(t *testing.T) {
	oldCA, newCA := testca.New(t, "old CA"), testca.New(t, "new CA")
	dir := t.TempDir()
	crt, key := oldCA.IssueFiles(t, dir, "site", "a.test", []string{"a.test"})
	backend := tlsBackend(t)
	core, logs := observer.New(zap.InfoLevel)
	_, addr := runYAMLWith(t, "rotation.yaml", fmt.Sprintf(`listen: "127.0.0.1:0"
admin: {listen: "127.0.0.1:0"}
server:
  shutdown_timeout: 2s
  tls:
    certificates: [{cert_file: %q, key_file: %q}]
upstreams:
  api:
    targets: [%q]
routes:
  - {path_prefix: /, upstream: api}
`, crt, key, backend.URL), Options{Logger: zap.New(core)})
	logged := func(msg string) func() bool {
		return func() bool { return logs.FilterMessage(msg).Len() > 0 }
	}

	pool := oldCA.Pool()
	pool.AddCert(newCA.Cert)
	var issuers sync.Map // issuer CN -> true
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			// A new connection (and handshake) for every request.
			tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "a.test"}, DisableKeepAlives: true, ForceAttemptHTTP2: true}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
			for ctx.Err() == nil {
				resp, err := c.Get("https://" + addr + "/x")
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					failed.Add(1)
					continue
				}
				issuers.Store(resp.TLS.PeerCertificates[0].Issuer.CommonName, true)
				ok.Add(1)
			}
		})
	}
	waitUntil(t, "requests with the old certificate", func() bool { return ok.Load() > 20 })
	newCrt, newKey := newCA.Issue(t, "a.test", []string{"a.test"})
	testca.WriteFile(t, key, newKey) // the pair no longer matches until the certificate follows
	waitUntil(t, "a look at the half-done rotation", logged("listener TLS certificate not reloaded; the last good one stays in use"))
	testca.WriteFile(t, crt, newCrt)
	waitUntil(t, "the reload", logged("listener TLS certificate reloaded"))
	waitUntil(t, "the new certificate served", func() bool { _, seen := issuers.Load("new CA"); return seen })
	before := ok.Load()
	waitUntil(t, "more requests after the rotation", func() bool { return ok.Load() > before+20 })
	cancel()
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Errorf("%d of %d requests failed during the rotation; first: %v", n, n+ok.Load(), firstErr.Load())
	}
	t.Logf("%d requests, %d failed", ok.Load(), failed.Load())
}

// The admin listener speaks TLS with admin.tls (HTTP/2 offered), and plain HTTP is not
// served there.
func TestAdminOverTLS(t *testing.T) {
	ca := testca.New(t, "admin CA")
	dir := t.TempDir()
	crt, key := ca.IssueFiles(t, dir, "admin", "admin.test", []string{"admin.test"}, net.ParseIP("127.0.0.1"))
	backend := tlsBackend(t)
	a, _ := startLimitsAppAdmin(t, fmt.Sprintf("admin:\n  listen: \"127.0.0.1:0\"\n  tls:\n    certificates: [{cert_file: %q, key_file: %q}]\n    min_version: \"1.3\"", crt, key), backend.URL)
	_, adminAddr := a.Addrs()
	c := tlsClient(ca.Pool(), "", true)
	proto, _, body, err := get(c, "https://"+adminAddr+"/readyz")
	if err != nil || proto != "HTTP/2.0" {
		t.Fatalf("admin over TLS: %s %q %v", proto, body, err)
	}
	// TLS 1.2 is refused with min_version 1.3.
	c12 := tlsClient(ca.Pool(), "", true)
	c12.Transport.(*http.Transport).TLSClientConfig.MaxVersion = tls.VersionTLS12
	if _, _, _, err := get(c12, "https://"+adminAddr+"/readyz"); err == nil {
		t.Error("TLS 1.2 accepted with admin.tls.min_version 1.3")
	}
	resp, err := http.Get("http://" + adminAddr + "/readyz")
	if err == nil {
		resp.Body.Close()
		if !slices.Contains([]int{http.StatusBadRequest}, resp.StatusCode) {
			t.Errorf("plain HTTP to the TLS admin listener: %d", resp.StatusCode)
		}
	}
}

// startLimitsAppAdmin is startLimitsApp with an admin section of its own.
func startLimitsAppAdmin(t *testing.T, adminYAML, backend string) (*App, string) {
	t.Helper()
	yaml := fmt.Sprintf(`listen: "127.0.0.1:0"
%s
server:
  shutdown_timeout: 2s
upstreams:
  api:
    targets: [%q]
routes:
  - {path_prefix: /, upstream: api}
`, adminYAML, backend)
	return runYAML(t, filepath.Join(t.TempDir(), "admin.yaml"), yaml)
}

// A gRPC call's request body is a stream the client may leave idle (a bidirectional
// stream waiting for events): body_read_timeout does not cut it, while it still cuts a
// stalled HTTP/2 upload that is not gRPC.
func TestGRPCStreamIdleBeyondBodyReadTimeout(t *testing.T) {
	backend := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", r.Header.Get("Content-Type"))
		w.Header().Set("Grpc-Status", "0")
		_, _ = fmt.Fprintf(w, "%d", n)
	}))
	backend.Config.Protocols = new(http.Protocols)
	backend.Config.Protocols.SetUnencryptedHTTP2(true)
	backend.Start()
	defer backend.Close()
	_, addr := startLimitsApp(t, "  h2c: true\n  body_read_timeout: 200ms", "    h2c: true", backend.URL)

	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: p}
	defer tr.CloseIdleConnections()
	send := func(ct string) (int, string, error) {
		pr, pw := io.Pipe()
		go func() {
			_, _ = pw.Write([]byte{0, 0, 0, 0, 1})
			time.Sleep(700 * time.Millisecond) // idle well past body_read_timeout
			_, _ = pw.Write([]byte{7})
			_ = pw.Close()
		}()
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/svc/Method", pr)
		req.Header.Set("Content-Type", ct)
		resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	if code, body, err := send("application/grpc"); err != nil || code != http.StatusOK || body != "6" {
		t.Errorf("gRPC stream idle 700ms: %d %q %v; want 200 and all 6 bytes through", code, body, err)
	}
	if code, _, err := send("application/octet-stream"); err == nil && code == http.StatusOK {
		t.Errorf("a stalled non-gRPC upload was not cut: %d", code)
	}
}
