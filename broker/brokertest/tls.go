package brokertest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TLSFiles are PEM files in a test's temporary directory: a CA, a server
// certificate it signed for 127.0.0.1 and localhost, and a client
// certificate it signed (for mutual TLS).
type TLSFiles struct {
	CAFile         string
	CertFile       string // server
	KeyFile        string
	ClientCertFile string
	ClientKeyFile  string
	// CA holds the CA certificate, for client RootCAs.
	CA *x509.CertPool
	// Client is the client key pair, for tls.Config.Certificates.
	Client tls.Certificate
}

// WriteTLSFiles generates a fresh CA and certificates (ECDSA P-256, valid
// for an hour) into t.TempDir().
func WriteTLSFiles(t testing.TB) TLSFiles {
	t.Helper()
	dir := t.TempDir()
	now := time.Now()
	caCert, caKey, caDER := newCA(t)
	var err error
	f := TLSFiles{
		CAFile:         filepath.Join(dir, "ca.pem"),
		CertFile:       filepath.Join(dir, "server.pem"),
		KeyFile:        filepath.Join(dir, "server-key.pem"),
		ClientCertFile: filepath.Join(dir, "client.pem"),
		ClientKeyFile:  filepath.Join(dir, "client-key.pem"),
		CA:             x509.NewCertPool(),
	}
	f.CA.AddCert(caCert)
	writePEM(t, f.CAFile, "CERTIFICATE", caDER)

	issue := func(serial int64, cn string, usage x509.ExtKeyUsage, certFile, keyFile string) {
		key := newKey(t)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    now.Add(-time.Minute),
			NotAfter:     now.Add(time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		}
		if usage == x509.ExtKeyUsageServerAuth {
			tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
			tmpl.DNSNames = []string{"localhost"}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatalf("create %s certificate: %v", cn, err)
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatalf("marshal %s key: %v", cn, err)
		}
		writePEM(t, certFile, "CERTIFICATE", der)
		writePEM(t, keyFile, "EC PRIVATE KEY", keyDER)
	}
	issue(2, "mendmq test server", x509.ExtKeyUsageServerAuth, f.CertFile, f.KeyFile)
	issue(3, "mendmq test client", x509.ExtKeyUsageClientAuth, f.ClientCertFile, f.ClientKeyFile)
	f.Client, err = tls.LoadX509KeyPair(f.ClientCertFile, f.ClientKeyFile)
	if err != nil {
		t.Fatalf("load client key pair: %v", err)
	}
	return f
}

// ClientTLS returns a client configuration that trusts the test CA and,
// with withCert, presents the client certificate.
func (f TLSFiles) ClientTLS(withCert bool) *tls.Config {
	tc := &tls.Config{RootCAs: f.CA, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if withCert {
		tc.Certificates = []tls.Certificate{f.Client}
	}
	return tc
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generate key: %v", err)
	}
	return k
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	b := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
}

// newCA returns a fresh self-signed test CA, valid for an hour.
func newCA(t testing.TB) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
	t.Helper()
	now := time.Now()
	caKey := newKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "mendmq test CA"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatalf("create CA certificate: %v", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatalf("parse CA certificate: %v", err)
	}
	return caCert, caKey, caDER
}

// NodeTLSFiles are PEM files for a cluster's data-plane mutual TLS: a CA
// and, per node name, a certificate it signed for that name (DNS SAN,
// server and client use).
type NodeTLSFiles struct {
	CAFile string
	// Cert and Key map a node name to its files.
	Cert, Key map[string]string
}

// WriteNodeTLSFiles generates a fresh CA and a certificate for each of
// names into t.TempDir().
func WriteNodeTLSFiles(t testing.TB, names ...string) NodeTLSFiles {
	t.Helper()
	dir := t.TempDir()
	caCert, caKey, caDER := newCA(t)
	f := NodeTLSFiles{CAFile: filepath.Join(dir, "ca.pem"), Cert: map[string]string{}, Key: map[string]string{}}
	writePEM(t, f.CAFile, "CERTIFICATE", caDER)
	now := time.Now()
	for i, name := range names {
		key := newKey(t)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(int64(10 + i)),
			Subject:      pkix.Name{CommonName: name},
			DNSNames:     []string{name},
			NotBefore:    now.Add(-time.Minute),
			NotAfter:     now.Add(time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatalf("create %s certificate: %v", name, err)
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatalf("marshal %s key: %v", name, err)
		}
		f.Cert[name], f.Key[name] = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
		writePEM(t, f.Cert[name], "CERTIFICATE", der)
		writePEM(t, f.Key[name], "EC PRIVATE KEY", keyDER)
	}
	return f
}
