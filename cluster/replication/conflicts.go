package replication

import (
	"context"
	"time"

	"github.com/mendmq/mendmq/cluster/merge"
	"github.com/mendmq/mendmq/cluster/replica"
)

// mergeRetry is the wait before conflicts the Merger left unmerged (its
// conflict store full, a call timed out) are tried again.
const mergeRetry = time.Second

// queueConflicts hands pending keys of merged tables to the merge worker.
func (r *Replicator) queueConflicts(keys []tableKey) {
	if len(keys) == 0 {
		return
	}
	r.pendMu.Lock()
	for _, k := range keys {
		r.pending[k] = struct{}{}
	}
	r.pendMu.Unlock()
	select {
	case r.pendKick <- struct{}{}:
	default:
	}
}

// mergeLoop resolves queued conflicts until ctx ends.
func (r *Replicator) mergeLoop(ctx context.Context) {
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.pendKick:
		case <-retry:
			retry = nil
		}
		r.pendMu.Lock()
		keys := make([]tableKey, 0, len(r.pending))
		for k := range r.pending {
			keys = append(keys, k)
		}
		clear(r.pending)
		r.pendMu.Unlock()
		if failed := r.resolveConflicts(ctx, keys); len(failed) > 0 {
			r.stats.MergeRetries.Add(uint64(len(failed)))
			r.pendMu.Lock()
			for _, k := range failed {
				r.pending[k] = struct{}{}
			}
			r.pendMu.Unlock()
			if retry == nil {
				retry = time.After(mergeRetry)
			}
		}
	}
}

// resolveConflicts resolves the pending keys through the Merger, batched
// per table, and installs the results; it returns the keys the Merger
// left unmerged. Keys that are no longer pending are skipped; results for
// keys that changed while the Merger ran are dropped (the change queued
// them again).
func (r *Replicator) resolveConflicts(ctx context.Context, keys []tableKey) (failed []tableKey) {
	byTable := map[string][]string{}
	for _, k := range keys {
		byTable[k.table] = append(byTable[k.table], k.key)
	}
	for table, ks := range byTable {
		m, ok := r.merged[table]
		if !ok {
			continue
		}
		r.mu.Lock()
		cs := make([]replica.Conflict, 0, len(ks))
		for _, k := range ks {
			if c, ok := r.store.Conflict(table, k); ok {
				cs = append(cs, c)
			}
		}
		r.mu.Unlock()
		if len(cs) == 0 {
			continue
		}
		values, unmerged := r.fold(ctx, m, cs)
		var out []replica.Delta
		r.mu.Lock()
		for i, c := range cs {
			if unmerged[i] {
				failed = append(failed, tableKey{table, c.Key})
				continue
			}
			up, ok := r.store.Resolve(table, c.Key, c.Fingerprint, values[i])
			if !ok {
				continue
			}
			r.stats.Merges.Add(1)
			out = append(out, up.Out...)
			if up.Changed() {
				r.notifyLocked(up.Change, true)
			}
		}
		r.mu.Unlock()
		r.Broadcast(out)
	}
	return failed
}

// fold computes replica.Fold of each conflict with the table's policy,
// one batch per fold step: the step-th sibling of every conflict that has
// one goes in one MergeBatch call. unmerged marks the conflicts the Merger
// could not decide.
func (r *Replicator) fold(ctx context.Context, m Merged, cs []replica.Conflict) (acc []replica.Sibling, unmerged []bool) {
	acc = make([]replica.Sibling, len(cs))
	unmerged = make([]bool, len(cs))
	longest := 0
	for i, c := range cs {
		acc[i] = c.Siblings[0]
		longest = max(longest, len(c.Siblings))
	}
	for step := 1; step < longest; step++ {
		var (
			idx   []int
			items []merge.Item
		)
		for i, c := range cs {
			if unmerged[i] || step >= len(c.Siblings) {
				continue
			}
			merging := c.Siblings[step]
			if m.Direct != nil {
				if s, ok := m.Direct(c.Key, acc[i], merging); ok {
					acc[i] = s
					continue
				}
			}
			ev, mv := m.View(c.Key, acc[i]), m.View(c.Key, merging)
			items = append(items, merge.Item{Merging: &mv, Existing: &ev})
			idx = append(idx, i)
		}
		if len(items) == 0 {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, r.cfg.MergeTimeout)
		res, err := r.cfg.Merger.MergeBatch(cctx, m.MapName, items)
		cancel()
		if err != nil {
			r.log.Warn("merge policy left conflicts undecided; retrying", "map", m.MapName, "entries", len(items), "error", err)
		}
		for j, i := range idx {
			if j >= len(res) || res[j].Unmerged {
				unmerged[i] = true
				continue
			}
			acc[i] = m.Decide(cs[i].Key, acc[i], cs[i].Siblings[step], res[j])
		}
	}
	for i := range acc {
		if acc[i].Deleted {
			acc[i].Value = nil
		}
	}
	return acc, unmerged
}
