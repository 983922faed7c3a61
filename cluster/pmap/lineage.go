package pmap

import (
	"context"
	"hash/fnv"
	"slices"
	"time"

	"github.com/mendmq/mendmq/cluster/partition"
)

// Lineage identifies where a node's map data come from, and how big that
// cluster is. A new node starts a lineage of its own (a random hash,
// size 1). A side of a split starts one when it loses members: its hash is
// a function of the whole cluster's lineage and of the side's members (so
// every node of the side computes the same), its size the side's. When a
// node meets a member of another lineage, the smaller lineage (fewer
// members, then the smaller hash) merges into the bigger and takes its
// lineage as that side reported it. A lineage grows only with the members
// its nodes take into their tables, which they do once those members
// report the same lineage (see planHeal): so a node never reports a size
// its lineage's own nodes do not have, each node's lineage only grows,
// and both nodes of a pair decide the same whichever asks first.
type Lineage struct {
	Hash uint64
	Size int
}

// less reports whether a merges into b.
func (a Lineage) less(b Lineage) bool {
	if a.Size != b.Size {
		return a.Size < b.Size
	}
	return a.Hash < b.Hash
}

// splitLineage is the lineage of a side of a split.
func splitLineage(base uint64, members []string) uint64 {
	h := fnv.New64a()
	var b [8]byte
	for i := range b {
		b[i] = byte(base >> (8 * i))
	}
	_, _ = h.Write(b[:])
	for _, m := range members {
		_, _ = h.Write([]byte(m))
		_, _ = h.Write([]byte{0})
	}
	return h.Sum64()
}

// side is what another node said of its map data: its lineage and the
// members of its table (all of that lineage, see planHeal).
type side struct {
	lineage Lineage
	members []string
	data    bool
	// merging: the node is still sending its entries into this lineage
	// (it merged into it and holds no partition of it yet).
	merging bool
}

// healPlan is what a node does with the members it sees.
type healPlan struct {
	// winner is the bigger side to merge into first; nil: none.
	winner *side
	// members are the next table's, sorted.
	members []string
}

// planHeal decides, from the alive members, the current table's members
// cur and what the newcomers (alive, not in cur) said of their lineage
// (sides; a newcomer that did not answer is absent), which side this node
// merges into, if any, and who is in its next table.
//
// A table holds only members of the node's lineage: a newcomer of a
// smaller lineage is left out until it has merged into this one (it
// reports this lineage then). Were it taken in before, its partitions in
// this side's table would point at a node holding none of this side's
// data, and a node merging into this side would pull them from it — and
// recreate them empty, losing this side's entries. A node that merges
// takes into its table the bigger side's members and the newcomers that
// already merged into it, not its own former side: those follow when they
// have merged too.
//
// A node takes part in its new lineage's table only once it has sent all
// its entries (Hazelcast's merge before join): merging says this node is
// still sending, and a newcomer that reports merging is left out too.
// Meanwhile the merges go to the bigger side's owners, whose partitions
// do not move under them; taken in earlier, the merging node would own
// partitions it first has to pull, and its merges into them would wait
// for that migration.
func planHeal(self string, mine Lineage, merging bool, cur, alive []string, sides map[string]side) healPlan {
	var winner *side
	for _, n := range alive {
		s, ok := sides[n]
		// A newcomer still merging is not a side: it reports the lineage
		// it merges into before that side's members take it in, and a
		// node that merged into it would end in a table nobody else holds
		// (seen at a split in a cluster's first seconds). The side's own
		// members, or the newcomer once it has merged, speak for it.
		if !ok || slices.Contains(cur, n) || s.lineage.Hash == mine.Hash || s.merging {
			continue
		}
		// The lineage this node's side split from, whose table still
		// counts this node: that side has not seen this node leave (a
		// heal before it noticed the split), and its size is not what it
		// has alone. It drops this node's side when asked for its own
		// (staleMembers) and is a side of its true size then; merging
		// into it now could merge the bigger side into the smaller.
		if slices.Contains(s.members, self) && mine.Hash == splitLineage(s.lineage.Hash, cur) {
			continue
		}
		if mine.less(s.lineage) && (winner == nil || winner.lineage.less(s.lineage)) {
			winner = &s
		}
	}
	var members []string
	for _, n := range alive {
		s, answered := sides[n]
		switch {
		case n == self:
			if winner != nil || (merging && !slices.Contains(cur, n)) {
				continue // in once its merge is sent
			}
		case winner != nil:
			if !slices.Contains(winner.members, n) && !(answered && s.lineage.Hash == winner.lineage.Hash && !s.merging) {
				continue
			}
		case slices.Contains(cur, n):
		case !answered || s.lineage.Hash != mine.Hash || s.merging:
			continue
		}
		members = append(members, n)
	}
	slices.Sort(members)
	return healPlan{winner: winner, members: members}
}

