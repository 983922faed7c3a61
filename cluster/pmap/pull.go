package pmap

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mendmq/mendmq/cluster/partition"
)

// pull is a partition to fetch, from the first source that has it.
// patient: the sources are members this node is merging into, some maybe
// not seen yet: wait for them rather than recreate the partition.
type pull struct {
	p       partition.ID
	sources []string
	patient bool
}

// runPulls fetches partitions, a few at a time.
func (m *Maps) runPulls(ctx context.Context, pulls []pull) {
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for _, pl := range pulls {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			m.pullOne(ctx, pl)
		}()
	}
	wg.Wait()
}

// Wait waits for the background pulls and copies (after Run returned).
func (m *Maps) Wait() { m.wg.Wait() }

// pullOne fetches one partition from the first of its sources that gives
// it, as long as this node waits for it; a source that is itself
// migrating the partition, or that cannot be reached for a moment (a
// link coming back after a heal), is asked again. Only when no source is
// a member any more is the partition recreated (empty): this side of a
// split has no copy of it.
func (m *Maps) pullOne(ctx context.Context, pl pull) {
	wait := 20 * time.Millisecond
	patience := time.Now().Add(10 * time.Second)
	for ctx.Err() == nil && m.wants(pl.p) {
		alive := m.members.Alive()
		var sources []string
		for _, s := range pl.sources {
			if slices.Contains(alive, s) {
				sources = append(sources, s)
			}
		}
		waiting := pl.patient && len(sources) < len(pl.sources) && time.Now().Before(patience)
		if len(sources) == 0 && !waiting {
			m.recreate(pl.p)
			return
		}
		noCopy := 0
		for _, src := range sources {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			b, err := m.tr.Call(cctx, src, CallPull, appendPartition(nil, int(pl.p)))
			cancel()
			var items []Item
			if err == nil {
				items, err = decodeItems(b)
			}
			if err == nil {
				if m.install(pl.p, items) {
					m.storePartition(items, true)
				}
				m.stats.Migrations.Add(1)
				m.pushCopies(ctx, []partition.ID{pl.p})
				return
			}
			if isRemote(err, errNoCopy) {
				noCopy++
			}
			m.log.Debug("map partition pull failed; trying again", "partition", pl.p, "source", src, "error", err)
		}
		if noCopy == len(sources) && !waiting {
			// Every source that is still a member holds no complete copy:
			// the partition is recreated empty.
			m.recreate(pl.p)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

// recreate activates an empty partition p nobody holds a copy of, if this
// node still waits for it.
func (m *Maps) recreate(p partition.ID) {
	stored := m.loadStored(p) // this node's MapStore copy, if any
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.table.Role(p, m.cfg.Node) == partition.Owner && m.state[p] == stMigrating {
		// What this node has of it (a backup's copy without the full
		// copy, say), completed by its stored entries.
		local := m.store.Copy(p)
		for _, it := range stored {
			if !slices.ContainsFunc(local, func(l Item) bool { return l.Map == it.Map && l.Key == it.Key }) {
				local = append(local, it)
			}
		}
		m.store.Replace(p, local)
		m.state[p], m.full[p] = stActive, true
		m.store.Floor(p, m.seqFloor())
		m.stats.Recreated.Add(1)
		if len(stored) > 0 {
			m.log.Info("map partition recreated from the map store", "partition", p, "entries", len(stored))
		}
	}
}

// wants reports whether this node still waits for partition p.
func (m *Maps) wants(p partition.ID) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.table.Role(p, m.cfg.Node) == partition.Owner && m.state[p] == stMigrating
}

var (
	errPullRetry = errors.New("pmap: partition is migrating here too; retry")
	errNoCopy    = errors.New("pmap: no complete copy of the partition here")
)

// isRemote reports whether err is (or a peer answered) target: an error
// crosses the data plane as its text.
func isRemote(err, target error) bool {
	return err != nil && (errors.Is(err, target) || strings.Contains(err.Error(), target.Error()))
}

// install makes items partition p's content here and activates it, if
// this node still owns it and waits for it; it reports whether it did.
func (m *Maps) install(p partition.ID, items []Item) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.table.Role(p, m.cfg.Node) != partition.Owner || m.state[p] != stMigrating {
		return false
	}
	m.store.Replace(p, items)
	m.store.Floor(p, m.seqFloor())
	m.state[p], m.full[p] = stActive, true
	return true
}

// handlePull gives a new owner partition p: this node's complete copy.
// A node that owns p in its own table answers "retry": either it has not
// adopted the puller's newer table yet (once it has, it owns p no more,
// takes no more writes for it, and gives the copy with every write it
// took), or the puller's table is the older one (the puller stops
// wanting p when it catches up). A former owner hands p over: it drops
// its copy once it is sure the new owner has it.
func (m *Maps) handlePull(from string, payload []byte) ([]byte, error) {
	pi, rest, err := decodePartition(payload, m.cfg.PartitionCount)
	if err != nil {
		m.stats.BadMessages.Add(1)
		return nil, err
	}
	p := partition.ID(pi)
	asBackup := len(rest) == 1 && rest[0] == 1 // a backup wants the owner's copy
	m.mu.Lock()
	defer m.mu.Unlock()
	role := m.table.Role(p, m.cfg.Node)
	if asBackup {
		if role != partition.Owner || m.state[p] != stActive || !m.full[p] {
			return nil, errPullRetry
		}
		return appendItems(nil, m.store.Copy(p)), nil
	}
	if role == partition.Owner {
		return nil, errPullRetry
	}
	if !m.full[p] {
		return nil, errNoCopy
	}
	if role == partition.None {
		m.state[p], m.handedTo[p] = stHanded, from
	}
	return appendItems(nil, m.store.Copy(p)), nil
}
