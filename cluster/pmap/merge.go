package pmap

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/mendmq/mendmq/cluster/merge"
	"github.com/mendmq/mendmq/cluster/partition"
)

// The split-brain merge (Hazelcast's): a node of the smaller side of a
// healed split pauses its map operations, takes the entries it owned,
// drops all its map data, joins the bigger side's partition table (pulling
// the partitions it now owns from the bigger side) and sends its entries
// in batches of MergeBatchSize to their owners, which decide each one with
// the map's policy: merge(mapName, merging, existing). Then it serves
// again.

// errMergeRetry: the owner cannot merge the batch now (not the owner of
// some entry, or migrating): the sender resolves the owners and tries
// again.
var errMergeRetry = errors.New("pmap: not the active owner of every entry; retry the merge")

// mergeTimeout bounds the whole merge of one node's entries.
const mergeTimeout = 5 * time.Minute

// MergeProgress is a merge under way (or the last one).
type MergeProgress struct {
	Started, Finished time.Time
	Total, Done       int
	Failed            int
}

// mergeInto merges this node's data into the bigger side w, members
// being its next table (planHeal).
func (m *Maps) mergeInto(ctx context.Context, w side, members []string) {
	m.mu.Lock()
	// The entries this node owns, as Hazelcast merges them: each entry
	// of the smaller side goes through the policy once (a policy that
	// adds, say, must not see it twice). Its backups are dropped with the
	// rest: their owners send them.
	// The snapshot is sized once and not sorted (the order of a merge
	// does not matter): for 1M entries, growing and sorting it cost more
	// than a second under the lock, and its garbage more in collections.
	var owned []partition.ID
	n := 0
	for i := range m.cfg.PartitionCount {
		p := partition.ID(i)
		if m.table.Role(p, m.cfg.Node) == partition.Owner && m.state[p] == stActive {
			owned = append(owned, p)
			n += m.store.Len(p)
		}
	}
	snap := make([]Item, 0, n)
	for _, p := range owned {
		snap = m.store.AppendTo(snap, p)
	}
	for i := range m.cfg.PartitionCount {
		m.store.Drop(partition.ID(i))
		m.state[i], m.full[i], m.kept[i] = stActive, false, time.Time{}
	}
	mySize := len(m.table.Members)
	// A node merging again before it sent everything (a bigger lineage
	// showed up during the heal) keeps what it has not sent: lineages
	// only move to bigger ones, so it ends in the biggest.
	start := m.queueMergesLocked(snap)
	m.epoch++ // pulls planned before are of the side this node leaves
	// The lineage as w reported it: its own nodes count this node in
	// when they take it into their tables, not before.
	m.lineage, m.base = w.lineage, w.lineage.Hash
	// The data dropped and the new table in one step: a merge or a
	// backup write let in between would land in a store about to be
	// replaced by the pulled copies.
	prev := partition.Compute(w.members, m.cfg.PartitionCount, m.cfg.MaxBackups)
	next := partition.Compute(members, m.cfg.PartitionCount, m.cfg.MaxBackups)
	work := m.planLocked(next, prev, true)
	lineage := m.lineage
	m.mu.Unlock()
	m.stats.Merges.Add(1)
	m.log.Warn("netsplit healed: this side is the smaller; merging its map entries into the bigger side",
		"this_side", mySize, "other_side", len(w.members), "entries", len(snap), "lineage", lineage)
	m.start(ctx, work)
	if start {
		m.startSender(ctx)
	}
}

// queueMergesLocked adds items to the entries to merge; it reports
// whether the sender must be started (none under way: it takes the new
// entries too otherwise). items become the merge's, not copied (1M
// entries are 136 MB): the caller does not use them after.
func (m *Maps) queueMergesLocked(items []Item) bool {
	if len(m.unsent) == 0 {
		m.unsent = items
	} else {
		m.unsent = append(m.unsent, items...)
	}
	start := !m.merging
	m.merging = true
	if start {
		m.progress = MergeProgress{Started: time.Now()}
	}
	m.progress.Total += len(items)
	return start
}

// startSender sends the queued entries in the background, to their
// owners in the table of the moment: membership may still change
// meanwhile.
func (m *Maps) startSender(ctx context.Context) {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		p := m.sendMerges(ctx)
		lvl := m.log.Info
		if p.Failed > 0 {
			lvl = m.log.Error
		}
		lvl("map merge after the netsplit done", "entries", p.Total, "merged", p.Done, "failed", p.Failed,
			"took", p.Finished.Sub(p.Started).Round(time.Millisecond))
	}()
}

// Progress returns the last (or running) merge of this node's entries.
func (m *Maps) Progress() MergeProgress {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.progress
}

