// Package clustertests runs multi-node mendmq clusters inside one test
// process: every node is a full broker.Broker (mochi, cluster hook,
// membership, data plane) on 127.0.0.1, driven by real MQTT clients over
// TCP. The tests check the cross-node contracts of DESIGN §2: routing
// without duplicates, shared subscriptions, retained replication, session
// takeover, wills, crash/restart, joins and hostile input.
//
// Waits are bounded polls of the nodes' own state (cluster.Status, mochi's
// client table) or events (messages, markers); nothing sleeps blindly.
package clustertests

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/broker/config"
	"github.com/mendmq/mendmq/broker/mochix"
	"github.com/mendmq/mendmq/cluster"
	"github.com/mendmq/mendmq/cluster/clustertest"
)

// settleTimeout bounds waits for the cluster to converge (membership,
// replication, anti-entropy). Longer than brokertest.Timeout because a
// join or restart under -race on two shared cores takes a few seconds.
const settleTimeout = 15 * time.Second

// testCluster is a set of in-process nodes named n1..nN.
type testCluster struct {
	t     testing.TB
	net   *clustertest.Network // nil: plain TCP and memberlist's own transport
	nodes map[string]*brokertest.Node
	names []string // running nodes, in start order
	// mutate adjusts each node's configuration before it starts.
	mutate func(name string, cfg *config.Config)
}

// clusterOptions shape a test cluster.
type clusterOptions struct {
	// Faults runs every node on a clustertest.Network (cut, isolate,
	// heal). Without it nodes use plain TCP/UDP as in production.
	Faults bool
	// Mutate, if set, edits a node's configuration before it starts.
	Mutate func(name string, cfg *config.Config)
	// Storage gives every node a bbolt file of its own, kept across its
	// restarts (storage.path).
	Storage bool
}

// newCluster starts n nodes, each seeded with the first one, and waits
// until every node sees every other alive with its data plane connected.
func newCluster(t testing.TB, n int, o clusterOptions) *testCluster {
	t.Helper()
	c := &testCluster{t: t, nodes: map[string]*brokertest.Node{}, mutate: o.Mutate}
	if o.Storage {
		dir := t.TempDir()
		c.mutate = func(name string, cfg *config.Config) {
			cfg.Storage.Path = filepath.Join(dir, name+".db")
			if o.Mutate != nil {
				o.Mutate(name, cfg)
			}
		}
	}
	if o.Faults {
		c.net = clustertest.New(t, clustertest.Config{})
	}
	start := time.Now()
	for i := 1; i <= n; i++ {
		c.start(fmt.Sprintf("n%d", i))
	}
	c.waitFormed()
	t.Logf("cluster of %d formed in %v", n, time.Since(start).Round(time.Millisecond))
	// Cleanups run last-registered first: this one runs after the
	// clients' and before brokertest stops the nodes.
	t.Cleanup(func() {
		if t.Failed() {
			c.dump()
		}
	})
	return c
}

// config returns the configuration of node name, seeded with the first
// running node.
func (c *testCluster) config(name string) config.Config {
	c.t.Helper()
	cfg := brokertest.Config()
	cfg.Node.Name = name
	cfg.Cluster = cluster.LoopbackConfig()
	// The loopback failure detector declares a member dead after ~0.3 s
	// of silence, which a -race run on two cores shared with other
	// test runs sometimes is; a false "dead" refuses QoS 1 publishes.
	// Detection within ~2-3 s is still fine for the crash test.
	cfg.Cluster.ProbeInterval = 300 * time.Millisecond
	cfg.Cluster.ProbeTimeout = 200 * time.Millisecond
	cfg.Cluster.SuspicionMult = 5
	if c.net != nil {
		tr, err := c.net.Transport(name)
		if err != nil {
			c.t.Fatalf("gossip transport of %s: %v", name, err)
		}
		cfg.Cluster.Transport = tr
		cfg.Cluster.DataNetwork = c.net.DataNetwork(name)
		// The transport owns the gossip port; the address only has to
		// differ from the data address to validate.
		cfg.Cluster.GossipAddress = tr.Addr()
	}
	if len(c.names) > 0 {
		cfg.Cluster.Seeds = []string{c.gossipAddr(c.names[0])}
	}
	if c.mutate != nil {
		c.mutate(name, &cfg)
	}
	return cfg
}

