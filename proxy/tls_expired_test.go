package proxy

import (
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/internal/testutil/testca"
)

// An upstream whose certificate has expired fails the handshake: 502, a transport
// failure for the breaker, and a warn line naming the upstream and the reason.
func TestUpstreamExpiredCertificate(t *testing.T) {
	ca := testca.New(t, "server CA")
	certPEM, keyPEM := ca.IssueValid(t, time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour), "api.internal",
		[]string{"api.internal"}, net.ParseIP("127.0.0.1"))
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	b := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	b.Config.ErrorLog = log.New(io.Discard, "", 0)
	b.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	b.StartTLS()
	defer b.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	testca.WriteFile(t, caFile, ca.PEM)

	cfg := single(tlsUpstream(t, b.URL, config.UpstreamTLS{CAFile: caFile}))
	core, logs := observer.New(zap.WarnLevel)
	f := &fixture{cfg: cfg, clock: &fakeClock{}, rec: &recorder{}}
	f.breakers = f.makeBreakers(t, cfg)
	p, err := New(cfg, f.breakers, Options{Recorder: f.rec, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	w := httptest.NewRecorder()
	p.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "http://h.example/", nil))
	if w.Code != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", w.Code)
	}
	if got := f.rec.wait(t, 1); got[0].result != FailureTransport {
		t.Errorf("result %v, want %v", got[0].result, FailureTransport)
	}
	entries := logs.All()
	if len(entries) != 1 || entries[0].ContextMap()["upstream"] != "svc" ||
		!strings.Contains(entries[0].ContextMap()["error"].(string), "expired") {
		t.Errorf("log: %v; want one warn line naming the upstream and the expired certificate", entries)
	}
}
