package proxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/config"
)

// testCA is a private certificate authority for the TLS tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

var serial atomic.Int64

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a leaf certificate and key (PEM) for cn, valid for the DNS names and IPs
// given, for servers and clients alike.
func (ca *testCA) issue(t *testing.T, cn string, dns []string, ips ...net.IP) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: dns, IPAddresses: ips, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil { // atomically, as a secret volume updates
		t.Fatal(err)
	}
}

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

func newMTLSBackend(t *testing.T, serverCA *testCA, clientCAs ...*testCA) *mtlsBackend {
	t.Helper()
	b := &mtlsBackend{seen: map[string]int{}}
	b.setClientCAs(clientCAs...)
	certPEM, keyPEM := serverCA.issue(t, "api.internal", []string{"api.internal"}, net.ParseIP("127.0.0.1"))
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

func (b *mtlsBackend) setClientCAs(cas ...*testCA) {
	pool := x509.NewCertPool()
	for _, ca := range cas {
		pool.AddCert(ca.cert)
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
	serverCA, clientCA, otherCA := newTestCA(t, "server CA"), newTestCA(t, "client CA"), newTestCA(t, "other CA")
	b := newMTLSBackend(t, serverCA, clientCA)
	dir := t.TempDir()
	ca, otherCAFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "other-ca.pem")
	crt, key := filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem")
	writeFile(t, ca, serverCA.pem)
	writeFile(t, otherCAFile, otherCA.pem)
	cc, ck := clientCA.issue(t, "proxy-1", nil)
	writeFile(t, crt, cc)
	writeFile(t, key, ck)

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
	serverCA, oldCA, newCA := newTestCA(t, "server CA"), newTestCA(t, "client CA 1"), newTestCA(t, "client CA 2")
	b := newMTLSBackend(t, serverCA, oldCA, newCA) // accepts both during the rotation
	dir := t.TempDir()
	ca, crt, key := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem")
	writeFile(t, ca, serverCA.pem)
	c1, k1 := oldCA.issue(t, "old", nil)
	writeFile(t, crt, c1)
	writeFile(t, key, k1)
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
	c2, k2 := newCA.issue(t, "new", nil)
	writeFile(t, key, k2)
	writeFile(t, crt, c2)
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
