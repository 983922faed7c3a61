package replica

import (
	"fmt"
	"slices"
	"time"

	"github.com/mendmq/mendmq/cluster/dvv"
)

// Delta is the full replicated state of one key: what a node broadcasts
// after a change and what anti-entropy and snapshots carry. Applying a
// delta twice, or an old one, is harmless.
type Delta struct {
	Table string
	Key   string
	// Versions is the key's version set (never empty in a valid delta).
	Versions dvv.Set[Sibling]
}

// Change is how the resolved value of a key moved. An absent key reads as a
// tombstone (Deleted true).
type Change struct {
	Table, Key string
	Old, New   Sibling
}

// Changed reports whether the resolved payload changed: presence, or the
// value bytes. Metadata-only changes (a write-back of the same value) do
// not count, so indices keyed on the payload can skip them.
func (c Change) Changed() bool {
	return !samePayload(c.Old, c.New)
}

// Update is the outcome of a Store mutation.
type Update struct {
	Change
	// Out holds the deltas to broadcast to every peer: the write itself
	// for Put and Delete, a resolution write-back for Apply and Resolve.
	// Often empty for Apply.
	Out []Delta
	// Pending is set by Apply when the key, of a Deferred table, holds
	// distinct concurrent payloads that no resolver has decided: the
	// resolved value stays what it was (Change.New == Change.Old) until
	// the caller resolves the key (Conflict, then Resolve).
	Pending bool
}

// Store is one node's replica of all tables. See the package documentation
// for the model; a Store is not safe for concurrent use.
type Store struct {
	cfg    Config
	tables map[string]*table
	// horizon is now-TombstoneGrace (unix ms) at the last GC: tombstones
	// older than it are gone here and must not come back through Apply.
	horizon int64
	// clock is the latest wall-clock reading (unix ms) passed to Put,
	// Delete or GC, minInt64 before the first. Write-backs floor their
	// counters at it: a write-back's dot must be new, and after a restart
	// or a GC this store no longer knows the counters it issued for a key,
	// only that they are below its clock (see Apply).
	clock int64
}

type table struct {
	name    string
	buckets []bucket
	live    int // keys whose resolved value is live
}

type bucket struct {
	sum     uint64 // XOR of entry hashes: the digest
	entries map[string]*entry
}

type entry struct {
	versions dvv.Set[Sibling]
	hash     uint64  // this entry's share of its bucket's sum
	res      Sibling // resolved value, cached
	maxTS    int64   // largest sibling timestamp
	tomb     bool    // every sibling is a tombstone (GC candidate)
	// pending: a Deferred table's key with unresolved distinct payloads;
	// res is the value resolved before they arrived.
	pending bool
}

// New returns an empty Store, or the Config's validation error.
func New(cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.DefaultResolver == nil {
		cfg.DefaultResolver = LatestWins
	}
	return &Store{cfg: cfg, tables: map[string]*table{}, horizon: minInt64, clock: minInt64}, nil
}

const minInt64 = -1 << 63

// Node returns the node id the store writes as.
func (s *Store) Node() string { return s.cfg.Node }

func (s *Store) resolver(table string) Resolver {
	if r, ok := s.cfg.Resolvers[table]; ok {
		return r
	}
	return s.cfg.DefaultResolver
}

func (s *Store) table(name string) *table {
	t := s.tables[name]
	if t == nil {
		t = &table{name: name, buckets: make([]bucket, s.cfg.Buckets)}
		s.tables[name] = t
	}
	return t
}

func (t *table) bucketOf(key string) *bucket {
	return &t.buckets[keyHash(key)&uint64(len(t.buckets)-1)]
}

func (t *table) get(key string) *entry {
	return t.bucketOf(key).entries[key]
}

