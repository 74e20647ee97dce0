package config

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
)

// LoadCAFile reads a PEM CA bundle (a regular file, as ReadFile) into a pool; a file
// without a certificate is an error.
func LoadCAFile(path string) (*x509.CertPool, error) {
	pem, err := ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no PEM certificate in %s", path)
	}
	return pool, nil
}

// LoadKeyPair reads a PEM certificate and its private key (regular files, as ReadFile).
func LoadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	certPEM, err := ReadFile(certFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	keyPEM, err := ReadFile(keyFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%s and %s: %w", certFile, keyFile, err)
	}
	return cert, nil
}
