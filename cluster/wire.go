package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/mendmq/mendmq/cluster/replica"
)

// Data-plane message types of the cluster protocol (version protoVersion).
// One-way frames:
const (
	frameDeltas  uint8 = 1 // replica.AppendDeltas: replication broadcast or repair
	frameForward uint8 = 2 // forward payload: a QoS0 publish
)

// Calls (request/response):
const (
	callForward  uint8 = 10 // forward payload -> empty: a QoS1/2 publish, acked once injected
	callDigest   uint8 = 11 // replica digest -> bucket sets + deltas (anti-entropy)
	callRegister uint8 = 12 // claim request -> session blob (at the client id's leader)
	callTakeover uint8 = 13 // claim request -> session blob (at the session's node)
	callApply    uint8 = 14 // replica.AppendDeltas -> empty, once applied (synchronous replication)
	callHandoff  uint8 = 15 // claim (new node) -> messages caught for the moved session (at its old node)
	callAppend   uint8 = 16 // client id + messages -> empty: messages for a session moved here
)

// protoVersion is announced in membership metadata; a node with another
// version is refused at join.
const protoVersion = 2

var errMalformed = errors.New("cluster: malformed message")

// Strings are uvarint length + bytes; counts are uvarints.

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

type reader struct {
	b   []byte
	err error
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = fmt.Errorf("%w: bad varint", errMalformed)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) str(max int) string {
	n := r.uvarint()
	if r.err != nil {
		return ""
	}
	if n > uint64(max) || n > uint64(len(r.b)) {
		r.err = fmt.Errorf("%w: string of %d bytes", errMalformed, n)
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

func (r *reader) byte1() byte {
	if r.err != nil {
		return 0
	}
	if len(r.b) == 0 {
		r.err = fmt.Errorf("%w: truncated", errMalformed)
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

const (
	maxGroups   = 1 << 16
	maxNameLen  = 65535
	maxBucketID = 1 << 20
)

// appendForward encodes a forwarded publish: the shared subscriptions
// ("$share/g/f") the receiver must serve, the publish's id (unique per
// sending node; see Delivery.ID), then the encoded message.
func appendForward(b []byte, groups []string, id uint64, msg []byte) []byte {
	n := 2*binary.MaxVarintLen64 + len(msg)
	for _, g := range groups {
		n += binary.MaxVarintLen64 + len(g)
	}
	b = slices.Grow(b, n) // one allocation, not one per append
	b = binary.AppendUvarint(b, uint64(len(groups)))
	for _, g := range groups {
		b = appendStr(b, g)
	}
	b = binary.AppendUvarint(b, id)
	return append(b, msg...)
}

func decodeForward(b []byte) (groups []string, id uint64, msg []byte, err error) {
	r := reader{b: b}
	n := r.uvarint()
	if n > maxGroups {
		return nil, 0, nil, fmt.Errorf("%w: %d groups", errMalformed, n)
	}
	for i := uint64(0); i < n && r.err == nil; i++ {
		groups = append(groups, r.str(maxNameLen))
	}
	id = r.uvarint()
	if r.err != nil {
		return nil, 0, nil, r.err
	}
	return groups, id, r.b, nil
}

// appendTakeover encodes a registration's answer: the node the session
// was taken from ("" if none) and the exported session.
func appendTakeover(b []byte, t Takeover) []byte {
	b = appendStr(b, t.From)
	return append(b, t.Session...)
}

func decodeTakeover(b []byte) (Takeover, error) {
	r := reader{b: b}
	t := Takeover{From: r.str(maxNameLen)}
	if r.err != nil {
		return Takeover{}, r.err
	}
	if len(r.b) > 0 {
		t.Session = r.b
	}
	return t, nil
}

// appendSessionMsgs encodes messages for a session: client id, then the
// broker's encoding of the messages.
func appendSessionMsgs(b []byte, clientID string, msgs []byte) []byte {
	b = appendStr(b, clientID)
	return append(b, msgs...)
}

func decodeSessionMsgs(b []byte) (clientID string, msgs []byte, err error) {
	r := reader{b: b}
	clientID = r.str(maxNameLen)
	if r.err == nil && clientID == "" {
		r.err = fmt.Errorf("%w: empty client id", errMalformed)
	}
	return clientID, r.b, r.err
}

// claim is a registration (at the leader) or takeover (at the owner)
// request: node wants clientID; clean says whether the session is needed.
type claim struct {
	ClientID string
	Node     string
	Clean    bool
}

func (c claim) append(b []byte) []byte {
	var f byte
	if c.Clean {
		f = 1
	}
	b = append(b, f)
	b = appendStr(b, c.ClientID)
	return appendStr(b, c.Node)
}

func decodeClaim(b []byte) (claim, error) {
	r := reader{b: b}
	c := claim{Clean: r.byte1()&1 == 1}
	c.ClientID = r.str(maxNameLen)
	c.Node = r.str(maxNameLen)
	if r.err == nil && len(r.b) != 0 {
		r.err = fmt.Errorf("%w: %d trailing bytes", errMalformed, len(r.b))
	}
	return c, r.err
}

// appendRepair encodes an anti-entropy answer: the differing buckets and
// the answering node's entries in them.
func appendRepair(b []byte, sets []replica.BucketSet, deltas []replica.Delta) []byte {
	b = binary.AppendUvarint(b, uint64(len(sets)))
	for _, s := range sets {
		b = appendStr(b, s.Table)
		b = binary.AppendUvarint(b, uint64(len(s.Buckets)))
		for _, i := range s.Buckets {
			b = binary.AppendUvarint(b, uint64(i))
		}
	}
	return replica.AppendDeltas(b, deltas...)
}

func decodeRepair(b []byte) ([]replica.BucketSet, []replica.Delta, error) {
	r := reader{b: b}
	n := r.uvarint()
	if n > maxGroups {
		return nil, nil, fmt.Errorf("%w: %d tables", errMalformed, n)
	}
	var sets []replica.BucketSet
	for i := uint64(0); i < n && r.err == nil; i++ {
		s := replica.BucketSet{Table: r.str(maxNameLen)}
		m := r.uvarint()
		if m > maxBucketID {
			return nil, nil, fmt.Errorf("%w: %d buckets", errMalformed, m)
		}
		for j := uint64(0); j < m && r.err == nil; j++ {
			id := r.uvarint()
			if id > maxBucketID {
				return nil, nil, fmt.Errorf("%w: bucket %d", errMalformed, id)
			}
			s.Buckets = append(s.Buckets, int(id))
		}
		sets = append(sets, s)
	}
	if r.err != nil {
		return nil, nil, r.err
	}
	deltas, err := replica.DecodeDeltas(r.b)
	if err != nil {
		return nil, nil, err
	}
	return sets, deltas, nil
}
