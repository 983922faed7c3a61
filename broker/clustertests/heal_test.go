package clustertests

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/broker/config"
	"github.com/mendmq/mendmq/broker/mochix"
	"github.com/mendmq/mendmq/cluster/routes"
)

// Heal of a netsplit: duplicate sessions of one client id (DESIGN §3,
// issue 15). Every node runs on the fault-injecting network with its own
// wall clock (skew) and every allow_*_during_netsplit switch on, so that
// both sides of the split keep registering, subscribing and publishing.

// skewed returns cluster options giving each node its clock offset.
func skewed(skew map[string]time.Duration) clusterOptions {
	return clusterOptions{Faults: true, Mutate: func(name string, cfg *config.Config) {
		d := skew[name]
		cfg.Cluster.Clock = func() time.Time { return time.Now().Add(d) }
		cfg.Cluster.AllowRegisterDuringNetsplit = true
		cfg.Cluster.AllowPublishDuringNetsplit = true
		cfg.Cluster.AllowSubscribeDuringNetsplit = true
		cfg.Cluster.AllowUnsubscribeDuringNetsplit = true
	}}
}

// split cuts the cluster into sides and waits until every node sees the
// members of the other sides dead: a registration on either side then
// finds a leader and no takeover call to make across the cut.
func (c *testCluster) split(sides ...[]string) {
	c.t.Helper()
	c.net.Partition(sides...)
	c.eventually("every node to see the other side dead", func() (bool, string) {
		for _, side := range sides {
			for _, n := range side {
				for _, m := range c.node(n).Cluster().Status().Members {
					if !slices.Contains(side, m.Name) && m.State != "dead" {
						return false, fmt.Sprintf("%s sees %s %s", n, m.Name, m.State)
					}
				}
			}
		}
		return true, ""
	})
}

// heal heals the network and waits until the cluster is whole again.
func (c *testCluster) heal() {
	c.t.Helper()
	c.net.Heal()
	c.waitFormed()
}

// record returns node n's session record of id.
func (c *testCluster) record(n, id string) routes.SessionRecord {
	c.t.Helper()
	rec, ok := c.node(n).Cluster().SessionRecord(id)
	if !ok {
		c.t.Fatalf("%s has no session record of %s", n, id)
	}
	return rec
}

// ownRecord waits until node n's session table places id on n itself (a
// session's record is written after its CONNACK) and returns that record.
func (c *testCluster) ownRecord(n, id string) routes.SessionRecord {
	c.t.Helper()
	var rec routes.SessionRecord
	c.eventually(n+" to record its session of "+id, func() (bool, string) {
		var ok bool
		rec, ok = c.node(n).Cluster().SessionRecord(id)
		return ok && rec.Node == n, fmt.Sprintf("%+v (present %v)", rec, ok)
	})
	return rec
}

// waitOneSession waits until every node's session table places id on
// winner with the same CONNECT stamp and only winner holds a session of
// id in mochi.
func (c *testCluster) waitOneSession(id, winner string) {
	c.t.Helper()
	c.eventually("one session of "+id+" on "+winner, func() (bool, string) {
		var first routes.SessionRecord
		for i, n := range c.names {
			rec, ok := c.node(n).Cluster().SessionRecord(id)
			if !ok || rec.Node != winner || (i > 0 && rec.Connect != first.Connect) {
				return false, fmt.Sprintf("%s's table: %+v (present %v), first node's stamp %v", n, rec, ok, first.Connect)
			}
			first = rec
			_, local := mochix.Client(c.node(n).Server(), id)
			if local != (n == winner) {
				return false, fmt.Sprintf("%s holds a session of %s: %v", n, id, local)
			}
		}
		return true, ""
	})
}