// start starts node name (new, or a restart under an old name).
func (c *testCluster) start(name string) *brokertest.Node {
	c.t.Helper()
	nd := brokertest.Start(c.t, c.config(name))
	c.nodes[name] = nd
	if !slices.Contains(c.names, name) {
		c.names = append(c.names, name)
	}
	return nd
}

// stop shuts node name down gracefully (it leaves the cluster) and drops
// it from the running set.
func (c *testCluster) stop(name string) {
	c.t.Helper()
	c.nodes[name].Stop()
	c.forget(name)
}

// forget drops node name from the running set (after a crash).
func (c *testCluster) forget(name string) {
	delete(c.nodes, name)
	c.names = slices.DeleteFunc(c.names, func(s string) bool { return s == name })
}

// with returns a view of c that reports to t (a subtest): failures
// must not call FailNow on the test that owns the cluster.
func (c *testCluster) with(t testing.TB) *testCluster {
	v := *c
	v.t = t
	t.Cleanup(func() {
		if t.Failed() {
			v.dump() // after the scenario's clients closed, before the nodes stop
		}
	})
	return &v
}

// dump logs every node's view of the cluster and its forwarding
// counters, to tell a routing problem from a delivery problem.
func (c *testCluster) dump() {
	for _, name := range c.names {
		nd := c.node(name)
		st := nd.Cluster().Status()
		var members []string
		for _, m := range st.Members {
			members = append(members, fmt.Sprintf("%s:%s/reach=%v/q=%d", m.Name, m.State, m.Reachable, m.QueueFrames))
		}
		c.t.Logf("%s: members %v, routes %v, local subs %d, sessions %d, retained %d, forwarded %d, received %d, dropped %v, refused %v",
			name, members, st.Subscriptions, localSubs(nd), st.Sessions, st.Retained, st.Forwarded, st.Received,
			nd.Metric("mendmq_cluster_forward_dropped_total"), nd.Metric("mendmq_cluster_forward_refused_total"))
	}
}

func (c *testCluster) node(name string) *brokertest.Node {
	c.t.Helper()
	nd, ok := c.nodes[name]
	if !ok {
		c.t.Fatalf("node %s is not running", name)
	}
	return nd
}

func (c *testCluster) url(name string) string { return c.node(name).URL(0) }

// self returns node name's own entry of its member list.
func (c *testCluster) self(name string) cluster.MemberStatus {
	c.t.Helper()
	for _, m := range c.node(name).Cluster().Status().Members {
		if m.Self {
			return m
		}
	}
	c.t.Fatalf("node %s does not list itself as a member", name)
	return cluster.MemberStatus{}
}

func (c *testCluster) gossipAddr(name string) string {
	c.t.Helper()
	if c.net != nil {
		if cfg := c.node(name).Config().Cluster; cfg.Transport != nil {
			return cfg.Transport.(*clustertest.Transport).Addr()
		}
	}
	return c.self(name).GossipAddr
}

func (c *testCluster) dataAddr(name string) string { return c.self(name).DataAddr }

// eventually polls cond until settleTimeout, then fails with the detail
// cond last reported.
func (c *testCluster) eventually(what string, cond func() (bool, string)) {
	c.t.Helper()
	if d, ok := pollFor(settleTimeout, cond); !ok {
		c.t.Fatalf("timed out after %v waiting for %s: %s", settleTimeout, what, d)
	}
}

