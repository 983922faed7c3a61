package clustertests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/cluster"
)

// Membership operations and the routes they leave behind: a node that
// stops (a shutdown) still holds its persistent sessions, one that leaves
// for good (ctl cluster leave) hands them back first and then runs alone,
// and forgetting a dead node on any node frees its routes everywhere.

// adminPost sends POST path (body may be nil) to node nd's admin API and
// returns the status code and the decoded answer.
func adminPost(t testing.TB, nd *brokertest.Node, path string, body any) (int, map[string]json.RawMessage) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	c := http.Client{Timeout: 2 * brokertest.Timeout}
	resp, err := c.Post("http://"+nd.AdminAddr()+path, "application/json", rd)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	out := map[string]json.RawMessage{}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("POST %s: answer: %v", path, err)
	}
	return resp.StatusCode, out
}

// withdrawal decodes the "withdrawal" of a leave or forget answer.
func withdrawal(t testing.TB, out map[string]json.RawMessage) cluster.Withdrawal {
	t.Helper()
	var w cluster.Withdrawal
	if err := json.Unmarshal(out["withdrawal"], &w); err != nil {
		t.Fatalf("answer %v: withdrawal: %v", out, err)
	}
	return w
}

// waitSeen waits until every node in on sees member in state.
func (c *testCluster) waitSeen(on []string, member, state string) {
	c.t.Helper()
	c.eventually(fmt.Sprintf("%v to see %s %s", on, member, state), func() (bool, string) {
		for _, n := range on {
			for _, m := range c.node(n).Cluster().Status().Members {
				if m.Name == member && m.State != state {
					return false, fmt.Sprintf("%s sees %s %s", n, member, m.State)
				}
			}
		}
		return true, ""
	})
}

// TestStoppedNodeKeepsSessions: a node shut down gracefully (SIGTERM:
// memberlist reports it left) comes back with its stored persistent
// sessions, so while it is down nothing for them may be acknowledged and
// dropped. QoS 1/2 publishes matching its session (its shared group
// included) are refused (v5 0x83, v3 disconnect) and reach nobody, QoS 0
// ones are dropped and counted; restarted, the node gets the retried
// publish into the session, and the client finds it there.
func TestStoppedNodeKeepsSessions(t *testing.T) {
	c := newCluster(t, 3, clusterOptions{Storage: true})
	const id = "sk-persistent"
	opts := brokertest.V5Options{KeepSession: true, SessionExpiry: 3600}
	ps := brokertest.MustV5(t, c.url("n3"), id, opts)
	ps.MustSub("sk/#", 1)
	ps.MustSub("$share/g/skg/#", 1)
	ps.Close()
	sub := brokertest.MustV5(t, c.url("n1"), "sk-sub")
	sub.MustSub("sk/#", 2)
	sub.MustSub("skm/#", 1)
	pub := brokertest.MustV5(t, c.url("n1"), "sk-pub")
	pub3 := brokertest.MustV3(t, c.url("n2"), "sk-pub-v3")
	c.waitRoutes()

	c.stop("n3")
	c.waitSeen(c.names, "n3", "left")

	for _, p := range []struct {
		topic string
		qos   byte
	}{{"sk/a", 1}, {"sk/a", 2}, {"skg/a", 1}} {
		if rc := pub.Pub(p.topic, p.qos, false, "refused"); rc != 0x83 {
			t.Errorf("QoS %d publish to %s matching the stopped node's session: reason 0x%02x, want 0x83", p.qos, p.topic, rc)
		}
	}
	if err := pub3.Pub("sk/v3", 1, false, "refused"); err == nil {
		t.Error("v3 QoS 1 publish matching the stopped node's session was acknowledged")
	}
	if err := pub3.WaitLost(); err == nil {
		t.Error("v3 publisher not disconnected after a refused publish")
	}
	dropped := c.node("n1").Metric("mendmq_cluster_forward_dropped_total", "reason", "peer_unreachable")
	pub.MustPub("sk/q0", 0, false, "q0")
	pub.MustPub("skm/m", 1, false, "marker")
	expectOnce(t, "subscriber on n1 while n3 is down", counts(sub.Until("skm/m")), []string{"q0"})
	if got := c.node("n1").Metric("mendmq_cluster_forward_dropped_total", "reason", "peer_unreachable"); got != dropped+1 {
		t.Errorf("QoS 0 publish for the stopped node: dropped counter %v -> %v, want +1", dropped, got)
	}

	// Back with its storage: the publisher's retries are accepted and
	// reach the session.
	c.start("n3")
	c.waitFormed()
	c.waitRoutes()
	pub.MustPub("sk/a", 1, false, "kept")
	pub.MustPub("skg/a", 1, false, "kept-shared")
	ps = brokertest.MustV5(t, c.url("n3"), id, opts)
	if !ps.Connack.SessionPresent {
		t.Fatal("session not present on the restarted node")
	}
	// After the connect: mochi resends a resumed session's queue in no
	// particular order, so a marker queued with it could overtake it.
	pub.MustPub("sk/m", 1, false, "marker")
	expectOnce(t, "session on the restarted node", counts(ps.Until("sk/m")), []string{"kept", "kept-shared"})
	ps.Close()
	brokertest.MustV5(t, c.url("n3"), id).Close() // discard the session
}