// TestDuplicateClientAcrossSplit: a client id connected on n1 connects
// again on n2 while n1 is cut off from n2 and n3. At the heal exactly one
// session survives, chosen by the documented rule — the later CONNECT by
// hybrid logical clock, ties to the larger node name — whatever the
// nodes' clocks say (±5 s here): every node's table names it, the loser's
// client gets DISCONNECT 0x8E (v5) or a closed connection (v3), and the
// winner keeps working.
func TestDuplicateClientAcrossSplit(t *testing.T) {
	const s = 5 * time.Second
	skews := []struct {
		name string
		skew map[string]time.Duration
	}{
		{"n1 ahead", map[string]time.Duration{"n1": s, "n2": -s, "n3": 0}},
		{"n2 ahead", map[string]time.Duration{"n1": -s, "n2": s, "n3": 0}},
	}
	for _, sk := range skews {
		t.Run(sk.name, func(t *testing.T) {
			c := newCluster(t, 3, skewed(sk.skew))
			// The n1 session rewrites its record during the split
			// (SUBSCRIBE), with n1's clock: with n1 ahead that write
			// is stamped later than n2's CONNECT by wall clock, and a
			// latest-write rule would keep the older session.
			t.Run("later CONNECT beats a later rewrite", func(t *testing.T) {
				testDuplicateRewrite(t, c.with(t))
			})
			// Both sides CONNECT during the split: neither saw the
			// other's stamp, so the clocks order them (up to the
			// skew); every node still agrees on the rule's winner.
			t.Run("concurrent CONNECTs", func(t *testing.T) {
				testDuplicateConcurrent(t, c.with(t))
			})
			t.Run("v3", func(t *testing.T) {
				testDuplicateV3(t, c.with(t))
			})
		})
	}
}

func testDuplicateRewrite(t *testing.T, c *testCluster) {
	const id = "dup-rewrite"
	old := brokertest.MustV5(t, c.url("n1"), id)
	c.waitOneSession(id, "n1")
	before := c.record("n1", id).Connect
	c.split([]string{"n1"}, []string{"n2", "n3"})
	nw := brokertest.MustV5(t, c.url("n2"), id)
	nw.MustSub(id+"/in", 1)
	old.MustSub(id+"/old", 1) // n1 rewrites its record; the stamp stays
	c.eventually("n1 to rewrite its record", func() (bool, string) {
		rec := c.record("n1", id)
		return len(rec.Subs) == 1, fmt.Sprintf("%+v", rec)
	})
	n1, n2 := c.record("n1", id), c.ownRecord("n2", id)
	if n1.Connect != before {
		t.Errorf("n1's rewritten record is stamped %v, want its CONNECT's %v", n1.Connect, before)
	}
	if !before.Less(n2.Connect) {
		t.Fatalf("n2's CONNECT stamp %v does not follow n1's %v, which n2 had seen", n2.Connect, before)
	}
	c.heal()
	if d := old.WaitServerDisconnect(); d.ReasonCode != 0x8E {
		t.Errorf("n1's connection got DISCONNECT 0x%02x, want 0x8E session taken over", d.ReasonCode)
	}
	c.waitOneSession(id, "n2")
	if got := c.record("n3", id).Connect; got != n2.Connect {
		t.Errorf("n3's table stamps the survivor %v, want n2's CONNECT %v", got, n2.Connect)
	}
	pub := brokertest.MustV5(t, c.url("n3"), id+"-pub")
	pub.MustPub(id+"/in", 1, false, "after")
	pub.MustPub(id+"/in", 1, false, "marker")
	expectOnce(t, "surviving session", counts(untilPayload(t, nw, "marker")), []string{"after"})
	pub.Close()
	nw.Close()
	c.waitDisconnected()
}

// untilPayload returns the messages cl received before one with payload
// marker (consumed).
func untilPayload(t *testing.T, cl *brokertest.V5, marker string) []*paho.Publish {
	t.Helper()
	var got []*paho.Publish
	deadline := time.After(brokertest.Timeout)
	for {
		select {
		case m := <-cl.Msgs():
			if string(m.Payload) == marker {
				return got
			}
			got = append(got, m)
		case <-deadline:
			t.Fatalf("client %s: no %q within %v (got %d others)", cl.ClientID(), marker, brokertest.Timeout, len(got))
			return nil
		}
	}
}

func testDuplicateConcurrent(t *testing.T, c *testCluster) {
	const id = "dup-concurrent"
	first := brokertest.MustV5(t, c.url("n3"), id)
	c.waitOneSession(id, "n3")
	c.split([]string{"n1"}, []string{"n2", "n3"})
	// n3's session is taken over on n2 (same side); n1 registers its own.
	onN2 := brokertest.MustV5(t, c.url("n2"), id)
	first.WaitClosed()
	onN1 := brokertest.MustV5(t, c.url("n1"), id)
	r1, r2 := c.ownRecord("n1", id), c.ownRecord("n2", id)
	winner, loser, winCl, loseCl := "n1", "n2", onN1, onN2
	if routes.Compare(r1, r2) < 0 {
		winner, loser, winCl, loseCl = "n2", "n1", onN2, onN1
	}
	t.Logf("stamps: n1 %v, n2 %v: %s's session must survive", r1.Connect, r2.Connect, winner)
	c.heal()
	if d := loseCl.WaitServerDisconnect(); d.ReasonCode != 0x8E {
		t.Errorf("%s's connection got DISCONNECT 0x%02x, want 0x8E", loser, d.ReasonCode)
	}
	c.waitOneSession(id, winner)
	select {
	case <-winCl.Done():
		t.Errorf("the surviving connection on %s was closed", winner)
	default:
	}
	winCl.Close()
	c.waitDisconnected()
}

