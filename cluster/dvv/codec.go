package dvv

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrMalformed is returned (wrapped) by Decode for input that is not a valid
// encoding of a Set.
var ErrMalformed = errors.New("dvv: malformed set encoding")

// MaxNodeLen bounds the length of a node id accepted by Decode.
const MaxNodeLen = 1024

// Append appends the binary encoding of s to b and returns the extended
// slice. appendValue encodes one value; it must be self-delimiting (Decode
// hands the decoder the rest of the input).
//
// The encoding is deterministic (equal sets with equal values encode to
// equal bytes) and compact:
//
//	set   = uvarint(#entries) entry*           entries sorted by node
//	entry = uvarint(len(node)) node
//	        uvarint(counter) uvarint(#values) value*   values newest first
func (s Set[V]) Append(b []byte, appendValue func([]byte, V) []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(s.entries)))
	for _, e := range s.entries {
		b = binary.AppendUvarint(b, uint64(len(e.node)))
		b = append(b, e.node...)
		b = binary.AppendUvarint(b, e.counter)
		b = binary.AppendUvarint(b, uint64(len(e.values)))
		for _, v := range e.values {
			b = appendValue(b, v)
		}
	}
	return b
}

// Decode decodes a Set encoded by Append from the front of b and returns it
// with the number of bytes consumed. decodeValue decodes one value from the
// front of its argument and returns the bytes it consumed; it must copy what
// it keeps if b will be reused. Decode checks every structural invariant
// (sorted unique non-empty node ids, counters >= 1 and >= #values), so a
// decoded set is as sound as one built by Update and Sync.
func Decode[V any](b []byte, decodeValue func(Dot, []byte) (V, int, error)) (Set[V], int, error) {
	var s Set[V]
	off := 0
	n, err := uvarint(b, &off, "entry count")
	if err != nil {
		return s, 0, err
	}
	// Every entry takes at least 4 bytes; refuse counts the input cannot
	// hold before allocating for them.
	if n > uint64(len(b)-off)/4 {
		return s, 0, fmt.Errorf("%w: %d entries in %d bytes", ErrMalformed, n, len(b)-off)
	}
	if n > 0 {
		s.entries = make([]entry[V], 0, n)
	}
	for k := uint64(0); k < n; k++ {
		l, err := uvarint(b, &off, "node length")
		if err != nil {
			return Set[V]{}, 0, err
		}
		if l == 0 || l > MaxNodeLen || l > uint64(len(b)-off) {
			return Set[V]{}, 0, fmt.Errorf("%w: node id length %d at offset %d", ErrMalformed, l, off)
		}
		node := string(b[off : off+int(l)])
		off += int(l)
		if len(s.entries) > 0 && s.entries[len(s.entries)-1].node >= node {
			return Set[V]{}, 0, fmt.Errorf("%w: node ids not strictly sorted at %q", ErrMalformed, node)
		}
		counter, err := uvarint(b, &off, "counter")
		if err != nil {
			return Set[V]{}, 0, err
		}
		nv, err := uvarint(b, &off, "value count")
		if err != nil {
			return Set[V]{}, 0, err
		}
		if counter == 0 || nv > counter {
			return Set[V]{}, 0, fmt.Errorf("%w: node %q counter %d with %d values", ErrMalformed, node, counter, nv)
		}
		if nv > uint64(len(b)-off) { // each value takes at least one byte
			return Set[V]{}, 0, fmt.Errorf("%w: %d values in %d bytes", ErrMalformed, nv, len(b)-off)
		}
		var vals []V
		if nv > 0 {
			vals = make([]V, 0, nv)
		}
		for i := uint64(0); i < nv; i++ {
			v, used, err := decodeValue(Dot{Node: node, Counter: counter - i}, b[off:])
			if err != nil {
				return Set[V]{}, 0, fmt.Errorf("dvv: decoding value %d of node %q: %w", i, node, err)
			}
			if used <= 0 || used > len(b)-off {
				return Set[V]{}, 0, fmt.Errorf("%w: value decoder consumed %d of %d bytes", ErrMalformed, used, len(b)-off)
			}
			off += used
			vals = append(vals, v)
		}
		s.entries = append(s.entries, entry[V]{node: node, counter: counter, values: vals})
	}
	return s, off, nil
}

func uvarint(b []byte, off *int, what string) (uint64, error) {
	x, n := binary.Uvarint(b[*off:])
	if n <= 0 {
		return 0, fmt.Errorf("%w: bad %s varint at offset %d", ErrMalformed, what, *off)
	}
	*off += n
	return x, nil
}