// reconcile adopts the table of the alive members of this node's
// lineage, merging into another side first if a newcomer's lineage is
// bigger (planHeal).
func (m *Maps) reconcile(ctx context.Context, split bool) {
	alive := m.stableAlive(time.Now())
	m.mu.Lock()
	cur, mine := m.table, m.lineage
	if !split && !m.merging {
		m.base = mine.Hash // whole: this is the cluster's lineage
	}
	m.mu.Unlock()
	if m.dropStale(ctx, alive, cur, mine) {
		return
	}
	if slices.Equal(alive, cur.Members) {
		return
	}
	// The lineages of the newcomers, asked again every round until they
	// are in the table.
	sides := map[string]side{}
	for _, n := range alive {
		// This node itself is out of its table while it merges: its side
		// is what it holds, not an answer to ask for.
		if n == m.cfg.Node || slices.Contains(cur.Members, n) {
			continue
		}
		s, err := m.askSide(ctx, n)
		if err != nil {
			m.log.Debug("map lineage of a new member unknown; not in the table yet", "peer", n, "error", err)
			continue
		}
		sides[n] = s
	}
	m.mu.Lock()
	merging := m.merging
	m.mu.Unlock()
	plan := planHeal(m.cfg.Node, mine, merging, cur.Members, alive, sides)
	if plan.winner != nil {
		m.mergeInto(ctx, *plan.winner, plan.members)
		return
	}
	if slices.Equal(plan.members, cur.Members) {
		return // only newcomers that have not merged into this side yet
	}
	m.mu.Lock()
	prev := m.table
	switch {
	case split && len(plan.members) < len(cur.Members):
		// Members lost in a netsplit: this side's data are a lineage of
		// their own now.
		m.lineage = Lineage{Hash: splitLineage(m.base, plan.members), Size: len(plan.members)}
	case len(plan.members) > m.lineage.Size:
		// Grown by members of its lineage (newcomers that merged into it
		// included).
		m.lineage.Size = len(plan.members)
	}
	next := partition.Compute(plan.members, m.cfg.PartitionCount, m.cfg.MaxBackups)
	work := m.planLocked(next, prev, false)
	m.mu.Unlock()
	m.start(ctx, work)
}

// askSide asks member n for its side (CallSide), for 2 s at most.
func (m *Maps) askSide(ctx context.Context, n string) (side, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	b, err := m.tr.Call(ctx, n, CallSide, nil)
	if err != nil {
		return side{}, err
	}
	var s side
	s.lineage, s.members, s.data, s.merging, err = decodeSide(b)
	return s, err
}

// staleMembers returns the members of table cur (other than self) that
// split off this node's lineage without this node seeing them go: they
// report the lineage a side of this one starts (splitLineage of this
// node's lineage and that side's members) and a table without self. That
// happens when a split heals before this node declared the other side
// gone (its table never shrank) while the other side did. sides are the
// members' answers; a member that did not answer is not stale. Other
// disagreements (a member that merged into a lineage this node has not
// met yet, while a cluster forms) are left to planHeal's rounds.
func staleMembers(self string, mine Lineage, cur []string, sides map[string]side) []string {
	var stale []string
	for _, n := range cur {
		s, ok := sides[n]
		if n == self || !ok || slices.Contains(s.members, self) || s.lineage.Hash != splitLineage(mine.Hash, s.members) {
			continue
		}
		stale = append(stale, n)
	}
	return stale
}

