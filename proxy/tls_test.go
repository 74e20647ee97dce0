package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/internal/testutil/testca"
)

// mtlsBackend is an HTTPS server with a certificate from serverCA for 127.0.0.1 and the
// name api.internal, requiring a client certificate from one of clientCAs (changeable).
// It answers with the client certificate's common name and closes every connection, so
// that each request handshakes.
type mtlsBackend struct {
	*httptest.Server
	clientCAs atomic.Pointer[x509.CertPool]
	mu        sync.Mutex
	seen      map[string]int // client CN -> requests
}

func newMTLSBackend(t *testing.T, serverCA *testca.CA, clientCAs ...*testca.CA) *mtlsBackend {
	t.Helper()
	b := &mtlsBackend{seen: map[string]int{}}
	b.setClientCAs(clientCAs...)
	certPEM, keyPEM := serverCA.Issue(t, "api.internal", []string{"api.internal"}, net.ParseIP("127.0.0.1"))
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	b.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cn := r.TLS.PeerCertificates[0].Subject.CommonName
		b.mu.Lock()
		b.seen[cn]++
		b.mu.Unlock()
		w.Header().Set("Connection", "close")
		_, _ = w.Write([]byte(cn))
	}))
	b.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are what some tests want
	b.TLS = &tls.Config{
		Certificates: []tls.Certificate{cert},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAndVerifyClientCert,
				ClientCAs: b.clientCAs.Load()}, nil
		},
	}
	b.StartTLS()
	t.Cleanup(b.Close)
	return b
}

func (b *mtlsBackend) setClientCAs(cas ...*testca.CA) {
	pool := x509.NewCertPool()
	for _, ca := range cas {
		pool.AddCert(ca.Cert)
	}
	b.clientCAs.Store(pool)
}

func (b *mtlsBackend) count(cn string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.seen[cn]
}

// tlsFixture writes the CA bundle and client certificate files and returns the upstream.
func tlsUpstream(t *testing.T, target string, tc config.UpstreamTLS) *config.Upstream {
	t.Helper()
	u := upstreamCfg(t, target)
	if tc.MinVersion == "" {
		tc.MinVersion = "1.2"
	}
	u.TLS = tc
	return u
}

func TestUpstreamMutualTLS(t *testing.T) {
	serverCA, clientCA, otherCA := testca.New(t, "server CA"), testca.New(t, "client CA"), testca.New(t, "other CA")
	b := newMTLSBackend(t, serverCA, clientCA)
	dir := t.TempDir()
	ca, otherCAFile := filepath.Join(dir, "ca.PEM"), filepath.Join(dir, "other-ca.PEM")
	crt, key := filepath.Join(dir, "client.PEM"), filepath.Join(dir, "client-key.PEM")
	testca.WriteFile(t, ca, serverCA.PEM)
	testca.WriteFile(t, otherCAFile, otherCA.PEM)
	cc, ck := clientCA.Issue(t, "proxy-1", nil)
	testca.WriteFile(t, crt, cc)
	testca.WriteFile(t, key, ck)

	for _, c := range []struct {
		name   string
		target string
		tls    config.UpstreamTLS
		want   int
	}{
		{"private CA and client certificate", b.URL, config.UpstreamTLS{CAFile: ca, CertFile: crt, KeyFile: key}, 200},
		{"no client certificate", b.URL, config.UpstreamTLS{CAFile: ca}, 502},
		{"another CA", b.URL, config.UpstreamTLS{CAFile: otherCAFile, CertFile: crt, KeyFile: key}, 502},
		{"the system roots do not know the private CA", b.URL, config.UpstreamTLS{CertFile: crt, KeyFile: key}, 502},
		{"server_name names the certificate", b.URL, config.UpstreamTLS{CAFile: ca, CertFile: crt, KeyFile: key, ServerName: "api.internal"}, 200},
		{"a name the certificate lacks", b.URL, config.UpstreamTLS{CAFile: ca, CertFile: crt, KeyFile: key, ServerName: "other.internal"}, 502},
		{"insecure_skip_verify", b.URL, config.UpstreamTLS{CertFile: crt, KeyFile: key, InsecureSkipVerify: true}, 200},
		{"TLS 1.3 only", b.URL, config.UpstreamTLS{CAFile: ca, CertFile: crt, KeyFile: key, MinVersion: "1.3"}, 200},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, single(tlsUpstream(t, c.target, c.tls)))
			resp := f.get(t, "h.example", "/")
			body := readBody(t, resp)
			if resp.StatusCode != c.want {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, c.want)
			}
			if c.want == 200 && body != "proxy-1" {
				t.Errorf("the backend saw client %q, want proxy-1", body)
			}
			if c.want == 502 {
				// A failed handshake is a transport failure for the breaker.
				got := f.rec.wait(t, 1)
				if got[0].result != FailureTransport {
					t.Errorf("result %v, want %v", got[0].result, FailureTransport)
				}
			}
		})
	}
}

// A client certificate rotated on disk under load: new handshakes take it up within
// about a second, and no request fails.
func TestUpstreamTLSRotationUnderLoad(t *testing.T) {
	serverCA, oldCA, newCA := testca.New(t, "server CA"), testca.New(t, "client CA 1"), testca.New(t, "client CA 2")
	b := newMTLSBackend(t, serverCA, oldCA, newCA) // accepts both during the rotation
	dir := t.TempDir()
	ca, crt, key := filepath.Join(dir, "ca.PEM"), filepath.Join(dir, "client.PEM"), filepath.Join(dir, "client-key.PEM")
	testca.WriteFile(t, ca, serverCA.PEM)
	c1, k1 := oldCA.Issue(t, "old", nil)
	testca.WriteFile(t, crt, c1)
	testca.WriteFile(t, key, k1)
	f := newFixture(t, single(tlsUpstream(t, b.URL, config.UpstreamTLS{CAFile: ca, CertFile: crt, KeyFile: key})))

	var sent, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := f.client.Get(f.srv.URL + "/")
				sent.Add(1)
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = readAll(resp)
				if resp.StatusCode != 200 {
					failed.Add(1)
				}
			}
		})
	}
	eventually(t, "requests with the old certificate", func() bool { return b.count("old") > 20 })

	// Rotate: the key first, then the certificate (a reader in between sees a pair that
	// does not match: it keeps the old one), as a careless deploy might.
	c2, k2 := newCA.Issue(t, "new", nil)
	testca.WriteFile(t, key, k2)
	testca.WriteFile(t, crt, c2)
	eventually(t, "requests with the new certificate", func() bool { return b.count("new") > 20 })
	b.setClientCAs(newCA) // the old CA is retired: every handshake must use the new one
	before := b.count("new")
	eventually(t, "more requests after the old CA was retired", func() bool { return b.count("new") > before+20 })
	close(stop)
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Errorf("%d of %d requests failed during the rotation", n, sent.Load())
	}
	t.Logf("%d requests, %d with the old certificate, %d with the new", sent.Load(), b.count("old"), b.count("new"))
}

func readAll(resp *http.Response) ([]byte, error) {
	defer resp.Body.Close()
	var buf [512]byte
	var out []byte
	for {
		n, err := resp.Body.Read(buf[:])
		out = append(out, buf[:n]...)
		if err != nil {
			return out, nil
		}
	}
}
