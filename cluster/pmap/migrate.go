package pmap

import (
	"context"
	"slices"
	"time"

	"github.com/mendmq/mendmq/cluster/partition"
)

// Membership changes.
//
// Every node computes the partition table from the members it sees alive
// (package partition), so all agree once their views do. When the table
// changes, each partition goes where it now belongs:
//
//   - a backup that becomes owner (its owner was lost) is promoted at
//     once: it holds the data;
//   - any other new owner pulls the partition from its previous owner, or
//     from a previous backup if the owner is gone, answering "retry" to
//     operations until the copy is in; the node it pulled from stops
//     taking writes for the partition at that moment (it answers
//     "retry", so the writer finds the new owner), so no write races the
//     copy; a partition no copy of which is reachable is recreated empty;
//   - an owner (re)writes its backups with a full copy of the partition.
//
// A side of a split thus repairs itself and keeps serving. When sides
// meet again, their map data have different lineages (see Lineage): the
// nodes of the smaller lineage wipe their data, join the bigger side's
// table and merge every entry they owned into it, through the map's policy
// at the entry's new owner (merge.go) — Hazelcast's split-brain merge.

// MembersChanged tells the driver to look at the members again.
func (m *Maps) MembersChanged() {
	select {
	case m.changed <- struct{}{}:
	default:
	}
}

// Run reconciles the table with the members and expires entries until
// ctx ends. split reports whether the node is in a netsplit now (its
// shrinking membership then starts a new lineage).
func (m *Maps) Run(ctx context.Context, split func() bool) {
	t := time.NewTicker(m.cfg.ShrinkDelay / 4)
	defer t.Stop()
	lastExpire := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.changed:
		case now := <-t.C:
			if now.Sub(lastExpire) >= writeDelay {
				m.expire()
				m.flush()
				m.dropUnowned()
				m.unstoreDisowned()
				lastExpire = now
			}
		}
		m.reconcile(ctx, split())
	}
}

// seqFloor is the write-sequence floor of a partition this node takes
// over as owner (see Store.Floor).
func (m *Maps) seqFloor() uint64 { return uint64(max(m.now(), 0)) << 20 }

// work is what a new table leaves to do in the background.
type work struct {
	members             int
	pulls               []*pull
	pushes, backupPulls []partition.ID
	// promoted are the partitions a backup here took over: their entries
	// go to this node's MapStore (the lost owner's held them).
	promoted []partition.ID
}

// planLocked makes next the table: promotions at once; the pulls and
// backup copies it returns are for start. wiped means this node dropped
// its data (merging into another side): it holds no copy, whatever its
// previous role. m.mu is held: the table, the partitions' states and
// their pulls change together, so no operation, pull or merge sees one
// without the others.
func (m *Maps) planLocked(next, prev partition.Table, wiped bool) work {
	self := m.cfg.Node
	var w work
	cur := m.table
	for i := range m.cfg.PartitionCount {
		p := partition.ID(i)
		was, now := cur.Role(p, self), next.Role(p, self)
		if wiped {
			// The entries are queued to merge into the other side
			// (mergeInto): none is kept, lest a partition recreated
			// here (recreate starts from what the store holds) bring
			// back this side's entries without the policy deciding.
			was = partition.None
			m.store.Drop(p)
			m.full[p], m.kept[p] = false, time.Time{}
			if m.state[p] == stHanded {
				m.state[p] = stActive
			}
		}
		if now != partition.Owner {
			m.pulls[p] = nil // a pull under way stops: not wanted any more
			if was == partition.Owner && m.cfg.Store != nil {
				if m.disowned == nil {
					m.disowned = map[partition.ID]time.Time{}
				}
				m.disowned[p] = time.Now()
			}
		} else {
			delete(m.disowned, p)
		}
		switch now {
		case partition.Owner:
			switch {
			case m.state[p] == stMigrating && !wiped:
				// A pull for it is under way (pullOne keeps trying
				// while this node waits for the partition).
			case was == partition.Owner && m.state[p] == stActive:
				if !slices.Equal(cur.Backups(p), next.Backups(p)) {
					w.pushes = append(w.pushes, p)
				}
			case was == partition.Backup && m.full[p] && (prev.Owner(p) == "" || !slices.Contains(next.Members, prev.Owner(p))):
				// The owner is gone: the backup takes over.
				m.state[p] = stActive
				m.store.Floor(p, m.seqFloor())
				m.stats.Promotions.Add(1)
				w.pushes = append(w.pushes, p)
				w.promoted = append(w.promoted, p)
			case prev.Owner(p) == self && !wiped && m.state[p] == stActive && m.full[p]:
				w.pushes = append(w.pushes, p)
			default:
				var src []string
				if m.state[p] == stHanded && m.handedTo[p] != "" && m.handedTo[p] != self {
					// It was pulled from here: the puller may have
					// written since.
					src = append(src, m.handedTo[p])
				}
				m.state[p], m.full[p] = stMigrating, false
				for _, s := range prev.Replicas[p] {
					if s != self && !slices.Contains(src, s) {
						src = append(src, s)
					}
				}
				// This pull replaces any under way: a pull planned
				// before a merge asks the side this node left.
				pl := &pull{p: p, sources: src, patient: wiped, epoch: m.epoch}
				m.pulls[p] = pl
				w.pulls = append(w.pulls, pl)
			}
		case partition.Backup:
			// Its owner rewrites the copy (pushCopies); one that does not
			// hold a complete copy also asks for it (the owner's push may
			// have come before this node saw itself as a backup).
			m.state[p] = stActive
			if !m.full[p] {
				w.backupPulls = append(w.backupPulls, p)
			}
		case partition.None:
			if m.state[p] == stMigrating {
				m.state[p], m.full[p] = stActive, false // not wanted any more
			}
			// A former owner or backup keeps its copy until a new holder
			// pulls it (stHanded) or for keepUnowned: it may be the only
			// complete copy while the new owner is still pulling.
			if was != partition.None && m.kept[p].IsZero() {
				m.kept[p] = time.Now()
			}
		}
	}
	m.table = next
	w.members = len(next.Members)
	return w
}

