package cluster

import (
	"fmt"
	"log/slog"

	"github.com/mendmq/mendmq/cluster/faults"
)

// The debug partition switch (admin.debug): see package faults.

// DebugCut cuts this node's cluster links, in both directions, to and
// from the named members: gossip and the data plane. Cutting a node
// from every other member splits the cluster for real; cutting only some
// breaks those links (a partial partition). Names must be members other
// than this node; on an error nothing changes.
func (n *Node) DebugCut(names ...string) error {
	if err := n.cuts.Cut(names...); err != nil {
		return err
	}
	n.log.Warn("debug partition: cluster links cut", "members", n.cuts.Members())
	return nil
}

// DebugHeal restores the links DebugCut cut, to the named members or to
// all when none is named, and returns the members healed.
func (n *Node) DebugHeal(names ...string) []string {
	healed := n.cuts.Heal(names...)
	if len(healed) > 0 {
		n.log.Warn("debug partition: cluster links restored", "members", healed, "still_cut", n.cuts.Members())
		if n.ml != nil {
			// Ask the healed members back now instead of at the next
			// reconnect round.
			go n.rejoin(healed)
		}
	}
	return healed
}

// DebugCuts returns the members whose links DebugCut cut, sorted.
func (n *Node) DebugCuts() []string { return n.cuts.Members() }

// memberAddrs resolves a member's addresses for the switch.
func (n *Node) memberAddrs(name string) (faults.Addrs, bool) {
	m, ok := n.view.Member(name)
	if !ok || m.Self {
		return faults.Addrs{}, false
	}
	return faults.Addrs{Gossip: m.GossipAddr, Data: m.DataAddr}, true
}

// rejoin joins the gossip addresses of members just healed.
func (n *Node) rejoin(names []string) {
	var addrs []string
	for _, name := range names {
		if m, ok := n.view.Member(name); ok && m.GossipAddr != "" {
			addrs = append(addrs, m.GossipAddr)
		}
	}
	if len(addrs) == 0 {
		return
	}
	if _, err := n.ml.Join(addrs); err != nil {
		n.log.Debug("debug partition: rejoin after heal", slog.Any("members", names), "err", fmt.Errorf("join %v: %w", addrs, err))
	}
}
