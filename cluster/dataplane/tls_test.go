package dataplane

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"
)

// testPKI is a throw-away CA issuing node certificates whose DNS name is
// the node name.
type testPKI struct {
	ca    *x509.Certificate
	caKey *ecdsa.PrivateKey
	pool  *x509.CertPool
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "mendmq test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &testPKI{ca: ca, caKey: key, pool: pool}
}

// nodeTLS returns a mutual-TLS config for node name.
func (p *testPKI) nodeTLS(t *testing.T, name string, serial int64) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		RootCAs:      p.pool,
		ClientCAs:    p.pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	}
}

func TestMutualTLS(t *testing.T) {
	pki := newTestPKI(t)
	hb := newHandler()
	a := startPlane(t, "a", newHandler(), func(c *Config) { c.TLS = pki.nodeTLS(t, "a", 2) })
	b := startPlane(t, "b", hb, func(c *Config) { c.TLS = pki.nodeTLS(t, "b", 3) })
	link(t, a, b)
	if err := a.Send("b", 1, []byte("over tls")); err != nil {
		t.Fatal(err)
	}
	hb.waitFrames(t, 1, 2*time.Second)
	if got, err := a.Call(t.Context(), "b", 1, []byte("x")); err != nil || string(got) != "echo:x" {
		t.Fatalf("Call over TLS = %q, %v", got, err)
	}

	// A node without a client certificate is refused by b.
	noCert := &tls.Config{RootCAs: pki.pool, MinVersion: tls.VersionTLS13}
	c := startPlane(t, "c", newHandler(), func(c *Config) { c.TLS = noCert })
	before := b.Stats().HandshakeFailures
	if err := c.SetPeer("b", b.Addr().String()); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 3*time.Second, "b refusing c", func() bool { return b.Stats().HandshakeFailures > before })
	if c.Reachable("b") {
		t.Fatal("c reached b without a client certificate")
	}
	// A node presenting a certificate for another name than the one
	// dialed fails verification on the dialer's side.
	if err := a.SetPeer("x", b.Addr().String()); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 3*time.Second, "a refusing b's certificate as x", func() bool {
		s, _ := a.PeerStats("x")
		return s.DialFailures > 0
	})
	if a.Reachable("x") {
		t.Fatal("a accepted b's certificate for node x")
	}
}