// start runs a new table's pulls and copies in the background: a slow
// source must not hold up the next membership change (install checks
// that the pull is still wanted).
func (m *Maps) start(ctx context.Context, w work) {
	if len(w.pulls) > 0 || len(w.pushes) > 0 {
		m.log.Info("map partitions rebalanced", "members", w.members, "pulls", len(w.pulls), "backup_rewrites", len(w.pushes))
	}
	m.storePromoted(w.promoted)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		m.runPulls(ctx, w.pulls)
		m.pushCopies(ctx, w.pushes)
		m.fetchBackups(ctx, w.backupPulls)
		m.dropUnowned()
	}()
}

// fetchBackups asks the owners of partitions this node backs up without
// a complete copy for one.
func (m *Maps) fetchBackups(ctx context.Context, ps []partition.ID) {
	for _, p := range ps {
		for try := 0; try < 20 && ctx.Err() == nil; try++ {
			m.mu.Lock()
			owner, want := m.table.Owner(p), m.table.Role(p, m.cfg.Node) == partition.Backup && !m.full[p]
			m.mu.Unlock()
			if !want {
				break
			}
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			b, err := m.tr.Call(cctx, owner, CallPull, append(appendPartition(nil, int(p)), 1))
			cancel()
			var items []Item
			if err == nil {
				items, err = decodeItems(b)
			}
			if err == nil {
				m.takeCopy(p, items)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// pushCopies rewrites the backups of partitions this node owns.
func (m *Maps) pushCopies(ctx context.Context, ps []partition.ID) {
	for _, p := range ps {
		m.mu.Lock()
		if m.table.Role(p, m.cfg.Node) != partition.Owner || m.state[p] != stActive {
			m.mu.Unlock()
			continue
		}
		backups := slices.Clone(m.table.Backups(p))
		payload := appendItems(appendPartition(nil, int(p)), m.store.Copy(p))
		m.mu.Unlock()
		for _, b := range backups {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if _, err := m.tr.Call(cctx, b, CallCopy, payload); err != nil {
				m.stats.BackupFailures.Add(1)
				m.log.Debug("map backup copy not confirmed", "backup", b, "partition", p, "error", err)
			}
			cancel()
		}
	}
}

// handleCopy takes an owner's full copy of a partition as its backup:
// the copy, but for local entries written after it (a backup write that
// overtook the copy).
func (m *Maps) handleCopy(from string, payload []byte) ([]byte, error) {
	pi, rest, err := decodePartition(payload, m.cfg.PartitionCount)
	if err != nil {
		m.stats.BadMessages.Add(1)
		return nil, err
	}
	items, err := decodeItems(rest)
	if err != nil {
		m.stats.BadMessages.Add(1)
		return nil, err
	}
	m.takeCopy(partition.ID(pi), items)
	return nil, nil
}

// takeCopy installs an owner's full copy of p at this backup: the copy,
// but for local entries written after it (a backup write that overtook
// the copy).
func (m *Maps) takeCopy(p partition.ID, items []Item) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.table.Role(p, m.cfg.Node) != partition.Backup {
		return
	}
	var top uint64
	for _, it := range items {
		top = max(top, it.Entry.Seq)
	}
	for _, it := range m.store.Copy(p) {
		if it.Entry.Seq > top {
			items = append(items, it)
		}
	}
	m.store.Replace(p, items)
	m.state[p], m.full[p] = stActive, true
}

// keepUnowned is how long a copy of a partition this node neither owns
// nor backs up any more is kept when no new holder pulls it.
const keepUnowned = 30 * time.Second

// dropUnowned empties partitions this node neither owns nor backs up
// once a new holder took them (stHanded), or after keepUnowned.
func (m *Maps) dropUnowned() {
	m.mu.Lock()
	var gone []Item
	now := time.Now()
	for i := range m.cfg.PartitionCount {
		p := partition.ID(i)
		if m.table.Role(p, m.cfg.Node) != partition.None {
			m.kept[p] = time.Time{}
			continue
		}
		if m.state[p] == stHanded || (!m.kept[p].IsZero() && now.Sub(m.kept[p]) > keepUnowned) {
			m.kept[p] = time.Time{}
			if m.cfg.Store != nil {
				gone = append(gone, m.store.Copy(p)...)
			}
			m.store.Drop(p)
			m.state[p], m.full[p] = stActive, false
		}
	}
	m.mu.Unlock()
	m.storePartition(gone, false) // its new owner stores it
}

// expire removes expired entries of the owned partitions and tells the
// backups.
func (m *Maps) expire() {
	m.mu.Lock()
	items := m.store.Expire(m.now(), func(p partition.ID) bool {
		return m.table.Role(p, m.cfg.Node) == partition.Owner && m.state[p] == stActive
	})
	byBackups := map[string][]Item{}
	for _, it := range items {
		p := m.store.Partition(it.Key)
		for _, b := range m.backupsLocked(p, m.cfg.Map(it.Map)) {
			byBackups[b] = append(byBackups[b], it)
		}
	}
	m.mu.Unlock()
	for b, its := range byBackups {
		m.replicate([]string{b}, its, false)
	}
	m.persist(items)
}

// Table returns the partition table in use.
func (m *Maps) Table() partition.Table {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.table
}

// Settled reports whether every partition this node owns or backs up is
// active (no migration or merge under way).
func (m *Maps) Settled() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return !m.merging && len(m.unsettledLocked()) == 0
}

// Migrating returns the partitions this node holds a role for that are
// not active (migrating, or handed to a new owner).
func (m *Maps) Migrating() []partition.ID {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.unsettledLocked()
}

func (m *Maps) unsettledLocked() []partition.ID {
	var out []partition.ID
	for i := range m.cfg.PartitionCount {
		if m.table.Role(partition.ID(i), m.cfg.Node) != partition.None && m.state[i] != stActive {
			out = append(out, partition.ID(i))
		}
	}
	return out
}

// Local returns this node's own copy of key in map name, whatever its
// role (for operators and tests; no hit is counted).
func (m *Maps) Local(name, key string) (Entry, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.store.Get(name, key, m.now(), false)
}

// MemberStats are one member's share of the maps.
type MemberStats struct {
	// Partitions it owns and backs up.
	Owned   int `json:"partitions_owned"`
	Backups int `json:"partitions_backed_up"`
	// Migrating is how many of its partitions wait for a copy.
	Migrating int `json:"migrating"`
	// StoreDirty counts its entries waiting for its MapStore
	// (write-behind, a failed write-through, a promoted partition).
	StoreDirty int `json:"store_dirty"`
	// Maps by name: entries and bytes it owns, entries it backs up.
	Maps map[string]MapStats `json:"maps"`
	// Merge is this member's last merge after a netsplit.
	Merge MergeProgress `json:"merge"`
}

// MapStats are one map's entries on one member.
type MapStats struct {
	Entries      int64 `json:"entries"`
	Bytes        int64 `json:"bytes"`
	BackupCopies int64 `json:"backup_entries"`
}

// LocalStats returns this node's share of the maps.
func (m *Maps) LocalStats() MemberStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := MemberStats{Maps: map[string]MapStats{}, Merge: m.progress, Migrating: len(m.unsettledLocked()), StoreDirty: len(m.dirty) + m.flushing}
	self := m.cfg.Node
	for i := range m.cfg.PartitionCount {
		switch m.table.Role(partition.ID(i), self) {
		case partition.Owner:
			st.Owned++
		case partition.Backup:
			st.Backups++
		}
	}
	owned := m.store.Stats(func(p partition.ID) bool { return m.table.Role(p, self) == partition.Owner })
	backed := m.store.Stats(func(p partition.ID) bool { return m.table.Role(p, self) == partition.Backup })
	for name, v := range owned {
		ms := st.Maps[name]
		ms.Entries, ms.Bytes = v[0], v[1]
		st.Maps[name] = ms
	}
	for name, v := range backed {
		ms := st.Maps[name]
		ms.BackupCopies = v[0]
		st.Maps[name] = ms
	}
	return st
}
