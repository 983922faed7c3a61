package pmap

import (
	"encoding/binary"
	"math/bits"
	"slices"

	"github.com/mendmq/mendmq/cluster/internal/wire"
)

// Data-plane calls of the partitioned map (cluster protocol).
const (
	// CallOp: an operation at the key's owner -> its result.
	CallOp uint8 = 20
	// CallBackup: an owner's writes -> empty, once applied (sync backups).
	CallBackup uint8 = 21
	// FrameBackup: an owner's writes (async backups).
	FrameBackup uint8 = 22
	// CallPull: a partition -> its entries (migration to a new owner).
	CallPull uint8 = 23
	// CallCopy: a partition and its entries -> empty (an owner rewrites a
	// backup).
	CallCopy uint8 = 24
	// CallSide: empty -> the members of the caller's side, and whether it
	// holds map data (the cluster-merge handshake).
	CallSide uint8 = 25
	// CallMerge: a map and merging entries -> empty, once merged at the
	// owner through the map's policy.
	CallMerge uint8 = 26
	// CallStats: empty -> the member's MemberStats, JSON (operators).
	CallStats uint8 = 27
)

// Operations (CallOp).
const (
	opGet uint8 = iota + 1
	opPut
	opDelete
)

const maxItems = 1 << 20

// maxValue bounds a value (a data-plane frame is 16 MiB).
const maxValue = 8 << 20

// uvarintLen and varintLen are the encoded sizes of x.
func uvarintLen(x uint64) int { return (bits.Len64(x|1) + 6) / 7 }

func varintLen(x int64) int {
	ux := uint64(x) << 1
	if x < 0 {
		ux = ^ux
	}
	return uvarintLen(ux)
}

func strLen(s string) int { return uvarintLen(uint64(len(s))) + len(s) }

// entryLen is the size appendEntry encodes e in.
func entryLen(e *Entry) int {
	return uvarintLen(uint64(len(e.Value))) + len(e.Value) + varintLen(e.Hits) + varintLen(e.Version) +
		varintLen(e.CreationTime) + varintLen(e.LastAccessTime) + varintLen(e.LastUpdateTime) +
		varintLen(e.LastStoredTime) + varintLen(e.TTL) + varintLen(e.MaxIdle) + uvarintLen(e.Seq)
}

// itemsLen is the size appendItems encodes items in: the buffer is sized
// once (a merge sends 1M entries in batches; growing each batch's buffer
// doubled the bytes allocated, and the garbage collector's work with
// them).
func itemsLen(items []Item) int {
	n := uvarintLen(uint64(len(items)))
	for i := range items {
		n += strLen(items[i].Map) + strLen(items[i].Key) + 1 + entryLen(&items[i].Entry)
	}
	return n
}

func appendEntry(b []byte, e *Entry) []byte {
	b = binary.AppendUvarint(b, uint64(len(e.Value)))
	b = append(b, e.Value...)
	b = binary.AppendVarint(b, e.Hits)
	b = binary.AppendVarint(b, e.Version)
	b = binary.AppendVarint(b, e.CreationTime)
	b = binary.AppendVarint(b, e.LastAccessTime)
	b = binary.AppendVarint(b, e.LastUpdateTime)
	b = binary.AppendVarint(b, e.LastStoredTime)
	b = binary.AppendVarint(b, e.TTL)
	b = binary.AppendVarint(b, e.MaxIdle)
	return binary.AppendUvarint(b, e.Seq)
}

func readVarint(r *wire.Reader) int64 {
	rest := r.Rest()
	if r.Err() != nil {
		return 0
	}
	v, n := binary.Varint(rest)
	if n <= 0 {
		r.Fail("bad varint")
		return 0
	}
	*r = wire.NewReader(rest[n:])
	return v
}

func readBytes(r *wire.Reader, max int) []byte {
	n := r.Uvarint()
	rest := r.Rest()
	if r.Err() != nil {
		return nil
	}
	if n > uint64(max) || n > uint64(len(rest)) {
		r.Fail("%d bytes", n)
		return nil
	}
	out := append([]byte(nil), rest[:n]...)
	*r = wire.NewReader(rest[n:])
	return out
}

func readEntry(r *wire.Reader) Entry {
	e := Entry{Value: readBytes(r, maxValue)}
	for _, p := range []*int64{&e.Hits, &e.Version, &e.CreationTime, &e.LastAccessTime, &e.LastUpdateTime, &e.LastStoredTime, &e.TTL, &e.MaxIdle} {
		*p = readVarint(r)
	}
	e.Seq = r.Uvarint()
	return e
}

// appendItems encodes items: count, then map, key, deleted flag, entry.
func appendItems(b []byte, items []Item) []byte {
	b = slices.Grow(b, itemsLen(items))
	b = binary.AppendUvarint(b, uint64(len(items)))
	for i := range items {
		it := &items[i]
		b = wire.AppendStr(b, it.Map)
		b = wire.AppendStr(b, it.Key)
		var f byte
		if it.Deleted {
			f = 1
		}
		b = append(b, f)
		b = appendEntry(b, &it.Entry)
	}
	return b
}

// minItemLen is the fewest bytes an encoded item takes (empty strings
// and value, one-byte varints).
const minItemLen = 1 + 1 + 1 + 1 + 8 + 1

