package replica

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/mendmq/mendmq/cluster/dvv"
)

// ErrMalformed is returned (wrapped) by the decoders for bytes that are not
// a valid encoding.
var ErrMalformed = errors.New("replica: malformed encoding")

const deltasVersion = 1

// AppendDeltas appends the encoding of a batch of deltas to b:
//
//	version=1 | uvarint #deltas | delta*
//	delta   = uvarint len(table) table | uvarint len(key) key | versions
//	versions = dvv set encoding (dvv.Set.Append) of siblings
//	sibling = zigzag varint TS | flags (bit0 deleted) | [uvarint len(value) value]
//
// The value is omitted for tombstones; a sibling's Node is its dot's node
// and is not repeated. The encoding is deterministic.
func AppendDeltas(b []byte, ds ...Delta) []byte {
	b = append(b, deltasVersion)
	b = binary.AppendUvarint(b, uint64(len(ds)))
	for _, d := range ds {
		b = binary.AppendUvarint(b, uint64(len(d.Table)))
		b = append(b, d.Table...)
		b = binary.AppendUvarint(b, uint64(len(d.Key)))
		b = append(b, d.Key...)
		b = d.Versions.Append(b, appendSibling)
	}
	return b
}

func appendSibling(b []byte, s Sibling) []byte {
	b = binary.AppendVarint(b, s.TS)
	if s.Deleted {
		return append(b, 1)
	}
	b = append(b, 0)
	b = binary.AppendUvarint(b, uint64(len(s.Value)))
	return append(b, s.Value...)
}

func decodeSibling(d dvv.Dot, b []byte) (Sibling, int, error) {
	s := Sibling{Node: d.Node}
	ts, n := binary.Varint(b)
	if n <= 0 {
		return s, 0, fmt.Errorf("%w: bad timestamp", ErrMalformed)
	}
	s.TS = ts
	if n >= len(b) {
		return s, 0, fmt.Errorf("%w: missing sibling flags", ErrMalformed)
	}
	flags := b[n]
	n++
	switch flags {
	case 1:
		s.Deleted = true
		return s, n, nil
	case 0:
	default:
		return s, 0, fmt.Errorf("%w: unknown sibling flags %#x", ErrMalformed, flags)
	}
	l, m := binary.Uvarint(b[n:])
	if m <= 0 || l > uint64(len(b)-n-m) {
		return s, 0, fmt.Errorf("%w: bad value length", ErrMalformed)
	}
	n += m
	s.Value = bytes.Clone(b[n : n+int(l)])
	return s, n + int(l), nil
}

// DecodeDeltas decodes a batch encoded by AppendDeltas. Everything returned
// is copied out of b. It refuses trailing bytes and deltas that Apply would
// ignore (empty or oversized names, empty version sets).
func DecodeDeltas(b []byte) ([]Delta, error) {
	r := reader{b: b}
	if v := r.byte(); r.err == nil && v != deltasVersion {
		return nil, fmt.Errorf("%w: delta batch version %d, want %d", ErrMalformed, v, deltasVersion)
	}
	n := r.uvarint()
	// A delta takes at least 9 bytes (names, one entry, one sibling).
	if r.err == nil && n > uint64(r.left())/9 {
		r.fail("%d deltas in %d bytes", n, r.left())
	}
	if r.err != nil {
		return nil, r.err
	}
	out := make([]Delta, 0, n)
	for i := uint64(0); i < n; i++ {
		table := r.str(maxTableLen)
		key := r.str(MaxKeyLen)
		if r.err != nil {
			return nil, fmt.Errorf("replica: decoding delta %d: %w", i, r.err)
		}
		set, used, err := dvv.Decode(r.b[r.off:], decodeSibling)
		if err != nil {
			return nil, fmt.Errorf("replica: decoding delta %d (%s/%q): %w", i, table, key, err)
		}
		r.off += used
		if set.Len() == 0 {
			return nil, fmt.Errorf("%w: delta %d (%s/%q) has no versions", ErrMalformed, i, table, key)
		}
		out = append(out, Delta{Table: table, Key: key, Versions: set})
	}
	if r.left() != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes after deltas", ErrMalformed, r.left())
	}
	return out, nil
}

// reader reads fields front to back and keeps the first error.
type reader struct {
	b   []byte
	off int
	err error
}

func (r *reader) left() int { return len(r.b) - r.off }

func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
	}
}

func (r *reader) byte() byte {
	if r.err != nil {
		return 0
	}
	if r.left() < 1 {
		r.fail("truncated at offset %d", r.off)
		return 0
	}
	c := r.b[r.off]
	r.off++
	return c
}

func (r *reader) u64() uint64 {
	if r.err != nil {
		return 0
	}
	if r.left() < 8 {
		r.fail("truncated at offset %d", r.off)
		return 0
	}
	x := binary.LittleEndian.Uint64(r.b[r.off:])
	r.off += 8
	return x
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	x, n := binary.Uvarint(r.b[r.off:])
	if n <= 0 {
		r.fail("bad varint at offset %d", r.off)
		return 0
	}
	r.off += n
	return x
}

// str reads a length-prefixed non-empty string of at most maxLen bytes.
func (r *reader) str(maxLen int) string {
	l := r.uvarint()
	if r.err != nil {
		return ""
	}
	if l == 0 || l > uint64(maxLen) || l > uint64(r.left()) {
		r.fail("string length %d at offset %d", l, r.off)
		return ""
	}
	s := string(r.b[r.off : r.off+int(l)])
	r.off += int(l)
	return s
}
