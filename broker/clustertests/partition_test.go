package clustertests

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/broker/config"
	"github.com/mendmq/mendmq/broker/mochix"
	"github.com/mendmq/mendmq/cluster/registry"
)

// Partitions at awkward moments (issue 15, tests §1): during a join,
// during a session takeover, in the middle of an anti-entropy exchange,
// and while a node restarts. Each test checks the heal's contract with
// checkHealed — no node split or gated, the replicated tables identical
// everywhere, one session per client id — and that every QoS 1/2 publish
// acknowledged with success reached every subscriber subscribed before
// it (after the heal at the latest). A panic anywhere fails the run.
//
// Cuts at a precise protocol step use a tripwire: every node's
// cluster.Config.Receive reports the data-plane messages it receives, and
// the armed tripwire cuts links when the chosen one arrives (and drops
// it, as lost in the cut).

// tripwire cuts links when a node receives a chosen data-plane message.
type tripwire struct {
	mu    sync.Mutex
	match func(node, from string, typ uint8, call bool) bool
	cut   func()
	fired chan string
}

var errTripped = errors.New("clustertests: message lost in a cut")

// arm sets the message to wait for and the cut to make; the returned
// channel receives a description of the message that tripped it.
func (w *tripwire) arm(match func(node, from string, typ uint8, call bool) bool, cut func()) <-chan string {
	w.mu.Lock()
	defer w.mu.Unlock()
	ch := make(chan string, 1)
	w.match, w.cut, w.fired = match, cut, ch
	return ch
}

// disarm cancels an armed tripwire that did not fire.
func (w *tripwire) disarm() {
	w.mu.Lock()
	w.match = nil
	w.mu.Unlock()
}

// receive is node's cluster.Config.Receive.
func (w *tripwire) receive(node string) func(from string, typ uint8, call bool) error {
	return func(from string, typ uint8, call bool) error {
		w.mu.Lock()
		if w.match == nil || !w.match(node, from, typ, call) {
			w.mu.Unlock()
			return nil
		}
		cut, fired := w.cut, w.fired
		w.match = nil
		w.mu.Unlock()
		cut()
		fired <- fmt.Sprintf("%s received message type %d (call %v) from %s", node, typ, call, from)
		return errTripped
	}
}

// waitFired waits for an armed tripwire.
func waitFired(t testing.TB, fired <-chan string) string {
	t.Helper()
	select {
	case what := <-fired:
		t.Logf("tripwire: %s", what)
		return what
	case <-time.After(settleTimeout):
		t.Fatalf("the tripwire did not fire within %v", settleTimeout)
		return ""
	}
}

// partitionOptions: the fault-injecting network, every
// allow_*_during_netsplit switch on (both sides keep serving, so there is
// something to heal), the tripwire on every node, and storage if asked.
func partitionOptions(w *tripwire, storage bool) clusterOptions {
	return clusterOptions{Faults: true, Storage: storage, Mutate: func(name string, cfg *config.Config) {
		cfg.Cluster.AllowRegisterDuringNetsplit = true
		cfg.Cluster.AllowPublishDuringNetsplit = true
		cfg.Cluster.AllowSubscribeDuringNetsplit = true
		cfg.Cluster.AllowUnsubscribeDuringNetsplit = true
		if w != nil {
			cfg.Cluster.Receive = w.receive(name)
		}
	}}
}

// retainedAll returns node nd's retained messages outside $SYS, topic ->
// payload.
func retainedAll(nd *brokertest.Node) map[string]string {
	out := map[string]string{}
	for _, topic := range mochix.RetainedTopics(nd.Server()) {
		if strings.HasPrefix(topic, "$SYS") {
			continue
		}
		if p, ok := retainedPayload(nd, topic); ok {
			out[topic] = p
		}
	}
	return out
}