func readItems(r *wire.Reader) []Item {
	n := r.Uvarint()
	if n > maxItems {
		r.Fail("%d items", n)
		return nil
	}
	// Sized once, but never beyond what the bytes left can hold: a
	// count alone must not make a peer allocate.
	out := make([]Item, 0, min(n, uint64(len(r.Rest())/minItemLen)))
	var name string
	for i := uint64(0); i < n && r.Err() == nil; i++ {
		// The items of a message are mostly of one map: its name is
		// allocated once.
		name = r.StrAs(wire.MaxName, name)
		out = append(out, Item{Map: name, Key: r.Str(wire.MaxName)})
		it := &out[len(out)-1]
		it.Deleted = r.Byte() == 1
		it.Entry = readEntry(r)
	}
	return out
}

func decodeItems(b []byte) ([]Item, error) {
	r := wire.NewReader(b)
	items := readItems(&r)
	if r.Err() == nil && len(r.Rest()) != 0 {
		r.Fail("%d trailing bytes", len(r.Rest()))
	}
	return items, r.Err()
}

// request is a CallOp request.
type request struct {
	op           uint8
	m, key       string
	value        []byte
	ttl, maxIdle int64
	fromBackup   bool // a read a backup may answer
}

func (q request) append(b []byte) []byte {
	b = append(b, q.op)
	b = wire.AppendStr(b, q.m)
	b = wire.AppendStr(b, q.key)
	b = binary.AppendUvarint(b, uint64(len(q.value)))
	b = append(b, q.value...)
	b = binary.AppendVarint(b, q.ttl)
	return binary.AppendVarint(b, q.maxIdle)
}

func decodeRequest(b []byte) (request, error) {
	r := wire.NewReader(b)
	q := request{op: r.Byte(), m: r.Str(wire.MaxName), key: r.Str(wire.MaxName)}
	q.value = readBytes(&r, maxValue)
	q.ttl, q.maxIdle = readVarint(&r), readVarint(&r)
	if r.Err() == nil && (q.op < opGet || q.op > opDelete) {
		r.Fail("operation %d", q.op)
	}
	if r.Err() == nil && len(r.Rest()) != 0 {
		r.Fail("%d trailing bytes", len(r.Rest()))
	}
	return q, r.Err()
}

// Statuses of a CallOp answer.
const (
	stNotFound uint8 = iota // the key is absent (get, delete)
	stFound                 // the entry follows
	stRetry                 // ask again (not the owner, migrating, merging): reason follows
	stRefused               // refused (split-brain protection): reason follows
)

// appendReply encodes a CallOp answer.
func appendReply(b []byte, st uint8, e *Entry, reason string) []byte {
	b = append(b, st)
	switch st {
	case stFound:
		return appendEntry(b, e)
	case stRetry, stRefused:
		return wire.AppendStr(b, reason)
	}
	return b
}

func decodeReply(b []byte) (st uint8, e Entry, reason string, err error) {
	r := wire.NewReader(b)
	st = r.Byte()
	switch st {
	case stFound:
		e = readEntry(&r)
	case stRetry, stRefused:
		reason = r.Str(wire.MaxName)
	case stNotFound:
	default:
		r.Fail("status %d", st)
	}
	return st, e, reason, r.Err()
}

// appendSide encodes a CallSide answer: the lineage of the node's map
// data (hash, size), the members of its table, and whether it holds map
// data.
// Side flags, the last byte of a side.
const (
	sideData    = 1 << 0 // the node holds map entries
	sideMerging = 1 << 1 // it is still merging them into this lineage
)

func appendSide(b []byte, l Lineage, side []string, data, merging bool) []byte {
	b = binary.AppendUvarint(b, l.Hash)
	b = binary.AppendUvarint(b, uint64(l.Size))
	b = binary.AppendUvarint(b, uint64(len(side)))
	for _, m := range side {
		b = wire.AppendStr(b, m)
	}
	var flags byte
	if data {
		flags |= sideData
	}
	if merging {
		flags |= sideMerging
	}
	return append(b, flags)
}

func decodeSide(b []byte) (Lineage, []string, bool, bool, error) {
	r := wire.NewReader(b)
	l := Lineage{Hash: r.Uvarint()}
	size := r.Uvarint()
	if size > 1<<16 {
		r.Fail("lineage of %d members", size)
	}
	l.Size = int(size)
	n := r.Uvarint()
	if n > 1<<16 {
		r.Fail("%d members", n)
	}
	var side []string
	for i := uint64(0); i < n && r.Err() == nil; i++ {
		side = append(side, r.Str(wire.MaxName))
	}
	flags := r.Byte()
	if flags&^(sideData|sideMerging) != 0 {
		r.Fail("side flags %#x", flags)
	}
	return l, side, flags&sideData != 0, flags&sideMerging != 0, r.Err()
}

// appendPartition prefixes a payload with a partition number.
func appendPartition(b []byte, p int) []byte { return binary.AppendUvarint(b, uint64(p)) }

func decodePartition(b []byte, count int) (int, []byte, error) {
	r := wire.NewReader(b)
	p := r.Uvarint()
	if r.Err() == nil && p >= uint64(count) {
		r.Fail("partition %d of %d", p, count)
	}
	return int(p), r.Rest(), r.Err()
}

// appendMerge encodes a CallMerge request: the map, then the items.
func appendMerge(b []byte, m string, items []Item) []byte {
	b = slices.Grow(b, strLen(m)+itemsLen(items))
	b = wire.AppendStr(b, m)
	return appendItems(b, items)
}

func decodeMerge(b []byte) (string, []Item, error) {
	r := wire.NewReader(b)
	m := r.Str(wire.MaxName)
	items := readItems(&r)
	if r.Err() == nil && len(r.Rest()) != 0 {
		r.Fail("%d trailing bytes", len(r.Rest()))
	}
	return m, items, r.Err()
}
