package pmap

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	"github.com/mendmq/mendmq/cluster/internal/wire"
	"github.com/mendmq/mendmq/cluster/partition"
)

// The MapStore: a map with maps.<name>.map_store set keeps its entries in
// the node's own storage file too (storage.path + ".cluster"), written by
// the entry's owner — at once (write-through: before the write is
// answered) or within a second (write-behind: the entry is dirty until
// then). A node stores the entries of the partitions it owns: it stores a
// partition it takes over (pulled, or promoted from its backup copy when
// the owner was lost), deletes what it hands over (a few seconds after,
// when it stays a backup: unstoreDisowned), and, merging into the bigger
// side of a healed split, deletes each entry once its owner there took
// it (unstoreMerged). A partition that
// has no copy left on this side of a split is reloaded from the store
// instead of recreated empty, and a node that restarts loads its stored
// entries and merges them into the cluster through the map's policy when
// it joins (a node alone is a lineage of its own: see Lineage).

// Store modes (maps.<name>.map_store).
const (
	StoreNone         = ""
	StoreWriteThrough = "write-through"
	StoreWriteBehind  = "write-behind"
)

// StoreOp is a write to the MapStore: a value, or nil to delete the key.
type StoreOp struct{ Key, Value []byte }

// MapStore is the storage behind maps with a map_store mode.
type MapStore interface {
	// Write applies ops in one transaction.
	Write(ops []StoreOp) error
	// ForEach calls fn with every stored key and value.
	ForEach(fn func(key, value []byte) error) error
	// Get returns key's value (the caller's to keep), nil when absent.
	Get(key []byte) ([]byte, error)
}

// ErrNoStore: this node keeps no MapStore (no storage file).
var ErrNoStore = errors.New("pmap: no map store on this node")

// Stored returns the entry of key in map name as this node's MapStore
// holds it (LastStoredTime: when it was written there), and whether it
// holds one; ErrNoStore when the node has no store. It reads the storage
// only — no lock, no map operation — so a merge policy may call it from
// inside a merge (plugins' stored_entry_v1). It does not check the map's
// map_store mode: a map whose store was switched off may still have
// entries there, and callers that care check the mode themselves.
func (m *Maps) Stored(name, key string) (Entry, bool, error) {
	if m.cfg.Store == nil {
		return Entry{}, false, ErrNoStore
	}
	v, err := m.cfg.Store.Get(storeKey(name, key))
	if err != nil {
		return Entry{}, false, fmt.Errorf("read map %s key %q from the map store: %w", name, key, err)
	}
	if v == nil {
		return Entry{}, false, nil
	}
	e, err := decodeStored(v)
	if err != nil {
		return Entry{}, false, fmt.Errorf("map %s key %q: unreadable map store entry: %w", name, key, err)
	}
	return e, true, nil
}

// stamped returns e as it is written to the store at now: with now as its
// LastStoredTime, so the stored copy (reloaded after a restart, read by a
// policy) says when it was stored.
func stamped(e Entry, now int64) *Entry {
	e.LastStoredTime = now
	return &e
}

// storeKey is an entry's key in the store: the map, NUL, the key.
func storeKey(m, key string) []byte {
	b := make([]byte, 0, len(m)+1+len(key))
	b = append(b, m...)
	b = append(b, 0)
	return append(b, key...)
}

func parseStoreKey(k []byte) (m, key string, ok bool) {
	i := bytes.IndexByte(k, 0)
	if i <= 0 || i == len(k)-1 {
		return "", "", false
	}
	return string(k[:i]), string(k[i+1:]), true
}

func decodeStored(v []byte) (Entry, error) {
	r := wire.NewReader(v)
	e := readEntry(&r)
	return e, r.Err()
}

// stored reports whether map name keeps a store, and how.
func (m *Maps) stored(name string) string {
	if m.cfg.Store == nil {
		return StoreNone
	}
	return m.cfg.Map(name).MapStore
}

