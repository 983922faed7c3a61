// Package wire holds the primitives of the cluster protocol's message
// codecs: strings are a uvarint length and the bytes, counts uvarints.
// Each part of the cluster encodes its own messages with them.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrMalformed is wrapped by every decoding error.
var ErrMalformed = errors.New("cluster: malformed message")

// AppendStr appends s as a uvarint length and its bytes.
func AppendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// Reader decodes a message; the first error sticks (Err) and every later
// read returns a zero value.
type Reader struct {
	b   []byte
	err error
}

// NewReader reads b.
func NewReader(b []byte) Reader { return Reader{b: b} }

// Err is the first decoding error.
func (r *Reader) Err() error { return r.err }

// Rest returns the unread bytes (shared with the input).
func (r *Reader) Rest() []byte { return r.b }

// Fail records an error (a value out of range) unless one is set.
func (r *Reader) Fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
	}
}

// Uvarint reads a uvarint.
func (r *Reader) Uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.Fail("bad varint")
		return 0
	}
	r.b = r.b[n:]
	return v
}

// Str reads a string of at most max bytes.
func (r *Reader) Str(max int) string {
	n := r.Uvarint()
	if r.err != nil {
		return ""
	}
	if n > uint64(max) || n > uint64(len(r.b)) {
		r.Fail("string of %d bytes", n)
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

// StrAs reads a string of at most max bytes like Str, but returns prev
// itself, not a new copy, when the bytes equal it: a message that repeats
// a name per item (a map's) then allocates it once.
func (r *Reader) StrAs(max int, prev string) string {
	n := r.Uvarint()
	if r.err != nil {
		return ""
	}
	if n > uint64(max) || n > uint64(len(r.b)) {
		r.Fail("string of %d bytes", n)
		return ""
	}
	s := prev
	if string(r.b[:n]) != prev {
		s = string(r.b[:n])
	}
	r.b = r.b[n:]
	return s
}

// Byte reads one byte.
func (r *Reader) Byte() byte {
	if r.err != nil {
		return 0
	}
	if len(r.b) == 0 {
		r.Fail("truncated")
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

// MaxName bounds names, client ids and topic filters in messages.
const MaxName = 65535