func testDuplicateV3(t *testing.T, c *testCluster) {
	const id = "dup-v3"
	old := brokertest.MustV3(t, c.url("n1"), id)
	c.waitOneSession(id, "n1")
	c.split([]string{"n1"}, []string{"n2", "n3"})
	nw := brokertest.MustV3(t, c.url("n2"), id)
	c.heal()
	_ = old.WaitLost() // v3 has no DISCONNECT from the server: the connection closes
	c.waitOneSession(id, "n2")
	nw.Close()
	c.waitDisconnected()
}

// TestPersistentSessionAcrossSplit: a persistent session on n1 holds
// acknowledged QoS 1 messages; n1 is cut off; its client resumes on n2
// (a new session there: session present = false) and subscribes again;
// publishers on both sides keep publishing. At the heal n1's copy loses
// and ships its queue to n2: the client receives every acknowledged
// message exactly once.
func TestPersistentSessionAcrossSplit(t *testing.T) {
	c := newCluster(t, 3, skewed(map[string]time.Duration{"n1": 3 * time.Second, "n2": -3 * time.Second}))
	const id, filter = "ps", "ps/#"
	opts := brokertest.V5Options{KeepSession: true, SessionExpiry: 300}
	sub := brokertest.MustV5(t, c.url("n1"), id, opts)
	sub.MustSub(filter, 1)
	pubA := brokertest.MustV5(t, c.url("n1"), "ps-pub-a") // n1's side
	pubB := brokertest.MustV5(t, c.url("n3"), "ps-pub-b") // the other side
	c.waitRoutes()
	pubA.MustPub("ps/live", 1, false, "live")
	if m := sub.Next(); string(m.Payload) != "live" {
		t.Fatalf("live message: got %q", m.Payload)
	}
	sub.Close()
	c.eventually("n1 to hold the disconnected session", func() (bool, string) {
		cl, ok := mochix.Client(c.node("n1").Server(), id)
		return ok && cl.Closed(), fmt.Sprintf("listed %v", ok)
	})

	var want []string
	publish := func(p *brokertest.V5, prefix string, n int) {
		for _, m := range seq(prefix, n) {
			p.MustPub("ps/"+prefix, 1, false, m) // acknowledged: must be delivered
			want = append(want, m)
		}
	}
	publish(pubA, "a-queued-", 10) // queued on n1
	publish(pubB, "b-queued-", 10) // forwarded to n1, queued there
	c.split([]string{"n1"}, []string{"n2", "n3"})
	publish(pubA, "a-split-", 10) // n1 still routes to its copy
	resumed := brokertest.MustV5(t, c.url("n2"), id, opts)
	if resumed.Connack.SessionPresent {
		t.Fatal("the session moved across the cut")
	}
	resumed.MustSub(filter, 1)
	subscribed(t, resumed)
	c.eventually("n3 to route the session to n2", func() (bool, string) {
		node, _ := c.node("n3").Cluster().SessionNode(id)
		return node == "n2", "n3 routes to " + node
	})
	publish(pubB, "b-split-", 10) // live on n2
	publish(pubA, "a-late-", 5)   // n1's copy, after the resume
	c.heal()

	c.waitOneSession(id, "n2")
	c.node("n1").WaitMetric(35, "mendmq_session_heal_messages_total", "outcome", "shipped")
	c.node("n2").WaitMetric(35, "mendmq_session_heal_messages_total", "outcome", "appended")
	pubB.MustPub("ps/end", 1, false, "end")
	got := counts(untilPayload(t, resumed, "end"))
	expectOnce(t, "resumed session", got, want)
	for _, n := range []string{"n1", "n2", "n3"} {
		if d := c.node(n).Metric("mendmq_messages_dropped_total", "reason", "session_superseded"); d != 0 {
			t.Errorf("%s dropped %v messages as superseded", n, d)
		}
	}
	if d := c.node("n2").Metric("mendmq_session_heal_messages_total", "outcome", "duplicate"); d != 0 {
		t.Errorf("n2 skipped %v shipped messages as duplicates; none was delivered twice", d)
	}
	resumed.Close()
	pubA.Close()
	pubB.Close()
	brokertest.MustV5(t, c.url("n2"), id).Close() // discard the session
	c.waitDisconnected()
}