// pollFor calls cond until it holds or d passes, with a short growing
// pause; it returns cond's last detail.
func pollFor(d time.Duration, cond func() (bool, string)) (string, bool) {
	deadline := time.Now().Add(d)
	pause := time.Millisecond
	for {
		ok, detail := cond()
		if ok {
			return detail, true
		}
		if time.Now().After(deadline) {
			return detail, false
		}
		time.Sleep(pause)
		pause = min(2*pause, 50*time.Millisecond)
	}
}

// waitFormed waits until every running node lists exactly the running
// nodes as alive and has its data plane connected to each of them.
func (c *testCluster) waitFormed() {
	c.t.Helper()
	c.eventually("the cluster to form", func() (bool, string) {
		for _, name := range c.names {
			var alive []string
			for _, m := range c.node(name).Cluster().Status().Members {
				if m.State != "alive" {
					continue
				}
				if !m.Self && !m.Reachable {
					return false, fmt.Sprintf("%s: data plane to %s not connected", name, m.Name)
				}
				alive = append(alive, m.Name)
			}
			slices.Sort(alive)
			want := slices.Sorted(slices.Values(c.names))
			if !slices.Equal(alive, want) {
				return false, fmt.Sprintf("%s sees alive %v, want %v", name, alive, want)
			}
		}
		return true, ""
	})
}

// localSubs counts the subscriptions of node nd's sessions as mochi
// holds them: what the node's replicated session records must carry.
func localSubs(nd *brokertest.Node) int {
	n := 0
	for id, cl := range mochix.Clients(nd.Server()) {
		if strings.HasPrefix(id, "$cluster-injector-") || id == mqtt.InlineClientId {
			continue
		}
		n += len(mochix.Subscriptions(cl))
	}
	return n
}

// waitRoutes waits until every node's routing index counts, for every
// node, exactly the subscriptions that node holds locally: all local
// subscribe/unsubscribe/disconnect events have been replicated everywhere.
//
// Only counts are visible (cluster.Status), so a removal and an addition
// on the same node in flight together could look settled; callers let
// removals settle (waitDisconnected, then waitRoutes, after closing
// clients) before adding.
func (c *testCluster) waitRoutes() {
	c.t.Helper()
	c.eventually("routes to converge", func() (bool, string) {
		truth := map[string]int{}
		for _, name := range c.names {
			if k := localSubs(c.node(name)); k > 0 {
				truth[name] = k
			}
		}
		for _, name := range c.names {
			view := c.node(name).Cluster().Status().Subscriptions
			maps.DeleteFunc(view, func(_ string, v int) bool { return v == 0 })
			if !maps.Equal(view, truth) {
				return false, fmt.Sprintf("%s routes %v, nodes hold %v", name, view, truth)
			}
		}
		return true, ""
	})
}

// waitDisconnected waits until no node has a connected client: a
// client's Close returns before its broker has processed the DISCONNECT,
// so the session records of a finished scenario may not even have
// started to change yet.
func (c *testCluster) waitDisconnected() {
	c.t.Helper()
	c.eventually("every client to be disconnected", func() (bool, string) {
		for _, name := range c.names {
			for id, cl := range mochix.Clients(c.node(name).Server()) {
				if strings.HasPrefix(id, "$cluster-injector-") || id == mqtt.InlineClientId {
					continue
				}
				if !cl.Closed() {
					return false, fmt.Sprintf("%s: client %s still connected", name, id)
				}
				// A closed clean session is still being torn down: mochi
				// drops its subscriptions and removes it after the hooks.
				if mochix.Ephemeral(cl) {
					return false, fmt.Sprintf("%s: clean session %s not yet removed", name, id)
				}
			}
		}
		return true, ""
	})
}

// retainedPayload returns node nd's local retained message of topic.
func retainedPayload(nd *brokertest.Node, topic string) (string, bool) {
	pk, ok := mochix.Retained(nd.Server(), topic)
	if !ok {
		return "", false
	}
	return string(pk.Payload), true
}