// set installs versions for key with its resolution, keeping the digest
// and counters current.
func (t *table) set(key string, old *entry, versions dvv.Set[Sibling], res Sibling) *entry {
	b := t.bucketOf(key)
	if old != nil {
		b.sum ^= old.hash
		if old.res.Live() {
			t.live--
		}
	}
	e := &entry{versions: versions, res: res, tomb: true, maxTS: minInt64}
	for _, v := range versions.All() {
		e.maxTS = max(e.maxTS, v.TS)
		if !v.Deleted {
			e.tomb = false
		}
	}
	e.hash = entryHash(key, versions)
	b.sum ^= e.hash
	if res.Live() {
		t.live++
	}
	if b.entries == nil {
		b.entries = map[string]*entry{}
	}
	b.entries[key] = e
	return e
}

func (t *table) remove(key string, e *entry) {
	b := t.bucketOf(key)
	b.sum ^= e.hash
	if e.res.Live() {
		t.live--
	}
	delete(b.entries, key)
}

// Get returns the resolved value of key and true, or false when the key is
// absent or resolves to a tombstone. The Value is shared: do not modify it.
func (s *Store) Get(table, key string) (Sibling, bool) {
	t := s.tables[table]
	if t == nil {
		return Sibling{}, false
	}
	e := t.get(key)
	if e == nil || !e.res.Live() {
		return Sibling{}, false
	}
	return e.res, true
}

// Len returns the number of keys of table with a live resolved value.
func (s *Store) Len(table string) int {
	if t := s.tables[table]; t != nil {
		return t.live
	}
	return 0
}

// Range calls fn for every key of table with a live resolved value, in no
// particular order, until fn returns false. fn must not call the Store.
func (s *Store) Range(table string, fn func(key string, v Sibling) bool) {
	t := s.tables[table]
	if t == nil {
		return
	}
	for i := range t.buckets {
		for k, e := range t.buckets[i].entries {
			if e.res.Live() && !fn(k, e.res) {
				return
			}
		}
	}
}

// Put writes value for key at time now, superseding every version this node
// has seen. The store keeps value: the caller must not modify it afterwards.
func (s *Store) Put(table, key string, value []byte, now time.Time) (Update, error) {
	return s.write(table, key, false, value, now)
}

// Delete writes a tombstone for key at time now. Deleting a key that is
// absent, or whose versions are all tombstones already, changes nothing and
// broadcasts nothing.
func (s *Store) Delete(table, key string, now time.Time) (Update, error) {
	s.clock = max(s.clock, now.UnixMilli())
	if t := s.tables[table]; t != nil {
		if e := t.get(key); e != nil && !e.tomb {
			return s.write(table, key, true, nil, now)
		}
	}
	return Update{Change: Change{Table: table, Key: key, Old: absent, New: absent}}, nil
}

func (s *Store) write(table, key string, deleted bool, value []byte, now time.Time) (Update, error) {
	if err := checkName(table, key); err != nil {
		return Update{}, fmt.Errorf("replica: writing %s/%q: %w", table, key, err)
	}
	t := s.table(table)
	e := t.get(key)
	old := absent
	ms := now.UnixMilli()
	s.clock = max(s.clock, ms)
	var cur dvv.Set[Sibling]
	if e != nil {
		cur, old = e.versions, e.res
		ms = max(ms, e.maxTS)
	}
	if deleted {
		value = nil
	}
	sib := Sibling{Node: s.cfg.Node, TS: ms, Deleted: deleted, Value: value}
	versions := cur.Overwrite(s.cfg.Node, uint64(max(ms, 0)), sib)
	t.set(key, e, versions, sib)
	return Update{
		Change: Change{Table: table, Key: key, Old: old, New: sib},
		Out:    []Delta{{Table: table, Key: key, Versions: versions}},
	}, nil
}

