package pmap

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mendmq/mendmq/cluster/dataplane"
	"github.com/mendmq/mendmq/cluster/merge"
	"github.com/mendmq/mendmq/cluster/partition"
)

// Errors of map operations.
var (
	// ErrRefused: split-brain protection refused the operation (the
	// cluster is smaller than the map's min_cluster_size).
	ErrRefused = errors.New("pmap: refused")
	// ErrUnavailable: the operation did not complete before its
	// deadline (the owner unreachable, a migration or merge too long).
	ErrUnavailable = errors.New("pmap: map operation did not complete")
	// ErrInvalid: a bad map name, key or value.
	ErrInvalid = errors.New("pmap: invalid")
)

// Limits of names, keys and values.
const (
	MaxNameLen = 255
	MaxKeyLen  = 4096
	MaxValue   = maxValue
)

// MapConfig is one map's settings (maps.<name>; maps.default for maps
// without their own entry).
type MapConfig struct {
	// BackupCount is how many backups keep a copy of each partition
	// (0-3). Default 1.
	BackupCount int
	// AsyncBackups: an owner answers before its backups applied a write
	// (faster; a write can be lost if the owner dies right after).
	AsyncBackups bool
	// MinClusterSize: with fewer members, writes (and reads with
	// ReadQuorum) are refused — Hazelcast's split-brain protection. 0:
	// never.
	MinClusterSize int
	ReadQuorum     bool
	// ReadFromBackup lets a node that holds a backup copy answer reads
	// itself (possibly stale by one write).
	ReadFromBackup bool
	// TTL and MaxIdle of entries written without their own (0: none).
	TTL, MaxIdle time.Duration
	// MapStore is StoreWriteThrough, StoreWriteBehind or StoreNone.
	MapStore string
}

// Config configures Maps.
type Config struct {
	// Node is this node's name.
	Node string
	// PartitionCount is maps.partition_count (271); the same on every
	// node.
	PartitionCount int
	// MaxBackups is the table's backups per partition: the most any map
	// uses. Default 1.
	MaxBackups int
	// MergeBatchSize is maps.merge_batch_size: entries per merge call
	// after a heal. Default 100.
	MergeBatchSize int
	// Map returns a map's settings (hot reload: read per operation).
	Map func(name string) MapConfig
	// Merger decides merges after a heal (the maps' policies).
	Merger merge.Merger
	// Store is the MapStore of maps with map_store set; nil: none.
	Store MapStore
	// ShrinkDelay is how long a member must stay gone before the table
	// drops it: a member lost for a moment (stale gossip about it from the
	// other side of a healing split) must not start a lineage and a
	// merge. Its partitions are unavailable meanwhile. Default 1s.
	ShrinkDelay time.Duration
	// Now is the clock (tests skew it). Default time.Now.
	Now func() time.Time
	// Logger carries the node attribute.
	Logger *slog.Logger
}

// Transport is what the maps need from the data plane.
type Transport interface {
	Send(peer string, typ uint8, payload []byte) error
	Call(ctx context.Context, peer string, typ uint8, payload []byte) ([]byte, error)
}

// Members is what the maps need from the members view.
type Members interface {
	// Alive returns the routable members, this node included, sorted.
	Alive() []string
}

// pstate is a partition's state at this node.
type pstate uint8

const (
	stActive    pstate = iota // serves as its role says
	stMigrating               // new owner waiting for its copy: retry
	stHanded                  // a new owner pulled it from here: retry
)

// Maps is a node's part of the partitioned maps.
type Maps struct {
	cfg     Config
	log     *slog.Logger
	tr      Transport
	members Members

	mu    sync.Mutex
	store *Store
	table partition.Table
	state []pstate
	// full[p]: this node holds a complete copy of partition p (an owner
	// that has it, a backup its owner copied it to, a former owner not
	// pulled yet): it may be pulled from.
	full []bool
	// handedTo[p] is the node that pulled partition p from here.
	handedTo []string
	// kept[p]: since when this node keeps a copy of p it holds no role
	// for any more (zero: none).
	kept []time.Time
	// lineage identifies where this node's map data come from: the
	// nodes of one cluster share it, the sides of a split get their own,
	// so that when sides meet again the smaller lineage merges into the
	// bigger (see Lineage). base is the lineage hash of the whole cluster
	// before the split.
	lineage Lineage
	base    uint64
	// merging: this node is merging its entries into the bigger side of
	// a healed split; operations are answered "retry" meanwhile.
	merging bool
	// leaving: this node stops (Leaving); it serves no operation any
	// more, so none is acknowledged here after a backup took over.
	leaving bool
	unsent  []Item // entries this node merges into a bigger side, not sent yet
	// epoch counts this node's merges into other sides (its data
	// dropped each time).
	epoch uint64
	// pulls[p] is the pull partition p waits on (nil: none).
	pulls    []*pull
	progress MergeProgress
	changed  chan struct{}
	wg       sync.WaitGroup       // background pulls and copies
	gone     map[string]time.Time // members missing from the view since, still in the table
	// askedBy holds the members of this node's table that asked for its
	// side (lineage.go): they do not count this node in their table, so
	// they may have left its lineage in a split this node never saw.
	askedBy  map[string]struct{}
	dirty    map[[2]string]struct{} // (map, key) waiting for the MapStore
	flushing int                    // dirty entries flush is writing
	// disowned[p]: since when this node no longer owns partition p,
	// which it stored as owner (unstoreDisowned deletes that copy once
	// the new owner had time to store it).
	disowned map[partition.ID]time.Time

	stats Stats
}