// mergeParallelism bounds the merge batches in flight from one node.
const mergeParallelism = 16

// sendMerges sends the unsent entries to their owners in batches,
// retrying until mergeTimeout; when none is left (or time is up) it ends
// the merge and returns its progress.
func (m *Maps) sendMerges(ctx context.Context) MergeProgress {
	deadline := time.Now().Add(mergeTimeout)
	wait := 20 * time.Millisecond
	var pending []Item
	for {
		m.mu.Lock()
		if len(pending) == 0 {
			pending = m.unsent
		} else {
			pending = append(pending, m.unsent...)
		}
		m.unsent = nil
		if len(pending) == 0 || !time.Now().Before(deadline) || ctx.Err() != nil {
			// Done under the lock that queues entries: one queued from
			// now on starts a sender of its own.
			m.merging = false
			m.progress.Finished, m.progress.Failed = time.Now(), len(pending)
			p := m.progress
			m.mu.Unlock()
			if len(pending) > 0 {
				m.stats.MergeFailures.Add(uint64(len(pending)))
			}
			return p
		}
		batches := m.batchLocked(pending)
		m.mu.Unlock()
		pending = nil // in the batches now: the garbage collector may take it
		// The batches go out mergeParallelism at a time: one at a
		// time, a heal of 1M entries spends its time waiting on round
		// trips (BenchmarkMapMerge).
		var (
			retry   []Item
			lastErr error
			rmu     sync.Mutex
			wg      sync.WaitGroup
			sem     = make(chan struct{}, mergeParallelism)
		)
		for i := range batches {
			d, batch := batches[i].mergeDest, batches[i].items
			batches[i].items = nil // dropped once sent
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				var err error
				if d.owner == m.cfg.Node {
					err = m.mergeLocal(ctx, d.m, batch)
				} else {
					cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
					_, err = m.tr.Call(cctx, d.owner, CallMerge, appendMerge(nil, d.m, batch))
					cancel()
				}
				if err != nil {
					rmu.Lock()
					retry = append(retry, batch...)
					if lastErr == nil {
						lastErr = err
					}
					rmu.Unlock()
					return
				}
				if d.owner != m.cfg.Node {
					m.unstoreMerged(batch)
				}
				m.mu.Lock()
				m.progress.Done += len(batch)
				m.mu.Unlock()
				m.stats.MergedIn.Add(uint64(len(batch)))
			}()
		}
		wg.Wait()
		if len(retry) > 0 {
			m.log.Debug("map merge: entries to send again", "entries", len(retry), "batches", len(batches), "wait", wait, "error", lastErr)
			time.Sleep(wait)
			wait = min(2*wait, time.Second)
		}
		pending = retry
	}
}

// mergeDest is where a merge batch goes: an owner, a map.
type mergeDest struct{ owner, m string }

type mergeBatch struct {
	mergeDest
	items []Item
}

// batchLocked splits items into batches of at most MergeBatchSize
// entries of one map with one owner in the current table. Each batch is
// allocated at its final size and filled in the items' order; batches of
// different owners interleave, so the owners work at the same time.
func (m *Maps) batchLocked(items []Item) []mergeBatch {
	size := m.cfg.MergeBatchSize
	var out []mergeBatch
	open := map[mergeDest]int{} // the batch being filled, in out
	for i := range items {
		it := &items[i]
		d := mergeDest{m.table.Owner(m.store.Partition(it.Key)), it.Map}
		j, ok := open[d]
		if !ok || len(out[j].items) == size {
			j = len(out)
			out = append(out, mergeBatch{mergeDest: d, items: make([]Item, 0, min(size, len(items)-i))})
			open[d] = j
		}
		out[j].items = append(out[j].items, *it)
	}
	return out
}

