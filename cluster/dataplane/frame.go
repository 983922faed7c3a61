package dataplane

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Frame header layout (see the package documentation).
const (
	headerLen = 6 // type, flags, uint32 body length
	idLen     = 8 // call id at the start of call and reply bodies
)

// Frame flags.
const (
	flagCall    = 0x01 // body = id + request payload; a reply is expected
	flagReply   = 0x02 // body = id + response payload
	flagError   = 0x04 // with flagReply: the payload is an error message
	flagControl = 0x08 // type is a control code; never shown to handlers

	knownFlags = flagCall | flagReply | flagError | flagControl
)

// Control codes (type byte of a flagControl frame).
const (
	ctlKeepalive = 1 // empty body; sent when a connection has been quiet
)

// Errors of the frame decoder; all of them close the connection and
// count as protocol errors.
var (
	errOversize  = errors.New("dataplane: frame larger than the maximum frame size")
	errBadFlags  = errors.New("dataplane: invalid frame flags")
	errTruncated = errors.New("dataplane: truncated frame")
)

// frame is one decoded frame. For calls and replies id is set and
// payload excludes it.
type frame struct {
	typ     uint8
	flags   uint8
	id      uint64
	payload []byte
}

// validFlags reports whether flags is a combination this version speaks:
// at most one of call/reply/control, and error only on a reply.
func validFlags(flags uint8) bool {
	if flags&^knownFlags != 0 {
		return false
	}
	kind := flags & (flagCall | flagReply | flagControl)
	if kind != 0 && kind != flagCall && kind != flagReply && kind != flagControl {
		return false
	}
	if flags&flagError != 0 && kind != flagReply {
		return false
	}
	return true
}

// appendHeader appends the header of a frame with the given body length.
func appendHeader(b []byte, typ, flags uint8, bodyLen int) []byte {
	b = append(b, typ, flags)
	return binary.BigEndian.AppendUint32(b, uint32(bodyLen))
}

// bodyLen is the length field of f.
func (f *frame) bodyLen() int {
	if f.flags&(flagCall|flagReply) != 0 {
		return idLen + len(f.payload)
	}
	return len(f.payload)
}

// writeFrame writes f to w (a buffered writer; nothing is flushed).
func writeFrame(w *bufio.Writer, f *frame) (int, error) {
	var hdr [headerLen + idLen]byte
	h := appendHeader(hdr[:0], f.typ, f.flags, f.bodyLen())
	if f.flags&(flagCall|flagReply) != 0 {
		h = binary.BigEndian.AppendUint64(h, f.id)
	}
	if _, err := w.Write(h); err != nil {
		return 0, err
	}
	if _, err := w.Write(f.payload); err != nil {
		return 0, err
	}
	return len(h) + len(f.payload), nil
}

// frameReader decodes frames from a stream.
type frameReader struct {
	r   *bufio.Reader
	max int // maximum body length
	hdr [headerLen]byte
}

// next reads one frame. io.EOF means the stream ended cleanly between
// frames; errTruncated, errOversize and errBadFlags mean the peer is
// broken or hostile. The payload is freshly allocated and owned by the
// caller.
func (fr *frameReader) next() (frame, error) {
	if _, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return frame{}, fmt.Errorf("%w: header", errTruncated)
		}
		return frame{}, err
	}
	f := frame{typ: fr.hdr[0], flags: fr.hdr[1]}
	n := binary.BigEndian.Uint32(fr.hdr[2:])
	if uint64(n) > uint64(fr.max) {
		return frame{}, fmt.Errorf("%w: %d > %d bytes", errOversize, n, fr.max)
	}
	if !validFlags(f.flags) {
		return frame{}, fmt.Errorf("%w: %#02x", errBadFlags, f.flags)
	}
	withID := f.flags&(flagCall|flagReply) != 0
	if withID && n < idLen {
		return frame{}, fmt.Errorf("%w: call body of %d bytes has no id", errBadFlags, n)
	}
	if f.flags&flagControl != 0 && (f.typ != ctlKeepalive || n != 0) {
		return frame{}, fmt.Errorf("%w: unknown control frame %d (%d bytes)", errBadFlags, f.typ, n)
	}
	if n == 0 {
		return f, nil
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(fr.r, body); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return frame{}, fmt.Errorf("%w: body of %d bytes", errTruncated, n)
		}
		return frame{}, err
	}
	if withID {
		f.id = binary.BigEndian.Uint64(body)
		body = body[idLen:]
	}
	f.payload = body
	return f, nil
}

// isProtocolError reports whether err is the peer's fault (garbage,
// truncated or oversize frames) rather than the network's.
func isProtocolError(err error) bool {
	return errors.Is(err, errOversize) || errors.Is(err, errBadFlags) || errors.Is(err, errTruncated)
}
