package sdk

import (
	"encoding/binary"
	"errors"
	"math"
)

// ABIVersion is the merge-policy ABI version this package speaks. A module
// built with it exports mendmq_abi_version returning this value.
const ABIVersion = 1

// Version is this SDK's release. The SDK is versioned with the ABI: its
// major version is ABIVersion, so every v1.x.y speaks ABI 1 and only adds
// helpers; an ABI 2 would ship as the module github.com/mendmq/mendmq/sdk/v2.
// Until the module is published, authors use it through a replace directive
// (sdk/README.md) and the go command sees it as v0.0.0.
const Version = "v1.0.0"

// Sizes of the fixed parts of ABI version 1 buffers, in bytes (sdk/ABI.md).
const (
	// RequestHeaderSize is version, count, map_name_len, reserved.
	RequestHeaderSize = 16
	// ItemHeaderSize is flags, reserved.
	ItemHeaderSize = 8
	// EntryHeaderSize is eight int64 fields plus key_len and value_len.
	EntryHeaderSize = 72
	// ResultHeaderSize is count, reserved.
	ResultHeaderSize = 8
	// ResultItemHeaderSize is verdict, aux.
	ResultItemHeaderSize = 8
)

// flagExisting marks an item that carries an existing entry.
const flagExisting = 1

// ErrMalformed is returned (wrapped) by the decoders for a buffer that does
// not follow the ABI.
var ErrMalformed = errors.New("sdk: malformed ABI buffer")

// Item is one merge of a request: the merging entry and, when HasExisting,
// the existing one.
type Item struct {
	Merging     EntryView
	Existing    EntryView
	HasExisting bool
}

var le = binary.LittleEndian

// pad8 rounds n up to a multiple of 8.
func pad8(n uint64) uint64 { return (n + 7) &^ 7 }

// EntrySize is the encoded size of e: header plus key and value, padded.
func EntrySize(e *EntryView) int {
	return EntryHeaderSize + int(pad8(uint64(len(e.Key))+uint64(len(e.Value))))
}

// RequestSize is the encoded size of a request for items.
func RequestSize(mapName string, items []Item) int {
	n := RequestHeaderSize + int(pad8(uint64(len(mapName))))
	for i := range items {
		n += ItemHeaderSize + EntrySize(&items[i].Merging)
		if items[i].HasExisting {
			n += EntrySize(&items[i].Existing)
		}
	}
	return n
}

// AppendRequest appends the encoding of a request to dst. The SDK itself only
// decodes requests; this encoder exists for tests and tools, and must agree
// byte for byte with the host's encoder.
func AppendRequest(dst []byte, mapName string, items []Item) []byte {
	dst = le.AppendUint32(dst, ABIVersion)
	dst = le.AppendUint32(dst, uint32(len(items)))
	dst = le.AppendUint32(dst, uint32(len(mapName)))
	dst = le.AppendUint32(dst, 0)
	dst = append(dst, mapName...)
	dst = appendZeros(dst, pad8(uint64(len(mapName)))-uint64(len(mapName)))
	for i := range items {
		var flags uint32
		if items[i].HasExisting {
			flags = flagExisting
		}
		dst = le.AppendUint32(dst, flags)
		dst = le.AppendUint32(dst, 0)
		dst = AppendEntry(dst, &items[i].Merging)
		if items[i].HasExisting {
			dst = AppendEntry(dst, &items[i].Existing)
		}
	}
	return dst
}

// AppendEntry appends the encoding of e (header, key, value, padding).
func AppendEntry(dst []byte, e *EntryView) []byte {
	dst = le.AppendUint64(dst, uint64(e.Cost))
	dst = le.AppendUint64(dst, uint64(e.Hits))
	dst = le.AppendUint64(dst, uint64(e.Version))
	dst = le.AppendUint64(dst, uint64(e.CreationTime))
	dst = le.AppendUint64(dst, uint64(e.LastAccessTime))
	dst = le.AppendUint64(dst, uint64(e.LastUpdateTime))
	dst = le.AppendUint64(dst, uint64(e.LastStoredTime))
	dst = le.AppendUint64(dst, uint64(e.ExpirationTime))
	dst = le.AppendUint32(dst, uint32(len(e.Key)))
	dst = le.AppendUint32(dst, uint32(len(e.Value)))
	dst = append(dst, e.Key...)
	dst = append(dst, e.Value...)
	n := uint64(len(e.Key)) + uint64(len(e.Value))
	return appendZeros(dst, pad8(n)-n)
}

func appendZeros(dst []byte, n uint64) []byte {
	for ; n > 0; n-- {
		dst = append(dst, 0)
	}
	return dst
}

