// Package dvv implements dotted version vector sets (DVVSet): a compact
// container for the concurrent versions (siblings) of one replicated value
// together with their causal history, after Almeida, Baquero, Gonçalves,
// Preguiça and Fonte, "Scalable and Accurate Causality Tracking for
// Eventually Consistent Stores" (DAIS 2014), and riak's dvvset.erl.
//
// A Set holds, per node id, one entry (node, n, values): the node has issued
// n events that this set has seen, and values are the versions written by the
// last len(values) of them that no later write has superseded, newest first.
// Value i of the entry therefore carries the dot (node, n-i). Two properties
// make the structure compact and exact:
//
//   - a dot names one write for ever, so two sets that hold the same dot hold
//     the same value, and Sync never compares values;
//   - the causal history is a version vector (one counter per node), so its
//     size grows with the number of writers, not with the number of writes.
//
// Unlike dvvset.erl there are no anonymous (undotted) values: every value is
// written through Update by some node, which is all a replicated store needs
// and keeps Sync free of value comparisons.
//
// Sets are immutable values: every operation returns a new Set and leaves its
// arguments untouched; results may share backing arrays with the inputs, so
// callers must not modify values they put in or read out. The package has no
// I/O, goroutines, clocks or randomness; all functions are safe for
// concurrent use on distinct or shared Sets.
package dvv

import (
	"iter"
	"slices"
	"strings"
)

// Version is one component of a version vector: Node has issued Counter
// events, all of them seen.
type Version struct {
	Node    string
	Counter uint64
}

// VersionVector is a causal context: components sorted by Node with no
// duplicate nodes and no zero counters. A missing node means counter 0.
// Context returns one; a writer passes it back to Update to say which values
// it had seen (and so supersedes).
type VersionVector []Version

// Get returns the counter of node, 0 when absent.
func (vv VersionVector) Get(node string) uint64 {
	i, ok := slices.BinarySearchFunc(vv, node, func(v Version, n string) int { return strings.Compare(v.Node, n) })
	if !ok {
		return 0
	}
	return vv[i].Counter
}

// Dot identifies one write: the Counter-th event issued by Node.
type Dot struct {
	Node    string
	Counter uint64
}

// Dotted is a value together with the dot of the write that produced it.
type Dotted[V any] struct {
	Dot   Dot
	Value V
}

// entry is one node's part of a set. values[i] has dot (node, counter-i);
// len(values) <= counter and counter >= 1.
type entry[V any] struct {
	node    string
	counter uint64
	values  []V
}

// Set is a dotted version vector set of values of type V. The zero Set is
// empty (no history, no values).
type Set[V any] struct {
	entries []entry[V] // sorted by node, unique
}

// New returns a set holding v as the first event of node, with no other
// causal history. It equals Set[V]{}.Update(nil, node, v).
func New[V any](node string, v V) Set[V] {
	return Set[V]{}.Update(nil, node, v)
}

// Update records v as a new write by node, which had seen ctx (normally the
// Context of a set it read earlier, nil for a blind write), into s, the
// node's current set. Values of s covered by ctx are superseded and dropped;
// values of s that ctx does not cover stay as siblings of v. The result
// descends from both s and ctx. Update panics if node is empty.
func (s Set[V]) Update(ctx VersionVector, node string, v V) Set[V] {
	return s.UpdateAtLeast(ctx, node, 0, v)
}

// UpdateAtLeast is Update, but the new dot's counter is at least min when
// that is safe: when, after dropping what ctx covers, node has no value of
// its own left in the set (always the case when ctx is s.Context()).
// Otherwise the counter is the usual previous+1, because the entry's values
// must keep consecutive dots.
//
// A floor lets a node that lost its per-key counter (the key was
// garbage-collected, or the node restarted with an empty store) issue dots
// that cannot collide with ones it issued before: a wall-clock millisecond
// floor makes every later incarnation's counters larger. Skipping counters
// only marks never-issued dots as seen, which is harmless.
func (s Set[V]) UpdateAtLeast(ctx VersionVector, node string, min uint64, v V) Set[V] {
	if node == "" {
		panic("dvv: Update with an empty node id")
	}
	base := s
	if len(ctx) > 0 {
		base = Sync(contextSet[V](ctx), s)
	}
	out := make([]entry[V], 0, len(base.entries)+1)
	done := false
	for _, e := range base.entries {
		if !done && e.node >= node {
			done = true
			if e.node == node {
				n := e.counter + 1
				if len(e.values) == 0 && min > n {
					n = min
				}
				vals := make([]V, 0, len(e.values)+1)
				vals = append(vals, v)
				vals = append(vals, e.values...)
				out = append(out, entry[V]{node: node, counter: n, values: vals})
				continue
			}
			out = append(out, firstEntry(node, min, v))
		}
		out = append(out, e)
	}
	if !done {
		out = append(out, firstEntry(node, min, v))
	}
	return Set[V]{entries: out}
}

