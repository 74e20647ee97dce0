package store

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fuseproxy/fuseproxy/internal/testutil/freeport"
	"github.com/fuseproxy/fuseproxy/internal/testutil/redistest"
)

// testPKI is a throwaway CA with a server certificate for the name redis.test only (not
// for 127.0.0.1, so that the name verified is seen) and a client certificate, as PEM
// files in a temporary directory.
type testPKI struct {
	ca, serverCert, serverKey, clientCert, clientKey string
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	now := time.Now()
	caKey := key()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fuseproxy test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	leaf := func(serial int64, name string, usage x509.ExtKeyUsage) (cert, keyFile string) {
		k := key()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			DNSNames: []string{name}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return write(name+".crt", "CERTIFICATE", der), write(name+".key", "EC PRIVATE KEY", kder)
	}
	p := testPKI{ca: write("ca.crt", "CERTIFICATE", caDER)}
	p.serverCert, p.serverKey = leaf(2, "redis.test", x509.ExtKeyUsageServerAuth)
	p.clientCert, p.clientKey = leaf(3, "fuseproxy.test", x509.ExtKeyUsageClientAuth)
	return p
}

// startTLSRedis starts a redis-server that also listens with TLS, on the port returned;
// authClients is its tls-auth-clients (yes: a client certificate is required).
func startTLSRedis(t *testing.T, p testPKI, authClients string) int {
	t.Helper()
	port, err := freeport.Port()
	if err != nil {
		t.Fatal(err)
	}
	redistest.Start(t, "--tls-port", strconv.Itoa(port), "--tls-cert-file", p.serverCert,
		"--tls-key-file", p.serverKey, "--tls-ca-cert-file", p.ca, "--tls-auth-clients", authClients)
	return port
}

// Every TLS option (store.redis.tls key) applies, with a rediss:// URL as with an address, whether
// or not enabled, ca_file or cert_file is set too.
func TestRedisClientTLSKeysApply(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	port := startTLSRedis(t, p, "no")
	mtlsPort := startTLSRedis(t, p, "yes")
	url := func(port int) string { return "rediss://127.0.0.1:" + strconv.Itoa(port) + "/0" }
	for _, tc := range []struct {
		name       string
		cfg        RedisClientOptions
		serverName string // the client's TLS server name; "-" for no TLS at all
		err        string // the PING fails with this; "" for none, "*" for any
	}{
		{name: "rediss, insecure_skip_verify only",
			cfg: RedisClientOptions{URL: url(port), TLS: RedisTLS{InsecureSkipVerify: true}}, serverName: "127.0.0.1"},
		{name: "rediss, server_name only",
			cfg:        RedisClientOptions{URL: url(port), TLS: RedisTLS{ServerName: "redis.test"}},
			serverName: "redis.test", err: "certificate signed by unknown authority"},
		{name: "rediss, no tls keys", cfg: RedisClientOptions{URL: url(port)},
			serverName: "127.0.0.1", err: "IP SANs"},
		{name: "rediss, ca_file: the URL's host is verified",
			cfg:        RedisClientOptions{URL: url(port), TLS: RedisTLS{CAFile: p.ca}},
			serverName: "127.0.0.1", err: "IP SANs"},
		{name: "rediss, ca_file and server_name",
			cfg:        RedisClientOptions{URL: url(port), TLS: RedisTLS{CAFile: p.ca, ServerName: "redis.test"}},
			serverName: "redis.test"},
		{name: "host and port, insecure_skip_verify only",
			cfg: RedisClientOptions{Addr: "127.0.0.1:" + strconv.Itoa(port), TLS: RedisTLS{InsecureSkipVerify: true}}, serverName: ""},
		{name: "host and port, server_name only",
			cfg:        RedisClientOptions{Addr: "127.0.0.1:" + strconv.Itoa(port), TLS: RedisTLS{ServerName: "redis.test"}},
			serverName: "redis.test", err: "certificate signed by unknown authority"},
		{name: "host and port, enabled and ca_file: the host is verified",
			cfg:        RedisClientOptions{Addr: "127.0.0.1:" + strconv.Itoa(port), TLS: RedisTLS{Enabled: true, CAFile: p.ca}},
			serverName: "", err: "IP SANs"},
		{name: "host and port, no tls keys", cfg: RedisClientOptions{Addr: "127.0.0.1:" + strconv.Itoa(port)},
			serverName: "-", err: "*"},
		{name: "mutual TLS", cfg: RedisClientOptions{URL: url(mtlsPort), TLS: RedisTLS{CAFile: p.ca,
			ServerName: "redis.test", CertFile: p.clientCert, KeyFile: p.clientKey}}, serverName: "redis.test"},
		{name: "mutual TLS, no client certificate",
			cfg:        RedisClientOptions{URL: url(mtlsPort), TLS: RedisTLS{CAFile: p.ca, ServerName: "redis.test"}},
			serverName: "redis.test", err: "certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.DialTimeout, tc.cfg.ReadTimeout, tc.cfg.WriteTimeout = time.Second, time.Second, time.Second
			client, err := NewRedisClient(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			tlsCfg := client.(*redis.Client).Options().TLSConfig
			switch {
			case tc.serverName == "-" && tlsCfg != nil:
				t.Errorf("TLS on, want off")
			case tc.serverName != "-" && tlsCfg == nil:
				t.Fatalf("TLS off, want on")
			case tlsCfg != nil && tlsCfg.ServerName != tc.serverName:
				t.Errorf("server name %q, want %q", tlsCfg.ServerName, tc.serverName)
			}
			err = client.Ping(t.Context()).Err()
			switch {
			case tc.err == "" && err != nil:
				t.Errorf("PING: %v", err)
			case tc.err == "*" && err == nil:
				t.Errorf("PING answered, want an error")
			case tc.err != "" && tc.err != "*" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Errorf("PING: %v, want an error with %q", err, tc.err)
			}
		})
	}
}
