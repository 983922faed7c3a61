package clustertests

import (
	"testing"
	"time"

	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/broker/config"
	"github.com/mendmq/mendmq/cluster"
)

// TestDataPlaneTLS: with cluster.data_tls every data-plane connection is
// mutual TLS, and publishes cross nodes over it. A node whose certificate
// names another node is refused by its peers' TLS verification.
func TestDataPlaneTLS(t *testing.T) {
	files := brokertest.WriteNodeTLSFiles(t, "n1", "n2", "n3")
	c := newCluster(t, 2, clusterOptions{Mutate: func(name string, cfg *config.Config) {
		cert := name
		if name == "n3" {
			cert = "n1" // a certificate for another node's name
		}
		cfg.Cluster.DataTLS = cluster.DataTLS{CertFile: files.Cert[cert], KeyFile: files.Key[cert], CAFile: files.CAFile}
	}})
	sub := brokertest.MustV5(t, c.url("n2"), "tls-sub")
	sub.MustSub("tls/#", 1)
	c.waitRoutes()
	pub := brokertest.MustV5(t, c.url("n1"), "tls-pub")
	pub.MustPub("tls/a", 1, false, "over tls")
	if m := sub.Next(); string(m.Payload) != "over tls" {
		t.Fatalf("got %q", m.Payload)
	}

	before := c.node("n1").Metric("mendmq_cluster_bad_messages_total", "what", "handshake_failures")
	impostor := brokertest.Start(t, c.config("n3"))
	brokertest.Eventually(t, "n1 to refuse n3's data-plane handshake", func() bool {
		return c.node("n1").Metric("mendmq_cluster_bad_messages_total", "what", "handshake_failures") > before
	})
	// Its own dials carry n1's name in the certificate but n3's in the
	// handshake: refused too, so it reaches no one.
	brokertest.Eventually(t, "n2 to refuse n3's handshakes", func() bool {
		return c.node("n2").Metric("mendmq_cluster_bad_messages_total", "what", "handshake_failures") > 0
	})
	time.Sleep(500 * time.Millisecond) // several redial attempts
	for _, m := range impostor.Cluster().Status().Members {
		if !m.Self && m.Reachable {
			t.Errorf("n3 with n1's certificate reached %s's data plane", m.Name)
		}
	}
}
