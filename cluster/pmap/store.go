// Package pmap is the partitioned distributed map (Hazelcast's IMap):
// named maps whose entries are spread over partitions (package partition),
// each held by an owner that serves reads and writes and by backups that
// keep copies, with Hazelcast's EntryView metadata per entry and its
// split-brain merge through the map's merge policy when a netsplit heals.
//
// The Store is the pure part: one node's entries, with time as an
// argument and no I/O; the Maps driver (maps.go) moves operations,
// backups, migrations and merges over the data plane.
package pmap

import (
	"slices"

	"github.com/mendmq/mendmq/cluster/merge"
	"github.com/mendmq/mendmq/cluster/partition"
)

// Entry is one map entry with its metadata. Times are Unix ms.
type Entry struct {
	Value []byte
	// Hits counts reads at the owner.
	Hits int64
	// Version is 0 when the entry is created and +1 per update.
	Version int64
	// CreationTime, LastAccessTime (read or write), LastUpdateTime,
	// LastStoredTime (MapStore write; 0 if never).
	CreationTime, LastAccessTime, LastUpdateTime, LastStoredTime int64
	// TTL and MaxIdle in ms (0: none): the entry expires TTL after its
	// last update, or MaxIdle after its last access, whichever is first.
	TTL, MaxIdle int64
	// Seq orders the writes of the entry's partition (owner-assigned,
	// increasing): a backup or copy applies a write only over an older
	// one.
	Seq uint64
}

// ExpirationTime is when the entry expires (0: never).
func (e *Entry) ExpirationTime() int64 {
	var t int64
	if e.TTL > 0 {
		t = e.LastUpdateTime + e.TTL
	}
	if e.MaxIdle > 0 {
		if i := e.LastAccessTime + e.MaxIdle; t == 0 || i < t {
			t = i
		}
	}
	return t
}

func (e *Entry) expired(now int64) bool {
	t := e.ExpirationTime()
	return t != 0 && now >= t
}

// View is the entry as a merge policy sees it.
func (e *Entry) View(key string) merge.EntryView { return e.view([]byte(key)) }

// view is View with the key's bytes given (shared, not copied).
func (e *Entry) view(key []byte) merge.EntryView {
	return merge.EntryView{Key: key, Value: e.Value, Cost: int64(len(key) + len(e.Value)), Hits: e.Hits, Version: e.Version,
		CreationTime: e.CreationTime, LastAccessTime: e.LastAccessTime, LastUpdateTime: e.LastUpdateTime,
		LastStoredTime: e.LastStoredTime, ExpirationTime: e.ExpirationTime()}
}

// FromView is the entry a policy built (a Put verdict) or took.
func FromView(v *merge.EntryView) Entry {
	e := Entry{Value: v.Value, Hits: v.Hits, Version: v.Version, CreationTime: v.CreationTime, LastAccessTime: v.LastAccessTime,
		LastUpdateTime: v.LastUpdateTime, LastStoredTime: v.LastStoredTime}
	if v.ExpirationTime > 0 && v.ExpirationTime > v.LastUpdateTime {
		e.TTL = v.ExpirationTime - v.LastUpdateTime
	}
	return e
}

// Item is an entry with its map and key.
type Item struct {
	Map, Key string
	Entry    Entry
	// Deleted marks a deletion (a backup removes the key if its copy is
	// older than Entry.Seq).
	Deleted bool
}

// Store is one node's entries of every map, by partition. It is not safe
// for concurrent use.
type Store struct {
	count int
	parts []*part
}

type part struct {
	seq  uint64 // the largest write sequence seen
	maps map[string]map[string]*Entry
	// bytes[m] is the key and value bytes of map m's entries here, kept
	// as they change so a metrics scrape need not walk the entries.
	bytes map[string]int64
	// expiring counts the entries here with a TTL or a max idle: Expire
	// skips a partition without any instead of walking its entries
	// (every second, under the maps' lock: 1M entries without TTL held
	// it ~100 ms a time, stalling the owners' merges after a heal).
	expiring int
}

func expires(e *Entry) bool { return e.TTL > 0 || e.MaxIdle > 0 }

func newPart(seq uint64) *part {
	return &part{seq: seq, maps: map[string]map[string]*Entry{}, bytes: map[string]int64{}}
}

func size(key string, e *Entry) int64 { return int64(len(key) + len(e.Value)) }

// set makes e map m's entry of key.
func (p *part) set(m, key string, e *Entry) {
	mm := p.maps[m]
	if mm == nil {
		mm = map[string]*Entry{}
		p.maps[m] = mm
	}
	if old := mm[key]; old != nil {
		p.bytes[m] -= size(key, old)
		if expires(old) {
			p.expiring--
		}
	}
	mm[key] = e
	p.bytes[m] += size(key, e)
	if expires(e) {
		p.expiring++
	}
}

// del removes map m's entry of key, if any.
func (p *part) del(m, key string) {
	if old := p.maps[m][key]; old != nil {
		p.bytes[m] -= size(key, old)
		if expires(old) {
			p.expiring--
		}
		delete(p.maps[m], key)
	}
}

// NewStore returns an empty store of count partitions.
func NewStore(count int) *Store {
	s := &Store{count: count, parts: make([]*part, count)}
	for i := range s.parts {
		s.parts[i] = newPart(0)
	}
	return s
}

// Partition returns the partition of key.
func (s *Store) Partition(key string) partition.ID { return partition.Of([]byte(key), s.count) }

func (s *Store) part(key string) *part { return s.parts[s.Partition(key)] }