// dropStale checks, when members of table cur asked for this node's side
// since the last round (they do not count this node in their tables),
// whether members of cur left this node's lineage (staleMembers). If so
// it drops them from the table as a split would: this side starts a
// lineage of its own, of its true size, and the next rounds meet them as
// newcomers, the smaller lineage merging into the bigger. Without it,
// this node would report its old lineage and size, bigger than its side,
// and the other side would merge into it (or wait for it, for ever). It
// reports whether it changed the table.
func (m *Maps) dropStale(ctx context.Context, alive []string, cur partition.Table, mine Lineage) bool {
	m.mu.Lock()
	asked := len(m.askedBy) > 0
	m.askedBy = nil
	merging := m.merging
	m.mu.Unlock()
	if !asked || merging || !slices.Contains(cur.Members, m.cfg.Node) {
		// Merging, or merged and not in its own table yet: its new
		// lineage's members do not count it yet, which is no sign they
		// left it.
		return false
	}
	// Every member of the table is asked, not only those that asked:
	// the nodes of this side must all drop the same members, to start
	// the same lineage.
	sides := map[string]side{}
	for _, n := range cur.Members {
		if n == m.cfg.Node {
			continue
		}
		if s, err := m.askSide(ctx, n); err == nil {
			sides[n] = s
		}
	}
	stale := staleMembers(m.cfg.Node, mine, cur.Members, sides)
	if len(stale) == 0 {
		return false
	}
	var members []string
	for _, n := range cur.Members {
		if !slices.Contains(stale, n) && (n == m.cfg.Node || slices.Contains(alive, n)) {
			members = append(members, n)
		}
	}
	m.mu.Lock()
	if m.merging || m.lineage != mine || !slices.Equal(m.table.Members, cur.Members) {
		m.mu.Unlock()
		return false // changed meanwhile; the next round looks again
	}
	prev := m.table
	// From the lineage this side's nodes share (their netsplit states,
	// and so their bases, may differ), so that each computes the same.
	m.lineage = Lineage{Hash: splitLineage(mine.Hash, members), Size: len(members)}
	lineage := m.lineage
	next := partition.Compute(members, m.cfg.PartitionCount, m.cfg.MaxBackups)
	work := m.planLocked(next, prev, false)
	m.mu.Unlock()
	m.log.Warn("members of this node's map table left its lineage in a split it did not see; dropping them from the table, to merge by size",
		"left", stale, "members", members, "lineage", lineage)
	m.start(ctx, work)
	return true
}

// stableAlive is the view's alive members plus those of the table gone
// for less than ShrinkDelay.
func (m *Maps) stableAlive(now time.Time) []string {
	alive := m.members.Alive()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.gone == nil {
		m.gone = map[string]time.Time{}
	}
	for name := range m.gone {
		if slices.Contains(alive, name) || !slices.Contains(m.table.Members, name) {
			delete(m.gone, name)
		}
	}
	for _, name := range m.table.Members {
		if slices.Contains(alive, name) {
			continue
		}
		since, ok := m.gone[name]
		if !ok {
			m.gone[name], since = now, now
		}
		if now.Sub(since) < m.cfg.ShrinkDelay {
			alive = append(alive, name)
		}
	}
	slices.Sort(alive)
	return alive
}

// handleSide answers the cluster-merge handshake.
func (m *Maps) handleSide(from string, _ []byte) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if from != m.cfg.Node && slices.Contains(m.table.Members, from) {
		// It does not count this node in its table: see dropStale.
		if m.askedBy == nil {
			m.askedBy = map[string]struct{}{}
		}
		m.askedBy[from] = struct{}{}
		m.MembersChanged()
	}
	data := false
	for i := range m.cfg.PartitionCount {
		if m.store.Len(partition.ID(i)) > 0 {
			data = true
			break
		}
	}
	return appendSide(nil, m.lineage, m.table.Members, data, m.merging), nil
}

// Lineage returns where this node's map data come from.
func (m *Maps) Lineage() Lineage {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lineage
}