// Apply merges a delta from a peer (broadcast, anti-entropy or snapshot)
// and returns the change of the key's resolved value. When the merge leaves
// concurrent versions and this node is the designated one (see the package
// documentation), it writes the resolution back and Out holds the delta to
// broadcast. Invalid deltas (empty table, key or version set) are ignored.
func (s *Store) Apply(d Delta) Update {
	noop := Update{Change: Change{Table: d.Table, Key: d.Key, Old: absent, New: absent}}
	if checkName(d.Table, d.Key) != nil || d.Versions.Len() == 0 {
		return noop
	}
	t := s.tables[d.Table]
	var e *entry
	if t != nil {
		e = t.get(d.Key)
	}
	if e == nil && s.expiredTombstones(d.Versions) {
		return noop // collected here already; do not resurrect the tombstone
	}
	if t == nil {
		t = s.table(d.Table)
	}
	var cur dvv.Set[Sibling]
	old := absent
	if e != nil {
		cur, old = e.versions, e.res
	}
	merged := dvv.Sync(cur, d.Versions)
	if e != nil && dvv.Equal(merged, cur) {
		return Update{Change: Change{Table: d.Table, Key: d.Key, Old: old, New: old}}
	}
	if s.cfg.Deferred[d.Table] {
		if distinct, _, _ := canonical(merged); len(distinct) > 1 {
			// The caller resolves it outside its lock (Conflict,
			// Resolve); until then the key reads as it did.
			t.set(d.Key, e, merged, old).pending = true
			return Update{Change: Change{Table: d.Table, Key: d.Key, Old: old, New: old}, Pending: true}
		}
	}
	res := resolve(s.resolver(d.Table), d.Table, d.Key, merged)
	up := Update{Change: Change{Table: d.Table, Key: d.Key, Old: old, New: res.value}}
	// The write-back's dot must be one this node never issued. merged
	// holds the node's latest counter for the key only if the node never
	// lost the key's state: after a restart or a GC a peer may hold a
	// later dot of this node (a delete in the same millisecond as the
	// write whose version is the last sibling here), and merged.maxTS,
	// a timestamp of that older version, does not exceed it. The node's
	// own clock does (the floor argument of Put), so a store that has not
	// read a clock since it started does not write back yet: the siblings
	// stay, still convergent, until a later change to the key.
	if res.conflict {
		merged = s.writeBack(&up, merged, res.last, res.maxTS)
	}
	t.set(d.Key, e, merged, up.New)
	return up
}

// writeBack makes up's resolved value a new version superseding merged
// if this node is the designated one (last) and it has read a clock, and
// returns the versions to keep.
func (s *Store) writeBack(up *Update, merged dvv.Set[Sibling], last string, maxTS int64) dvv.Set[Sibling] {
	if last != s.cfg.Node || s.clock == minInt64 {
		return merged
	}
	wb := Sibling{Node: s.cfg.Node, TS: maxTS, Deleted: up.New.Deleted, Value: up.New.Value}
	merged = merged.Overwrite(s.cfg.Node, uint64(max(maxTS, s.clock, 0)), wb)
	up.New = wb
	up.Out = []Delta{{Table: up.Table, Key: up.Key, Versions: merged}}
	return merged
}

// Conflict describes the unresolved concurrent payloads of a key of a
// Deferred table (see Update.Pending).
type Conflict struct {
	Table, Key string
	// Fingerprint identifies the key's version set: Resolve refuses a
	// resolution computed for another one.
	Fingerprint uint64
	// Siblings are the distinct payloads in canonical order (at least
	// two). The resolution is Fold of them, with existing = what was
	// kept so far and merging = the next sibling; it must be the same
	// on every node.
	Siblings []Sibling
}

// Conflict returns the unresolved payloads of a pending key, or false if
// the key is not pending (resolved meanwhile, overwritten, or never was).
// The Siblings share immutable values with the store.
func (s *Store) Conflict(table, key string) (Conflict, bool) {
	t := s.tables[table]
	if t == nil {
		return Conflict{}, false
	}
	e := t.get(key)
	if e == nil || !e.pending {
		return Conflict{}, false
	}
	distinct, _, _ := canonical(e.versions)
	return Conflict{Table: table, Key: key, Fingerprint: e.hash, Siblings: distinct}, true
}

