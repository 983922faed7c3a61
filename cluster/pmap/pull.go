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

// pull is a partition to fetch, from the first source that has it. It is
// the partition's pull while m.pulls[p] points at it: a newer table, or a
// merge into another side, replaces it and it stops (its sources may be
// of the side this node left: asked later, they hold no copy, and the
// partition would be recreated empty though the side it is in now has
// it).
type pull struct {
	p       partition.ID
	sources []string
	// patient: this node merges into the side the sources are of, some
	// maybe not seen yet: wait for them rather than recreate the
	// partition, and ask every member of the table before recreating it.
	patient bool
	// epoch is m.epoch when the pull was planned (see install).
	epoch uint64
}

// runPulls fetches partitions, a few at a time.
func (m *Maps) runPulls(ctx context.Context, pulls []*pull) {
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
// link coming back after a heal), is asked again. Only when every source
// that is a member says it holds no complete copy (for a patient pull,
// every other member of the table too) is the partition recreated
// (empty): this side of a split has no copy of it.
func (m *Maps) pullOne(ctx context.Context, pl *pull) {
	wait := 20 * time.Millisecond
	patience := time.Now().Add(10 * time.Second)
	prefer := time.Now().Add(3 * time.Second)
	for ctx.Err() == nil {
		tiers, ok := m.pullSources(pl)
		if !ok {
			return
		}
		alive := m.members.Alive()
		noCopy, waiting := true, false
		for i, tier := range tiers {
			var live []string
			for _, s := range tier {
				if slices.Contains(alive, s) {
					live = append(live, s)
				}
			}
			if i == 0 {
				waiting = pl.patient && len(live) < len(tier) && time.Now().Before(patience)
			}
			none := 0
			for _, src := range live {
				cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				b, err := m.tr.Call(cctx, src, CallPull, appendPartition(nil, int(pl.p)))
				cancel()
				var items []Item
				if err == nil {
					items, err = decodeItems(b)
				}
				if err == nil {
					m.log.Debug("map partition pulled", "partition", pl.p, "source", src, "entries", len(items), "patient", pl.patient, "epoch", pl.epoch)
					if m.install(ctx, pl, items) {
						m.storePartition(items, true)
						m.stats.Migrations.Add(1)
						m.pushCopies(ctx, []partition.ID{pl.p})
					}
					return
				}
				if isRemote(err, errNoCopy) {
					none++
					m.log.Debug("map partition pull: no copy at the source", "partition", pl.p, "source", src)
					continue
				}
				m.log.Debug("map partition pull failed; trying again", "partition", pl.p, "source", src, "error", err)
				if time.Now().Before(prefer) {
					// The sources are in order of preference: the
					// owner's copy carries the entries' hits and access
					// times, a backup's does not (reads are counted at
					// the owner), and a merge policy compares them. A
					// preferred source that is busy (migrating itself,
					// or unreachable for a moment after a heal) is
					// waited for a while before the next is asked.
					break
				}
			}
			if none < len(live) || waiting {
				// A source may still give it (or, waited for, show
				// up): the rest of the table is asked only when none
				// can.
				noCopy = false
				break
			}
		}
		if noCopy {
			// Every source that is still a member holds no complete copy:
			// the partition is recreated empty.
			m.recreate(pl)
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

// pullSources returns whom pl asks, in turn: its sources, then (patient)
// the other members of the table; false if pl is not the partition's pull
// any more.
func (m *Maps) pullSources(pl *pull) ([][]string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.wantsLocked(pl) {
		return nil, false
	}
	tiers := [][]string{pl.sources}
	if pl.patient {
		var rest []string
		for _, n := range m.table.Members {
			if n != m.cfg.Node && !slices.Contains(pl.sources, n) {
				rest = append(rest, n)
			}
		}
		tiers = append(tiers, rest)
	}
	return tiers, true
}

// wantsLocked reports whether pl is the pull this node waits on.
func (m *Maps) wantsLocked(pl *pull) bool {
	return m.pulls[pl.p] == pl && m.table.Role(pl.p, m.cfg.Node) == partition.Owner && m.state[pl.p] == stMigrating
}

// recreate activates an empty partition nobody holds a copy of, if pl is
// still the pull this node waits on.
func (m *Maps) recreate(pl *pull) {
	p := pl.p
	stored := m.loadStored(p) // this node's MapStore copy, if any
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.wantsLocked(pl) {
		return
	}
	// What this node has of it (a backup's copy without the full copy,
	// say), completed by its stored entries.
	local := m.store.Copy(p)
	for _, it := range stored {
		if !slices.ContainsFunc(local, func(l Item) bool { return l.Map == it.Map && l.Key == it.Key }) {
			local = append(local, it)
		}
	}
	m.store.Replace(p, local)
	m.state[p], m.full[p], m.pulls[p] = stActive, true, nil
	m.store.Floor(p, m.seqFloor())
	m.stats.Recreated.Add(1)
	if len(stored) > 0 {
		m.log.Info("map partition recreated from the map store", "partition", p, "entries", len(stored))
	}
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

// install makes items, pulled for pl, partition p's content here and
// activates it, if this node still owns p and waits for it (by pl or by a
// newer pull of the same side: the source may have handed p over and
// drop its copy); it reports whether it did. A copy pulled before this
// node merged into another side (pl's epoch is older) is of the data it
// gave up: it is merged into the side with the rest of them rather than
// dropped, for it may be the only one.
func (m *Maps) install(ctx context.Context, pl *pull, items []Item) bool {
	p := pl.p
	m.mu.Lock()
	if pl.epoch != m.epoch {
		start := m.queueMergesLocked(items)
		m.mu.Unlock()
		if start {
			m.startSender(ctx)
		}
		return false
	}
	defer m.mu.Unlock()
	if m.table.Role(p, m.cfg.Node) != partition.Owner || m.state[p] != stMigrating {
		return false
	}
	m.store.Replace(p, items)
	m.store.Floor(p, m.seqFloor())
	m.state[p], m.full[p], m.pulls[p] = stActive, true, nil
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
