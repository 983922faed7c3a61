package replica

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"slices"
	"strings"

	"github.com/mendmq/mendmq/cluster/dvv"
)

// Digest summarizes a Store for anti-entropy: per table, one 64-bit sum per
// bucket. Equal sums mean (with overwhelming probability) equal contents.
type Digest struct {
	// Buckets is the number of buckets per table (Config.Buckets).
	Buckets int
	// Tables is sorted by Name.
	Tables []TableDigest
}

// TableDigest is the digest of one table.
type TableDigest struct {
	Name string
	// Sums has Buckets elements; an empty bucket sums to 0.
	Sums []uint64
}

// BucketSet names the buckets of one table that differ between two nodes.
type BucketSet struct {
	Table   string
	Buckets []int // ascending
}

// Digest returns the current digest. It costs O(tables x buckets): sums are
// maintained on every change.
func (s *Store) Digest() Digest {
	d := Digest{Buckets: s.cfg.Buckets, Tables: make([]TableDigest, 0, len(s.tables))}
	for _, name := range s.Tables() {
		t := s.tables[name]
		sums := make([]uint64, len(t.buckets))
		for i := range t.buckets {
			sums[i] = t.buckets[i].sum
		}
		d.Tables = append(d.Tables, TableDigest{Name: name, Sums: sums})
	}
	return d
}

// Diff returns the buckets, per table, whose sums differ between d and
// remote; a table missing on one side counts as all-empty there. Both sides
// then exchange Store.EntriesIn for these buckets. Diff fails when the
// digests have different bucket counts (Config.Buckets must agree).
func (d Digest) Diff(remote Digest) ([]BucketSet, error) {
	if d.Buckets != remote.Buckets {
		return nil, fmt.Errorf("replica: comparing digests of %d and %d buckets: Buckets must be equal on every node", d.Buckets, remote.Buckets)
	}
	sums := func(ts []TableDigest, name string) []uint64 {
		i, ok := slices.BinarySearchFunc(ts, name, func(t TableDigest, n string) int { return strings.Compare(t.Name, n) })
		if !ok {
			return nil
		}
		return ts[i].Sums
	}
	names := make([]string, 0, len(d.Tables)+len(remote.Tables))
	for _, t := range d.Tables {
		names = append(names, t.Name)
	}
	for _, t := range remote.Tables {
		names = append(names, t.Name)
	}
	slices.Sort(names)
	names = slices.Compact(names)
	var out []BucketSet
	for _, name := range names {
		a, b := sums(d.Tables, name), sums(remote.Tables, name)
		var diff []int
		for i := 0; i < d.Buckets; i++ {
			if at(a, i) != at(b, i) {
				diff = append(diff, i)
			}
		}
		if len(diff) > 0 {
			out = append(out, BucketSet{Table: name, Buckets: diff})
		}
	}
	return out, nil
}

func at(sums []uint64, i int) uint64 {
	if i < len(sums) {
		return sums[i]
	}
	return 0
}

const digestVersion = 1

// AppendBinary appends the encoding of d to b. Empty buckets are skipped:
//
//	version=1 | uvarint buckets | uvarint #tables | table*      tables sorted
//	table = uvarint len(name) name | uvarint #non-empty | (uvarint gap, u64le sum)*
//
// gap is the bucket index minus the previous non-empty index minus one (the
// first gap is the index itself).
func (d Digest) AppendBinary(b []byte) ([]byte, error) {
	b = append(b, digestVersion)
	b = binary.AppendUvarint(b, uint64(d.Buckets))
	b = binary.AppendUvarint(b, uint64(len(d.Tables)))
	for _, t := range d.Tables {
		b = binary.AppendUvarint(b, uint64(len(t.Name)))
		b = append(b, t.Name...)
		n := 0
		for _, s := range t.Sums {
			if s != 0 {
				n++
			}
		}
		b = binary.AppendUvarint(b, uint64(n))
		prev := -1
		for i, s := range t.Sums {
			if s == 0 {
				continue
			}
			b = binary.AppendUvarint(b, uint64(i-prev-1))
			b = binary.LittleEndian.AppendUint64(b, s)
			prev = i
		}
	}
	return b, nil
}

// DecodeDigest decodes a digest encoded by AppendBinary, refusing trailing
// bytes, unsorted tables, bucket counts Config would refuse, and indices
// out of range.
func DecodeDigest(b []byte) (Digest, error) {
	var d Digest
	r := reader{b: b}
	if v := r.byte(); r.err == nil && v != digestVersion {
		return d, fmt.Errorf("%w: digest version %d, want %d", ErrMalformed, v, digestVersion)
	}
	buckets := r.uvarint()
	if r.err == nil && (buckets < 1 || buckets > maxBuckets || bits.OnesCount64(buckets) != 1) {
		r.fail("digest of %d buckets", buckets)
	}
	d.Buckets = int(buckets)
	n := r.uvarint()
	if r.err == nil && n > uint64(r.left())/3 {
		r.fail("%d tables in %d bytes", n, r.left())
	}
	for i := uint64(0); i < n && r.err == nil; i++ {
		name := r.str(maxTableLen)
		if r.err == nil && len(d.Tables) > 0 && d.Tables[len(d.Tables)-1].Name >= name {
			r.fail("digest tables not sorted at %q", name)
		}
		nz := r.uvarint()
		if r.err == nil && nz > buckets {
			r.fail("table %q: %d non-empty of %d buckets", name, nz, buckets)
		}
		if r.err != nil {
			break
		}
		sums := make([]uint64, buckets)
		idx := -1
		for k := uint64(0); k < nz && r.err == nil; k++ {
			gap := r.uvarint()
			if r.err == nil && gap >= buckets-uint64(idx+1) {
				r.fail("table %q: bucket index out of range", name)
			}
			if r.err != nil {
				break
			}
			idx += int(gap) + 1
			sums[idx] = r.u64()
			if r.err == nil && sums[idx] == 0 {
				r.fail("table %q: explicit empty bucket %d", name, idx)
			}
		}
		d.Tables = append(d.Tables, TableDigest{Name: name, Sums: sums})
	}
	if r.err == nil && r.left() != 0 {
		r.fail("%d trailing bytes after digest", r.left())
	}
	if r.err != nil {
		return Digest{}, r.err
	}
	return d, nil
}

// keyHash places a key in a bucket. It is part of the cluster protocol
// (all nodes must bucket alike): FNV-1a 64 with the splitmix64 finalizer.
func keyHash(key string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(key); i++ {
		h ^= uint64(key[i])
		h *= 1099511628211
	}
	return mix64(h)
}

// entryHash is a key's contribution to its bucket sum: it changes whenever
// the key's version set does (dvv fingerprints cover every dot).
func entryHash(key string, versions dvv.Set[Sibling]) uint64 {
	return mix64(keyHash(key) ^ bits.RotateLeft64(versions.Fingerprint(), 29))
}

func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
