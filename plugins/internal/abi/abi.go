// Package abi is the host side of the merge-policy ABI, version 1: it
// encodes requests straight into guest memory and decodes results out of it.
// sdk/ABI.md is the specification; the guest side lives in package sdk (Go)
// and sdk/c/mendmq_policy.h (C). The two Go implementations are written
// independently and tested against each other.
package abi

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/mendmq/mendmq/cluster/merge"
)

// Version is the ABI version this host speaks; a module must export
// mendmq_abi_version returning it.
const Version = 1

// Sizes of the fixed parts, in bytes.
const (
	RequestHeaderSize    = 16
	ItemHeaderSize       = 8
	EntryHeaderSize      = 72
	ResultHeaderSize     = 8
	ResultItemHeaderSize = 8
	// MaxReasonLen bounds a Fail reason.
	MaxReasonLen = 1024
)

const flagExisting = 1

// ErrGarbage is wrapped by every decoding error: the module answered with
// bytes that do not follow the ABI.
var ErrGarbage = errors.New("policy returned a malformed result")

// EntryView is one map entry with the metadata mendmq keeps for it (the
// contract type of package merge; see there for the fields).
type EntryView = merge.EntryView

// Verdict is a policy's decision for one merge (wire values).
type Verdict = merge.Verdict

// Verdicts of ABI version 1.
const (
	KeepExisting = merge.KeepExisting
	TakeMerging  = merge.TakeMerging
	Put          = merge.Put
	Delete       = merge.Delete
	Fail         = merge.Fail
)

// Item is one merge: Existing is nil when the key is absent.
type Item = merge.Item

// Decoded is one decoded result. Entry is set for Put and is a copy owned by
// the host; Reason is set for Fail.
type Decoded struct {
	Verdict Verdict
	Entry   *EntryView
	Reason  string
}

var le = binary.LittleEndian

func pad8(n uint64) uint64 { return (n + 7) &^ 7 }

func entrySize(e *EntryView) uint64 {
	return EntryHeaderSize + pad8(uint64(len(e.Key))+uint64(len(e.Value)))
}

// RequestSize returns the encoded size of a request, or an error when it
// cannot be encoded (a nil merging entry, or more than 4 GiB).
func RequestSize(mapName string, items []Item) (int, error) {
	n := RequestHeaderSize + pad8(uint64(len(mapName)))
	if len(mapName) > math.MaxUint32 {
		return 0, errors.New("map name longer than 4 GiB")
	}
	for i := range items {
		m := items[i].Merging
		if m == nil {
			return 0, fmt.Errorf("item %d has no merging entry", i)
		}
		if len(m.Key) > math.MaxUint32 || len(m.Value) > math.MaxUint32 {
			return 0, fmt.Errorf("item %d is larger than 4 GiB", i)
		}
		n += ItemHeaderSize + entrySize(m)
		if e := items[i].Existing; e != nil {
			if len(e.Key) > math.MaxUint32 || len(e.Value) > math.MaxUint32 {
				return 0, fmt.Errorf("item %d is larger than 4 GiB", i)
			}
			n += entrySize(e)
		}
	}
	if n > math.MaxUint32 {
		return 0, fmt.Errorf("request of %d bytes exceeds the 4 GiB wasm32 address space", n)
	}
	return int(n), nil
}

// EncodeRequest writes a request into dst, which must be exactly
// RequestSize bytes (typically a view of guest memory). Padding is written
// as zeros because dst may hold an older request.
func EncodeRequest(dst []byte, mapName string, items []Item) {
	le.PutUint32(dst[0:], Version)
	le.PutUint32(dst[4:], uint32(len(items)))
	le.PutUint32(dst[8:], uint32(len(mapName)))
	le.PutUint32(dst[12:], 0)
	off := uint64(RequestHeaderSize)
	off = putBytes(dst, off, mapName)
	for i := range items {
		var flags uint32
		if items[i].Existing != nil {
			flags = flagExisting
		}
		le.PutUint32(dst[off:], flags)
		le.PutUint32(dst[off+4:], 0)
		off += ItemHeaderSize
		off = putEntry(dst, off, items[i].Merging)
		if items[i].Existing != nil {
			off = putEntry(dst, off, items[i].Existing)
		}
	}
}

// putBytes writes s and zero padding at off and returns the new offset.
func putBytes[T string | []byte](dst []byte, off uint64, s T) uint64 {
	n := uint64(copy(dst[off:], s))
	end := off + pad8(n)
	clear(dst[off+n : end])
	return end
}

