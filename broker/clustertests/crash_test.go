package clustertests

import (
	"fmt"
	"testing"

	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/broker/config"
)

// TestCrashRestart: in a 5-node cluster, n5 crashes (cut off from every
// peer, then stopped: its graceful leave reaches nobody, so the others
// see it fail, not leave).
//
//   - While it is down, the survivors are in a netsplit and refuse
//     publishes (VerneMQ's default); once allow_publish_during_netsplit
//     is reloaded they route among themselves, and a QoS 2 publish
//     matching its stale subscription reaches the survivors and is held
//     for it.
//   - Restarted under the same name on new ports, it re-syncs (session
//     and retained tables, retained messages set while it was down),
//     its pre-crash session record is dropped, and routing to and from
//     it works again.
//   - Then n4 stops gracefully (a shutdown: memberlist reports it left)
//     while hosting a disconnected persistent session. The node will come
//     back with that session, so its record stays and a node that is not
//     alive is unreachable however it went: a QoS 1 publish matching it
//     is refused (v5 0x83) and delivered nowhere, a QoS 0 one reaches the
//     others and is counted dropped for n4 (TestStoppedNodeKeepsSessions
//     restarts such a node and checks that nothing acknowledged is lost).
func TestCrashRestart(t *testing.T) {
	c := newCluster(t, 5, clusterOptions{Faults: true})
	const victim = "n5"
	survivors := []string{"n1", "n2", "n3", "n4"}
	subs := map[string]*brokertest.V5{}
	pubs := map[string]*brokertest.V5{}
	for _, n := range c.names {
		s := brokertest.MustV5(t, c.url(n), "cr-sub-"+n)
		s.MustSub("cr/#", 1)
		if n != victim {
			s.MustSub("surv/#", 1)
		}
		subs[n] = s
		pubs[n] = brokertest.MustV5(t, c.url(n), "cr-pub-"+n)
	}
	pubs["n1"].MustPub("crr/before", 1, true, "before")
	c.waitRetained("crr/before", "before")
	c.waitRoutes()

	crash(t, c, victim)

	// n5 is dead but not removed: the survivors are in a netsplit and,
	// by default, refuse publishes (QoS 2: PUBREC 0x80).
	if rc := pubs["n1"].Pub("cr/x", 2, false, "refused"); rc != 0x80 {
		t.Errorf("QoS 2 publish while in a netsplit: reason 0x%02x, want 0x80", rc)
	}
	// The operator allows publishing during the netsplit (a reload).
	for _, n := range survivors {
		c.reconfigure(n, func(cfg *config.Config) { cfg.Cluster.AllowPublishDuringNetsplit = true })
	}
	// Now a QoS 2 publish matching the crashed node's subscriber is
	// accepted: delivered to the survivors, held for n5. A QoS 0 one is
	// delivered to the survivors. Then a marker.
	pubs["n1"].MustPub("cr/x", 2, false, "held")
	pubs["n1"].MustPub("cr/x", 0, false, "qos0")
	pubs["n1"].MustPub("surv/m", 1, false, "marker")
	for _, n := range survivors {
		expectOnce(t, "survivor "+n+" while "+victim+" is down", counts(subs[n].Until("surv/m")), []string{"held", "qos0"})
	}
	// Every survivor reaches every other one.
	for _, from := range survivors {
		pubs[from].MustPub("surv/"+from, 1, false, "from-"+from)
		pubs[from].MustPub("surv/m", 1, false, "marker")
		for _, to := range survivors {
			expectOnce(t, from+" -> "+to, counts(subs[to].Until("surv/m")), []string{"from-" + from})
		}
	}
	pubs["n2"].MustPub("crr/during", 1, true, "during")
	c.waitRetained("crr/during", "during")

	// Restart under the same name, new ports.
	c.net.Heal()
	restarted := c.start(victim)
	c.waitFormed()
	c.waitTables()
	c.waitRetained("crr/before", "before")
	c.waitRetained("crr/during", "during")
	c.waitRoutes() // the pre-crash record of cr-sub-n5 is gone
	// What n1 held for n5 went to n5, whose pre-crash subscriber is gone
	// with its clean session (so nobody gets it), before anyone
	// subscribes there again.
	c.waitDrained()
	if st := restarted.Cluster().Status(); st.Subscriptions[victim] != 0 {
		t.Errorf("restarted %s still routes %d subscriptions to itself from before the crash", victim, st.Subscriptions[victim])
	}

	s := brokertest.MustV5(t, c.url(victim), "cr-sub-"+victim+"-new")
	s.MustSub("cr/#", 1)
	subs[victim] = s
	pubs[victim] = brokertest.MustV5(t, c.url(victim), "cr-pub-"+victim+"-new")
	c.waitRoutes()
	for _, from := range []string{"n1", victim} {
		pubs[from].MustPub("cr/"+from, 2, false, "after-"+from)
		pubs[from].MustPub("cr/m", 1, false, "marker")
		for _, to := range c.names {
			expectOnce(t, "after restart "+from+" -> "+to, counts(subs[to].Until("cr/m")), []string{"after-" + from})
		}
	}

	// Graceful leave of a node hosting a persistent session.
	const leaver = "n4"
	ps := brokertest.MustV5(t, c.url(leaver), "cr-persistent", brokertest.V5Options{KeepSession: true, SessionExpiry: 300})
	ps.MustSub("cr/#", 1)
	ps.Close()
	// Markers on a topic the persistent session does not match: a QoS 1
	// publish it matches is refused while n4 is down.
	for _, n := range c.names {
		subs[n].MustSub("crm/#", 1)
	}
	c.waitRoutes()
	c.stop(leaver)
	// Only the publishing node's view decides how it routes.
	c.eventually("n1 to see "+leaver+" as left", func() (bool, string) {
		for _, m := range c.node("n1").Cluster().Status().Members {
			if m.Name == leaver && m.State != "left" {
				return false, fmt.Sprintf("n1 sees %s %s", leaver, m.State)
			}
		}
		return true, ""
	})
	dropped := c.node("n1").Metric("mendmq_cluster_forward_dropped_total", "reason", "peer_unreachable")
	if rc := pubs["n1"].Pub("cr/left", 1, false, "refused"); rc != 0x83 {
		t.Errorf("QoS 1 publish matching a stopped node's persistent session: reason 0x%02x, want 0x83", rc)
	}
	pubs["n1"].MustPub("cr/left", 0, false, "qos0")
	pubs["n1"].MustPub("crm/m", 1, false, "marker")
	for _, to := range c.names {
		expectOnce(t, "after "+leaver+" stopped -> "+to, counts(subs[to].Until("crm/m")), []string{"qos0"})
	}
	if got := c.node("n1").Metric("mendmq_cluster_forward_dropped_total", "reason", "peer_unreachable"); got != dropped+1 {
		t.Errorf("QoS 0 publishes dropped for the stopped %s: counter went %v -> %v, want +1", leaver, dropped, got)
	}
}