// Resolve installs value, the Fold of the Conflict with fingerprint fp,
// as the resolved value of a pending key and writes it back if this node
// is the designated one (Update.Out). It returns false, changing nothing,
// if the key is no longer pending with that version set: a later delta or
// write changed it, and the key is pending again (with a new Conflict)
// or resolved.
func (s *Store) Resolve(table, key string, fp uint64, value Sibling) (Update, bool) {
	t := s.tables[table]
	if t == nil {
		return Update{}, false
	}
	e := t.get(key)
	if e == nil || !e.pending || e.hash != fp {
		return Update{}, false
	}
	if value.Deleted {
		value.Value = nil
	}
	up := Update{Change: Change{Table: table, Key: key, Old: e.res, New: value}}
	_, last, maxTS := canonical(e.versions)
	merged := s.writeBack(&up, e.versions, last, maxTS)
	t.set(key, e, merged, up.New)
	return up, true
}

// PendingKeys returns the keys of table waiting for Resolve, sorted.
func (s *Store) PendingKeys(table string) []string {
	t := s.tables[table]
	if t == nil {
		return nil
	}
	var out []string
	for i := range t.buckets {
		for k, e := range t.buckets[i].entries {
			if e.pending {
				out = append(out, k)
			}
		}
	}
	slices.Sort(out)
	return out
}

func (s *Store) expiredTombstones(versions dvv.Set[Sibling]) bool {
	for _, v := range versions.All() {
		if !v.Deleted || v.TS >= s.horizon {
			return false
		}
	}
	return true
}

// GC drops keys whose versions are all tombstones with timestamps older
// than now-TombstoneGrace, and from then on ignores deltas that would bring
// such tombstones back. It returns the number of keys dropped. GC is
// O(keys); call it every few minutes on every node: until a peer has
// collected the same tombstones the digests differ and anti-entropy
// re-sends those buckets (harmlessly: collected tombstones are not
// re-applied).
func (s *Store) GC(now time.Time) int {
	s.clock = max(s.clock, now.UnixMilli())
	horizon := now.Add(-s.cfg.TombstoneGrace).UnixMilli()
	s.horizon = max(s.horizon, horizon)
	n := 0
	for _, t := range s.tables {
		for i := range t.buckets {
			for k, e := range t.buckets[i].entries {
				if e.tomb && e.maxTS < s.horizon {
					t.remove(k, e)
					n++
				}
			}
		}
	}
	return n
}

// Snapshot returns a delta for every key of every table, tombstones
// included, for a joining node's full sync. Deltas share immutable state
// with the store.
func (s *Store) Snapshot() []Delta {
	n := 0
	for _, t := range s.tables {
		for i := range t.buckets {
			n += len(t.buckets[i].entries)
		}
	}
	out := make([]Delta, 0, n)
	names := make([]string, 0, len(s.tables))
	for name := range s.tables {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		t := s.tables[name]
		for i := range t.buckets {
			out = appendBucket(out, t, i)
		}
	}
	return out
}

// EntriesIn returns a delta for every key of table in the given buckets
// (as reported by Digest.Diff), tombstones included. Out-of-range buckets
// are ignored.
func (s *Store) EntriesIn(table string, buckets []int) []Delta {
	t := s.tables[table]
	if t == nil {
		return nil
	}
	var out []Delta
	for _, i := range buckets {
		if i >= 0 && i < len(t.buckets) {
			out = appendBucket(out, t, i)
		}
	}
	return out
}

func appendBucket(out []Delta, t *table, i int) []Delta {
	for k, e := range t.buckets[i].entries {
		out = append(out, Delta{Table: t.name, Key: k, Versions: e.versions})
	}
	return out
}

// Tables returns the names of the tables the store has seen, sorted.
func (s *Store) Tables() []string {
	names := make([]string, 0, len(s.tables))
	for name := range s.tables {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

func checkName(table, key string) error {
	switch {
	case table == "" || len(table) > maxTableLen:
		return fmt.Errorf("table name must be 1..%d bytes", maxTableLen)
	case key == "" || len(key) > MaxKeyLen:
		return fmt.Errorf("key must be 1..%d bytes", MaxKeyLen)
	}
	return nil
}