// sessionsHeld returns the client ids node nd holds a session for:
// connected clients and disconnected persistent sessions (not clean
// sessions being torn down, nor the cluster's own clients).
func sessionsHeld(nd *brokertest.Node) []string {
	var out []string
	for id, cl := range mochix.Clients(nd.Server()) {
		if strings.HasPrefix(id, "$cluster-injector-") || id == mqtt.InlineClientId {
			continue
		}
		if cl.Closed() && mochix.Ephemeral(cl) {
			continue
		}
		out = append(out, id)
	}
	return out
}

// checkHealed waits until the heal's contract holds on every running
// node: no netsplit and no gate; the replicated tables identical
// (fingerprints of every table equal, no conflict waiting for the merge
// policy); the same retained messages in every node's MQTT server, as
// many as the table holds; and every client id held by exactly one node,
// the one every node's session table names.
func (c *testCluster) checkHealed() {
	c.t.Helper()
	start := time.Now()
	// The bound: a session handed off across the cut keeps its shadow on
	// the old node for the handoff's pending and grace periods (about 4 x
	// cluster.forward_timeout, 12 s here) before one node holds it.
	const bound = 30 * time.Second
	if d, ok := pollFor(bound, func() (bool, string) {
		var fp0 map[string]uint64
		var ret0 map[string]string
		holders := map[string][]string{}
		for i, n := range c.names {
			nd := c.node(n)
			cl := nd.Cluster()
			if cl.Split() || cl.Gated() {
				return false, fmt.Sprintf("%s: split %v gated %v: %+v", n, cl.Split(), cl.Gated(), cl.Netsplit().Unreachable)
			}
			fp, pending := cl.Tables()
			if pending > 0 {
				return false, fmt.Sprintf("%s: %d conflicts pending", n, pending)
			}
			ret := retainedAll(nd)
			if st := cl.Status(); st.Retained != len(ret) {
				return false, fmt.Sprintf("%s: the table holds %d retained messages, MQTT %d", n, st.Retained, len(ret))
			}
			if i == 0 {
				fp0, ret0 = fp, ret
			} else if !maps.Equal(fp, fp0) {
				return false, fmt.Sprintf("table fingerprints differ: %s %v, %s %v", c.names[0], fp0, n, fp)
			} else if !maps.Equal(ret, ret0) {
				return false, fmt.Sprintf("retained messages differ: %s has %d, %s %d", c.names[0], len(ret0), n, len(ret))
			}
			for _, id := range sessionsHeld(nd) {
				holders[id] = append(holders[id], n)
			}
		}
		for id, hs := range holders {
			if len(hs) != 1 {
				return false, fmt.Sprintf("client %s has a session on %v", id, hs)
			}
			for _, n := range c.names {
				if rec, ok := c.node(n).Cluster().SessionRecord(id); !ok || rec.Node != hs[0] {
					return false, fmt.Sprintf("%s's table places %s on %q (present %v), its session is on %s", n, id, rec.Node, ok, hs[0])
				}
			}
		}
		return true, ""
	}); !ok {
		c.t.Fatalf("the heal's contract does not hold %v after the heal: %s", bound, d)
	}
	c.t.Logf("heal's contract holds (%v after the check began)", time.Since(start).Round(time.Millisecond))
}

// ackWorkload is a subscriber of prefix/# on each of some nodes,
// subscribed before anything is cut, and publishers that record which
// QoS 1 publishes were acknowledged with success: each of those must
// reach every subscriber.
type ackWorkload struct {
	t      testing.TB
	c      *testCluster
	prefix string
	opts   brokertest.V5Options
	subs   map[string]*brokertest.V5
	got    map[string]map[string]int // node -> payload -> times, from earlier connections
	pubs   map[string]*brokertest.V5
	acked  []string
	seq    int
}

