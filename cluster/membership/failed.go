package membership

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Failed members travel with a join's state exchange (memberlist's
// push/pull LocalState and MergeRemoteState, on joins only).
//
// memberlist tells a joining node about the members its peer believes
// alive and nothing about those it declared dead. A node that joins one
// side of a netsplit would then not know the other side at all: it would
// not be in the netsplit (no gate, no publishes held for the far side's
// sessions, which its replicated tables still route to), and after the
// heal it would not re-join them itself. So each side of a join sends the
// members it holds Dead or suspects (memberlist drops a suspect it does
// not know as well), with how long ago, and the other adds those it does
// not know as Dead: the reconnect loop tries to join them within
// Config.ReconnectInterval (a suspect that is fine comes back Alive
// then), and the reaper removes them after Config.ReconnectTimeout from
// their original failure, as on the node that saw them fail.

// failedVersion is the first byte of an encoded failed-member list.
//
// Encoding, version 1:
//
//	[0]  version = 1
//	     uvarint count, then count times:
//	       uvarint len, name
//	       uvarint len, gossip address
//	       uvarint len, the member's metadata (the NodeMeta encoding)
//	       uvarint milliseconds since it failed
const failedVersion = 1

// maxFailed bounds the list a peer may send.
const maxFailed = 4096

var errBadFailed = errors.New("membership: malformed failed-member list")

// failedMember is a member a peer holds Dead or suspects.
type failedMember struct {
	m       Member
	cluster string
	age     time.Duration
}

func encodeFailed(cluster string, ms []failedMember) []byte {
	if len(ms) == 0 {
		return nil
	}
	b := []byte{failedVersion}
	b = binary.AppendUvarint(b, uint64(len(ms)))
	for _, f := range ms {
		meta := encodeMeta(cluster, f.m.Meta)
		for _, s := range [][]byte{[]byte(f.m.Name), []byte(f.m.GossipAddr), meta} {
			b = binary.AppendUvarint(b, uint64(len(s)))
			b = append(b, s...)
		}
		b = binary.AppendUvarint(b, uint64(max(f.age.Milliseconds(), 0)))
	}
	return b
}

func decodeFailed(b []byte) ([]failedMember, error) {
	if len(b) == 0 || b[0] != failedVersion {
		return nil, fmt.Errorf("%w: unknown version", errBadFailed)
	}
	b = b[1:]
	uv := func() (uint64, bool) {
		x, n := binary.Uvarint(b)
		if n <= 0 {
			return 0, false
		}
		b = b[n:]
		return x, true
	}
	field := func(limit uint64) ([]byte, bool) {
		n, ok := uv()
		if !ok || n > limit || n > uint64(len(b)) {
			return nil, false
		}
		s := b[:n]
		b = b[n:]
		return s, true
	}
	count, ok := uv()
	if !ok || count > maxFailed {
		return nil, fmt.Errorf("%w: bad count", errBadFailed)
	}
	out := make([]failedMember, 0, count)
	for range count {
		name, ok1 := field(255)
		addr, ok2 := field(255)
		meta, ok3 := field(1024)
		age, ok4 := uv()
		if !ok1 || !ok2 || !ok3 || !ok4 || len(name) == 0 || age > 1<<40 {
			return nil, fmt.Errorf("%w: bad member", errBadFailed)
		}
		w, err := decodeMeta(meta)
		if err != nil {
			return nil, fmt.Errorf("%w: member %q: %w", errBadFailed, name, err)
		}
		out = append(out, failedMember{m: Member{Name: string(name), GossipAddr: string(addr), Meta: w.NodeMeta, State: Dead},
			cluster: w.cluster, age: time.Duration(age) * time.Millisecond})
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", errBadFailed, len(b))
	}
	return out, nil
}

// failed returns the Dead and Suspect members, with how long ago they
// entered that state, and the alive ones unreachable reports (nil: none)
// as just failed. memberlist's own suspicion cannot stand in for the
// latter: it is not public (memberlist.Node.State stays as the member
// joined), the table holds a member Suspect only after a probe of this
// node's own failed, and a joiner's memberlist drops a suspect it does
// not know — so a node joining one side of a split still being detected
// would not learn of the other side (TestJoinDuringSplit).
func (t *table) failed(now time.Time, unreachable func(string) bool) []failedMember {
	var out []failedMember
	for _, r := range t.recs {
		switch {
		case r.m.State == Dead || r.m.State == Suspect:
			out = append(out, failedMember{m: copyMember(r.m), age: now.Sub(r.since)})
		case r.m.State == Alive && r.m.Name != t.local && unreachable != nil && unreachable(r.m.Name):
			out = append(out, failedMember{m: copyMember(r.m)})
		}
	}
	return out
}

// learnFailed adds m, which a peer holds Dead since `since`, if this
// node does not know it: it is Dead here too (re-joined by the reconnect
// loop, reaped on the peer's schedule). Known members are unchanged.
func (t *table) learnFailed(m Member, since time.Time) []event {
	if _, ok := t.recs[m.Name]; ok || m.Name == t.local {
		return nil
	}
	m.State = Dead
	t.recs[m.Name] = &record{m: m, since: since}
	return []event{{evLeave, m}}
}