// retainedCount counts node nd's retained messages outside $SYS (mochi
// retains its own $SYS topics, which are not replicated).
func retainedCount(nd *brokertest.Node) int {
	n := 0
	for _, topic := range mochix.RetainedTopics(nd.Server()) {
		if !strings.HasPrefix(topic, "$SYS") {
			n++
		}
	}
	return n
}

// waitRetained waits until every node holds want as the retained payload
// of topic ("" = none).
func (c *testCluster) waitRetained(topic, want string) {
	c.t.Helper()
	c.eventually("retained "+topic+" = "+want+" on every node", func() (bool, string) {
		for _, name := range c.names {
			got, _ := retainedPayload(c.node(name), topic)
			if got != want {
				return false, fmt.Sprintf("%s has %q", name, got)
			}
		}
		return true, ""
	})
}

// waitTables waits until every node's replicated tables (and its mochi
// retained store) have the same sizes.
func (c *testCluster) waitTables() {
	c.t.Helper()
	c.eventually("replicated tables to agree", func() (bool, string) {
		var first cluster.Status
		for i, name := range c.names {
			st := c.node(name).Cluster().Status()
			if i == 0 {
				first = st
			}
			if st.Sessions != first.Sessions || st.Retained != first.Retained {
				return false, fmt.Sprintf("%s: %d sessions, %d retained; %s: %d sessions, %d retained",
					c.names[0], first.Sessions, first.Retained, name, st.Sessions, st.Retained)
			}
			if got := retainedCount(c.node(name)); got != st.Retained {
				return false, fmt.Sprintf("%s: mochi holds %d retained, table %d", name, got, st.Retained)
			}
		}
		return true, ""
	})
}

// counts tallies received payloads.
func counts(msgs []*paho.Publish) map[string]int {
	out := map[string]int{}
	for _, m := range msgs {
		out[string(m.Payload)]++
	}
	return out
}

// expectOnce fails unless got holds each of want exactly once and nothing
// else.
func expectOnce(t testing.TB, who string, got map[string]int, want []string) {
	t.Helper()
	for _, w := range want {
		if got[w] != 1 {
			t.Errorf("%s: message %q received %d times, want once", who, w, got[w])
		}
	}
	for k, v := range got {
		if !slices.Contains(want, k) {
			t.Errorf("%s: unexpected message %q (%d times)", who, k, v)
		}
	}
}

// seq returns prefix0..prefix(n-1).
func seq(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%d", prefix, i)
	}
	return out
}

// timeoutCtx bounds one client operation.
func timeoutCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), brokertest.Timeout)
}

// subscribed waits until cl's broker has finished its last SUBSCRIBE.
// mochi writes the SUBACK before it sends the retained messages the new
// subscription matches; a retained message published by someone else in
// between reaches the subscriber twice, live and as a retained replay. The
// broker handles one client's packets in order, so the answer to a later
// request (an UNSUBSCRIBE of a filter nobody uses) closes that window.
func subscribed(t testing.TB, cl *brokertest.V5) {
	t.Helper()
	ctx, cancel := timeoutCtx()
	defer cancel()
	if _, err := cl.Unsubscribe(ctx, &paho.Unsubscribe{Topics: []string{"sync/none"}}); err != nil {
		t.Fatalf("unsubscribe (sync): %v", err)
	}
}

// crash cuts node victim off from every peer and stops it (its graceful
// leave reaches nobody), then waits until every other node sees it dead.
// c must run on a fault-injecting network.
func crash(t testing.TB, c *testCluster, victim string) {
	t.Helper()
	c.net.Isolate(victim)
	ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
	_ = c.node(victim).Shutdown(ctx) // errors expected: it is cut off
	cancel()
	c.forget(victim)
	c.eventually(victim+" to be seen dead", func() (bool, string) {
		for _, n := range c.names {
			for _, m := range c.node(n).Cluster().Status().Members {
				if m.Name == victim && m.State != "dead" {
					return false, fmt.Sprintf("%s sees %s %s", n, victim, m.State)
				}
			}
		}
		return true, ""
	})
}