// newWorkload subscribes a client on each of nodes (persistent sessions
// if persistent) and waits until every node routes to them.
func newWorkload(t testing.TB, c *testCluster, prefix string, persistent bool, nodes ...string) *ackWorkload {
	t.Helper()
	w := &ackWorkload{t: t, c: c, prefix: prefix, subs: map[string]*brokertest.V5{}, got: map[string]map[string]int{},
		pubs: map[string]*brokertest.V5{}}
	if persistent {
		w.opts = brokertest.V5Options{KeepSession: true, SessionExpiry: 300}
	}
	for _, n := range nodes {
		w.subs[n] = brokertest.MustV5(t, c.url(n), w.subID(n), w.opts)
		w.subs[n].MustSub(prefix+"/#", 1)
		w.got[n] = map[string]int{}
		// Publishers connect now: a CONNECT in the window before a cut
		// is detected may be refused (0x88) if the client id's leader
		// is across it.
		w.pubs[n] = brokertest.MustV5(t, c.url(n), w.pubID(n))
	}
	c.waitRoutes()
	return w
}

func (w *ackWorkload) subID(n string) string { return w.prefix + "-sub-" + n }
func (w *ackWorkload) pubID(n string) string { return w.prefix + "-pub-" + n }

// publish sends k QoS 1 messages from a client on node from and records
// the acknowledged ones; it returns how many were refused.
func (w *ackWorkload) publish(from string, k int) (refused int) {
	w.t.Helper()
	p := w.pubs[from]
	if p == nil {
		p = brokertest.MustV5(w.t, w.c.url(from), w.pubID(from))
		w.pubs[from] = p
	}
	for range k {
		w.seq++
		payload := fmt.Sprintf("%s-%s-%d", w.prefix, from, w.seq)
		if rc := p.Pub(w.prefix+"/"+from, 1, false, payload); rc < 0x80 {
			w.acked = append(w.acked, payload)
		} else {
			refused++
		}
	}
	return refused
}

// drain moves what node n's subscriber received so far into w.got.
func (w *ackWorkload) drain(n string) {
	for {
		select {
		case m := <-w.subs[n].Msgs():
			w.got[n][string(m.Payload)]++
		default:
			return
		}
	}
}

// reconnect resumes node n's subscriber and reconnects its publisher
// (after the node restarted).
func (w *ackWorkload) reconnect(n string) {
	w.t.Helper()
	if p := w.pubs[n]; p != nil {
		p.Close()
		w.pubs[n] = brokertest.MustV5(w.t, w.c.url(n), w.pubID(n))
	}
	w.drain(n)
	w.subs[n].Close()
	w.subs[n] = brokertest.MustV5(w.t, w.c.url(n), w.subID(n), w.opts)
	if !w.subs[n].Connack.SessionPresent {
		w.t.Fatalf("subscriber on %s: its persistent session did not survive", n)
	}
}

// verify waits until every subscriber has received every acknowledged
// publish, reports the missing ones, and closes the clients.
func (w *ackWorkload) verify() {
	w.t.Helper()
	for n, s := range w.subs {
		w.drain(n)
		missing := func() []string {
			var out []string
			for _, p := range w.acked {
				if w.got[n][p] == 0 {
					out = append(out, p)
				}
			}
			return out
		}
		deadline := time.After(settleTimeout)
	wait:
		for len(missing()) > 0 {
			select {
			case m := <-s.Msgs():
				w.got[n][string(m.Payload)]++
			case <-deadline:
				break wait
			}
		}
		if miss := missing(); len(miss) > 0 {
			w.t.Errorf("subscriber on %s: %d of %d acknowledged publishes never arrived: %v", n, len(miss), len(w.acked), miss[:min(len(miss), 20)])
		}
	}
	w.t.Logf("%s: %d acknowledged publishes reached %d subscribers", w.prefix, len(w.acked), len(w.subs))
	w.close()
}

func (w *ackWorkload) close() {
	for _, cl := range w.pubs {
		cl.Close()
	}
	for _, cl := range w.subs {
		cl.Close()
	}
	if w.opts.KeepSession {
		for n := range w.subs {
			brokertest.MustV5(w.t, w.c.url(n), w.subID(n)).Close() // discard the session
		}
	}
}

