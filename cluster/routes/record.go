// Package routes holds what the cluster replicates about MQTT sessions and
// the routing index derived from it.
//
// A SessionRecord is the value of the replicated "sub" table (key: client
// id): which node hosts the session and its subscriptions. Index is built
// from those records and answers, for a published topic, which nodes need a
// copy: nodes with a matching ordinary subscription, and for each matching
// shared subscription ($share/<group>/<filter>) the nodes that have members,
// so the publisher can deliver exactly once per group across the cluster.
//
// The package does no I/O and starts no goroutines. Index is safe for
// concurrent use (see Index); SessionRecord values are plain data.
package routes

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/mendmq/mendmq/cluster/hlc"
)

// Subscription is one subscription of a session, with the MQTT v5
// subscription options (v3 sessions leave the v5 fields zero).
type Subscription struct {
	// Filter is the topic filter as subscribed, including a
	// "$share/<group>/" prefix for shared subscriptions.
	Filter string
	// QoS is the maximum QoS granted, 0..2.
	QoS byte
	// NoLocal: do not deliver messages published by this same client.
	NoLocal bool
	// RetainAsPublished: keep the RETAIN flag of forwarded messages.
	RetainAsPublished bool
	// RetainHandling is 0 (send retained on subscribe), 1 (only if the
	// subscription is new) or 2 (never).
	RetainHandling byte
	// Identifier is the v5 subscription identifier, 0 when none
	// (1..268435455 otherwise).
	Identifier int
}

// SessionRecord is what the cluster knows about one client's session.
type SessionRecord struct {
	// Node is the id of the cluster node hosting the session.
	Node string
	// Clean is true when the session ends with its connection (v3 clean
	// session, v5 session expiry interval 0).
	Clean bool
	// CleanStart is the CONNECT's Clean Start (v3: Clean Session) flag:
	// the client asked to discard any session it had. A duplicate of the
	// session that loses to this one at a netsplit's heal is discarded
	// then, as a takeover by this CONNECT would have; otherwise its
	// queued messages join this session.
	CleanStart bool
	// ExpiryInterval is the v5 session expiry interval in seconds after
	// disconnect; meaningful only when Clean is false (0xFFFFFFFF: never).
	ExpiryInterval uint32
	// Subs are the session's subscriptions, at most one per filter.
	Subs []Subscription
	// Connect stamps the CONNECT that set up this session on Node (a
	// hybrid logical clock reading, see package hlc; zero if unknown).
	// Later rewrites of the record (subscriptions) keep it. It decides
	// which of two concurrent sessions of a client id survives (Compare).
	Connect hlc.Timestamp
}

// Compare orders two sessions of one client id by the rule that decides
// which survives when both exist (a client id registered on both sides of
// a netsplit): the later CONNECT by hybrid logical clock wins, a tie goes
// to the larger node name. It returns +1 if a wins, -1 if b wins, 0 if
// they name the same CONNECT on the same node.
func Compare(a, b SessionRecord) int {
	if c := a.Connect.Compare(b.Connect); c != 0 {
		return c
	}
	return strings.Compare(a.Node, b.Node)
}

// Limits enforced by the decoder; they match what MQTT can carry.
const (
	// recordVersion 2 added the CONNECT stamp (cluster protocol 4).
	recordVersion = 2
	// MaxNodeLen bounds a node id.
	MaxNodeLen = 1024
	// MaxFilterLen is the MQTT UTF-8 string limit.
	MaxFilterLen = 65535
	// MaxIdentifier is the largest v5 subscription identifier.
	MaxIdentifier = 268435455
)

// ErrMalformed is returned (wrapped) when decoding bytes that are not a
// valid SessionRecord encoding.
var ErrMalformed = errors.New("routes: malformed session record")

// AppendBinary appends the encoding of r to b. The encoding is
// deterministic and versioned:
//
//	version=2 | uvarint len(node) node | flags (bit0 clean, bit1 clean start) |
//	uvarint expiry | connect | uvarint #subs | sub*
//	connect = uvarint wall ms | uvarint logical (hlc.Timestamp)
//	sub = uvarint len(filter) filter | options | uvarint identifier
//	options = qos (bits 0-1) | no-local (bit 2) | retain-as-published (bit 3)
//	          | retain-handling (bits 4-5)
//
// It fails only for records Decode would refuse (fields out of range).
func (r SessionRecord) AppendBinary(b []byte) ([]byte, error) {
	if err := r.Validate(); err != nil {
		return b, err
	}
	b = append(b, recordVersion)
	b = binary.AppendUvarint(b, uint64(len(r.Node)))
	b = append(b, r.Node...)
	var flags byte
	if r.Clean {
		flags |= 1
	}
	if r.CleanStart {
		flags |= 2
	}
	b = append(b, flags)
	b = binary.AppendUvarint(b, uint64(r.ExpiryInterval))
	b = r.Connect.AppendBinary(b)
	b = binary.AppendUvarint(b, uint64(len(r.Subs)))
	for _, s := range r.Subs {
		b = binary.AppendUvarint(b, uint64(len(s.Filter)))
		b = append(b, s.Filter...)
		opts := s.QoS | s.RetainHandling<<4
		if s.NoLocal {
			opts |= 1 << 2
		}
		if s.RetainAsPublished {
			opts |= 1 << 3
		}
		b = append(b, opts)
		b = binary.AppendUvarint(b, uint64(s.Identifier))
	}
	return b, nil
}

// MarshalBinary returns the encoding described at AppendBinary.
func (r SessionRecord) MarshalBinary() ([]byte, error) {
	return r.AppendBinary(nil)
}