func (m *Maps) handleMerge(from string, payload []byte) ([]byte, error) {
	name, items, err := decodeMerge(payload)
	if err != nil {
		m.stats.BadMessages.Add(1)
		return nil, err
	}
	if err := ValidName(name); err != nil {
		m.stats.BadMessages.Add(1)
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return nil, m.mergeLocal(ctx, name, items)
}

// mergeLocal merges entries of map name into the partitions this node
// owns, through the map's policy, outside the lock: the existing entries
// are read, the policy decides, and a result whose existing entry changed
// meanwhile (a write) is decided again.
func (m *Maps) mergeLocal(ctx context.Context, name string, items []Item) error {
	if m.cfg.Merger == nil {
		return errors.New("pmap: no merge policies")
	}
	for round := 0; len(items) > 0; round++ {
		if round == 5 {
			return fmt.Errorf("%w: entries kept changing", errMergeRetry)
		}
		seqs := make([]uint64, len(items))
		mitems := make([]merge.Item, len(items))
		// The views in one allocation, both sides of an entry sharing
		// its key's bytes: per entry, two views and two copies of the
		// key were four allocations.
		views := make([]merge.EntryView, 2*len(items))
		now := m.now()
		m.mu.Lock()
		for i := range items {
			it := &items[i]
			p := m.store.Partition(it.Key)
			if m.table.Role(p, m.cfg.Node) != partition.Owner || m.state[p] != stActive {
				m.mu.Unlock()
				return errMergeRetry
			}
			mv := &views[2*i]
			*mv = it.Entry.View(it.Key)
			mitems[i].Merging = mv
			if e, ok := m.store.Get(name, it.Key, now, false); ok {
				ev := &views[2*i+1]
				*ev = e.view(mv.Key)
				mitems[i].Existing, seqs[i] = ev, e.Seq
			}
		}
		m.mu.Unlock()
		res, err := m.cfg.Merger.MergeBatch(ctx, name, mitems)
		if err != nil && len(res) != len(items) {
			return fmt.Errorf("merge %d entries of map %s: %w", len(items), name, err)
		}
		var redo, written []Item

		backups := map[string][]Item{}
		m.mu.Lock()
		for i, it := range items {
			r := res[i]
			if r.Unmerged {
				redo = append(redo, it)
				continue
			}
			p := m.store.Partition(it.Key)
			cur, ok := m.store.Get(name, it.Key, now, false)
			if (ok && cur.Seq != seqs[i]) || (!ok && seqs[i] != 0) || m.table.Role(p, m.cfg.Node) != partition.Owner {
				redo = append(redo, it) // written meanwhile: decide again
				continue
			}
			var w Item
			switch r.Verdict {
			case merge.TakeMerging:
				e := m.store.Write(name, it.Key, it.Entry)
				w = Item{Map: name, Key: it.Key, Entry: e}
				m.stats.MergeReplaced.Add(1)
			case merge.Put:
				e := m.store.Write(name, it.Key, FromView(r.Entry))
				w = Item{Map: name, Key: it.Key, Entry: e}
				m.stats.MergeReplaced.Add(1)
			case merge.Delete:
				e, found := m.store.Delete(name, it.Key)
				if !found {
					m.stats.MergeKept.Add(1)
					continue
				}
				w = Item{Map: name, Key: it.Key, Entry: e, Deleted: true}
				m.stats.MergeDeleted.Add(1)
			default:
				if r.ConflictID != 0 {
					m.stats.MergeParked.Add(1)
				} else {
					m.stats.MergeKept.Add(1)
				}
				continue
			}
			m.stats.Merged.Add(1)
			written = append(written, w)

			for _, b := range m.backupsLocked(p, m.cfg.Map(name)) {
				backups[b] = append(backups[b], w)
			}
		}
		m.mu.Unlock()
		for b, its := range backups {
			m.replicate([]string{b}, its, true)
		}
		m.persist(written)
		if err != nil && len(redo) > 0 {
			return fmt.Errorf("merge map %s: %d entries undecided: %w", name, len(redo), err)
		}
		items = slices.Clip(redo)
	}
	return nil
}

// Merge runs merging, an entry of map name, through the map's merge
// policy at the key's owner against the entry there, as a heal does (an
// operator re-running a parked conflict). It retries while the partition
// moves, until ctx ends. A policy that fails again parks the entry anew,
// on the owner.
func (m *Maps) Merge(ctx context.Context, name string, merging merge.EntryView) error {
	key := string(merging.Key)
	if err := errors.Join(ValidName(name), ValidKey(key)); err != nil {
		return err
	}
	items := []Item{{Map: name, Key: key, Entry: FromView(&merging)}}
	p := m.store.Partition(key)
	wait := 5 * time.Millisecond
	for {
		m.mu.Lock()
		owner := m.table.Owner(p)
		m.mu.Unlock()
		var err error
		if owner == m.cfg.Node {
			err = m.mergeLocal(ctx, name, items)
		} else {
			_, err = m.tr.Call(ctx, owner, CallMerge, appendMerge(nil, name, items))
		}
		if err == nil {
			return nil
		}
		if !isRemote(err, errMergeRetry) && ctx.Err() == nil && owner == m.cfg.Node {
			return fmt.Errorf("merge map %s key %q: %w", name, key, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: merge map %s key %q: %v", ErrUnavailable, name, key, err)
		case <-time.After(wait):
		}
		wait = min(2*wait, 200*time.Millisecond)
	}
}
