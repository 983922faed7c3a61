package cluster_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/mendmq/mendmq/cluster"
)

// startReal starts nodes n1..nN on real sockets with the transport
// memberlist makes itself (wrapped by the debug switch), as a production
// node does, each seeded with n1, and waits for the cluster to form.
func startReal(t *testing.T, count int) []*cluster.Node {
	t.Helper()
	var nodes []*cluster.Node
	var seed string
	for i := 1; i <= count; i++ {
		cfg := cluster.LoopbackConfig()
		cfg.Logger = testLog()
		if seed != "" {
			cfg.Seeds = []string{seed}
		}
		n, err := cluster.New(fmt.Sprintf("n%d", i), cfg, nopBroker{})
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Stop() })
		if seed == "" {
			m, _ := n.Members().Member("n1")
			seed = m.GossipAddr
		}
		nodes = append(nodes, n)
	}
	waitFor(t, 10*time.Second, "the cluster to form", func() (bool, string) {
		for _, n := range nodes {
			if alive := n.Members().Alive(); len(alive) != count || n.Split() {
				return false, fmt.Sprintf("%s: alive %v split %v", n.Name(), alive, n.Split())
			}
		}
		return true, ""
	})
	return nodes
}

// dead reports whether n's memberlist view has member dead.
func dead(n *cluster.Node, member string) func() (bool, string) {
	return func() (bool, string) {
		s, _ := n.Members().State(member)
		return s.String() == "dead", fmt.Sprintf("%s sees %s %v", n.Name(), member, s)
	}
}

// TestDebugPartition drives the debug partition switch on a 3-node
// cluster on real sockets: isolating n3 from n3 alone splits the cluster
// for real (both sides declare the other dead, every node is in a
// netsplit), the heal re-forms it; cutting a single link is seen by the
// data plane on both ends while memberlist keeps everyone alive.
func TestDebugPartition(t *testing.T) {
	t.Parallel()
	nodes := startReal(t, 3)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]

	for _, names := range [][]string{nil, {"n3"}, {"n1", "nx"}} {
		if err := n3.DebugCut(names...); err == nil {
			t.Errorf("DebugCut(%v) accepted", names)
		}
	}
	if got := n3.DebugCuts(); len(got) != 0 {
		t.Fatalf("a refused cut left %v cut", got)
	}

	if err := n3.DebugCut("n1", "n2"); err != nil {
		t.Fatal(err)
	}
	took := waitFor(t, 10*time.Second, "n3 isolated from one command on n3", all(
		expectSplit(t, n1, true, "n3"), expectSplit(t, n2, true, "n3"), expectSplit(t, n3, true, "n1", "n2"),
		dead(n1, "n3"), dead(n2, "n3"), dead(n3, "n1"), dead(n3, "n2")))
	t.Logf("split seen by all in %v", took)
	if got := n3.DebugCuts(); !slices.Equal(got, []string{"n1", "n2"}) {
		t.Errorf("DebugCuts = %v", got)
	}
	if got := n3.DebugHeal(); !slices.Equal(got, []string{"n1", "n2"}) {
		t.Errorf("DebugHeal = %v", got)
	}
	took = waitFor(t, 15*time.Second, "the cluster to re-form", func() (bool, string) {
		for _, n := range nodes {
			if alive := n.Members().Alive(); len(alive) != 3 || n.Split() {
				return false, fmt.Sprintf("%s: alive %v split %v", n.Name(), alive, n.Split())
			}
		}
		return true, ""
	})
	t.Logf("re-formed %v after the heal", took)

	// One link only: n1 cuts n2. n3 still reaches both, so memberlist's
	// indirect probes keep n1 and n2 alive, and the data plane shows the
	// broken link to both ends.
	if err := n1.DebugCut("n2"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the broken link n1-n2", all(
		expectSplit(t, n1, true, "n2"), expectSplit(t, n2, true, "n1"), expectSplit(t, n3, false)))
	for _, n := range nodes {
		if alive := n.Members().Alive(); len(alive) != 3 {
			t.Errorf("%s: alive %v with one link cut", n.Name(), alive)
		}
	}
	n1.DebugHeal("n2")
	waitFor(t, 10*time.Second, "the link to come back", all(
		expectSplit(t, n1, false), expectSplit(t, n2, false), expectSplit(t, n3, false)))
}