// Validate reports the first field that Decode would refuse.
func (r SessionRecord) Validate() error {
	if r.Node == "" || len(r.Node) > MaxNodeLen {
		return fmt.Errorf("%w: node id length %d, want 1..%d", ErrMalformed, len(r.Node), MaxNodeLen)
	}
	if r.Connect.Wall < 0 || r.Connect.Wall > hlc.MaxWall {
		return fmt.Errorf("%w: connect stamp %v outside 0..%d ms", ErrMalformed, r.Connect, int64(hlc.MaxWall))
	}
	for i, s := range r.Subs {
		switch {
		case s.Filter == "" || len(s.Filter) > MaxFilterLen || !utf8.ValidString(s.Filter):
			return fmt.Errorf("%w: subscription %d: filter must be 1..%d bytes of UTF-8", ErrMalformed, i, MaxFilterLen)
		case s.QoS > 2:
			return fmt.Errorf("%w: subscription %d (%q): qos %d > 2", ErrMalformed, i, s.Filter, s.QoS)
		case s.RetainHandling > 2:
			return fmt.Errorf("%w: subscription %d (%q): retain handling %d > 2", ErrMalformed, i, s.Filter, s.RetainHandling)
		case s.Identifier < 0 || s.Identifier > MaxIdentifier:
			return fmt.Errorf("%w: subscription %d (%q): identifier %d outside 0..%d", ErrMalformed, i, s.Filter, s.Identifier, MaxIdentifier)
		}
	}
	return nil
}

// UnmarshalBinary decodes a record encoded by AppendBinary. It copies what
// it keeps (b may be reused) and refuses trailing bytes.
func (r *SessionRecord) UnmarshalBinary(b []byte) error {
	rec, err := DecodeRecord(b)
	if err != nil {
		return err
	}
	*r = rec
	return nil
}

// DecodeRecord decodes a record encoded by AppendBinary; see UnmarshalBinary.
func DecodeRecord(b []byte) (SessionRecord, error) {
	var r SessionRecord
	d := decoder{b: b}
	if v := d.byte("version"); d.err == nil && v != recordVersion {
		return r, fmt.Errorf("%w: version %d, want %d", ErrMalformed, v, recordVersion)
	}
	r.Node = d.string("node", MaxNodeLen)
	flags := d.byte("flags")
	if d.err == nil && flags&^3 != 0 {
		return r, fmt.Errorf("%w: unknown flags %#x", ErrMalformed, flags)
	}
	r.Clean = flags&1 != 0
	r.CleanStart = flags&2 != 0
	exp := d.uvarint("expiry")
	if exp > 0xFFFFFFFF {
		d.fail("expiry %d exceeds 32 bits", exp)
	}
	r.ExpiryInterval = uint32(exp)
	r.Connect = d.stamp("connect stamp")
	n := d.uvarint("subscription count")
	// A subscription takes at least 4 bytes.
	if d.err == nil && n > uint64(len(d.b)-d.off)/4 {
		d.fail("%d subscriptions in %d bytes", n, len(d.b)-d.off)
	}
	if d.err == nil && n > 0 {
		r.Subs = make([]Subscription, 0, n)
	}
	for i := uint64(0); i < n && d.err == nil; i++ {
		var s Subscription
		s.Filter = d.string("filter", MaxFilterLen)
		opts := d.byte("options")
		if d.err == nil && opts&0xC0 != 0 {
			d.fail("subscription %d: reserved option bits %#x", i, opts)
		}
		s.QoS = opts & 3
		s.NoLocal = opts&(1<<2) != 0
		s.RetainAsPublished = opts&(1<<3) != 0
		s.RetainHandling = opts >> 4 & 3
		id := d.uvarint("identifier")
		if id > MaxIdentifier {
			d.fail("subscription %d: identifier %d too large", i, id)
		}
		s.Identifier = int(id)
		r.Subs = append(r.Subs, s)
	}
	if d.err != nil {
		return SessionRecord{}, d.err
	}
	if d.off != len(d.b) {
		return SessionRecord{}, fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(d.b)-d.off)
	}
	if err := r.Validate(); err != nil {
		return SessionRecord{}, err
	}
	return r, nil
}

// decoder reads fields front to back and remembers the first error, so the
// decoding code reads like the format description.
type decoder struct {
	b   []byte
	off int
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
	}
}

func (d *decoder) byte(what string) byte {
	if d.err != nil {
		return 0
	}
	if d.off >= len(d.b) {
		d.fail("missing %s at offset %d", what, d.off)
		return 0
	}
	c := d.b[d.off]
	d.off++
	return c
}

func (d *decoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	x, n := binary.Uvarint(d.b[d.off:])
	if n <= 0 {
		d.fail("bad %s varint at offset %d", what, d.off)
		return 0
	}
	d.off += n
	return x
}

func (d *decoder) stamp(what string) hlc.Timestamp {
	if d.err != nil {
		return hlc.Timestamp{}
	}
	ts, n, err := hlc.Decode(d.b[d.off:])
	if err != nil {
		d.fail("%s at offset %d: %v", what, d.off, err)
		return hlc.Timestamp{}
	}
	d.off += n
	return ts
}

func (d *decoder) string(what string, maxLen int) string {
	l := d.uvarint(what + " length")
	if d.err != nil {
		return ""
	}
	if l == 0 || l > uint64(maxLen) || l > uint64(len(d.b)-d.off) {
		d.fail("%s length %d at offset %d", what, l, d.off)
		return ""
	}
	s := string(d.b[d.off : d.off+int(l)])
	d.off += int(l)
	return s
}