// logCounters logs every node's metric series whose names start with
// one of prefixes (to tell where a message went).
func (c *testCluster) logCounters(prefixes ...string) {
	for _, n := range c.names {
		_, body := c.node(n).Get("/metrics")
		var lines []string
		for _, l := range strings.Split(body, "\n") {
			for _, p := range prefixes {
				if strings.HasPrefix(l, p) {
					lines = append(lines, l)
				}
			}
		}
		c.t.Logf("%s: %s", n, strings.Join(lines, "; "))
	}
}

// others returns the running members of c but the listed ones.
func (c *testCluster) others(names ...string) []string {
	return slices.DeleteFunc(slices.Clone(c.names), func(n string) bool { return slices.Contains(names, n) })
}

// TestPartitionDuringJoin: a node joins one side of a split — it learns
// that side's tables and the far side's members as failed (so it is in
// the netsplit too and holds publishes for the far side's subscribers),
// and is one cluster with everyone after the heal; and a node is cut off
// from everyone in the middle of its join's table sync (after 400 kB of
// the 5000 retained messages, over 0.5 MB, it must receive).
func TestPartitionDuringJoin(t *testing.T) {
	t.Run("joins one side of a split", func(t *testing.T) {
		c := newCluster(t, 3, partitionOptions(nil, false))
		wl := newWorkload(t, c, "pj", false, "n1", "n2", "n3")
		c.net.Partition([]string{"n1", "n2", "n4"}, []string{"n3"}) // n4 is not started yet
		c.split([]string{"n1", "n2"}, []string{"n3"})
		ret := brokertest.MustV5(t, c.url("n3"), "pj-ret-b")
		ret.MustPub("pj-ret/b", 1, true, "b")
		ret.Close()
		ret = brokertest.MustV5(t, c.url("n1"), "pj-ret-a")
		ret.MustPub("pj-ret/a", 1, true, "a")
		ret.Close()
		wl.publish("n1", 10)
		wl.publish("n3", 10)
		n4 := c.start("n4") // seeded with n1
		c.eventually("n4 to join n1's side and be in the netsplit", func() (bool, string) {
			alive, unreachable := 0, []string(nil)
			for _, m := range n4.Cluster().Status().Members {
				if m.State == "alive" && (m.Self || m.Reachable) {
					alive++
				}
			}
			for _, u := range n4.Cluster().Netsplit().Unreachable {
				unreachable = append(unreachable, u.Name)
			}
			got, _ := retainedPayload(n4, "pj-ret/a")
			return alive == 3 && got == "a" && slices.Equal(unreachable, []string{"n3"}),
				fmt.Sprintf("%d alive, retained %q, unreachable %v", alive, got, unreachable)
		})
		if got, ok := retainedPayload(n4, "pj-ret/b"); ok {
			t.Errorf("n4 holds the other side's retained message %q before the heal", got)
		}
		// n4 knows n3's subscriber from n1's tables: its publishes are
		// held for n3.
		if refused := wl.publish("n4", 10); refused > 0 {
			t.Errorf("n4 refused %d publishes during the split", refused)
		}
		c.heal()
		c.checkHealed()
		c.waitRetained("pj-ret/a", "a")
		c.waitRetained("pj-ret/b", "b")
		wl.verify()
	})
	t.Run("cut off in the middle of its sync", func(t *testing.T) {
		c := newCluster(t, 3, partitionOptions(nil, false))
		const total = 5000
		loadRetained(t, c, "n1", "pjl", total)
		c.waitTables()
		wl := newWorkload(t, c, "pjs", false, c.names...)
		c.net.CutAfter("n4", 400_000, func() { c.net.Isolate("n4") })
		n4 := c.start("n4")
		c.eventually("n4 to be cut off", func() (bool, string) {
			return !c.net.Linked("n4", "n1"), "n4 still linked"
		})
		c.eventually("n4 to see the split", func() (bool, string) { return n4.Cluster().Split(), "not split" })
		got := n4.Cluster().Status().Retained
		t.Logf("n4 holds %d of %d retained messages while cut off", got, total)
		if got >= total {
			t.Fatalf("n4 had all %d retained messages before the cut: the cut came after the sync", total)
		}
		wl.publish("n1", 10)
		c.heal()
		c.checkHealed()
		if got := retainedCount(n4); got != total {
			t.Errorf("n4 holds %d retained messages after the heal, want %d", got, total)
		}
		wl.verify()
	})
}