// DecodeRequest decodes a request buffer. It reuses items' backing array and
// returns the items; Key and Value of every entry alias buf. mapName aliases
// buf too. Reserved fields must be zero, unknown flags must be clear and buf
// must end exactly after the last item.
func DecodeRequest(buf []byte, items []Item) (mapName []byte, out []Item, err error) {
	if len(buf) < RequestHeaderSize {
		return nil, items[:0], malformed("request shorter than its header")
	}
	if v := le.Uint32(buf[0:]); v != ABIVersion {
		return nil, items[:0], malformed("request has ABI version %d, want 1", uint64(v))
	}
	count := uint64(le.Uint32(buf[4:]))
	nameLen := uint64(le.Uint32(buf[8:]))
	if le.Uint32(buf[12:]) != 0 {
		return nil, items[:0], malformed("request reserved field is not zero")
	}
	rest := uint64(len(buf)) - RequestHeaderSize
	if nameLen > rest || pad8(nameLen) > rest {
		return nil, items[:0], malformed("map name runs past the buffer")
	}
	mapName = buf[RequestHeaderSize : RequestHeaderSize+nameLen]
	off := RequestHeaderSize + pad8(nameLen)
	// Every item takes at least ItemHeaderSize+EntryHeaderSize bytes: reject
	// impossible counts before allocating for them.
	if count == 0 || count > (uint64(len(buf))-off)/(ItemHeaderSize+EntryHeaderSize) {
		return nil, items[:0], malformed("request item count %d does not fit the buffer", count)
	}
	out = items[:0]
	for i := uint64(0); i < count; i++ {
		if uint64(len(buf))-off < ItemHeaderSize {
			return nil, out, malformed("item %d header runs past the buffer", i)
		}
		flags := le.Uint32(buf[off:])
		if flags&^flagExisting != 0 || le.Uint32(buf[off+4:]) != 0 {
			return nil, out, malformed("item %d has unknown flags or a non-zero reserved field", i)
		}
		off += ItemHeaderSize
		var it Item
		if off, err = decodeEntry(buf, off, &it.Merging); err != nil {
			return nil, out, err
		}
		if flags&flagExisting != 0 {
			it.HasExisting = true
			if off, err = decodeEntry(buf, off, &it.Existing); err != nil {
				return nil, out, err
			}
		}
		out = append(out, it)
	}
	if off != uint64(len(buf)) {
		return nil, out, malformed("request has %d trailing bytes", uint64(len(buf))-off)
	}
	return mapName, out, nil
}

// decodeEntry decodes one EntryView at buf[off:] and returns the offset after
// it.
func decodeEntry(buf []byte, off uint64, e *EntryView) (uint64, error) {
	if off > uint64(len(buf)) || uint64(len(buf))-off < EntryHeaderSize {
		return off, malformed("entry header at offset %d runs past the buffer", off)
	}
	h := buf[off : off+EntryHeaderSize]
	e.Cost = int64(le.Uint64(h[0:]))
	e.Hits = int64(le.Uint64(h[8:]))
	e.Version = int64(le.Uint64(h[16:]))
	e.CreationTime = int64(le.Uint64(h[24:]))
	e.LastAccessTime = int64(le.Uint64(h[32:]))
	e.LastUpdateTime = int64(le.Uint64(h[40:]))
	e.LastStoredTime = int64(le.Uint64(h[48:]))
	e.ExpirationTime = int64(le.Uint64(h[56:]))
	kl := uint64(le.Uint32(h[64:]))
	vl := uint64(le.Uint32(h[68:]))
	off += EntryHeaderSize
	body := pad8(kl + vl)
	if body > uint64(len(buf))-off {
		return off, malformed("entry key/value (%d bytes) at offset %d run past the buffer", kl+vl, off)
	}
	e.Key = buf[off : off+kl : off+kl]
	e.Value = buf[off+kl : off+kl+vl : off+kl+vl]
	return off + body, nil
}

// ResultSize is the encoded size of one result item.
func ResultSize(r *Result) int {
	switch r.Verdict {
	case VerdictPut:
		if r.Entry != nil {
			return ResultItemHeaderSize + EntrySize(r.Entry)
		}
	case VerdictFail:
		return ResultItemHeaderSize + int(pad8(uint64(reasonLen(r.Reason))))
	}
	return ResultItemHeaderSize
}

func reasonLen(s string) int { return min(len(s), MaxReasonLen) }

// AppendResultsHeader appends the header of a results buffer for count
// results.
func AppendResultsHeader(dst []byte, count int) []byte {
	dst = le.AppendUint32(dst, uint32(count))
	return le.AppendUint32(dst, 0)
}