func putEntry(dst []byte, off uint64, e *EntryView) uint64 {
	h := dst[off : off+EntryHeaderSize]
	le.PutUint64(h[0:], uint64(e.Cost))
	le.PutUint64(h[8:], uint64(e.Hits))
	le.PutUint64(h[16:], uint64(e.Version))
	le.PutUint64(h[24:], uint64(e.CreationTime))
	le.PutUint64(h[32:], uint64(e.LastAccessTime))
	le.PutUint64(h[40:], uint64(e.LastUpdateTime))
	le.PutUint64(h[48:], uint64(e.LastStoredTime))
	le.PutUint64(h[56:], uint64(e.ExpirationTime))
	le.PutUint32(h[64:], uint32(len(e.Key)))
	le.PutUint32(h[68:], uint32(len(e.Value)))
	off += EntryHeaderSize
	n := uint64(copy(dst[off:], e.Key))
	n += uint64(copy(dst[off+n:], e.Value))
	end := off + pad8(n)
	clear(dst[off+n : end])
	return end
}

// EntrySize is e's encoded size: header, key and value, padded to 8.
func EntrySize(e *EntryView) uint64 { return entrySize(e) }

// AppendEntry appends e's encoding (sdk/ABI.md §4: header, key, value,
// zero padding) to dst: the stored entry handed to a guest (§9).
func AppendEntry(dst []byte, e *EntryView) []byte {
	start := uint64(len(dst))
	dst = append(dst, make([]byte, entrySize(e))...)
	putEntry(dst, start, e)
	return dst
}

// AppendRequest appends an encoded request to dst (tests and tools; the hot
// path encodes in place with EncodeRequest).
func AppendRequest(dst []byte, mapName string, items []Item) ([]byte, error) {
	n, err := RequestSize(mapName, items)
	if err != nil {
		return dst, err
	}
	start := len(dst)
	dst = append(dst, make([]byte, n)...)
	EncodeRequest(dst[start:], mapName, items)
	return dst, nil
}

// DecodeResults decodes a results buffer read from guest memory for the
// request items. It checks everything the guest could get wrong: count,
// verdicts, reserved fields, lengths and that a Put keeps the merging key.
// Put entries and reasons are copied, so buf may be reused afterwards.
// Results are appended to out[:0].
func DecodeResults(buf []byte, items []Item, out []Decoded) ([]Decoded, error) {
	out = out[:0]
	if len(buf) < ResultHeaderSize {
		return out, garbage("results buffer of %d bytes is shorter than its header", len(buf))
	}
	if n := le.Uint32(buf); uint64(n) != uint64(len(items)) {
		return out, garbage("results count %d, want %d", n, len(items))
	}
	if le.Uint32(buf[4:]) != 0 {
		return out, garbage("results reserved field is %#x, want 0", le.Uint32(buf[4:]))
	}
	off := uint64(ResultHeaderSize)
	size := uint64(len(buf))
	for i := range items {
		if size-off < ResultItemHeaderSize {
			return out, garbage("result %d header runs past the buffer", i)
		}
		v := Verdict(le.Uint32(buf[off:]))
		aux := uint64(le.Uint32(buf[off+4:]))
		off += ResultItemHeaderSize
		switch v {
		case KeepExisting, TakeMerging, Delete:
			if aux != 0 {
				return out, garbage("result %d (%s) has aux %d, want 0", i, v, aux)
			}
			out = append(out, Decoded{Verdict: v})
		case Put:
			if aux != 0 {
				return out, garbage("result %d (put) has aux %d, want 0", i, aux)
			}
			e, next, err := decodeEntry(buf, off)
			if err != nil {
				return out, fmt.Errorf("result %d: %w", i, err)
			}
			if !bytes.Equal(e.Key, items[i].Merging.Key) {
				return out, garbage("result %d puts key %q, want the merging key %q", i, clip(e.Key), clip(items[i].Merging.Key))
			}
			off = next
			// One allocation for both: the views alias guest memory, which
			// the next call overwrites.
			kv := make([]byte, len(e.Key)+len(e.Value))
			copy(kv, e.Key)
			copy(kv[len(e.Key):], e.Value)
			e.Key, e.Value = kv[:len(e.Key):len(e.Key)], kv[len(e.Key):]
			out = append(out, Decoded{Verdict: Put, Entry: e})
		case Fail:
			if aux > MaxReasonLen || pad8(aux) > size-off {
				return out, garbage("result %d reason of %d bytes is too long or runs past the buffer", i, aux)
			}
			out = append(out, Decoded{Verdict: Fail, Reason: string(buf[off : off+aux])})
			off += pad8(aux)
		default:
			return out, garbage("result %d has unknown verdict %d", i, uint32(v))
		}
	}
	if off != size {
		return out, garbage("results have %d trailing bytes", size-off)
	}
	return out, nil
}

