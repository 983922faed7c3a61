package broker_test

import (
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"

	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/broker/config"
)

// roundTrip subscribes on one URL and publishes on another, v5 and v3
// clients mixed, and checks delivery. Client ids and topics are unique per
// test: mochi v2.7.9 can lose track of a client that reconnects with the
// id of one still being torn down (see TestPersistentSessionV5).
func roundTrip(t *testing.T, subURL, pubURL string, tc5, tc3 *tls.Config) {
	t.Helper()
	id := strings.NewReplacer("/", "-", " ", "-").Replace(t.Name())
	s5 := brokertest.MustV5(t, subURL, id+"-sub5", brokertest.V5Options{TLS: tc5})
	s5.MustSub(id+"/#", 1)
	s3 := brokertest.MustV3(t, subURL, id+"-sub3", brokertest.V3Options{TLS: tc3})
	s3.MustSub(id+"/#", 2)
	brokertest.MustV5(t, pubURL, id+"-pub5", brokertest.V5Options{TLS: tc5}).MustPub(id+"/5", 2, false, "from v5")
	brokertest.MustV3(t, pubURL, id+"-pub3", brokertest.V3Options{TLS: tc3}).MustPub(id+"/3", 1, false, "from v3")
	for _, want := range []string{"from v5", "from v3"} {
		if m := s5.Next(); string(m.Payload) != want {
			t.Errorf("v5 subscriber on %s got %q, want %q", subURL, m.Payload, want)
		}
		if m := s3.Next(); string(m.Payload()) != want {
			t.Errorf("v3 subscriber on %s got %q, want %q", subURL, m.Payload(), want)
		}
	}
}

func TestWebSocket(t *testing.T) {
	t.Parallel()
	cfg := brokertest.Config()
	cfg.MQTT.Listeners = append(cfg.MQTT.Listeners, config.ListenerConfig{Type: "ws", Address: brokertest.FreeAddr(t)})
	n := brokertest.Start(t, cfg)
	ws, tcp := n.URL(1), n.URL(0)
	t.Run("ws to ws", func(t *testing.T) { roundTrip(t, ws, ws, nil, nil) })
	t.Run("tcp to ws", func(t *testing.T) { roundTrip(t, ws, tcp, nil, nil) })
	t.Run("ws to tcp", func(t *testing.T) { roundTrip(t, tcp, ws, nil, nil) })
}

func TestTLS(t *testing.T) {
	t.Parallel()
	files := brokertest.WriteTLSFiles(t)
	cfg := brokertest.Config()
	// config.Validate refuses two listeners on the same address, port 0
	// included, so only the first listener uses port 0.
	addrs := brokertest.FreeAddrs(t, 2)
	cfg.MQTT.Listeners = append(cfg.MQTT.Listeners,
		config.ListenerConfig{Type: "tls", Address: addrs[0], CertFile: files.CertFile, KeyFile: files.KeyFile},
		config.ListenerConfig{Type: "tls", Address: addrs[1], CertFile: files.CertFile, KeyFile: files.KeyFile, ClientCAFile: files.CAFile},
	)
	n := brokertest.Start(t, cfg)
	tcp, tlsURL, mtlsURL := n.URL(0), n.URL(1), n.URL(2)
	if tlsURL[:6] != "tls://" {
		t.Fatalf("URL(1) = %s, want tls://", tlsURL)
	}

	t.Run("tls", func(t *testing.T) { roundTrip(t, tlsURL, tlsURL, files.ClientTLS(false), files.ClientTLS(false)) })
	t.Run("tls to tcp", func(t *testing.T) { roundTrip(t, tcp, tlsURL, files.ClientTLS(false), files.ClientTLS(false)) })
	t.Run("untrusted server certificate", func(t *testing.T) {
		untrusted := &tls.Config{RootCAs: x509.NewCertPool(), ServerName: "127.0.0.1"}
		if _, err := brokertest.ConnectV5(t, tlsURL, "untrusting", brokertest.V5Options{TLS: untrusted}); err == nil {
			t.Error("connected although the client trusts no CA")
		}
	})
	t.Run("mutual tls with client certificate", func(t *testing.T) {
		roundTrip(t, mtlsURL, mtlsURL, files.ClientTLS(true), files.ClientTLS(true))
	})
	t.Run("mutual tls without client certificate", func(t *testing.T) {
		_, err := brokertest.ConnectV5(t, mtlsURL, "no-cert", brokertest.V5Options{TLS: files.ClientTLS(false)})
		if err == nil {
			t.Fatal("connected without a client certificate")
		}
		if _, refused := brokertest.RefusedCode(err); refused {
			t.Errorf("got a CONNACK refusal, want the TLS handshake to fail: %v", err)
		}
	})
	t.Run("plain mqtt on the tls port", func(t *testing.T) {
		c := brokertest.DialRaw(t, n.ListenerAddr(1))
		if _, err := c.Write(brokertest.RawConnect(4, "plain")); err != nil {
			t.Fatal(err)
		}
		brokertest.WaitClosedByPeer(t, c, brokertest.Timeout)
	})
}
