package pmap

import (
	"context"
	"hash/fnv"
	"slices"
	"time"

	"github.com/mendmq/mendmq/cluster/partition"
)

// Lineage identifies where a node's map data come from, and how big that
// cluster was. A new node starts a lineage of its own (a random hash,
// size 1). A side of a split starts one when it loses members: its hash is
// a function of the whole cluster's lineage and of the side's members (so
// every node of the side computes the same), its size the side's. When a
// node meets a member of another lineage, the smaller lineage (fewer
// members, then the smaller hash) merges into the bigger and takes its
// lineage. A lineage grows with the members that join it or merge into
// it: a bigger lineage only gets bigger, so both nodes of a pair decide the
// same whichever asks first.
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

// side is what another node said of its map data.
type side struct {
	lineage Lineage
	members []string
	data    bool
}

// reconcile adopts the table of the alive members, merging into another
// side first if the newcomers' data have another lineage and their side
// is bigger.
func (m *Maps) reconcile(ctx context.Context, split bool) {
	alive := m.stableAlive(time.Now())
	m.mu.Lock()
	cur, mine := m.table, m.lineage
	if !split && !m.merging {
		m.base = mine.Hash // whole: this is the cluster's lineage
	}
	m.mu.Unlock()
	if slices.Equal(alive, cur.Members) {
		return
	}
	// The lineages of the newcomers: a newcomer that does not answer is
	// left out of the table until it does (the next round).
	var winner *side
	for _, n := range alive {
		if slices.Contains(cur.Members, n) {
			continue
		}
		ctx2, cancel := context.WithTimeout(ctx, 2*time.Second)
		b, err := m.tr.Call(ctx2, n, CallSide, nil)
		cancel()
		var s side
		if err == nil {
			s.lineage, s.members, s.data, err = decodeSide(b)
		}
		if err != nil {
			m.log.Debug("map lineage of a new member unknown; not in the table yet", "peer", n, "error", err)
			alive = slices.DeleteFunc(alive, func(a string) bool { return a == n })
			continue
		}
		if s.lineage.Hash == mine.Hash {
			continue
		}
		if mine.less(s.lineage) && (winner == nil || winner.lineage.less(s.lineage)) {
			winner = &s
		}
	}
	if winner != nil {
		m.mergeInto(ctx, *winner, alive)
		return
	}
	m.mu.Lock()
	prev := m.table
	switch {
	case split && len(alive) < len(cur.Members):
		// Members lost in a netsplit: this side's data are a lineage of
		// their own now.
		m.lineage = Lineage{Hash: splitLineage(m.base, alive), Size: len(alive)}
	case len(alive) > m.lineage.Size:
		// Grown: by members of its lineage, or by smaller ones that merge
		// into it (a bigger lineage only grows bigger, so every node of
		// a smaller one still decides to merge).
		m.lineage.Size = len(alive)
	}
	m.mu.Unlock()
	m.adopt(ctx, partition.Compute(alive, m.cfg.PartitionCount, m.cfg.MaxBackups), prev, false)
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
	data := false
	for i := range m.cfg.PartitionCount {
		if len(m.store.Copy(partition.ID(i))) > 0 {
			data = true
			break
		}
	}
	return appendSide(nil, m.lineage, m.table.Members, data), nil
}

// Lineage returns where this node's map data come from.
func (m *Maps) Lineage() Lineage {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lineage
}