// persist writes owner-side changes to the store: write-through maps at
// once, write-behind maps marked dirty for the flusher. Call without the
// lock.
func (m *Maps) persist(items []Item) {
	var ops []StoreOp
	var through []Item
	now := m.now()
	for _, it := range items {
		switch m.stored(it.Map) {
		case StoreWriteThrough:
			through = append(through, it)
			op := StoreOp{Key: storeKey(it.Map, it.Key)}
			if !it.Deleted {
				op.Value = appendEntry(nil, stamped(it.Entry, now))
			}
			ops = append(ops, op)
		case StoreWriteBehind:
			m.mu.Lock()
			if m.dirty == nil {
				m.dirty = map[[2]string]struct{}{}
			}
			m.dirty[[2]string{it.Map, it.Key}] = struct{}{}
			m.mu.Unlock()
		}
	}
	if len(ops) == 0 {
		return
	}
	if err := m.cfg.Store.Write(ops); err != nil {
		m.stats.StoreFailures.Add(uint64(len(ops)))
		m.log.Error("map store write failed; the entries stay dirty and are retried", "entries", len(ops), "error", err)
		m.mu.Lock()
		if m.dirty == nil {
			m.dirty = map[[2]string]struct{}{}
		}
		for _, it := range through {
			m.dirty[[2]string{it.Map, it.Key}] = struct{}{}
		}
		m.mu.Unlock()
		return
	}
	m.stats.Stored.Add(uint64(len(ops)))
	m.mu.Lock()
	for _, it := range through {
		if !it.Deleted {
			m.store.SetStored(it.Map, it.Key, it.Entry.Seq, now)
		}
	}
	m.mu.Unlock()
}

// flush writes the dirty entries (write-behind, and write-through ones a
// failed write left dirty) as they are now.
func (m *Maps) flush() {
	m.mu.Lock()
	if len(m.dirty) == 0 {
		m.mu.Unlock()
		return
	}
	dirty := m.dirty
	m.dirty = nil
	now := m.now()
	var ops []StoreOp
	var seqs []uint64
	var keys [][2]string
	for k := range dirty {
		p := m.store.Partition(k[1])
		if m.table.Role(p, m.cfg.Node) != partition.Owner {
			continue // handed over: the new owner stores it
		}
		op := StoreOp{Key: storeKey(k[0], k[1])}
		var seq uint64
		if e, ok := m.store.Get(k[0], k[1], now, false); ok {
			op.Value, seq = appendEntry(nil, stamped(e, now)), e.Seq
		}
		ops, seqs, keys = append(ops, op), append(seqs, seq), append(keys, k)
	}
	// Still dirty for Dirty until written and marked stored.
	m.flushing += len(keys)
	m.mu.Unlock()
	if len(ops) == 0 {
		return
	}
	if err := m.cfg.Store.Write(ops); err != nil {
		m.stats.StoreFailures.Add(uint64(len(ops)))
		m.log.Error("map store write failed; retrying", "entries", len(ops), "error", err)
		m.mu.Lock()
		m.flushing -= len(keys)
		if m.dirty == nil {
			m.dirty = map[[2]string]struct{}{}
		}
		for _, k := range keys {
			m.dirty[k] = struct{}{}
		}
		m.mu.Unlock()
		return
	}
	m.stats.Stored.Add(uint64(len(ops)))
	m.mu.Lock()
	m.flushing -= len(keys)
	for i, k := range keys {
		if seqs[i] != 0 {
			m.store.SetStored(k[0], k[1], seqs[i], now)
		}
	}
	m.mu.Unlock()
}

// storePartition stores (took) or unstores (!took) the entries of
// partition p for the maps with a store: a partition this node took over
// as owner, or handed over. items are the partition's entries.
func (m *Maps) storePartition(items []Item, took bool) {
	var ops []StoreOp
	now := m.now()
	for _, it := range items {
		if m.stored(it.Map) == StoreNone {
			continue
		}
		op := StoreOp{Key: storeKey(it.Map, it.Key)}
		if took {
			op.Value = appendEntry(nil, stamped(it.Entry, now))
		}
		ops = append(ops, op)
	}
	if len(ops) == 0 {
		return
	}
	if err := m.cfg.Store.Write(ops); err != nil {
		m.stats.StoreFailures.Add(uint64(len(ops)))
		m.log.Error("map store write of a migrated partition failed", "entries", len(ops), "error", err)
	}
}

// storePromoted marks the entries of partitions a backup here took over
// (their owner was lost) dirty in the maps with a store, so the flusher
// writes them to this node's store as they are then: until now the lost
// owner's store held them, and a restart of this side would have come
// back without them. (Dirty, not written at once: the flusher reads each
// entry when it writes, so a write that lands meanwhile is not
// overwritten by this older copy.)
func (m *Maps) storePromoted(ps []partition.ID) {
	if m.cfg.Store == nil || len(ps) == 0 {
		return
	}
	m.mu.Lock()
	var items []Item
	for _, p := range ps {
		if m.table.Role(p, m.cfg.Node) == partition.Owner {
			items = append(items, m.store.Copy(p)...)
		}
	}
	m.mu.Unlock()
	var keys [][2]string
	for _, it := range items {
		if m.stored(it.Map) != StoreNone {
			keys = append(keys, [2]string{it.Map, it.Key})
		}
	}
	if len(keys) == 0 {
		return
	}
	m.mu.Lock()
	if m.dirty == nil {
		m.dirty = map[[2]string]struct{}{}
	}
	for _, k := range keys {
		m.dirty[k] = struct{}{}
	}
	m.mu.Unlock()
}