// TestLeaveWithdrawsSessions: `ctl cluster leave` on n3 first deletes
// n3's session records everywhere (peers have applied that when the call
// returns, so they accept publishes its sessions matched at once), then
// n3 leaves and runs as a standalone node: it lists only itself, serves
// its own clients, sends nothing to its former peers, replicates nothing
// to them, and refuses to join again before a restart.
func TestLeaveWithdrawsSessions(t *testing.T) {
	c := newCluster(t, 3, clusterOptions{})
	ps := brokertest.MustV5(t, c.url("n3"), "lv-persistent", brokertest.V5Options{KeepSession: true, SessionExpiry: 3600})
	ps.MustSub("lv/#", 1)
	ps.Close()
	subs := map[string]*brokertest.V5{}
	pubs := map[string]*brokertest.V5{}
	for _, n := range c.names {
		subs[n] = brokertest.MustV5(t, c.url(n), "lv-sub-"+n)
		subs[n].MustSub("lv/#", 1)
		subs[n].MustSub("lvm/#", 1)
		pubs[n] = brokertest.MustV5(t, c.url(n), "lv-pub-"+n)
	}
	c.waitRoutes()
	n3ids := []string{"lv-persistent", "lv-sub-n3", "lv-pub-n3"}
	// waitRoutes counts subscriptions: the record of the publisher,
	// which has none, may still be on its way.
	c.eventually("n3's session records everywhere", func() (bool, string) {
		for _, n := range c.names {
			for _, id := range n3ids {
				if node, _ := c.node(n).Cluster().SessionNode(id); node != "n3" {
					return false, fmt.Sprintf("%s places %s on %q", n, id, node)
				}
			}
		}
		return true, ""
	})

	leaver := c.node("n3")
	code, out := adminPost(t, leaver, "/api/v1/cluster/leave", nil)
	if code != http.StatusOK {
		t.Fatalf("leave: %d %v", code, out)
	}
	if w := withdrawal(t, out); w.Node != "n3" || w.Sessions != len(n3ids) || len(w.Unconfirmed) > 0 {
		t.Errorf("leave withdrew %+v, want %d sessions of n3, all confirmed", w, len(n3ids))
	}
	c.forget("n3")
	// Confirmed: no waiting for replication.
	for _, n := range c.names {
		for _, id := range n3ids {
			if node, ok := c.node(n).Cluster().SessionNode(id); ok {
				t.Errorf("%s still places %s on %s after the leave returned", n, id, node)
			}
		}
	}
	pubs["n1"].MustPub("lv/a", 1, false, "a") // n3's persistent session matched it
	pubs["n1"].MustPub("lvm/m", 1, false, "marker")
	for _, n := range c.names {
		expectOnce(t, "n1 -> "+n+" after n3 left", counts(subs[n].Until("lvm/m")), []string{"a"})
	}
	c.waitSeen(c.names, "n3", "left")

	// Standalone: its view is itself, its clients are served locally and
	// nothing goes to or comes from the former peers.
	st := leaver.Cluster().Status()
	if len(st.Members) != 1 || !st.Members[0].Self || st.Members[0].State != "left" {
		t.Errorf("n3's members after leaving: %+v, want itself alone, left", st.Members)
	}
	for node, k := range st.Subscriptions {
		if node != "n3" && k > 0 {
			t.Errorf("n3 still routes %d subscriptions to %s", k, node)
		}
	}
	sent := leaver.Metric("mendmq_cluster_replication_deltas_total", "direction", "sent")
	fwd := leaver.Metric("mendmq_cluster_forwarded_messages_total")
	subs["n3"].MustSub("lv2/#", 1) // a record written locally only
	c.eventually("n3 to record its new subscription", func() (bool, string) {
		k := leaver.Cluster().Status().Subscriptions["n3"]
		return k == 3, fmt.Sprintf("n3 routes %d subscriptions of its own, want lv-sub-n3's 3", k)
	})
	pubs["n3"].MustPub("lv/b", 1, false, "b")
	pubs["n3"].MustPub("lvm/m", 1, false, "marker")
	// Also shows that n1's "a" never reached n3.
	expectOnce(t, "n3 -> n3 standalone", counts(subs["n3"].Until("lvm/m")), []string{"b"})
	if got := leaver.Metric("mendmq_cluster_replication_deltas_total", "direction", "sent"); got != sent {
		t.Errorf("n3 sent %v replication deltas after it left", got-sent)
	}
	if got := leaver.Metric("mendmq_cluster_forwarded_messages_total"); got != fwd {
		t.Errorf("n3 forwarded %v publishes after it left", got-fwd)
	}
	pubs["n1"].MustPub("lv/c", 1, false, "c")
	pubs["n1"].MustPub("lvm/m", 1, false, "marker")
	for _, n := range c.names {
		expectOnce(t, "n1 -> "+n+" without n3", counts(subs[n].Until("lvm/m")), []string{"c"})
	}
	for _, n := range c.names {
		if _, ok := c.node(n).Cluster().SessionNode("lv-sub-n3"); ok {
			t.Errorf("%s learned of a subscription made on n3 after it left", n)
		}
	}

	code, out = adminPost(t, leaver, "/api/v1/cluster/join", map[string]any{"seeds": []string{c.gossipAddr("n1")}})
	if code != http.StatusConflict || !strings.Contains(string(out["error"]), "left the cluster") {
		t.Errorf("join after leave: %d %s, want 409 (left the cluster)", code, out["error"])
	}
	if code, out = adminPost(t, leaver, "/api/v1/cluster/leave", nil); code != http.StatusConflict {
		t.Errorf("second leave: %d %s, want 409", code, out["error"])
	}
}

