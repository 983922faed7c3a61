package clustertests

import (
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/broker/clusterhook"
)

// testRetained: a retained message set on n1 is replicated; new
// subscribers on n2 and n3 get it, with its properties, from their own
// node's copy. Cleared on n2, it is gone everywhere.
func testRetained(t *testing.T, c *testCluster) {
	pub := brokertest.MustV5(t, c.url("n1"), "ret-pub")
	expiry := uint32(3600)
	ctx, cancel := timeoutCtx()
	_, err := pub.Publish(ctx, &paho.Publish{Topic: "ret/a", QoS: 1, Retain: true, Payload: []byte("v1"),
		Properties: &paho.PublishProperties{ContentType: "text/plain", MessageExpiry: &expiry, User: paho.UserProperties{{Key: "k", Value: "v"}}}})
	cancel()
	if err != nil {
		t.Fatalf("publish retained: %v", err)
	}
	// Replication alone carries it: no node subscribes to ret/#, so no
	// publish was forwarded.
	c.waitRetained("ret/a", "v1")
	for _, n := range []string{"n2", "n3"} {
		s := brokertest.MustV5(t, c.url(n), "ret-sub-"+n)
		s.MustSub("ret/a", 1)
		m := s.Next()
		switch p := m.Properties; {
		case string(m.Payload) != "v1" || !m.Retain:
			t.Errorf("%s: new subscriber got %q retain=%v, want \"v1\" retained", n, m.Payload, m.Retain)
		case p == nil || p.ContentType != "text/plain" || p.User.Get("k") != "v":
			t.Errorf("%s: retained properties lost: %+v", n, p)
		case p.MessageExpiry == nil || *p.MessageExpiry > expiry || *p.MessageExpiry < expiry-60:
			t.Errorf("%s: retained message expiry %v, want close to %d", n, p.MessageExpiry, expiry)
		}
		s.Close()
	}

	clr := brokertest.MustV5(t, c.url("n2"), "ret-clear")
	clr.MustPub("ret/a", 1, true, "")
	c.waitRetained("ret/a", "")
	c.waitTables()
	for _, n := range c.names {
		if _, ok := c.node(n).Cluster().Retained("ret/a"); ok {
			t.Errorf("%s: replicated table still holds ret/a after it was cleared", n)
		}
		s := brokertest.MustV5(t, c.url(n), "ret-after-"+n)
		s.MustSub("ret/#", 1)
		c.waitRoutes()
		clr.MustPub("ret/marker", 1, false, "marker")
		if got := s.Until("ret/marker"); len(got) != 0 {
			t.Errorf("%s: cleared retained message still delivered: %q", n, got[0].Payload)
		}
	}
}

// testRetainedConcurrent: two nodes set the same retained topic at the
// same moment, round after round. After each round every node's mochi
// holds the value its replicated table resolved, and all nodes hold the
// same one; finally a new subscriber on every node gets that one value.
func testRetainedConcurrent(t *testing.T, c *testCluster) {
	const topic = "retc/x"
	pubs := map[string]*brokertest.V5{
		"n1": brokertest.MustV5(t, c.url("n1"), "retc-n1"),
		"n2": brokertest.MustV5(t, c.url("n2"), "retc-n2"),
	}
	var final string
	for round := range 15 {
		var wg sync.WaitGroup
		start := make(chan struct{})
		errs := make(chan error, len(pubs))
		var written []string
		for name, p := range pubs {
			payload := fmt.Sprintf("r%d-%s", round, name)
			written = append(written, payload)
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				ctx, cancel := timeoutCtx()
				defer cancel()
				if _, err := p.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Retain: true, Payload: []byte(payload)}); err != nil {
					errs <- fmt.Errorf("publish %s: %w", payload, err)
				}
			}()
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		c.eventually(fmt.Sprintf("round %d to converge", round), func() (bool, string) {
			var vals []string
			for _, n := range c.names {
				mochi, _ := retainedPayload(c.node(n), topic)
				v, ok := c.node(n).Cluster().Retained(topic)
				if !ok {
					return false, n + ": no resolved value"
				}
				pk, err := clusterhook.DecodePublish(v.Publish)
				if err != nil {
					return false, fmt.Sprintf("%s: resolved value unreadable: %v", n, err)
				}
				if string(pk.Payload) != mochi {
					return false, fmt.Sprintf("%s: mochi retains %q, table resolved %q", n, mochi, pk.Payload)
				}
				vals = append(vals, mochi)
			}
			if uniq := slices.Compact(slices.Clone(vals)); len(uniq) != 1 {
				return false, fmt.Sprintf("nodes disagree: %v", vals)
			}
			if !slices.Contains(written, vals[0]) {
				return false, fmt.Sprintf("resolved %q is not one of this round's %v", vals[0], written)
			}
			final = vals[0]
			return true, ""
		})
	}
	for _, n := range c.names {
		s := brokertest.MustV5(t, c.url(n), "retc-sub-"+n)
		s.MustSub(topic, 1)
		if m := s.Next(); string(m.Payload) != final || !m.Retain {
			t.Errorf("%s: new subscriber got %q retain=%v, want %q", n, m.Payload, m.Retain, final)
		}
	}
	pubs["n1"].MustPub(topic, 1, true, "")
	c.waitRetained(topic, "")
}