// loadRetained sets k retained messages prefix/0..k-1 (payloads of 100
// bytes) from a client on node n: QoS 0 but the last, whose PUBACK means
// all were retained (the broker handles one client's publishes in order).
func loadRetained(t testing.TB, c *testCluster, n, prefix string, k int) {
	t.Helper()
	pub := brokertest.MustV5(t, c.url(n), prefix+"-loader")
	for i := range k {
		qos := byte(0)
		if i == k-1 {
			qos = 1
		}
		if rc := pub.Pub(fmt.Sprintf("%s/%d", prefix, i), qos, true, fmt.Sprintf("%-100d", i)); rc != 0 {
			t.Fatalf("retain %s/%d: reason 0x%02x", prefix, i, rc)
		}
	}
	pub.Close()
}

// TestPartitionDuringTakeover: a persistent session on n1, connected and
// receiving a stream of QoS 2 publishes from every node, is taken over
// by a CONNECT on n2 while the n1-n2 link breaks (n3 still reaches both):
//
//   - "finish lost": the link breaks when n2's FinishTakeover reaches n1
//     (the call is lost), after n1 exported the session;
//   - "cut after CONNACK": the link breaks right after the client's
//     CONNACK on n2, while what n1 caught meanwhile may still be on its
//     way;
//   - "cut before": the link is broken before the CONNECT.
//
// A client that is refused reconnects, as clients do. After the heal one
// session of the client id remains, and every publish acknowledged with
// success reached the old connection or the new one.
func TestPartitionDuringTakeover(t *testing.T) {
	var w tripwire
	c := newCluster(t, 3, partitionOptions(&w, false))
	for _, tc := range []struct {
		name string
		move func(c *testCluster, connect func())
	}{
		{"finish lost", func(c *testCluster, connect func()) {
			fired := w.arm(func(node, from string, typ uint8, call bool) bool {
				return node == "n1" && from == "n2" && typ == registry.CallHandoff
			}, func() { c.net.Cut("n1", "n2") })
			connect()
			// The cut runs on n1's reader; the CONNACK on n2 may come
			// first.
			select {
			case what := <-fired:
				c.t.Logf("tripwire: %s", what)
			case <-time.After(brokertest.Timeout):
				w.disarm()
				c.t.Errorf("the takeover finished without FinishTakeover reaching n1")
			}
		}},
		{"cut after CONNACK", func(c *testCluster, connect func()) {
			connect()
			c.net.Cut("n1", "n2")
		}},
		{"cut before", func(c *testCluster, connect func()) {
			c.net.Cut("n1", "n2")
			c.eventually("n1 and n2 to see the broken link", func() (bool, string) {
				return c.node("n1").Cluster().Split() && c.node("n2").Cluster().Split(), "not yet"
			})
			connect()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := c.with(t)
			id := "tk-" + strings.ReplaceAll(tc.name, " ", "-")
			prefix := id
			old := dialRawSession(t, c.node("n1").ListenerAddr(0), id, prefix+"/#")
			c.waitRoutes()
			var nw *brokertest.V5
			want := streamDuringMove(t, c, prefix, 40, 120, func() {
				tc.move(c, func() { nw = reconnectV5(t, c.url("n2"), id) })
			})
			c.heal()
			c.checkHealed()
			c.waitDrained()
			select {
			case <-old.done:
			case <-time.After(brokertest.Timeout):
				t.Fatal("the old connection was not closed")
			}
			if old.err != nil {
				t.Errorf("old raw connection: %v", old.err)
			}
			oldGot := map[string]int{}
			for _, p := range old.received() {
				oldGot[p]++
			}
			t.Cleanup(func() {
				if t.Failed() {
					c.logCounters("mendmq_messages_dropped_total", "mendmq_cluster_held_total", "mendmq_session_heal_messages_total", "mendmq_cluster_forward", "mendmq_session")
				}
			})
			expectHandedOver(t, c, prefix, want, oldGot, nw)
			for _, n := range c.names {
				if d := c.node(n).Metric("mendmq_messages_dropped_total", "reason", "handoff_failed"); d != 0 {
					t.Errorf("%s dropped %v messages of the moved session (reason handoff_failed)", n, d)
				}
			}
			nw.Close()
			brokertest.MustV5(t, c.url("n2"), id).Close() // discard the session
		})
		// The scenario's clients are closed at the end of the subtest:
		// let the brokers notice before the next one.
		c.waitDisconnected()
		c.waitRoutes()
	}
}

