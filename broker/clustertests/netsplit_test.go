package clustertests

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/broker/config"
	"github.com/mendmq/mendmq/broker/mochix"
)

// waitGated waits until node name's gate state is want.
func (c *testCluster) waitGated(name string, want bool) {
	c.t.Helper()
	c.eventually(fmt.Sprintf("%s gated=%v", name, want), func() (bool, string) {
		st := c.node(name).Cluster().Netsplit()
		return c.node(name).Cluster().Gated() == want, fmt.Sprintf("%+v", st.Status)
	})
}

// waitDrained waits until no node holds publishes for another.
func (c *testCluster) waitDrained() {
	c.t.Helper()
	c.eventually("the held publishes drained", func() (bool, string) {
		for _, n := range c.names {
			for _, m := range c.node(n).Cluster().Status().Members {
				if m.Held > 0 {
					return false, fmt.Sprintf("%s holds %d for %s", n, m.Held, m.Name)
				}
			}
		}
		return true, ""
	})
}

// reconfigure applies node name's running configuration changed by edit,
// as a configuration-file reload does.
func (c *testCluster) reconfigure(name string, edit func(*config.Config)) {
	c.t.Helper()
	b := c.node(name).Broker
	cfg := b.Config()
	edit(&cfg)
	if err := b.Reconfigure(cfg); err != nil {
		c.t.Fatalf("reconfigure %s: %v", name, err)
	}
}

// unsub unsubscribes filter and returns the UNSUBACK reason code.
func unsub(t testing.TB, cl *brokertest.V5, filter string) byte {
	t.Helper()
	ctx, cancel := timeoutCtx()
	defer cancel()
	ua, err := cl.Unsubscribe(ctx, &paho.Unsubscribe{Topics: []string{filter}})
	if ua != nil && len(ua.Reasons) == 1 {
		return ua.Reasons[0]
	}
	t.Fatalf("v5 unsubscribe %s: %v", filter, err)
	return 0
}

// hasSub reports whether client id on nd holds a subscription to filter.
func hasSub(nd *brokertest.Node, id, filter string) bool {
	cl, ok := mochix.Client(nd.Server(), id)
	if !ok {
		return false
	}
	_, ok = cl.State.Subscriptions.Get(filter)
	return ok
}