func firstEntry[V any](node string, min uint64, v V) entry[V] {
	return entry[V]{node: node, counter: max(1, min), values: []V{v}}
}

// Overwrite is s.UpdateAtLeast(s.Context(), node, min, v), computed in one
// pass: v supersedes every value of s, and the result keeps s's history.
// It is the common write of a replicated store (a node overwrites what it
// has) and allocates two slices.
func (s Set[V]) Overwrite(node string, min uint64, v V) Set[V] {
	if node == "" {
		panic("dvv: Overwrite with an empty node id")
	}
	out := make([]entry[V], 0, len(s.entries)+1)
	done := false
	for _, e := range s.entries {
		if !done && e.node >= node {
			done = true
			if e.node == node {
				out = append(out, entry[V]{node: node, counter: max(e.counter+1, min), values: []V{v}})
				continue
			}
			out = append(out, firstEntry(node, min, v))
		}
		out = append(out, entry[V]{node: e.node, counter: e.counter})
	}
	if !done {
		out = append(out, firstEntry(node, min, v))
	}
	return Set[V]{entries: out}
}

// All iterates over the siblings of s with their dots, in the order of
// Values, without allocating.
func (s Set[V]) All() iter.Seq2[Dot, V] {
	return func(yield func(Dot, V) bool) {
		for _, e := range s.entries {
			for i, v := range e.values {
				if !yield(Dot{Node: e.node, Counter: e.counter - uint64(i)}, v) {
					return
				}
			}
		}
	}
}

// contextSet turns a version vector into a value-less set. Components are
// sorted defensively (a context may come from a peer that decoded it) and
// duplicate nodes keep their largest counter; zero counters are dropped.
func contextSet[V any](ctx VersionVector) Set[V] {
	sorted := slices.IsSortedFunc(ctx, func(a, b Version) int { return strings.Compare(a.Node, b.Node) })
	if !sorted {
		ctx = slices.Clone(ctx)
		slices.SortFunc(ctx, func(a, b Version) int { return strings.Compare(a.Node, b.Node) })
	}
	es := make([]entry[V], 0, len(ctx))
	for _, c := range ctx {
		if c.Counter == 0 || c.Node == "" {
			continue
		}
		if n := len(es); n > 0 && es[n-1].node == c.Node {
			es[n-1].counter = max(es[n-1].counter, c.Counter)
			continue
		}
		es = append(es, entry[V]{node: c.Node, counter: c.Counter})
	}
	return Set[V]{entries: es}
}

// Sync joins two sets: the result has the union of both causal histories and
// keeps exactly the values that neither set has superseded. Sync is
// commutative, associative and idempotent, so replicas that exchange sets in
// any order, any number of times, converge to the same set.
func Sync[V any](a, b Set[V]) Set[V] {
	if len(a.entries) == 0 {
		return b
	}
	if len(b.entries) == 0 {
		return a
	}
	out := make([]entry[V], 0, max(len(a.entries), len(b.entries)))
	i, j := 0, 0
	for i < len(a.entries) && j < len(b.entries) {
		x, y := a.entries[i], b.entries[j]
		switch c := strings.Compare(x.node, y.node); {
		case c < 0:
			out = append(out, x)
			i++
		case c > 0:
			out = append(out, y)
			j++
		default:
			out = append(out, mergeEntry(x, y))
			i++
			j++
		}
	}
	out = append(out, a.entries[i:]...)
	out = append(out, b.entries[j:]...)
	return Set[V]{entries: out}
}