// Get returns the entry of key; touch counts it as a read (Hits+1,
// LastAccessTime = now). An expired entry is removed and not returned.
func (s *Store) Get(m, key string, now int64, touch bool) (Entry, bool) {
	p := s.part(key)
	e := p.maps[m][key]
	if e == nil {
		return Entry{}, false
	}
	if e.expired(now) {
		p.del(m, key)
		return Entry{}, false
	}
	if touch {
		e.Hits++
		e.LastAccessTime = now
	}
	return *e, true
}

// Put writes key's value at the owner: a new entry has Version 0, an
// update keeps its creation time and hits and adds one to its version.
// ttl and maxIdle are in ms (0: none). It returns the entry written.
func (s *Store) Put(m, key string, value []byte, ttl, maxIdle, now int64) Entry {
	p := s.part(key)
	p.seq++
	old := p.maps[m][key]
	e := &Entry{CreationTime: now}
	if old != nil && !old.expired(now) {
		*e = *old
		e.Version++
	}
	e.Value, e.LastUpdateTime, e.LastAccessTime, e.TTL, e.MaxIdle, e.Seq = value, now, now, ttl, maxIdle, p.seq
	p.set(m, key, e)
	return *e
}

// Delete removes key at the owner; it returns the deleted entry (its Seq
// is the deletion's) and whether there was one.
func (s *Store) Delete(m, key string) (Entry, bool) {
	p := s.part(key)
	e := p.maps[m][key]
	if e == nil {
		return Entry{}, false
	}
	p.del(m, key)
	p.seq++
	out := *e
	out.Seq = p.seq
	return out, true
}

// SetStored records a MapStore write of key's current version.
func (s *Store) SetStored(m, key string, seq uint64, now int64) {
	if e := s.part(key).maps[m][key]; e != nil && e.Seq == seq {
		e.LastStoredTime = now
	}
}

// Apply applies an owner's write (or deletion) at a backup: only over an
// older copy (a smaller Seq). It reports whether it changed anything.
func (s *Store) Apply(it Item) bool {
	p := s.part(it.Key)
	p.seq = max(p.seq, it.Entry.Seq)
	mm := p.maps[it.Map]
	cur := mm[it.Key]
	if cur != nil && cur.Seq >= it.Entry.Seq {
		return false
	}
	if it.Deleted {
		if cur == nil {
			return false
		}
		p.del(it.Map, it.Key)
		return true
	}
	e := it.Entry
	p.set(it.Map, it.Key, &e)
	return true
}

// Write installs e as key's entry at the owner with a new sequence (a
// merge's result, a restored MapStore entry), keeping e's metadata.
func (s *Store) Write(m, key string, e Entry) Entry {
	p := s.part(key)
	p.seq++
	e.Seq = p.seq
	p.set(m, key, &e)
	return e
}

// Copy returns every entry of partition pid, for a migration or a backup
// rewrite, sorted by map and key.
func (s *Store) Copy(pid partition.ID) []Item {
	out := s.AppendTo(make([]Item, 0, s.Len(pid)), pid)
	slices.SortFunc(out, func(a, b Item) int {
		switch {
		case a.Map != b.Map:
			return cmpStr(a.Map, b.Map)
		default:
			return cmpStr(a.Key, b.Key)
		}
	})
	return out
}

// AppendTo appends every entry of partition pid to dst, in no order.
func (s *Store) AppendTo(dst []Item, pid partition.ID) []Item {
	for m, mm := range s.parts[pid].maps {
		for k, e := range mm {
			dst = append(dst, Item{Map: m, Key: k, Entry: *e})
		}
	}
	return dst
}

func cmpStr(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Replace makes items partition pid's whole content (a migrated copy).
func (s *Store) Replace(pid partition.ID, items []Item) {
	p := newPart(0)
	for _, it := range items {
		e := it.Entry
		p.set(it.Map, it.Key, &e)
		p.seq = max(p.seq, e.Seq)
	}
	p.seq = max(p.seq, s.parts[pid].seq)
	s.parts[pid] = p
}

// Floor raises partition pid's write sequence to at least floor: a node
// that becomes the partition's owner floors it at its clock (ms << 20),
// so its writes order after those of every earlier owner, on either side
// of a healed split, at its backups.
func (s *Store) Floor(pid partition.ID, floor uint64) {
	s.parts[pid].seq = max(s.parts[pid].seq, floor)
}

// Drop empties partition pid (this node holds it no more), keeping its
// sequence so a later copy is newer.
func (s *Store) Drop(pid partition.ID) {
	s.parts[pid] = newPart(s.parts[pid].seq)
}

// Expire removes the entries expired at now from the partitions own
// reports as held as owner, and returns them (the driver tells backups).
func (s *Store) Expire(now int64, own func(partition.ID) bool) []Item {
	var out []Item
	for pid, p := range s.parts {
		if p.expiring == 0 || !own(partition.ID(pid)) {
			continue
		}
		for m, mm := range p.maps {
			for k, e := range mm {
				if e.expired(now) {
					p.del(m, k)
					p.seq++
					gone := *e
					gone.Seq = p.seq
					out = append(out, Item{Map: m, Key: k, Entry: gone, Deleted: true})
				}
			}
		}
	}
	return out
}

// Stats counts entries and bytes (keys and values) per map in the
// partitions filter accepts.
func (s *Store) Stats(filter func(partition.ID) bool) map[string][2]int64 {
	out := map[string][2]int64{}
	for pid, p := range s.parts {
		if !filter(partition.ID(pid)) {
			continue
		}
		for m, mm := range p.maps {
			st := out[m]
			st[0] += int64(len(mm))
			st[1] += p.bytes[m]
			out[m] = st
		}
	}
	return out
}

// Len returns the number of entries in partition pid.
func (s *Store) Len(pid partition.ID) int {
	n := 0
	for _, mm := range s.parts[pid].maps {
		n += len(mm)
	}
	return n
}

// Count returns the partition count.
func (s *Store) Count() int { return s.count }