// Stats are the maps' counters.
type Stats struct {
	Ops, Retries, Refused              atomic.Uint64
	Migrations, Promotions, Recreated  atomic.Uint64
	BackupFailures                     atomic.Uint64
	MergedIn, Merged, MergeKept        atomic.Uint64
	MergeReplaced, MergeDeleted        atomic.Uint64
	MergeParked, MergeFailures, Merges atomic.Uint64
	BadMessages                        atomic.Uint64
	Stored, StoreFailures, Loaded      atomic.Uint64
}

// New returns the maps of node cfg.Node and registers their calls on mux.
// Run drives migrations and merges.
func New(cfg Config, tr Transport, members Members, mux *dataplane.Mux) (*Maps, error) {
	if cfg.PartitionCount <= 0 {
		cfg.PartitionCount = partition.DefaultCount
	}
	if cfg.MaxBackups <= 0 {
		cfg.MaxBackups = 1
	}
	if cfg.MergeBatchSize <= 0 {
		cfg.MergeBatchSize = 100
	}
	if cfg.Map == nil {
		cfg.Map = func(string) MapConfig { return MapConfig{BackupCount: 1} }
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ShrinkDelay <= 0 {
		cfg.ShrinkDelay = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	var seed [8]byte
	_, _ = rand.Read(seed[:])
	m := &Maps{cfg: cfg, log: cfg.Logger, tr: tr, members: members, store: NewStore(cfg.PartitionCount),
		state: make([]pstate, cfg.PartitionCount), full: make([]bool, cfg.PartitionCount), handedTo: make([]string, cfg.PartitionCount), kept: make([]time.Time, cfg.PartitionCount), pulls: make([]*pull, cfg.PartitionCount), changed: make(chan struct{}, 1),
		lineage: Lineage{Hash: binary.BigEndian.Uint64(seed[:]), Size: 1}}
	m.base = m.lineage.Hash
	m.table = partition.Compute([]string{cfg.Node}, cfg.PartitionCount, cfg.MaxBackups)
	for i := range m.full {
		m.full[i] = true // alone: owner of every partition
	}
	// What this node stored before a restart: its own, to be merged into
	// the cluster when it joins one.
	for _, it := range m.loadStored(-1) {
		m.store.Apply(it)
		m.stats.Loaded.Add(1)
	}
	if n := m.stats.Loaded.Load(); n > 0 {
		m.log.Info("map entries loaded from the map store", "entries", n)
	}
	if mux != nil {
		err := errors.Join(
			mux.HandleCallFunc(CallOp, false, m.handleOp),
			mux.HandleCallFunc(CallBackup, false, m.handleBackup),
			mux.HandleFrameFunc(FrameBackup, func(from string, p []byte) { _, _ = m.handleBackup(from, p) }),
			mux.HandleCallFunc(CallPull, false, m.handlePull),
			mux.HandleCallFunc(CallCopy, false, m.handleCopy),
			mux.HandleCallFunc(CallSide, false, m.handleSide),
			mux.HandleCallFunc(CallMerge, false, m.handleMerge),
			mux.HandleCallFunc(CallStats, false, func(string, []byte) ([]byte, error) { return json.Marshal(m.LocalStats()) }),
		)
		if err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Stats returns the counters.
func (m *Maps) Stats() *Stats { return &m.stats }

// Leaving makes this node answer every map operation "retry" from now on:
// it is about to leave the membership, and the other members promote the
// backups of its partitions when they see it gone. An operation it
// acknowledged after that would be on no copy they use. Called before
// the leave is announced; the callers retry at the next owner.
func (m *Maps) Leaving() {
	m.mu.Lock()
	m.leaving = true
	m.mu.Unlock()
}

func (m *Maps) now() int64 { return m.cfg.Now().UnixMilli() }

// ValidName reports whether name is a valid map name: 1-255 bytes,
// letters, digits, '-', '_', '.', ':', '/'.
func ValidName(name string) error {
	if name == "" || len(name) > MaxNameLen {
		return fmt.Errorf("%w map name %q: 1 to %d bytes", ErrInvalid, name, MaxNameLen)
	}
	for _, c := range []byte(name) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.', c == ':', c == '/':
		default:
			return fmt.Errorf("%w map name %q: only letters, digits and - _ . : / (not %q)", ErrInvalid, name, c)
		}
	}
	if name[0] == '$' {
		return fmt.Errorf("%w map name %q: names starting with $ are reserved", ErrInvalid, name)
	}
	return nil
}

// ValidKey reports whether key is a valid key: 1-4096 bytes of UTF-8
// without control characters.
func ValidKey(key string) error {
	if key == "" || len(key) > MaxKeyLen {
		return fmt.Errorf("%w key: 1 to %d bytes", ErrInvalid, MaxKeyLen)
	}
	for _, r := range key {
		if r < 0x20 || r == 0x7f || r == 0xfffd {
			return fmt.Errorf("%w key %q: control characters and invalid UTF-8 are not allowed", ErrInvalid, key)
		}
	}
	return nil
}

// Get returns the entry of key in map name (a read counts as a hit).
func (m *Maps) Get(ctx context.Context, name, key string) (Entry, bool, error) {
	if err := errors.Join(ValidName(name), ValidKey(key)); err != nil {
		return Entry{}, false, err
	}
	e, st, err := m.do(ctx, request{op: opGet, m: name, key: key})
	return e, st == stFound, err
}

// Put writes key's value in map name; ttl 0 takes the map's.
func (m *Maps) Put(ctx context.Context, name, key string, value []byte, ttl time.Duration) (Entry, error) {
	if err := errors.Join(ValidName(name), ValidKey(key)); err != nil {
		return Entry{}, err
	}
	if len(value) > MaxValue {
		return Entry{}, fmt.Errorf("%w value: %d bytes, at most %d", ErrInvalid, len(value), MaxValue)
	}
	mc := m.cfg.Map(name)
	if ttl == 0 {
		ttl = mc.TTL
	}
	e, _, err := m.do(ctx, request{op: opPut, m: name, key: key, value: value, ttl: ttl.Milliseconds(), maxIdle: mc.MaxIdle.Milliseconds()})
	return e, err
}

// Delete removes key from map name; it reports whether it was there.
func (m *Maps) Delete(ctx context.Context, name, key string) (bool, error) {
	if err := errors.Join(ValidName(name), ValidKey(key)); err != nil {
		return false, err
	}
	_, st, err := m.do(ctx, request{op: opDelete, m: name, key: key})
	return st == stFound, err
}

// do sends an operation to the key's owner, retrying while the cluster
// moves the partition, until ctx ends.
func (m *Maps) do(ctx context.Context, q request) (Entry, uint8, error) {
	m.stats.Ops.Add(1)
	p := m.store.Partition(q.key)
	wait := 5 * time.Millisecond
	var last string
	for {
		m.mu.Lock()
		owner := m.table.Owner(p)
		local := q.op == opGet && m.cfg.Map(q.m).ReadFromBackup && m.table.Role(p, m.cfg.Node) == partition.Backup && m.state[p] == stActive
		m.mu.Unlock()
		var st uint8
		var e Entry
		var reason string
		if owner == m.cfg.Node || local {
			st, e, reason = m.serve(q, local)
		} else {
			b, err := m.tr.Call(ctx, owner, CallOp, q.append(nil))
			if err == nil {
				st, e, reason, err = decodeReply(b)
			}
			if err != nil {
				st, reason = stRetry, fmt.Sprintf("owner %s: %v", owner, err)
			}
		}
		switch st {
		case stRefused:
			m.stats.Refused.Add(1)
			return Entry{}, st, fmt.Errorf("%w: %s", ErrRefused, reason)
		case stRetry:
			m.stats.Retries.Add(1)
			last = reason
			select {
			case <-ctx.Done():
				return Entry{}, st, fmt.Errorf("%w: map %s key %q: %s", ErrUnavailable, q.m, q.key, last)
			case <-time.After(wait):
			}
			wait = min(2*wait, 200*time.Millisecond)
			continue
		}
		return e, st, nil
	}
}

// serve runs an operation at this node, the key's owner (or, for a read
// from a backup, one of its backups).
func (m *Maps) serve(q request, fromBackup bool) (uint8, Entry, string) {
	mc := m.cfg.Map(q.m)
	now := m.now()
	m.mu.Lock()
	p := m.store.Partition(q.key)
	switch {
	case m.leaving:
		m.mu.Unlock()
		return stRetry, Entry{}, "this node is leaving the cluster"
	case m.merging:
		m.mu.Unlock()
		return stRetry, Entry{}, "this node is merging its entries after a netsplit"
	case m.state[p] != stActive:
		m.mu.Unlock()
		return stRetry, Entry{}, fmt.Sprintf("partition %d is migrating", p)
	case !fromBackup && m.table.Role(p, m.cfg.Node) != partition.Owner:
		m.mu.Unlock()
		return stRetry, Entry{}, fmt.Sprintf("not the owner of partition %d", p)
	}
	if mc.MinClusterSize > 0 && len(m.table.Members) < mc.MinClusterSize && (q.op != opGet || mc.ReadQuorum) {
		n := len(m.table.Members)
		m.mu.Unlock()
		return stRefused, Entry{}, fmt.Sprintf("map %s: this side of the cluster has %d members, fewer than maps.%s.min_cluster_size (%d)", q.m, n, q.m, mc.MinClusterSize)
	}
	var (
		it    Item
		found bool
		e     Entry
	)
	switch q.op {
	case opGet:
		e, found = m.store.Get(q.m, q.key, now, !fromBackup)
		m.mu.Unlock()
		if found {
			return stFound, e, ""
		}
		return stNotFound, Entry{}, ""
	case opPut:
		e, found = m.store.Put(q.m, q.key, q.value, q.ttl, q.maxIdle, now), true
		it = Item{Map: q.m, Key: q.key, Entry: e}
	case opDelete:
		e, found = m.store.Delete(q.m, q.key)
		if !found {
			m.mu.Unlock()
			return stNotFound, Entry{}, ""
		}
		it = Item{Map: q.m, Key: q.key, Entry: e, Deleted: true}
	}
	backups := m.backupsLocked(p, mc)
	m.mu.Unlock()
	m.replicate(backups, []Item{it}, !mc.AsyncBackups)
	m.persist([]Item{it})
	if !it.Deleted && mc.MapStore == StoreWriteThrough {
		e, _ = m.Local(q.m, q.key) // with its LastStoredTime
	}
	return stFound, e, ""
}

func (m *Maps) backupsLocked(p partition.ID, mc MapConfig) []string {
	b := m.table.Backups(p)
	return slices.Clone(b[:min(len(b), max(mc.BackupCount, 0))])
}

// replicate sends an owner's writes to backups: sync waits for each.
func (m *Maps) replicate(backups []string, items []Item, wait bool) {
	if len(backups) == 0 || len(items) == 0 {
		return
	}
	payload := appendItems(nil, items)
	if !wait {
		for _, b := range backups {
			if err := m.tr.Send(b, FrameBackup, payload); err != nil {
				m.stats.BackupFailures.Add(1)
			}
		}
		return
	}
	var wg sync.WaitGroup
	for _, b := range backups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, err := m.tr.Call(ctx, b, CallBackup, payload); err != nil {
				// The owner rewrites the backup when the table changes;
				// until then this write has one copy fewer.
				m.stats.BackupFailures.Add(1)
				m.log.Debug("map backup not confirmed", "backup", b, "error", err)
			}
		}()
	}
	wg.Wait()
}