// reconnectV5 connects a persistent session of id at url, retrying a
// refused CONNECT (a netsplit's gate, a registration that failed) as a
// client would, up to settleTimeout.
func reconnectV5(t testing.TB, url, id string) *brokertest.V5 {
	t.Helper()
	opts := brokertest.V5Options{KeepSession: true, SessionExpiry: 300}
	var (
		cl  *brokertest.V5
		err error
	)
	// Retried while the CONNACK refuses; any other failure ends it.
	brokertest.PollFor(settleTimeout, func() bool {
		cl, err = brokertest.ConnectV5(t, url, id, opts)
		var ce *brokertest.ConnackError
		if err != nil && errors.As(err, &ce) {
			t.Logf("connect %s refused (%v); retrying", id, err)
			return false
		}
		return true
	})
	if err != nil {
		t.Fatalf("connect %s: %v", id, err)
	}
	t.Logf("%s connected (session present %v)", id, cl.Connack.SessionPresent)
	return cl
}

// TestPartitionDuringAntiEntropy: while n1,n2 | n3 are split, each side
// sets 3000 retained messages of its own and both sides set the same 50
// topics (conflicts for the $retained policy), and QoS 1 publishes flow
// on both sides. The network heals, and n3 is cut off again after it has
// received 200 kB — in the middle of the anti-entropy repair that brings
// it the other side's messages (over 0.4 MB from each peer). After the
// second heal the tables are identical everywhere, every node holds all
// 6050 messages and the same value for each conflicting topic, and every
// acknowledged publish reached every subscriber.
func TestPartitionDuringAntiEntropy(t *testing.T) {
	c := newCluster(t, 3, partitionOptions(nil, false))
	sideA, sideB := []string{"n1", "n2"}, []string{"n3"}
	wl := newWorkload(t, c, "ae", false, c.names...)
	c.split(sideA, sideB)
	const own, conflicts = 3000, 50
	loadRetained(t, c, "n1", "ae-a", own)
	loadRetained(t, c, "n3", "ae-b", own)
	for _, n := range []string{"n2", "n3"} {
		p := brokertest.MustV5(t, c.url(n), "ae-conflict-"+n)
		for i := range conflicts {
			p.MustPub(fmt.Sprintf("ae-c/%d", i), 1, true, n)
		}
		p.Close()
	}
	wl.publish("n1", 10)
	wl.publish("n3", 10)
	total := 2*own + conflicts
	c.net.CutAfter("n3", 200_000, func() { c.net.Partition(sideA, sideB) })
	c.net.Heal()
	c.eventually("n3 to be cut off again", func() (bool, string) { return !c.net.Linked("n1", "n3"), "still linked" })
	c.split(sideA, sideB)
	got := c.node("n3").Cluster().Status().Retained
	t.Logf("n3 holds %d of %d retained messages while cut off again", got, total)
	if got >= total {
		t.Fatalf("n3 had all %d retained messages before the second cut: the cut came after the repair", total)
	}
	wl.publish("n2", 10)
	c.heal()
	c.checkHealed()
	for _, n := range c.names {
		if got := retainedCount(c.node(n)); got != total {
			t.Errorf("%s holds %d retained messages, want %d", n, got, total)
		}
	}
	first, _ := retainedPayload(c.node("n1"), "ae-c/0")
	if first != "n2" && first != "n3" {
		t.Errorf("conflicting topic ae-c/0 = %q", first)
	}
	wl.verify()
}

