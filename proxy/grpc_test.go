package proxy

// The gRPC tests use google.golang.org/grpc, a test-only dependency: a real gRPC server
// (the standard health service, so no generated code of our own) and a real client.

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/internal/testutil/testca"
)

// grpcBackend is a gRPC health service whose answer the request's service name picks:
//
//	""            SERVING
//	"unavailable" UNAVAILABLE before any message (a trailers-only response)
//	"late"        headers first, then UNAVAILABLE in the trailers
//	"invalid"     INVALID_ARGUMENT (not a failure by default)
//
// Watch streams three messages, then ends with OK; for "cut" it sends one and then
// blocks, and the test cuts its connections.
type grpcBackend struct {
	healthpb.UnimplementedHealthServer
	srv  *grpc.Server
	ln   *trackingListener
	sent chan struct{} // a "cut" stream sent its first message
}

func (b *grpcBackend) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	switch req.Service {
	case "unavailable":
		return nil, status.Error(codes.Unavailable, "backend down")
	case "late":
		if err := grpc.SendHeader(ctx, metadata.MD{}); err != nil {
			return nil, err
		}
		return nil, status.Error(codes.Unavailable, "backend down after headers")
	case "invalid":
		return nil, status.Error(codes.InvalidArgument, "bad request")
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

func (b *grpcBackend) Watch(req *healthpb.HealthCheckRequest, s grpc.ServerStreamingServer[healthpb.HealthCheckResponse]) error {
	n := 3
	if req.Service == "cut" {
		n = 1
	}
	for range n {
		if err := s.Send(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}); err != nil {
			return err
		}
	}
	if req.Service == "cut" {
		b.sent <- struct{}{}
		<-s.Context().Done()
	}
	return nil
}

// trackingListener remembers its connections, so a test can cut them.
type trackingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func (l *trackingListener) cut() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		_ = c.Close()
	}
	l.conns = nil
}

func newGRPCBackend(t *testing.T, opts ...grpc.ServerOption) *grpcBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &grpcBackend{srv: grpc.NewServer(opts...), ln: &trackingListener{Listener: ln}, sent: make(chan struct{}, 1)}
	healthpb.RegisterHealthServer(b.srv, b)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = b.srv.Serve(b.ln)
	}()
	t.Cleanup(func() {
		b.srv.Stop()
		<-done
	})
	return b
}

// grpcFixture is a Proxy served with HTTP/1.1 and h2c (as server.h2c serves it), in
// front of one upstream "api" with h2c targets.
type grpcFixture struct {
	*fixture
	conn *grpc.ClientConn
}

func newGRPCFixture(t *testing.T, up *config.Upstream) *grpcFixture {
	t.Helper()
	return newGRPCFixtureCfg(t, single(up))
}

func newGRPCFixtureCfg(t *testing.T, cfg *config.Config) *grpcFixture {
	t.Helper()
	f := &fixture{cfg: cfg, clock: &fakeClock{}, rec: &recorder{}}
	f.breakers = f.makeBreakers(t, cfg)
	p, err := New(cfg, f.breakers, Options{Recorder: f.rec})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	f.p = p
	f.srv = httptest.NewUnstartedServer(p)
	f.srv.Config.Protocols = new(http.Protocols)
	f.srv.Config.Protocols.SetHTTP1(true)
	f.srv.Config.Protocols.SetUnencryptedHTTP2(true)
	f.srv.Start()
	conn, err := grpc.NewClient("passthrough:///"+f.srv.Listener.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		f.srv.Close()
		p.Close()
	})
	return &grpcFixture{fixture: f, conn: conn}
}

// h2cUpstream is upstreamCfg for an h2c target, with the default grpc_codes.
func h2cUpstream(t *testing.T, target string) *config.Upstream {
	up := upstreamCfg(t, target)
	up.H2C = true
	up.Failure.GRPCFailure = 1<<2 | 1<<4 | 1<<8 | 1<<13 | 1<<14
	return up
}

func (f *grpcFixture) check(service string, opts ...grpc.CallOption) error {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	_, err := healthpb.NewHealthClient(f.conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service}, opts...)
	return err
}