// mergeEntry joins two entries of the same node. With x.counter >= y.counter,
// x has seen every dot of y, so y's values survive only where x still has
// them; x's values newer than y.counter survive because y never saw them.
// The survivors of x are its newest counter-lo values, lo being the larger
// of the two lists' lower dot bounds.
func mergeEntry[V any](x, y entry[V]) entry[V] {
	if x.counter < y.counter {
		x, y = y, x
	}
	xlo := x.counter - uint64(len(x.values))
	ylo := y.counter - uint64(len(y.values))
	if xlo >= ylo {
		return x
	}
	keep := x.counter - ylo
	return entry[V]{node: x.node, counter: x.counter, values: x.values[:keep:keep]}
}

// Context returns the causal history of s as a version vector: what a writer
// that read s has seen. Passing it to Update supersedes every value of s.
func (s Set[V]) Context() VersionVector {
	if len(s.entries) == 0 {
		return nil
	}
	vv := make(VersionVector, len(s.entries))
	for i, e := range s.entries {
		vv[i] = Version{Node: e.node, Counter: e.counter}
	}
	return vv
}

// Len returns the number of values (siblings) in s.
func (s Set[V]) Len() int {
	n := 0
	for _, e := range s.entries {
		n += len(e.values)
	}
	return n
}

// Values returns the siblings of s: ordered by node id, then newest first.
// The slice is new; the values are shared with s.
func (s Set[V]) Values() []V {
	out := make([]V, 0, s.Len())
	for _, e := range s.entries {
		out = append(out, e.values...)
	}
	return out
}

// Dotted returns the siblings of s with their dots, in the order of Values.
func (s Set[V]) Dotted() []Dotted[V] {
	out := make([]Dotted[V], 0, s.Len())
	for _, e := range s.entries {
		for i, v := range e.values {
			out = append(out, Dotted[V]{Dot: Dot{Node: e.node, Counter: e.counter - uint64(i)}, Value: v})
		}
	}
	return out
}

// Less reports whether a's causal history is strictly contained in b's: b
// has seen everything a has, and more, so a's values are all outdated.
func Less[V any](a, b Set[V]) bool {
	return descends(b, a, false)
}

// descends reports whether x's history contains y's (strictly if strict is
// false on entry and some component of x is larger or extra).
func descends[V any](x, y Set[V], strict bool) bool {
	i, j := 0, 0
	for j < len(y.entries) {
		if i == len(x.entries) {
			return false
		}
		ex, ey := x.entries[i], y.entries[j]
		switch c := strings.Compare(ex.node, ey.node); {
		case c < 0:
			strict = true
			i++
		case c > 0:
			return false
		default:
			if ex.counter < ey.counter {
				return false
			}
			if ex.counter > ey.counter {
				strict = true
			}
			i++
			j++
		}
	}
	return strict || i < len(x.entries)
}

// Equal reports whether a and b have the same causal history and the same
// dots. Because a dot names one write, equal sets hold equal values.
func Equal[V any](a, b Set[V]) bool {
	if len(a.entries) != len(b.entries) {
		return false
	}
	for i := range a.entries {
		x, y := a.entries[i], b.entries[i]
		if x.node != y.node || x.counter != y.counter || len(x.values) != len(y.values) {
			return false
		}
	}
	return true
}

// Fingerprint returns a 64-bit hash of the causal history and dots of s
// (what Equal compares). Equal sets have equal fingerprints on every
// platform and in every release that keeps this encoding; replicas compare
// fingerprints to find entries that differ without shipping them.
func (s Set[V]) Fingerprint() uint64 {
	h := uint64(fnvOffset)
	for _, e := range s.entries {
		h = fnvUvarint(h, uint64(len(e.node)))
		h = fnvString(h, e.node)
		h = fnvUvarint(h, e.counter)
		h = fnvUvarint(h, uint64(len(e.values)))
	}
	return mix64(h)
}

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func fnvString(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime
	}
	return h
}

func fnvUvarint(h, x uint64) uint64 {
	for x >= 0x80 {
		h ^= uint64(byte(x) | 0x80)
		h *= fnvPrime
		x >>= 7
	}
	h ^= x
	h *= fnvPrime
	return h
}

// mix64 is the splitmix64 / murmur3 finalizer: it spreads FNV's weak high
// bits so that every output bit depends on every input bit.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
