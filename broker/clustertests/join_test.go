package clustertests

import (
	"fmt"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mendmq/mendmq/broker/brokertest"
)

// TestJoinLoadedCluster: a node joining a 3-node cluster that holds 5,000
// subscriptions (50 sessions of 100 filters, spread over the nodes) and
// 500 retained messages gets the full routing table and every retained
// message, and its publishes reach subscribers on the old nodes.
func TestJoinLoadedCluster(t *testing.T) {
	c := newCluster(t, 3, clusterOptions{})
	const sessions, perSession, retained = 50, 100, 500
	loaded := make([]*brokertest.V5, sessions)
	for i := range loaded {
		cl := brokertest.MustV5(t, c.url(c.names[i%len(c.names)]), fmt.Sprintf("load-%02d", i))
		opts := make([]paho.SubscribeOptions, perSession)
		for k := range opts {
			opts[k] = paho.SubscribeOptions{Topic: fmt.Sprintf("load/%02d/%d/#", i, k), QoS: 1}
		}
		ctx, cancel := timeoutCtx()
		sa, err := cl.Subscribe(ctx, &paho.Subscribe{Subscriptions: opts})
		cancel()
		if err != nil || len(sa.Reasons) != perSession {
			t.Fatalf("subscribe %d filters: %v", perSession, err)
		}
		loaded[i] = cl
	}
	pub := brokertest.MustV5(t, c.url("n1"), "load-pub")
	for i := range retained {
		ctx, cancel := timeoutCtx()
		// QoS 0 but the last: the broker handles one client's publishes
		// in order, so the last one's PUBACK means all were retained.
		qos := byte(0)
		if i == retained-1 {
			qos = 1
		}
		_, err := pub.Publish(ctx, &paho.Publish{Topic: fmt.Sprintf("lret/%d", i), QoS: qos, Retain: true, Payload: []byte(fmt.Sprint(i))})
		cancel()
		if err != nil {
			t.Fatalf("publish retained %d: %v", i, err)
		}
	}
	c.waitRoutes()
	c.waitTables()
	before := c.node("n1").Cluster().Status()
	if before.Retained != retained {
		t.Fatalf("cluster holds %d retained messages, want %d", before.Retained, retained)
	}
	total := 0
	for _, v := range before.Subscriptions {
		total += v
	}
	if total != sessions*perSession {
		t.Fatalf("cluster routes %d subscriptions, want %d", total, sessions*perSession)
	}

	start := time.Now()
	joined := c.start("n4")
	c.waitFormed()
	c.waitTables()
	c.waitRoutes()
	t.Logf("n4 joined and synced %d sessions, %d subscriptions, %d retained in %v",
		before.Sessions, total, retained, time.Since(start).Round(time.Millisecond))
	if got := retainedCount(joined); got != retained {
		t.Errorf("n4 holds %d retained messages, want %d", got, retained)
	}
	if got, _ := retainedPayload(joined, "lret/123"); got != "123" {
		t.Errorf("n4 retained lret/123 = %q", got)
	}
	s := brokertest.MustV5(t, c.url("n4"), "load-new-sub")
	s.MustSub("lret/42", 1)
	if m := s.Next(); string(m.Payload) != "42" || !m.Retain {
		t.Errorf("subscriber on n4 got retained %q retain=%v, want \"42\"", m.Payload, m.Retain)
	}

	// A publish from n4 reaches one session on each old node, once.
	p4 := brokertest.MustV5(t, c.url("n4"), "load-pub-n4")
	for i := range 3 {
		p4.MustPub(fmt.Sprintf("load/%02d/7/x", i), 1, false, fmt.Sprintf("to-%d", i))
		p4.MustPub(fmt.Sprintf("load/%02d/99/m", i), 1, false, "marker")
		expectOnce(t, fmt.Sprintf("session load-%02d on %s", i, c.names[i]), counts(loaded[i].Until(fmt.Sprintf("load/%02d/99/m", i))), []string{fmt.Sprintf("to-%d", i)})
	}
}