// Unary and server-streaming calls pass through (h2c in, h2c to the upstream), with
// their trailers: an OK status in the trailers is a success.
func TestGRPCUnaryAndStreamingPassThrough(t *testing.T) {
	b := newGRPCBackend(t)
	f := newGRPCFixture(t, h2cUpstream(t, "http://"+b.ln.Addr().String()))
	if err := f.check(""); err != nil {
		t.Fatalf("unary: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	stream, err := healthpb.NewHealthClient(f.conn).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		_, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("stream after %d messages: %v", n, err)
		}
		n++
	}
	if n != 3 {
		t.Errorf("%d messages streamed, want 3", n)
	}
	// An error status that is not a failure (INVALID_ARGUMENT) reaches the client as is.
	if err := f.check("invalid"); status.Code(err) != codes.InvalidArgument {
		t.Errorf("invalid: %v, want InvalidArgument", err)
	}
	wantResults(t, f.rec.wait(t, 3), Success, Success, Success)
}

// A backend answering UNAVAILABLE (trailers-only) fails each call; three open the
// circuit, which then answers the client in gRPC's terms: status 14 with a message,
// and the circuit's header.
func TestGRPCUnavailableOpensTheCircuit(t *testing.T) {
	b := newGRPCBackend(t)
	f := newGRPCFixture(t, h2cUpstream(t, "http://"+b.ln.Addr().String()))
	for range 3 {
		if err := f.check("unavailable"); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "backend down") {
			t.Fatalf("backend's answer: %v", err)
		}
	}
	wantResults(t, f.rec.wait(t, 3), FailureStatus, FailureStatus, FailureStatus)
	if s := f.breakers["svc"].State(); s != breaker.Open {
		t.Fatalf("circuit %s, want open", s)
	}
	var hdr metadata.MD // a trailers-only response's headers are the trailers to grpc-go
	err := f.check("", grpc.Trailer(&hdr))
	if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "circuit open for upstream svc") {
		t.Fatalf("open circuit: %v; want UNAVAILABLE naming the circuit", err)
	}
	if got := hdr.Get("x-fuse-circuit"); len(got) != 1 || got[0] != "open" {
		t.Errorf("X-Fuse-Circuit = %v", got)
	}
	wantResults(t, f.rec.wait(t, 4)[3:], Rejected)
}

// A failing status in the trailers, after headers that counted as a success, is a late
// failure: three open the circuit.
func TestGRPCStatusInTrailersIsALateFailure(t *testing.T) {
	b := newGRPCBackend(t)
	f := newGRPCFixture(t, h2cUpstream(t, "http://"+b.ln.Addr().String()))
	for range 3 {
		if err := f.check("late"); status.Code(err) != codes.Unavailable {
			t.Fatalf("backend's answer: %v", err)
		}
	}
	wantResults(t, f.rec.wait(t, 6), Success, FailureBody, Success, FailureBody, Success, FailureBody)
	if s := f.breakers["svc"].State(); s != breaker.Open {
		t.Fatalf("circuit %s, want open", s)
	}
	if err := f.check(""); status.Code(err) != codes.Unavailable {
		t.Errorf("open circuit: %v", err)
	}
}

// A stream the backend cuts (its connection closed mid-stream) fails the call.
func TestGRPCStreamCutByTheBackendIsAFailure(t *testing.T) {
	b := newGRPCBackend(t)
	f := newGRPCFixture(t, h2cUpstream(t, "http://"+b.ln.Addr().String()))
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	stream, err := healthpb.NewHealthClient(f.conn).Watch(ctx, &healthpb.HealthCheckRequest{Service: "cut"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("first message: %v", err)
	}
	recv(t, "the backend's first message", b.sent)
	b.ln.cut()
	if _, err := stream.Recv(); err == nil || err == io.EOF {
		t.Fatalf("after the cut: %v; want an error", err)
	}
	wantResults(t, f.rec.wait(t, 2), Success, FailureBody)
}

// grpc-timeout bounds the upstream request: a backend that never answers (and ignores
// grpc-timeout) is cut at the deadline, the client gets DEADLINE_EXCEEDED in gRPC's
// terms, and the breaker counts a timeout.
func TestGRPCTimeoutBoundsTheUpstreamRequest(t *testing.T) {
	ended := make(chan struct{}, 1)
	backend := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
		ended <- struct{}{}
	}))
	backend.Config.Protocols = new(http.Protocols)
	backend.Config.Protocols.SetUnencryptedHTTP2(true)
	backend.Start()
	defer backend.Close()
	f := newGRPCFixture(t, h2cUpstream(t, backend.URL))

	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: p}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/grpc.health.v1.Health/Check", bytes.NewReader(make([]byte, 5)))
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	req.Header.Set("Grpc-Timeout", "200m")
	start := time.Now()
	resp, err := (&http.Client{Transport: tr, Timeout: waitTimeout}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	took := time.Since(start)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Grpc-Status") != "4" {
		t.Errorf("answer %d, grpc-status %q; want 200 and 4 (DEADLINE_EXCEEDED)", resp.StatusCode, resp.Header.Get("Grpc-Status"))
	}
	if took < 200*time.Millisecond || took > 3*time.Second {
		t.Errorf("answered after %s; want about 200ms", took)
	}
	recv(t, "the upstream request's end", ended)
	wantResults(t, f.rec.wait(t, 1), FailureTimeout)
}