// decodeEntry decodes an EntryView at buf[off:]; Key and Value alias buf.
func decodeEntry(buf []byte, off uint64) (*EntryView, uint64, error) {
	size := uint64(len(buf))
	if off > size || size-off < EntryHeaderSize {
		return nil, off, garbage("entry header at offset %d runs past the buffer", off)
	}
	h := buf[off : off+EntryHeaderSize]
	e := &EntryView{
		Cost:           int64(le.Uint64(h[0:])),
		Hits:           int64(le.Uint64(h[8:])),
		Version:        int64(le.Uint64(h[16:])),
		CreationTime:   int64(le.Uint64(h[24:])),
		LastAccessTime: int64(le.Uint64(h[32:])),
		LastUpdateTime: int64(le.Uint64(h[40:])),
		LastStoredTime: int64(le.Uint64(h[48:])),
		ExpirationTime: int64(le.Uint64(h[56:])),
	}
	kl := uint64(le.Uint32(h[64:]))
	vl := uint64(le.Uint32(h[68:]))
	off += EntryHeaderSize
	if pad8(kl+vl) > size-off {
		return nil, off, garbage("entry key+value of %d bytes at offset %d run past the buffer", kl+vl, off)
	}
	e.Key = buf[off : off+kl : off+kl]
	e.Value = buf[off+kl : off+kl+vl : off+kl+vl]
	return e, off + pad8(kl+vl), nil
}

// DecodeRequest decodes a request (tests and tools: the guest side is in
// package sdk). Entries alias buf.
func DecodeRequest(buf []byte) (mapName string, items []Item, err error) {
	size := uint64(len(buf))
	if size < RequestHeaderSize {
		return "", nil, garbage("request shorter than its header")
	}
	if v := le.Uint32(buf); v != Version {
		return "", nil, garbage("request version %d, want %d", v, Version)
	}
	count := uint64(le.Uint32(buf[4:]))
	nl := uint64(le.Uint32(buf[8:]))
	if le.Uint32(buf[12:]) != 0 {
		return "", nil, garbage("request reserved field is not zero")
	}
	if pad8(nl) > size-RequestHeaderSize {
		return "", nil, garbage("map name runs past the buffer")
	}
	mapName = string(buf[RequestHeaderSize : RequestHeaderSize+nl])
	off := RequestHeaderSize + pad8(nl)
	if count == 0 || count > (size-off)/(ItemHeaderSize+EntryHeaderSize) {
		return "", nil, garbage("request count %d does not fit the buffer", count)
	}
	items = make([]Item, 0, count)
	for i := uint64(0); i < count; i++ {
		if size-off < ItemHeaderSize {
			return "", nil, garbage("item %d header runs past the buffer", i)
		}
		flags := le.Uint32(buf[off:])
		if flags&^flagExisting != 0 || le.Uint32(buf[off+4:]) != 0 {
			return "", nil, garbage("item %d has unknown flags or a non-zero reserved field", i)
		}
		off += ItemHeaderSize
		var it Item
		if it.Merging, off, err = decodeEntry(buf, off); err != nil {
			return "", nil, err
		}
		if flags&flagExisting != 0 {
			if it.Existing, off, err = decodeEntry(buf, off); err != nil {
				return "", nil, err
			}
		}
		items = append(items, it)
	}
	if off != size {
		return "", nil, garbage("request has %d trailing bytes", size-off)
	}
	return mapName, items, nil
}

// AppendResults appends an encoded results buffer (tests and tools).
func AppendResults(dst []byte, results []Decoded) []byte {
	dst = le.AppendUint32(dst, uint32(len(results)))
	dst = le.AppendUint32(dst, 0)
	for _, r := range results {
		switch r.Verdict {
		case Put:
			dst = le.AppendUint32(dst, uint32(Put))
			dst = le.AppendUint32(dst, 0)
			dst = AppendEntry(dst, r.Entry)
		case Fail:
			reason := r.Reason[:min(len(r.Reason), MaxReasonLen)]
			dst = le.AppendUint32(dst, uint32(Fail))
			dst = le.AppendUint32(dst, uint32(len(reason)))
			start := uint64(len(dst))
			dst = append(dst, make([]byte, pad8(uint64(len(reason))))...)
			putBytes(dst, start, reason)
		default:
			dst = le.AppendUint32(dst, uint32(r.Verdict))
			dst = le.AppendUint32(dst, 0)
		}
	}
	return dst
}

func garbage(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrGarbage, fmt.Sprintf(format, args...))
}

// clip shortens b for error messages.
func clip(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}