// TestNetsplitGate isolates n1 and checks, with real v5 and v3 clients,
// each gated operation's answer under the default switches (VerneMQ's
// codes, DESIGN §3), then the same operations allowed by a hot reload of
// the four switches, then all of it again after the heal. /readyz of n1
// (cluster.readyz_during_netsplit: false) follows the gate.
func TestNetsplitGate(t *testing.T) {
	c := newCluster(t, 3, clusterOptions{Faults: true, Mutate: func(name string, cfg *config.Config) {
		cfg.Cluster.ReadyzDuringNetsplit = name != "n1"
		cfg.MQTT.SysInterval = time.Second
	}})
	n1 := c.node("n1")
	far := brokertest.MustV5(t, c.url("n2"), "far")
	far.MustSub("gate/#", 1)
	keep5 := brokertest.MustV5(t, c.url("n1"), "keep5")
	keep5.MustSub("keep5/#", 1)
	keep5.MustSub("$SYS/broker/cluster/netsplit/gated", 0)
	// A kept session: its subscription outlives the refused
	// UNSUBSCRIBE's disconnect, to be checked.
	keep3 := brokertest.MustV3(t, c.url("n1"), "keep3", brokertest.V3Options{KeepSession: true})
	keep3.MustSub("keep3/#", 1)
	pub5 := brokertest.MustV5(t, c.url("n1"), "pub5")
	pub3 := brokertest.MustV3(t, c.url("n1"), "pub3")
	c.waitRoutes()
	if code, _ := n1.Get("/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz of n1 before the split: %d", code)
	}

	c.net.Isolate("n1")
	c.waitGated("n1", true)
	// $SYS tells subscribers (the retained "false" first, then a tick).
	for i := 0; ; i++ {
		m := keep5.Next()
		if string(m.Payload) == "true" {
			break
		}
		if i == 5 {
			t.Fatalf("$SYS/broker/cluster/netsplit/gated still %q after %d ticks", m.Payload, i)
		}
	}

	t.Run("refused", func(t *testing.T) {
		_, err := brokertest.ConnectV5(t, c.url("n1"), "new5", brokertest.V5Options{})
		if code, ok := brokertest.RefusedCode(err); !ok || code != 0x88 {
			t.Errorf("v5 CONNECT: %v, want CONNACK 0x88", err)
		}
		_, err = brokertest.ConnectV3(t, c.url("n1"), "new3", brokertest.V3Options{})
		if code, ok := brokertest.RefusedCode(err); !ok || code != 3 {
			t.Errorf("v3 CONNECT: %v, want CONNACK return code 3", err)
		}
		for _, tc := range []struct {
			qos  byte
			want byte
		}{{1, 0x83}, {2, 0x80}, {0, 0}} {
			if got := pub5.Pub(fmt.Sprintf("gate/refused-q%d", tc.qos), tc.qos, false, "x"); got != tc.want {
				t.Errorf("v5 QoS %d PUBLISH: reason 0x%02x, want 0x%02x", tc.qos, got, tc.want)
			}
		}
		if got := pub5.Sub("gate-new/#", 1); got != 0x87 {
			t.Errorf("v5 SUBSCRIBE: 0x%02x, want 0x87", got)
		}
		if got := unsub(t, keep5, "keep5/#"); got != 0x80 {
			t.Errorf("v5 UNSUBSCRIBE: 0x%02x, want 0x80", got)
		}
		if !hasSub(n1, "keep5", "keep5/#") {
			t.Error("a refused v5 UNSUBSCRIBE unsubscribed")
		}
		if got := keep3.Sub("gate-new3/#", 1); got != 0x80 {
			t.Errorf("v3 SUBSCRIBE: 0x%02x, want 0x80", got)
		}
		// v3 has no way to refuse an UNSUBSCRIBE or a QoS 1 PUBLISH but
		// to close the connection without an ack.
		keep3.Unsubscribe("keep3/#")
		if err := keep3.WaitLost(); err == nil {
			t.Error("v3 UNSUBSCRIBE: connection not closed")
		}
		if !hasSub(n1, "keep3", "keep3/#") {
			t.Error("a refused v3 UNSUBSCRIBE unsubscribed")
		}
		pub3.Publish("gate/refused-v3", 1, false, "x")
		if err := pub3.WaitLost(); err == nil {
			t.Error("v3 QoS 1 PUBLISH: connection not closed")
		}
		n1.WaitMetric(2, "mendmq_netsplit_refused_total", "operation", "connect")
		n1.WaitMetric(4, "mendmq_netsplit_refused_total", "operation", "publish")
		n1.WaitMetric(2, "mendmq_netsplit_refused_total", "operation", "subscribe")
		n1.WaitMetric(2, "mendmq_netsplit_refused_total", "operation", "unsubscribe")
		n1.WaitMetric(1, "mendmq_messages_dropped_total", "reason", "netsplit")
		if code, _ := n1.Get("/readyz"); code != http.StatusServiceUnavailable {
			t.Errorf("/readyz of gated n1 with readyz_during_netsplit false: %d, want 503", code)
		}
		if code, _ := c.node("n2").Get("/readyz"); code != http.StatusOK {
			t.Errorf("/readyz of gated n2 with readyz_during_netsplit true: %d, want 200", code)
		}
	})

	c.reconfigure("n1", func(cfg *config.Config) {
		cfg.Cluster.AllowRegisterDuringNetsplit = true
		cfg.Cluster.AllowPublishDuringNetsplit = true
		cfg.Cluster.AllowSubscribeDuringNetsplit = true
		cfg.Cluster.AllowUnsubscribeDuringNetsplit = true
	})
	t.Run("allowed by reload", func(t *testing.T) {
		brokertest.MustV5(t, c.url("n1"), "new5")
		brokertest.MustV3(t, c.url("n1"), "new3")
		// Held for n2, whose subscriber gets it after the heal; the ack
		// means delivered or held.
		pub5.MustPub("gate/held", 1, false, "gate/held")
		pub5.MustSub("gate-new/#", 1)
		if got := unsub(t, keep5, "keep5/#"); got != 0 {
			t.Errorf("v5 UNSUBSCRIBE allowed: 0x%02x, want 0", got)
		}
	})

	c.net.Heal()
	c.waitFormed()
	c.waitGated("n1", false)
	if code, _ := n1.Get("/readyz"); code != http.StatusOK {
		t.Errorf("/readyz of n1 after the heal: %d", code)
	}
	pub5.MustPub("gate/after", 1, false, "after")
	got := counts(far.Until("gate/after"))
	// Nothing refused reached it (expectOnce fails on any other message).
	expectOnce(t, "far subscriber on n2", got, []string{"gate/held"})
}

