package cluster_test

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/mendmq/mendmq/cluster"
	"github.com/mendmq/mendmq/cluster/clustertest"
	"github.com/mendmq/mendmq/cluster/members"
	"github.com/mendmq/mendmq/cluster/netsplit"
	"github.com/mendmq/mendmq/cluster/routes"
)

// nopBroker is a Broker with nothing on it.
type nopBroker struct{}

func (nopBroker) DeliverForwarded(cluster.Delivery) error              { return nil }
func (nopBroker) ApplyRetained(string, *cluster.RetainedMessage)       {}
func (nopBroker) TakeoverSession(string, string, bool) ([]byte, error) { return nil, nil }
func (nopBroker) FinishTakeover(string, string) ([]byte, error)        { return nil, nil }
func (nopBroker) AppendSession(string, []byte) error                   { return nil }
func (nopBroker) DropDuplicate(string, routes.SessionRecord)           {}
func (nopBroker) LocalSession(string) bool                             { return false }
func (nopBroker) KickSession(string) (bool, error)                     { return false, nil }

func testLog() *slog.Logger {
	if os.Getenv("MENDMQ_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startNodes starts nodes n1..nN on nw, each seeded with n1, and waits
// until every node sees every other one routable and linked.
func startNodes(t *testing.T, nw *clustertest.Network, count int, mutate func(*cluster.Config)) []*cluster.Node {
	t.Helper()
	nodes, _ := startSeeded(t, nw, count, mutate)
	waitFor(t, 10*time.Second, "the cluster to form", func() (bool, string) {
		for _, n := range nodes {
			st := n.Status()
			up := 0
			for _, m := range st.Members {
				if m.State == "alive" && (m.Self || m.Reachable) {
					up++
				}
			}
			if up != count || n.Split() {
				return false, fmt.Sprintf("%s: %d of %d up, split %v", n.Name(), up, count, n.Split())
			}
		}
		return true, ""
	})
	return nodes
}

// startSeeded starts nodes n1..nN on nw, each seeded with n1, without
// waiting for them to form a cluster; it returns them and n1's gossip
// address.
func startSeeded(t testing.TB, nw *clustertest.Network, count int, mutate func(*cluster.Config)) ([]*cluster.Node, string) {
	t.Helper()
	var nodes []*cluster.Node
	var seed string
	for i := 1; i <= count; i++ {
		n, addr := startNode(t, nw, fmt.Sprintf("n%d", i), seed, mutate)
		if seed == "" {
			seed = addr
		}
		nodes = append(nodes, n)
	}
	return nodes, seed
}

// startNode starts node name on nw, joining through the gossip address
// seed ("": none, the first node); it returns the node and its gossip
// address.
func startNode(t testing.TB, nw *clustertest.Network, name, seed string, mutate func(*cluster.Config)) (*cluster.Node, string) {
	t.Helper()
	return startNodeWith(t, nw, name, seed, mutate, nil)
}

// startNodeWith is startNode with before, if set, called between New and
// Start (to register calls, say).
func startNodeWith(t testing.TB, nw *clustertest.Network, name, seed string, mutate func(*cluster.Config), before func(*cluster.Node)) (*cluster.Node, string) {
	t.Helper()
	cfg := cluster.LoopbackConfig()
	tr, err := nw.Transport(name)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Transport, cfg.DataNetwork, cfg.GossipAddress = tr, nw.DataNetwork(name), tr.Addr()
	if seed != "" {
		cfg.Seeds = []string{seed}
	}
	cfg.Logger = testLog()
	if mutate != nil {
		mutate(&cfg)
	}
	n, err := cluster.New(name, cfg, nopBroker{})
	if err != nil {
		t.Fatal(err)
	}
	if before != nil {
		before(n)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Stop() })
	return n, tr.Addr()
}

func waitFor(t testing.TB, d time.Duration, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	last := ""
	for time.Since(start) < d {
		ok, why := cond()
		if ok {
			return time.Since(start)
		}
		last = why
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting for %s: %s", d, what, last)
	return 0
}

// unreachable returns the names a node finds unreachable.
func unreachable(n *cluster.Node) []string {
	var out []string
	for _, u := range n.Netsplit().Unreachable {
		out = append(out, u.Name)
	}
	return out
}

func expectSplit(t *testing.T, n *cluster.Node, gated bool, names ...string) func() (bool, string) {
	return func() (bool, string) {
		got := unreachable(n)
		if !slices.Equal(got, names) || n.Split() != (len(names) > 0) || n.Gated() != gated {
			return false, fmt.Sprintf("%s: unreachable %v split %v gated %v, want %v gated %v", n.Name(), got, n.Split(), n.Gated(), names, gated)
		}
		return true, ""
	}
}

func all(conds ...func() (bool, string)) func() (bool, string) {
	return func() (bool, string) {
		for _, c := range conds {
			if ok, why := c(); !ok {
				return false, why
			}
		}
		return true, ""
	}
}

// TestSingleBrokenLink: cutting only n1<->n2 (both still reach n3, so
// memberlist's indirect probes keep everyone alive) splits n1 and n2 —
// the data plane sees it — and not n3; the heal ends it, and each node
// records the heal and the tables' convergence.
func TestSingleBrokenLink(t *testing.T) {
	t.Parallel()
	nw := clustertest.New(t, clustertest.Config{})
	nodes := startNodes(t, nw, 3, nil)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	nw.Cut("n1", "n2")
	took := waitFor(t, 5*time.Second, "n1 and n2 to see the broken link", all(
		expectSplit(t, n1, true, "n2"), expectSplit(t, n2, true, "n1"), expectSplit(t, n3, false)))
	t.Logf("detected in %v", took)
	u := n1.Netsplit().Unreachable[0]
	if u.Reason != "link down" || u.Uncertainty() <= 0 || u.Uncertainty() > 5*time.Second {
		t.Errorf("n1's view of n2: %+v (uncertainty %v)", u, u.Uncertainty())
	}
	for _, n := range nodes {
		if s, _ := n.Members().State("n1"); s.String() != "alive" {
			t.Errorf("%s: memberlist should still see n1 alive, sees %v", n.Name(), s)
		}
	}
	nw.Heal()
	took = waitFor(t, 5*time.Second, "the heal", all(expectSplit(t, n1, false), expectSplit(t, n2, false)))
	t.Logf("healed in %v", took)
	waitFor(t, 5*time.Second, "the heal's convergence", func() (bool, string) {
		h := n1.Netsplit().LastHeal
		if h == nil || h.Converged.IsZero() {
			return false, fmt.Sprintf("last heal %+v", h)
		}
		return true, ""
	})
	if st := n1.Netsplit(); st.Splits != 1 || st.LastHeal.Duration <= 0 {
		t.Errorf("n1 status %+v", st)
	}
}

// TestIsolatedMemberAndMajority: n3 cut off from both others. In mode
// majority n1 and n2 (2 of 3) keep serving and n3 gates; in mode any all
// three gate.
func TestIsolatedMemberAndMajority(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"any", "majority"} {
		t.Run(mode, func(t *testing.T) {
			nw := clustertest.New(t, clustertest.Config{})
			nodes := startNodes(t, nw, 3, func(c *cluster.Config) { c.NetsplitMode = mode })
			nw.Isolate("n3")
			majorityGated := mode == "any"
			waitFor(t, 8*time.Second, "the split", all(
				expectSplit(t, nodes[0], majorityGated, "n3"),
				expectSplit(t, nodes[1], majorityGated, "n3"),
				expectSplit(t, nodes[2], true, "n1", "n2")))
			// Hot reload of the mode gates or ungates at once.
			if mode == "majority" {
				nodes[0].SetNetsplitMode(netsplit.ModeAny)
				if !nodes[0].Gated() {
					t.Error("n1 not gated after switching to mode any")
				}
			}
			nw.Heal()
			waitFor(t, 10*time.Second, "the heal", all(
				expectSplit(t, nodes[0], false), expectSplit(t, nodes[1], false), expectSplit(t, nodes[2], false)))
		})
	}
}

// TestOneWayCut: packets from n1 to n2 are lost, nothing else. TCP needs
// both directions, so the data-plane link n1-n2 breaks: both sides see it.
func TestOneWayCut(t *testing.T) {
	t.Parallel()
	nw := clustertest.New(t, clustertest.Config{})
	nodes := startNodes(t, nw, 3, nil)
	nw.CutOneWay("n1", "n2")
	waitFor(t, 5*time.Second, "the asymmetric cut to be seen", all(
		expectSplit(t, nodes[0], true, "n2"), expectSplit(t, nodes[1], true, "n1"), expectSplit(t, nodes[2], false)))
	nw.Heal()
	waitFor(t, 5*time.Second, "the heal", all(expectSplit(t, nodes[0], false), expectSplit(t, nodes[1], false)))
}

// TestFlapIsNotANetsplit: a link cut for much less than
// netsplit_link_grace and healed again does not split anybody.
func TestFlapIsNotANetsplit(t *testing.T) {
	t.Parallel()
	nw := clustertest.New(t, clustertest.Config{})
	nodes := startNodes(t, nw, 3, func(c *cluster.Config) { c.NetsplitLinkGrace = time.Second })
	link := func(want members.Link) func() (bool, string) {
		return func() (bool, string) {
			m, _ := nodes[0].Members().Member("n2")
			return m.Link == want, fmt.Sprintf("n1's link to n2 is %v", m.Link)
		}
	}
	for range 3 {
		nw.Cut("n1", "n2")
		waitFor(t, 5*time.Second, "the link to go down", link(members.LinkDown))
		nw.Heal()
		waitFor(t, 5*time.Second, "the link to come back", link(members.LinkUp))
	}
	for _, n := range nodes {
		if st := n.Netsplit(); st.Splits != 0 {
			t.Errorf("%s counted %d splits for flaps", n.Name(), st.Splits)
		}
	}
}

// TestWholeClusterStopsCleanly: every node of a cluster stopped at once
// (a deployment torn down) stops without error, though no peer is left
// to confirm its leave notice.
func TestWholeClusterStopsCleanly(t *testing.T) {
	t.Parallel()
	nw := clustertest.New(t, clustertest.Config{})
	nodes := startNodes(t, nw, 3, nil)
	errs := make(chan error, len(nodes))
	for _, n := range nodes {
		go func() { errs <- n.Stop() }()
	}
	for range nodes {
		select {
		case err := <-errs:
			if err != nil {
				t.Errorf("stop: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("a node did not stop within 30 s")
		}
	}
}

// TestJoinDuringSplit: n4 joins n1 while n3 is cut off from n1 and n2. It
// learns n3 as failed at the join (memberlist alone would not tell it), so
// it is in the netsplit like the rest of its side and gated; after the
// heal all four are one cluster and nobody is split.
func TestJoinDuringSplit(t *testing.T) {
	t.Parallel()
	nw := clustertest.New(t, clustertest.Config{})
	nodes := startNodes(t, nw, 3, nil)
	seed := ""
	for _, m := range nodes[0].Status().Members {
		if m.Self {
			seed = m.GossipAddr
		}
	}
	nw.Partition([]string{"n1", "n2", "n4"}, []string{"n3"}) // n4 is not started yet
	waitFor(t, 8*time.Second, "the split", all(expectSplit(t, nodes[0], true, "n3"), expectSplit(t, nodes[2], true, "n1", "n2")))
	n4, _ := startNode(t, nw, "n4", seed, nil)
	waitFor(t, 8*time.Second, "n4 to join one side, split from n3", expectSplit(t, n4, true, "n3"))
	nw.Heal()
	nodes = append(nodes, n4)
	waitFor(t, 10*time.Second, "the heal", func() (bool, string) {
		for _, n := range nodes {
			if ok, why := expectSplit(t, n, false)(); !ok {
				return false, why
			}
			up := 0
			for _, m := range n.Status().Members {
				if m.State == "alive" && (m.Self || m.Reachable) {
					up++
				}
			}
			if up != len(nodes) {
				return false, fmt.Sprintf("%s: %d of %d up", n.Name(), up, len(nodes))
			}
		}
		return true, ""
	})
}
