// Package partition spreads a map's keys over a fixed number of
// partitions (Hazelcast's 271 by default) and assigns each partition an
// owner and backups among the cluster's members — a pure function of the
// member list, so every node that sees the same members computes the same
// table without consensus.
//
// Assignment is rendezvous (highest random weight) hashing per partition
// with bounded loads: each member gets a score hash(partition, member) and
// the highest-scoring members hold the partition, the first as owner, as
// long as a member holds at most 1.25 times its share. A member that joins
// takes mostly the partitions where it now scores highest (about 1/n of
// them), a member that leaves gives up mostly its own. Every node of a cluster must use the same partition
// count (maps.partition_count).
package partition

import (
	"encoding/binary"
	"hash/fnv"
	"slices"
)

// DefaultCount is Hazelcast's partition count.
const DefaultCount = 271

// ID is a partition number, 0 <= ID < count.
type ID int

// Of returns the partition of key: FNV-1a 64 of the key bytes modulo
// count. Stable across versions and platforms (it is part of the cluster
// protocol).
func Of(key []byte, count int) ID {
	h := fnv.New64a()
	_, _ = h.Write(key)
	return ID(h.Sum64() % uint64(count))
}

// score is a member's weight for a partition.
func score(p ID, member string) uint64 {
	h := fnv.New64a()
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(p))
	_, _ = h.Write(b[:])
	_, _ = h.Write([]byte(member))
	return mix(h.Sum64())
}

// mix is a 64-bit finalizer (splitmix64): FNV's low bits are weak for
// keys that differ only at the end, which member names do.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// Table is the assignment of every partition.
type Table struct {
	// Members is the member list the table was computed from, sorted.
	Members []string
	// Replicas[p] lists partition p's holders: owner first, then
	// backups. Empty when there are no members.
	Replicas [][]string
}

// Compute assigns count partitions to members (any order; duplicates
// ignored), each to an owner and up to backups backups (fewer when there
// are not enough members).
//
// Plain rendezvous hashing leaves owners unbalanced when partitions per
// member are few (50 members of 271 partitions: 1 to 10 each), so loads
// are bounded: partitions are assigned in order, each replica to the
// highest-scoring member not yet holding loadCap (ceil(1.25 x count /
// members)) replicas of that rank. Members still move few partitions on
// a join or leave: one takes what it scores highest unless a member is
// full, which only shifts a few more.
func Compute(members []string, count, backups int) Table {
	ms := slices.Clone(members)
	slices.Sort(ms)
	ms = slices.Compact(ms)
	t := Table{Members: ms, Replicas: make([][]string, count)}
	n := min(1+max(backups, 0), len(ms))
	if len(ms) == 0 {
		return t
	}
	loadCap := (5*count + 4*len(ms) - 1) / (4 * len(ms))
	held := make([]map[string]int, n) // per rank: member -> partitions
	for i := range held {
		held[i] = map[string]int{}
	}
	type scored struct {
		s uint64
		m string
	}
	buf := make([]scored, len(ms))
	for p := range count {
		for i, m := range ms {
			buf[i] = scored{score(ID(p), m), m}
		}
		slices.SortFunc(buf, func(a, b scored) int {
			switch {
			case a.s > b.s:
				return -1
			case a.s < b.s:
				return 1
			case a.m < b.m:
				return -1
			case a.m > b.m:
				return 1
			}
			return 0
		})
		r := make([]string, 0, n)
		for rank := range n {
			pick := ""
			for _, c := range buf {
				if slices.Contains(r, c.m) {
					continue
				}
				if held[rank][c.m] < loadCap {
					pick = c.m
					break
				}
				if pick == "" {
					pick = c.m // everyone is full (small counts): the best
				}
			}
			held[rank][pick]++
			r = append(r, pick)
		}
		t.Replicas[p] = r
	}
	return t
}

// Owner returns p's owner ("" without members).
func (t Table) Owner(p ID) string {
	if int(p) >= len(t.Replicas) || len(t.Replicas[p]) == 0 {
		return ""
	}
	return t.Replicas[p][0]
}

// Backups returns p's backups.
func (t Table) Backups(p ID) []string {
	if int(p) >= len(t.Replicas) || len(t.Replicas[p]) == 0 {
		return nil
	}
	return t.Replicas[p][1:]
}

// Role is what a member holds of a partition.
type Role uint8

const (
	// None: the member holds nothing of it.
	None Role = iota
	// Owner: it serves the partition's reads and writes.
	Owner
	// Backup: it keeps a copy, promoted if the owner is lost.
	Backup
)

// Role returns member's role for p.
func (t Table) Role(p ID, member string) Role {
	if int(p) >= len(t.Replicas) {
		return None
	}
	for i, m := range t.Replicas[p] {
		if m == member {
			if i == 0 {
				return Owner
			}
			return Backup
		}
	}
	return None
}

// Owned returns how many partitions each member owns.
func (t Table) Owned() map[string]int {
	out := map[string]int{}
	for _, r := range t.Replicas {
		if len(r) > 0 {
			out[r[0]]++
		}
	}
	return out
}