// TestForgetDeletesEverywhere: n3 crashes holding a persistent session,
// so QoS 1 publishes it matched are refused. `ctl cluster forget n3` run
// on n2 (not the first node by name, which used to be the only one to
// delete a forgotten node's records) deletes n3's session records on
// every node before it returns: the publish is accepted on every node at
// once and routed to n3 nowhere.
func TestForgetDeletesEverywhere(t *testing.T) {
	c := newCluster(t, 3, clusterOptions{Faults: true})
	const id = "fg-persistent"
	ps := brokertest.MustV5(t, c.url("n3"), id, brokertest.V5Options{KeepSession: true, SessionExpiry: 3600})
	ps.MustSub("fg/#", 1)
	ps.Close()
	subs := map[string]*brokertest.V5{}
	pubs := map[string]*brokertest.V5{}
	for _, n := range []string{"n1", "n2"} {
		subs[n] = brokertest.MustV5(t, c.url(n), "fg-sub-"+n)
		subs[n].MustSub("fg/#", 1)
		pubs[n] = brokertest.MustV5(t, c.url(n), "fg-pub-"+n)
	}
	c.waitRoutes()

	crash(t, c, "n3")
	if rc := pubs["n1"].Pub("fg/x", 1, false, "refused"); rc != 0x83 {
		t.Fatalf("QoS 1 publish matching the crashed node's session: reason 0x%02x, want 0x83", rc)
	}

	for _, tc := range []struct {
		name string
		code int
	}{{"n1", http.StatusConflict}, {"nobody", http.StatusNotFound}, {"n2", http.StatusBadRequest}} {
		if code, out := adminPost(t, c.node("n2"), "/api/v1/cluster/forget/"+tc.name, nil); code != tc.code {
			t.Errorf("forget %s on n2: %d %s, want %d", tc.name, code, out["error"], tc.code)
		}
	}
	refused := map[string]float64{}
	for _, n := range c.names {
		refused[n] = c.node(n).Metric("mendmq_cluster_forward_refused_total")
	}
	code, out := adminPost(t, c.node("n2"), "/api/v1/cluster/forget/n3", nil)
	if code != http.StatusOK {
		t.Fatalf("forget n3 on n2: %d %v", code, out)
	}
	if w := withdrawal(t, out); w.Node != "n3" || w.Sessions != 1 || len(w.Unconfirmed) > 0 {
		t.Errorf("forget withdrew %+v, want the 1 session of n3, confirmed", w)
	}
	// The forgotten member no longer splits anyone's view.
	for _, n := range c.names {
		c.waitGated(n, false)
	}
	for _, n := range c.names {
		nd := c.node(n)
		if node, ok := nd.Cluster().SessionNode(id); ok {
			t.Errorf("%s still places %s on %s after the forget returned", n, id, node)
		}
		if k := nd.Cluster().Status().Subscriptions["n3"]; k != 0 {
			t.Errorf("%s still routes %d subscriptions to n3", n, k)
		}
		pubs[n].MustPub("fg/"+n, 1, false, "from-"+n)
		pubs[n].MustPub("fg/m", 1, false, "marker")
		for _, to := range c.names {
			expectOnce(t, n+" -> "+to+" after the forget", counts(subs[to].Until("fg/m")), []string{"from-" + n})
		}
		if got := nd.Metric("mendmq_cluster_forward_refused_total"); got != refused[n] {
			t.Errorf("%s refused %v publishes after the forget", n, got-refused[n])
		}
	}
	// Forgetting is this node's membership view; the deletes are everyone's.
	if slices.ContainsFunc(c.node("n2").Cluster().Status().Members, func(m cluster.MemberStatus) bool { return m.Name == "n3" }) {
		t.Error("n2 still lists n3 after forgetting it")
	}
}