// TestPublishHeldDuringNetsplit: in majority mode the majority side is
// split but not gated. Its QoS 1 publishes for a subscriber on the cut-off
// node are acknowledged at once (not after forward_timeout, not refused)
// and reach it after the heal, exactly once, in order; a QoS 1 will fired
// on the majority side reaches its side at once and the far side after
// the heal, once.
func TestPublishHeldDuringNetsplit(t *testing.T) {
	c := newCluster(t, 3, clusterOptions{Faults: true, Mutate: func(_ string, cfg *config.Config) {
		cfg.Cluster.NetsplitMode = "majority"
	}})
	cut := brokertest.MustV5(t, c.url("n1"), "cut-sub", brokertest.V5Options{KeepSession: true, SessionExpiry: 600})
	cut.MustSub("held/#", 1)
	near := brokertest.MustV5(t, c.url("n3"), "near-sub")
	near.MustSub("held/#", 1)
	pub := brokertest.MustV5(t, c.url("n2"), "held-pub")
	dying := brokertest.MustV5(t, c.url("n2"), "dying", brokertest.V5Options{
		Will: &paho.WillMessage{Topic: "held/will", QoS: 1, Payload: []byte("held/will")}})
	c.waitRoutes()

	c.net.Isolate("n1")
	c.waitGated("n1", true)
	c.eventually("n2 split but not gated", func() (bool, string) {
		n := c.node("n2").Cluster()
		return n.Split() && !n.Gated(), fmt.Sprintf("split=%v gated=%v", n.Split(), n.Gated())
	})
	want := seq("held/m", 20)
	ctx, cancel := context.WithTimeout(context.Background(), c.node("n2").Broker.Config().Cluster.ForwardTimeout/2)
	defer cancel()
	for _, topic := range want {
		// Each ack within half the forward timeout: held, not waited for.
		pr, err := pub.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(topic)})
		if err != nil || pr == nil || pr.ReasonCode != 0 {
			t.Fatalf("publish %s while n1 is cut off: %v %+v", topic, err, pr)
		}
	}
	dying.Drop() // the will goes now
	// The near side had every publish before its ack, and the will at once.
	expectOnce(t, "subscriber on the majority side", counts(near.Until("held/will")), want)

	c.net.Heal()
	c.waitFormed()
	c.waitGated("n1", false)
	c.waitDrained()
	pub.MustPub("held/end", 1, false, "end")
	got := cut.Until("held/end")
	var order []string
	for _, m := range got {
		order = append(order, m.Topic)
	}
	expectOnce(t, "cut-off subscriber", counts(got), append(append([]string{}, want...), "held/will"))
	for i, topic := range want {
		if i >= len(order) || order[i] != topic {
			t.Errorf("held publishes out of order: %v", order)
			break
		}
	}
	if n := c.node("n2").Metric("mendmq_messages_dropped_total", "reason", "netsplit"); n != 0 {
		t.Errorf("%v messages dropped as netsplit on the majority side", n)
	}
}