func TestGRPCHeaderParsing(t *testing.T) {
	for ct, want := range map[string]bool{
		"application/grpc": true, "application/grpc+proto": true, "application/grpc;charset=utf-8": true,
		"application/grpc-web": false, "application/grpcx": false, "application/json": false, "": false,
	} {
		if got := isGRPC(http.Header{"Content-Type": {ct}}); got != want {
			t.Errorf("isGRPC(%q) = %v", ct, got)
		}
	}
	h2 := func(v string) *http.Request {
		return &http.Request{ProtoMajor: 2, Header: http.Header{"Grpc-Timeout": {v}, "Content-Type": {"application/grpc"}}}
	}
	for _, tt := range []struct {
		v       string
		upTO    time.Duration
		want    time.Duration
		request *http.Request
	}{
		{"200m", 0, 200 * time.Millisecond, nil},
		{"1S", 0, time.Second, nil},
		{"3H", 0, 3 * time.Hour, nil},
		{"5M", 0, 5 * time.Minute, nil},
		{"100u", 0, 100 * time.Microsecond, nil},
		{"0n", 0, 1, nil},
		{"2S", time.Second, time.Second, nil},         // the upstream's timeout is shorter
		{"1S", 2 * time.Second, time.Second, nil},     // grpc-timeout is shorter
		{"123456789S", time.Second, time.Second, nil}, // more than 8 digits: ignored
		{"10x", 0, 0, nil},                            // unknown unit
		{"-1S", 0, 0, nil},                            // not digits
		{"S", 0, 0, nil},                              // no digits
		{"99999999H", 0, 0, nil},                      // overflows time.Duration
		{"1S", 0, 0, &http.Request{ProtoMajor: 1, Header: http.Header{"Grpc-Timeout": {"1S"}, "Content-Type": {"application/grpc"}}}}, // HTTP/1.1
		{"1S", 0, 0, &http.Request{ProtoMajor: 2, Header: http.Header{"Grpc-Timeout": {"1S"}}}},                                       // not gRPC
	} {
		r := tt.request
		if r == nil {
			r = h2(tt.v)
		}
		if got := grpcTimeout(r, tt.upTO); got != tt.want {
			t.Errorf("grpcTimeout(%q, %s) = %s, want %s", tt.v, tt.upTO, got, tt.want)
		}
	}
	if got := grpcPercentEncode("a%b é\n"); got != "a%25b %C3%A9%0A" {
		t.Errorf("grpcPercentEncode = %q", got)
	}
}

// A half-open trial that is a long stream does not hold the trial slot for the length
// of the stream: its headers decide it (here: a success, which closes the circuit), so
// calls go through while the stream is still open.
func TestGRPCHalfOpenTrialStreamReleasesItsSlotAtTheHeaders(t *testing.T) {
	b := newGRPCBackend(t)
	f := newGRPCFixture(t, h2cUpstream(t, "http://"+b.ln.Addr().String()))
	for range 3 {
		_ = f.check("unavailable")
	}
	if s := f.breakers["svc"].State(); s != breaker.Open {
		t.Fatalf("circuit %s, want open", s)
	}
	f.clock.Add(31 * time.Second) // past open_duration: the next call is the trial
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	stream, err := healthpb.NewHealthClient(f.conn).Watch(ctx, &healthpb.HealthCheckRequest{Service: "cut"}) // streams until cancelled
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("trial stream: %v", err)
	}
	recv(t, "the trial stream's first message", b.sent)
	if s := f.breakers["svc"].State(); s != breaker.Closed {
		t.Errorf("circuit %s while the trial streams, want closed", s)
	}
	if err := f.check(""); err != nil {
		t.Errorf("a call while the trial streams: %v", err)
	}
	cancel()
}