// unstoreMerged deletes from this node's store the entries it merged
// into their owners on the bigger side after a split: the owner stores
// the outcome, and a stale copy left here would come back without the
// policy deciding (in a partition recreated here, or at a restart, which
// merges the stored entries into the cluster again). An entry whose
// partition this node owns again by now is left: its copy here is the
// stored one. The write is made under the lock so that no pull installs
// and stores the partition in between.
func (m *Maps) unstoreMerged(items []Item) {
	if m.cfg.Store == nil || len(items) == 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var ops []StoreOp
	for _, it := range items {
		if m.table.Role(m.store.Partition(it.Key), m.cfg.Node) != partition.Owner {
			ops = append(ops, StoreOp{Key: storeKey(it.Map, it.Key)})
		}
	}
	if len(ops) == 0 {
		return
	}
	if err := m.cfg.Store.Write(ops); err != nil {
		m.stats.StoreFailures.Add(uint64(len(ops)))
		m.log.Error("map store: deleting merged entries failed; they may merge again after a restart", "entries", len(ops), "error", err)
	}
}

// disownGrace is how long a former owner keeps its stored copy of a
// partition after handing it over: the new owner pulls and stores it
// within that time, normally well under a second.
const disownGrace = 5 * time.Second

// unstoreDisowned deletes from this node's store the entries of
// partitions it stored as owner and no longer owns (a join moved them,
// or it became their backup) once disownGrace has passed: their new
// owner stores them and keeps them current, and a stale copy left here
// would come back without the policy deciding, in a partition recreated
// here or at a restart.
func (m *Maps) unstoreDisowned() {
	if m.cfg.Store == nil {
		return
	}
	now := time.Now()
	m.mu.Lock()
	due := map[partition.ID]bool{}
	for p, since := range m.disowned {
		if now.Sub(since) >= disownGrace {
			due[p] = true
			delete(m.disowned, p)
		}
	}
	m.mu.Unlock()
	if len(due) == 0 {
		return
	}
	var keys [][]byte
	err := m.cfg.Store.ForEach(func(k, _ []byte) error {
		if _, key, ok := parseStoreKey(k); ok && due[m.store.Partition(key)] {
			keys = append(keys, bytes.Clone(k))
		}
		return nil
	})
	if err != nil {
		m.log.Error("map store: read it to delete the partitions handed over", "error", err)
		return
	}
	// Under the lock: a partition this node owns again by now keeps its
	// copy, and no pull installs and stores it in between.
	m.mu.Lock()
	defer m.mu.Unlock()
	var ops []StoreOp
	for _, k := range keys {
		_, key, _ := parseStoreKey(k)
		if m.table.Role(m.store.Partition(key), m.cfg.Node) != partition.Owner {
			ops = append(ops, StoreOp{Key: k})
		}
	}
	if len(ops) == 0 {
		return
	}
	if err := m.cfg.Store.Write(ops); err != nil {
		m.stats.StoreFailures.Add(uint64(len(ops)))
		m.log.Error("map store: deleting the entries of partitions handed over failed", "entries", len(ops), "error", err)
	}
}

// loadStored returns the stored entries of partition p (all partitions
// when p < 0).
func (m *Maps) loadStored(p partition.ID) []Item {
	if m.cfg.Store == nil {
		return nil
	}
	var out []Item
	err := m.cfg.Store.ForEach(func(k, v []byte) error {
		name, key, ok := parseStoreKey(k)
		if !ok {
			return nil
		}
		if p >= 0 && m.store.Partition(key) != p {
			return nil
		}
		e, err := decodeStored(v)
		if err != nil {
			m.log.Warn("unreadable map store entry skipped", "map", name, "key", key, "error", err)
			return nil
		}
		out = append(out, Item{Map: name, Key: key, Entry: e})
		return nil
	})
	if err != nil {
		m.log.Error("read the map store", "error", err)
	}
	return out
}

// Dirty counts the entries waiting for the store, including those being
// written.
func (m *Maps) Dirty() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.dirty) + m.flushing
}

// writeDelay is how often write-behind entries are flushed.
const writeDelay = time.Second
