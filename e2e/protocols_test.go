package e2e

// TLS, HTTP/2 and gRPC through the real binary (issue #20). google.golang.org/grpc is a
// test-only dependency: a real gRPC server in the test process and a real client.

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/fuseproxy/fuseproxy/internal/testutil/testca"
)

// healthBackend answers Check with SERVING, or UNAVAILABLE for the service "down";
// Watch streams three messages.
type healthBackend struct {
	healthpb.UnimplementedHealthServer
}

func (healthBackend) Check(_ context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	if req.Service == "down" {
		return nil, status.Error(codes.Unavailable, "backend down")
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

func (healthBackend) Watch(_ *healthpb.HealthCheckRequest, s grpc.ServerStreamingServer[healthpb.HealthCheckResponse]) error {
	for range 3 {
		if err := s.Send(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}); err != nil {
			return err
		}
	}
	return nil
}

// startGRPCBackend serves the health service in cleartext HTTP/2 (h2c) until the test ends.
func startGRPCBackend(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, healthBackend{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return ln.Addr().String()
}

// The binary serves TLS with HTTP/2 by ALPN (certificates chosen by SNI), on the proxy
// and the admin listener, and carries gRPC from TLS clients to an h2c backend: unary and
// server-streaming calls pass, UNAVAILABLE answers open the circuit, and the open
// circuit answers the gRPC client with status 14.
func TestProtocolsTLSHTTP2AndGRPC(t *testing.T) {
	ca := testca.New(t, "e2e CA")
	dir := t.TempDir()
	crt, key := ca.IssueFiles(t, dir, "proxy", "proxy.test", []string{"proxy.test"}, net.ParseIP("127.0.0.1"))
	otherCrt, otherKey := ca.IssueFiles(t, dir, "other", "other.test", []string{"other.test"})
	grpcAddr := startGRPCBackend(t)
	web := startBackend(t)
	listen, admin := freeAddr(t), freeAddr(t)
	p := startProxy(t, fmt.Sprintf(`listen: %q
server:
  tls:
    certificates:
      - {cert_file: %q, key_file: %q}
      - {cert_file: %q, key_file: %q}
admin:
  listen: %q
  tls:
    certificates: [{cert_file: %q, key_file: %q}]
upstreams:
  health:
    targets: ["http://%s"]
    h2c: true
    breaker: {consecutive_failures: 3, open_duration: 1m}
  web:
    targets: [%q]
routes:
  - {path_prefix: /grpc.health.v1.Health/, upstream: health}
  - {path_prefix: /, upstream: web}
`, listen, crt, key, otherCrt, otherKey, admin, crt, key, grpcAddr, web.URL()))

	// HTTP/2 over TLS by ALPN, on the proxy and the admin listener; SNI picks the certificate.
	for _, tt := range []struct{ url, sni string }{
		{"https://" + listen + "/x", "proxy.test"},
		{"https://" + listen + "/x", "other.test"},
		{"https://" + admin + "/readyz", "proxy.test"},
	} {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), ServerName: tt.sni}, ForceAttemptHTTP2: true}
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(tt.url)
		if err != nil {
			t.Fatalf("%s (SNI %s): %v", tt.url, tt.sni, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		tr.CloseIdleConnections()
		if resp.StatusCode != http.StatusOK || resp.Proto != "HTTP/2.0" || resp.TLS.PeerCertificates[0].Subject.CommonName != tt.sni {
			t.Errorf("%s (SNI %s): %d over %s with certificate %s", tt.url, tt.sni, resp.StatusCode, resp.Proto,
				resp.TLS.PeerCertificates[0].Subject.CommonName)
		}
	}

	// The CLI reaches the https admin API with --ca (a private CA), not without it.
	caFile := filepath.Join(dir, "ca.pem")
	testca.WriteFile(t, caFile, ca.PEM)
	if code, out, errOut := runProcess(t, dir, 20*time.Second, "health", "--admin", "https://"+admin, "--ca", caFile); code != 0 {
		t.Errorf("fuseproxy health --ca over TLS: exit %d\n%s%s", code, out, errOut)
	}
	if code, _, errOut := runProcess(t, dir, 20*time.Second, "health", "--admin", "https://"+admin); code != 1 || !strings.Contains(errOut, "certificate") {
		t.Errorf("fuseproxy health without --ca: exit %d, %s; want 1 and a certificate error", code, errOut)
	}

	conn, err := grpc.NewClient("passthrough:///"+listen,
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: ca.Pool(), ServerName: "proxy.test"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if r, err := client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("unary call: %v %v", r, err)
	}
	stream, err := client.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		if _, err := stream.Recv(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("stream after %d messages: %v", n, err)
		}
		n++
	}
	if n != 3 {
		t.Errorf("streamed %d messages, want 3", n)
	}

	for range 3 {
		if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: "down"}); status.Code(err) != codes.Unavailable {
			t.Fatalf("backend's UNAVAILABLE: %v", err)
		}
	}
	p.WaitTransitions(t, 5*time.Second, "health", "open", 1)
	_, err = client.Check(ctx, &healthpb.HealthCheckRequest{})
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "circuit open for upstream health") {
		t.Errorf("open circuit: %v; want UNAVAILABLE from the circuit", err)
	}
	// The other upstream is not affected.
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), ServerName: "proxy.test"}}
	defer tr.CloseIdleConnections()
	if resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://" + listen + "/x"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("web after health opened: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
}

// h2c through the binary: with server.h2c a gRPC client without TLS reaches an h2c
// backend; without it, the same client is refused.
func TestProtocolsH2CGRPC(t *testing.T) {
	grpcAddr := startGRPCBackend(t)
	cfg := func(listen, h2c string) string {
		return fmt.Sprintf(`listen: %q
admin: {listen: %q}
server: {h2c: %s}
upstreams:
  health:
    targets: ["http://%s"]
    h2c: true
routes:
  - {upstream: health}
`, listen, freeAddr(t), h2c, grpcAddr)
	}
	on, off := freeAddr(t), freeAddr(t)
	startProxy(t, cfg(on, "true"))
	startProxy(t, cfg(off, "false"))
	call := func(addr string) error {
		conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	if err := call(on); err != nil {
		t.Errorf("h2c on: %v", err)
	}
	if err := call(off); status.Code(err) != codes.Unavailable {
		t.Errorf("h2c off: %v; want the connection refused (UNAVAILABLE)", err)
	}
}