// README's sample of what an open circuit answers a gRPC client is this answer's
// headers, as the client receives them (HTTP/2, lower-case names).
func TestReadmeGRPCRejection(t *testing.T) {
	b := newGRPCBackend(t)
	up := h2cUpstream(t, "http://"+b.ln.Addr().String())
	f := newGRPCFixtureCfg(t, &config.Config{Upstreams: map[string]*config.Upstream{"inventory": up}, Routes: oneRoute("inventory")})
	for range 3 {
		_ = f.check("unavailable")
	}
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: p}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/inventory.v1.Inventory/Get", bytes.NewReader(make([]byte, 5)))
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	resp, err := (&http.Client{Transport: tr, Timeout: waitTimeout}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	lines := []string{":status: " + strconv.Itoa(resp.StatusCode)}
	for k, vs := range resp.Header {
		if k == "Date" || k == "Content-Length" {
			continue
		}
		for _, v := range vs {
			lines = append(lines, strings.ToLower(k)+": "+v)
		}
	}
	slices.Sort(lines[1:])
	got := strings.Join(lines, "\n") + "\n"
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const start, end = "<!-- grpc-reject:start -->\n```\n", "```\n<!-- grpc-reject:end -->"
	i, j := bytes.Index(readme, []byte(start)), bytes.Index(readme, []byte(end))
	if i < 0 || j < i {
		t.Fatal("README.md lacks the grpc-reject markers")
	}
	if want := string(readme[i+len(start) : j]); got != want {
		t.Errorf("README's gRPC rejection:\n%s\nthe proxy's:\n%s", want, got)
	}
}

// An https target speaks HTTP/2 by ALPN without h2c: gRPC passes through to a gRPC
// server with TLS (a private CA), and its statuses are classified as over h2c.
func TestGRPCOverTLSUpstream(t *testing.T) {
	ca := testca.New(t, "grpc CA")
	certPEM, keyPEM := ca.Issue(t, "grpc.internal", []string{"grpc.internal"}, net.ParseIP("127.0.0.1"))
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	b := newGRPCBackend(t, grpc.Creds(credentials.NewServerTLSFromCert(&cert)))
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	testca.WriteFile(t, caFile, ca.PEM)
	up := tlsUpstream(t, "https://"+b.ln.Addr().String(), config.UpstreamTLS{CAFile: caFile})
	up.Failure.GRPCFailure = 1 << 14
	f := newGRPCFixture(t, up)
	if err := f.check(""); err != nil {
		t.Fatalf("unary over TLS to the upstream: %v", err)
	}
	if err := f.check("unavailable"); status.Code(err) != codes.Unavailable {
		t.Fatalf("UNAVAILABLE over TLS: %v", err)
	}
	wantResults(t, f.rec.wait(t, 2), Success, FailureStatus)
}

// A full bulkhead answers a gRPC client in gRPC's terms too: UNAVAILABLE naming the limit.
func TestGRPCBulkheadFullAnswersUnavailable(t *testing.T) {
	b := newGRPCBackend(t)
	up := h2cUpstream(t, "http://"+b.ln.Addr().String())
	up.MaxConcurrentRequests = 1
	f := newGRPCFixture(t, up)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	stream, err := healthpb.NewHealthClient(f.conn).Watch(ctx, &healthpb.HealthCheckRequest{Service: "cut"}) // holds the one slot
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	recv(t, "the stream's first message", b.sent)
	var md metadata.MD
	err = f.check("", grpc.Trailer(&md))
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "at its concurrency limit") {
		t.Errorf("bulkhead full: %v; want UNAVAILABLE naming the limit", err)
	}
	if got := md.Get("x-fuse-limit"); len(got) != 1 || got[0] != "concurrency" {
		t.Errorf("X-Fuse-Limit = %v", got)
	}
	cancel()
}