// TestRestartDuringSplit: n3 restarts (stop, then start with the same
// name and storage) while the other nodes are split:
//
//   - "bridge": only the n1-n2 link is cut; n3 reaches both before and
//     after its restart;
//   - "one side": n1 | n2,n3 are split; n3 comes back on n2's side (its
//     seeds are n1, unreachable, and n2), learns n1 as failed at the
//     join, and serves on that side until the heal.
//
// Persistent subscribers on every node (n3's resumes its session after
// the restart), QoS 1 publishes before, during and after the restart, and
// retained messages set on both sides: after the heal the contract holds
// and every acknowledged publish reached every subscriber.
func TestRestartDuringSplit(t *testing.T) {
	for _, tc := range []struct {
		name  string
		sides [][]string
	}{
		{"bridge", nil},
		{"one side", [][]string{{"n1"}, {"n2", "n3"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, 3, partitionOptions(nil, true))
			wl := newWorkload(t, c, "rs", true, c.names...)
			if tc.sides == nil {
				c.net.Cut("n1", "n2")
				c.eventually("n1 and n2 to see the broken link", func() (bool, string) {
					return c.node("n1").Cluster().Split() && c.node("n2").Cluster().Split() && !c.node("n3").Cluster().Split(), "not yet"
				})
			} else {
				c.split(tc.sides...)
			}
			for i, n := range c.names {
				p := brokertest.MustV5(t, c.url(n), "rs-ret-"+n)
				p.MustPub(fmt.Sprintf("rs-ret/%d", i), 1, true, "set on "+n)
				p.Close()
			}
			for _, n := range c.names {
				wl.publish(n, 5)
			}
			c.node("n3").Stop()
			c.forget("n3")
			wl.publish("n1", 5) // held for n3 (and for n2 if cut from n1)
			wl.publish("n2", 5)
			if tc.sides != nil {
				// n3's first seed (n1) is across the split: give it n2 too.
				mutate := c.mutate
				c.mutate = func(name string, cfg *config.Config) {
					mutate(name, cfg)
					cfg.Cluster.Seeds = append(cfg.Cluster.Seeds, c.gossipAddr("n2"))
				}
			}
			n3 := c.start("n3")
			wantUnreachable := map[bool][]string{true: {"n1"}, false: nil}[tc.sides != nil]
			c.eventually("n3 to be back", func() (bool, string) {
				var unreachable []string
				for _, u := range n3.Cluster().Netsplit().Unreachable {
					unreachable = append(unreachable, u.Name)
				}
				alive := 0
				for _, m := range n3.Cluster().Status().Members {
					if m.State == "alive" && (m.Self || m.Reachable) {
						alive++
					}
				}
				return alive == 3-len(wantUnreachable) && slices.Equal(unreachable, wantUnreachable),
					fmt.Sprintf("%d alive, unreachable %v", alive, unreachable)
			})
			wl.reconnect("n3")
			wl.publish("n3", 5)
			wl.publish("n1", 5)
			c.heal()
			c.checkHealed()
			for i, n := range c.names {
				c.waitRetained(fmt.Sprintf("rs-ret/%d", i), "set on "+n)
			}
			wl.verify()
		})
	}
}