// TestGossipGarbage: packets and streams that are not gossip (or not
// encrypted with the cluster's key) sent to a node's gossip port are
// refused and counted (mendmq_cluster_gossip_bad_packets_total), and the
// node stays a working member.
func TestGossipGarbage(t *testing.T) {
	c := newCluster(t, 2, clusterOptions{})
	target := c.node("n2")
	addr := c.gossipAddr("n2")
	const packets, streams = 20, 5
	u, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	for i := range packets {
		if _, err := fmt.Fprintf(u, "garbage packet %d from an outsider", i); err != nil {
			t.Fatal(err)
		}
	}
	for range streams {
		tc, err := net.DialTimeout("tcp", addr, brokertest.Timeout)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = tc.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
		_ = tc.SetReadDeadline(time.Now().Add(brokertest.Timeout))
		_, _ = io.Copy(io.Discard, tc) // until memberlist closes it
		_ = tc.Close()
	}
	c.eventually("the garbage to be counted", func() (bool, string) {
		got := target.Metric("mendmq_cluster_gossip_bad_packets_total")
		return got >= packets+streams, fmt.Sprintf("counted %v of %d", got, packets+streams)
	})
	c.waitFormed()
	sub := brokertest.MustV5(t, c.url("n2"), "gg-sub")
	sub.MustSub("gg/#", 1)
	c.waitRoutes()
	brokertest.MustV5(t, c.url("n1"), "gg-pub").MustPub("gg/x", 1, false, "still a member")
	if m := sub.Next(); string(m.Payload) != "still a member" {
		t.Errorf("subscriber on n2 got %q", m.Payload)
	}
}
