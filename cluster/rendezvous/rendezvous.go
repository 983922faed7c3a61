// Package rendezvous implements highest-random-weight (rendezvous) hashing
// (Thaler and Ravishankar, 1998): every node gets a pseudo-random weight for
// a key and the heaviest node wins. Removing a node moves only the keys it
// won; adding one moves only the keys it now wins, about 1/n of them.
//
// Weights are FNV-1a 64 over node, a 0xff separator (a byte that never
// occurs in UTF-8 text, so ("ab","c") and ("a","bc") hash apart) and key,
// passed through the splitmix64 finalizer. Nothing depends on process seeds,
// map order or byte order, so every node of a cluster, on any architecture
// and in any release that keeps this function, computes the same answer.
// Equal weights (practically never) are broken by the smaller node id.
//
// The cluster uses it to pick the registration leader of a client id over
// the alive members. Functions are pure and safe for concurrent use.
package rendezvous

import (
	"slices"
	"strings"
)

// Pick returns the node of nodes with the highest weight for key, or "" when
// nodes is empty. Order and duplicates in nodes do not matter.
func Pick(key string, nodes []string) string {
	best, bestW := "", uint64(0)
	for i, n := range nodes {
		w := Weight(key, n)
		if i == 0 || w > bestW || (w == bestW && n < best) {
			best, bestW = n, w
		}
	}
	return best
}

// Rank returns nodes ordered from highest to lowest weight for key (ties by
// node id), in a new slice: Rank(key, nodes)[0] == Pick(key, nodes), and
// Rank(key, nodes)[1] is who takes over when the first is gone. Duplicates
// are kept as given.
func Rank(key string, nodes []string) []string {
	type weighted struct {
		node string
		w    uint64
	}
	ws := make([]weighted, len(nodes))
	for i, n := range nodes {
		ws[i] = weighted{n, Weight(key, n)}
	}
	slices.SortFunc(ws, func(a, b weighted) int {
		switch {
		case a.w > b.w:
			return -1
		case a.w < b.w:
			return 1
		}
		return strings.Compare(a.node, b.node)
	})
	out := make([]string, len(ws))
	for i, w := range ws {
		out[i] = w.node
	}
	return out
}

// Weight returns the weight of node for key. It is exported so that other
// deterministic placements (and tests in other packages) can reuse it; its
// values are part of the cluster protocol and must never change.
func Weight(key, node string) uint64 {
	const (
		offset = 14695981039346656037
		prime  = 1099511628211
	)
	h := uint64(offset)
	for i := 0; i < len(node); i++ {
		h ^= uint64(node[i])
		h *= prime
	}
	h ^= 0xff
	h *= prime
	for i := 0; i < len(key); i++ {
		h ^= uint64(key[i])
		h *= prime
	}
	// splitmix64 finalizer: FNV's high bits mix poorly on short inputs.
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}
