package replica

import (
	"bytes"
	"cmp"
	"slices"
	"strings"

	"github.com/mendmq/mendmq/cluster/dvv"
)

// Sibling is one version of a key: a value, or a tombstone, with the
// metadata resolvers decide on.
type Sibling struct {
	// Node is the node that wrote this version.
	Node string
	// TS is the writer's wall clock at write time, unix milliseconds, raised
	// to at least the timestamps of the versions it overwrote.
	TS int64
	// Deleted marks a tombstone (Value is then empty).
	Deleted bool
	// Value is the opaque value. Shared, never to be modified.
	Value []byte
}

// absent is how a key that does not exist reads: as a tombstone.
var absent = Sibling{Deleted: true}

// Live reports whether s is a value rather than a tombstone or absence.
func (s Sibling) Live() bool { return !s.Deleted }

// samePayload reports whether a and b hold the same value (or both are
// tombstones), whatever their metadata.
func samePayload(a, b Sibling) bool {
	if a.Deleted || b.Deleted {
		return a.Deleted == b.Deleted
	}
	return bytes.Equal(a.Value, b.Value)
}

// Resolver chooses between two concurrent versions of a key of one table.
//
// Calling contract: the Store calls Resolve synchronously, inside Apply and
// only when a key holds two or more distinct payloads, once per step of the
// fold described in the package documentation, with existing earlier and
// merging later in canonical order; the Store's caller holds whatever lock
// serializes the Store while it runs. Resolve must be deterministic (same inputs, same output
// on every node) and must not retain or modify the Value slices. It may
// return either argument, or a new Sibling (a merged value, or one with
// Deleted set to delete the key); only Deleted and Value of the final result
// are replicated by write-back, Node and TS are informative. It cannot fail:
// an implementation that cannot decide (a trapped WASM policy) returns
// existing and records the problem itself.
type Resolver interface {
	Resolve(table, key string, existing, merging Sibling) Sibling
}

// ResolverFunc adapts a function to Resolver.
type ResolverFunc func(table, key string, existing, merging Sibling) Sibling

// Resolve calls f.
func (f ResolverFunc) Resolve(table, key string, existing, merging Sibling) Sibling {
	return f(table, key, existing, merging)
}

// LatestWins keeps the version with the later timestamp, ties going to the
// larger node id, then to merging. It is the resolver of the "sub" table: a
// client that reconnected during a split keeps its newest session.
var LatestWins Resolver = ResolverFunc(func(_, _ string, existing, merging Sibling) Sibling {
	if existing.TS > merging.TS || (existing.TS == merging.TS && existing.Node > merging.Node) {
		return existing
	}
	return merging
})

// resolution is the resolved view of one sibling set.
type resolution struct {
	value Sibling
	// conflict is true when two or more distinct payloads were resolved.
	conflict bool
	// last is the origin of the last distinct sibling in canonical order:
	// the node designated to write the resolution back.
	last string
	// maxTS is the largest sibling timestamp.
	maxTS int64
}

// canonical returns the distinct payloads of set in canonical order (rules
// 2 and 3 of the package documentation), the node designated to write a
// resolution back and the largest sibling timestamp.
func canonical(set dvv.Set[Sibling]) (distinct []Sibling, last string, maxTS int64) {
	switch set.Len() {
	case 0:
		return nil, "", minInt64
	case 1: // the usual case, without sorting
		for d, v := range set.All() {
			return []Sibling{v}, d.Node, v.TS
		}
	}
	ds := set.Dotted()
	slices.SortFunc(ds, func(a, b dvv.Dotted[Sibling]) int {
		if c := cmp.Compare(a.Value.TS, b.Value.TS); c != 0 {
			return c
		}
		if c := strings.Compare(a.Dot.Node, b.Dot.Node); c != 0 {
			return c
		}
		return cmp.Compare(a.Dot.Counter, b.Dot.Counter)
	})
	// The last sibling in canonical order has the largest timestamp and
	// always survives the collapse.
	last, maxTS = ds[len(ds)-1].Dot.Node, ds[len(ds)-1].Value.TS
	kept := collapse(ds)
	distinct = make([]Sibling, len(kept))
	for i, d := range kept {
		distinct[i] = d.Value
	}
	return distinct, last, maxTS
}

// Fold resolves distinct payloads in canonical order with r (rule 4):
// acc = siblings[0]; acc = r.Resolve(table, key, acc, siblings[i]). A
// deleted result carries no value. It is what Apply computes for a table
// with a Resolver, and what the caller of Conflict must compute (by any
// means: batched, remotely) for a Deferred table.
func Fold(r Resolver, table, key string, siblings []Sibling) Sibling {
	if len(siblings) == 0 {
		return absent
	}
	acc := siblings[0]
	for _, s := range siblings[1:] {
		acc = r.Resolve(table, key, acc, s)
	}
	if acc.Deleted {
		acc.Value = nil
	}
	return acc
}

// resolve applies the rule of the package documentation to set.
func resolve(r Resolver, table, key string, set dvv.Set[Sibling]) resolution {
	distinct, last, maxTS := canonical(set)
	if len(distinct) == 0 {
		return resolution{value: absent}
	}
	return resolution{value: Fold(r, table, key, distinct), conflict: len(distinct) > 1, last: last, maxTS: maxTS}
}

// collapse keeps, of each group of siblings with equal payloads, the last in
// ds (which is in canonical order), preserving order. Payload equality is an
// equivalence, so the survivors do not depend on arrival order. Small sets
// (the norm) are compared pairwise; large ones, which a peer could send,
// through a map so the cost stays linear.
func collapse(ds []dvv.Dotted[Sibling]) []dvv.Dotted[Sibling] {
	keep := make([]bool, len(ds))
	if len(ds) <= 16 {
		for i, d := range ds {
			keep[i] = !slices.ContainsFunc(ds[i+1:], func(l dvv.Dotted[Sibling]) bool { return samePayload(d.Value, l.Value) })
		}
	} else {
		seen := make(map[string]bool, len(ds))
		for i := len(ds) - 1; i >= 0; i-- {
			k := "\x00" // tombstones; live values get a 1-byte prefix
			if !ds[i].Value.Deleted {
				k = "\x01" + string(ds[i].Value.Value)
			}
			keep[i] = !seen[k]
			seen[k] = true
		}
	}
	out := ds[:0]
	for i, d := range ds {
		if keep[i] {
			out = append(out, d)
		}
	}
	return out
}