// AppendResult appends one result item. A VerdictPut with a nil Entry and an
// unknown verdict are encoded as a VerdictFail naming the mistake, so a
// broken policy is parked by the host rather than misread.
func AppendResult(dst []byte, r Result) []byte {
	switch r.Verdict {
	case VerdictKeepExisting, VerdictTakeMerging, VerdictDelete:
		dst = le.AppendUint32(dst, uint32(r.Verdict))
		return le.AppendUint32(dst, 0)
	case VerdictPut:
		if r.Entry == nil {
			return AppendResult(dst, Fail("policy returned Put(nil)"))
		}
		dst = le.AppendUint32(dst, uint32(VerdictPut))
		dst = le.AppendUint32(dst, 0)
		return AppendEntry(dst, r.Entry)
	case VerdictFail:
		reason := r.Reason[:reasonLen(r.Reason)]
		dst = le.AppendUint32(dst, uint32(VerdictFail))
		dst = le.AppendUint32(dst, uint32(len(reason)))
		dst = append(dst, reason...)
		return appendZeros(dst, pad8(uint64(len(reason)))-uint64(len(reason)))
	}
	return AppendResult(dst, Fail("policy returned an unknown verdict"))
}

// DecodeResults decodes a results buffer into dst (reused). Put entries
// alias buf. It is the host's view of the buffer, kept here so the SDK's
// encoder is tested against a decoder with the same rules.
func DecodeResults(buf []byte, dst []Result) ([]Result, error) {
	dst = dst[:0]
	if len(buf) < ResultHeaderSize {
		return dst, malformed("results shorter than their header")
	}
	count := uint64(le.Uint32(buf))
	if le.Uint32(buf[4:]) != 0 {
		return dst, malformed("results reserved field is not zero")
	}
	off := uint64(ResultHeaderSize)
	if count > (uint64(len(buf))-off)/ResultItemHeaderSize {
		return dst, malformed("result count %d does not fit the buffer", count)
	}
	for i := uint64(0); i < count; i++ {
		if uint64(len(buf))-off < ResultItemHeaderSize {
			return dst, malformed("result %d header runs past the buffer", i)
		}
		v := Verdict(le.Uint32(buf[off:]))
		aux := uint64(le.Uint32(buf[off+4:]))
		off += ResultItemHeaderSize
		switch v {
		case VerdictKeepExisting, VerdictTakeMerging, VerdictDelete:
			if aux != 0 {
				return dst, malformed("result %d aux field is not zero", i)
			}
			dst = append(dst, Result{Verdict: v})
		case VerdictPut:
			if aux != 0 {
				return dst, malformed("result %d aux field is not zero", i)
			}
			e := new(EntryView)
			var err error
			if off, err = decodeEntry(buf, off, e); err != nil {
				return dst, err
			}
			dst = append(dst, Result{Verdict: v, Entry: e})
		case VerdictFail:
			if aux > MaxReasonLen || pad8(aux) > uint64(len(buf))-off {
				return dst, malformed("result %d reason (%d bytes) is too long", i, aux)
			}
			dst = append(dst, Result{Verdict: v, Reason: string(buf[off : off+aux])})
			off += pad8(aux)
		default:
			return dst, malformed("result %d has unknown verdict %d", i, uint64(v))
		}
	}
	if off != uint64(len(buf)) {
		return dst, malformed("results have %d trailing bytes", uint64(len(buf))-off)
	}
	return dst, nil
}

// malformed builds an ErrMalformed-wrapping error without fmt, which would
// add ~200 KB to every Go policy module. Each %d in format takes one arg.
func malformed(format string, args ...uint64) error {
	return &malformedError{msg: expand(format, args)}
}

// expand replaces each %d of format with the next of args, in decimal.
func expand(format string, args []uint64) string {
	b := make([]byte, 0, len(format)+16)
	for i := 0; i < len(format); i++ {
		if format[i] == '%' && i+1 < len(format) && format[i+1] == 'd' && len(args) > 0 {
			b = appendUint(b, args[0])
			args = args[1:]
			i++
			continue
		}
		b = append(b, format[i])
	}
	return string(b)
}

type malformedError struct{ msg string }

func (e *malformedError) Error() string { return "sdk: malformed ABI buffer: " + e.msg }
func (e *malformedError) Unwrap() error { return ErrMalformed }

func appendUint(b []byte, v uint64) []byte {
	if v == 0 {
		return append(b, '0')
	}
	var tmp [20]byte
	i := len(tmp)
	for v > 0 {
		i--
		tmp[i] = byte('0' + v%10)
		v /= 10
	}
	return append(b, tmp[i:]...)
}

// packResult packs a guest offset and length into the i64 returned by merge
// and merge_batch: offset in the high 32 bits, length in the low 32.
func packResult(ptr, n uint32) uint64 { return uint64(ptr)<<32 | uint64(n) }

// maxBufferLen bounds a single request or results buffer (wasm32 address
// space).
const maxBufferLen = math.MaxUint32