func (m *Maps) handleOp(from string, payload []byte) ([]byte, error) {
	q, err := decodeRequest(payload)
	if err != nil {
		m.stats.BadMessages.Add(1)
		return nil, err
	}
	if err := errors.Join(ValidName(q.m), ValidKey(q.key)); err != nil {
		m.stats.BadMessages.Add(1)
		return nil, err
	}
	st, e, reason := m.serve(q, false)
	return appendReply(nil, st, &e, reason), nil
}

// handleBackup applies an owner's writes at a backup.
func (m *Maps) handleBackup(from string, payload []byte) ([]byte, error) {
	items, err := decodeItems(payload)
	if err != nil {
		m.stats.BadMessages.Add(1)
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, it := range items {
		p := m.store.Partition(it.Key)
		// Only a holder of the partition keeps it (a late write for a
		// partition that moved away is dropped: the new owner has it).
		if m.table.Role(p, m.cfg.Node) != partition.None {
			m.store.Apply(it)
		}
	}
	return nil, nil
}

// ClusterStats asks every alive member for its share of the maps; a
// member that does not answer is listed in the errors.
func (m *Maps) ClusterStats(ctx context.Context) (map[string]MemberStats, map[string]string) {
	out, errs := map[string]MemberStats{}, map[string]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, name := range m.members.Alive() {
		if name == m.cfg.Node {
			st := m.LocalStats()
			mu.Lock()
			out[name] = st
			mu.Unlock()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := m.tr.Call(ctx, name, CallStats, nil)
			var st MemberStats
			if err == nil {
				err = json.Unmarshal(b, &st)
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs[name] = err.Error()
				return
			}
			out[name] = st
		}()
	}
	wg.Wait()
	return out, errs
}
