package clustertests

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/broker/config"
)

// TestClusterObservability: per-peer publish counters and the replication
// lag show in /metrics, the admin status and $SYS.
func TestClusterObservability(t *testing.T) {
	c := newCluster(t, 2, clusterOptions{Mutate: func(_ string, cfg *config.Config) {
		cfg.MQTT.SysInterval = time.Second
	}})
	sub := brokertest.MustV5(t, c.url("n2"), "obs-sub")
	sub.MustSub("obs/#", 1)
	c.waitRoutes()
	pub := brokertest.MustV5(t, c.url("n1"), "obs-pub")
	const k = 5
	for i := range k {
		pub.MustPub("obs/x", 1, false, strconv.Itoa(i))
	}
	for range k {
		sub.Next()
	}
	n1, n2 := c.node("n1"), c.node("n2")
	if got := n1.Metric("mendmq_cluster_peer_messages_total", "peer", "n2", "direction", "out"); got != k {
		t.Errorf("n1 forwarded to n2: %v, want %d", got, k)
	}
	n2.WaitMetric(k, "mendmq_cluster_peer_messages_total", "peer", "n1", "direction", "in")
	// The subscription's record reached n1 by replication.
	if got := n1.Metric("mendmq_cluster_replication_lag_seconds"); got == 0 {
		t.Error("n1 observed no replication lag")
	}
	for _, m := range n1.Cluster().Status().Members {
		if m.Name == "n2" && (m.Forwarded != k || m.ForwardedBytes == 0) {
			t.Errorf("status of n2 on n1: forwarded %d (%d bytes), want %d", m.Forwarded, m.ForwardedBytes, k)
		}
	}
	sys := brokertest.MustV5(t, c.url("n1"), "obs-sys")
	sys.MustSub("$SYS/broker/cluster/peers/n2/forwarded", 0)
	deadline := time.After(brokertest.Timeout)
	for {
		select {
		case m := <-sys.Msgs():
			if string(m.Payload) == fmt.Sprint(k) {
				return
			}
		case <-deadline:
			t.Fatalf("$SYS/broker/cluster/peers/n2/forwarded never showed %d", k)
		}
	}
}
