// Package retained is the cluster's replicated table of retained messages
// ("ret"): one message per topic, replicated to every node, concurrent
// versions (set on both sides of a netsplit) decided by the "$retained"
// merge policy with the metadata of an EntryView.
//
// The cluster owns the value's layout (Message): the broker's encoding of
// the message plus the metadata a policy decides on, which the broker's
// message encoding does not carry.
package retained

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/mendmq/mendmq/cluster/merge"
	"github.com/mendmq/mendmq/cluster/replica"
	"github.com/mendmq/mendmq/cluster/replication"
)

// Table is the replicated table's name, MapName the merge policy's map.
const (
	Table   = "ret"
	MapName = "$retained"
)

// Message is a retained message as the cluster replicates it.
type Message struct {
	// Publish is the message in the broker's encoding: an MQTT 5 PUBLISH
	// packet, fixed header included (it is what a $retained policy sees
	// as EntryView.Value).
	Publish []byte
	// Created is when the message was published (millisecond precision).
	Created time.Time
	// Expires is when it expires (its message expiry interval after
	// Created); zero means never.
	Expires time.Time
	// Version counts the updates of the topic's retained message before
	// this one: 0 for the first, +1 per later set on the same node. A
	// deletion starts the count again.
	Version int64
}

// formatV1 is the first byte of an encoded Message.
const formatV1 = 1

var errMalformed = errors.New("retained: malformed value")

// Encode returns m's replicated encoding: a format byte, the creation and
// expiry times (Unix ms, uvarint; 0 = never) and the version (uvarint),
// then the PUBLISH packet.
func Encode(m Message) []byte {
	b := make([]byte, 0, 1+3*binary.MaxVarintLen64+len(m.Publish))
	b = append(b, formatV1)
	b = binary.AppendUvarint(b, unixMS(m.Created))
	b = binary.AppendUvarint(b, unixMS(m.Expires))
	b = binary.AppendUvarint(b, uint64(max(m.Version, 0)))
	return append(b, m.Publish...)
}

func unixMS(t time.Time) uint64 {
	if t.IsZero() {
		return 0
	}
	return uint64(max(t.UnixMilli(), 0))
}

func fromMS(ms uint64) time.Time {
	if ms == 0 || ms > 1<<62 {
		return time.Time{}
	}
	return time.UnixMilli(int64(ms))
}

// Decode reads an encoded Message. Publish shares b.
func Decode(b []byte) (Message, error) {
	if len(b) == 0 || b[0] != formatV1 {
		return Message{}, fmt.Errorf("%w: unknown format", errMalformed)
	}
	b = b[1:]
	var v [3]uint64
	for i := range v {
		x, n := binary.Uvarint(b)
		if n <= 0 {
			return Message{}, fmt.Errorf("%w: bad varint", errMalformed)
		}
		v[i], b = x, b[n:]
	}
	if len(b) == 0 {
		return Message{}, fmt.Errorf("%w: no message", errMalformed)
	}
	if v[2] > 1<<62 {
		return Message{}, fmt.Errorf("%w: version %d", errMalformed, v[2])
	}
	return Message{Publish: b, Created: fromMS(v[0]), Expires: fromMS(v[1]), Version: int64(v[2])}, nil
}

// Applier is told the resolved retained message of a topic whenever it
// changes (nil: deleted). The broker implements it. Calls are serialized,
// in the order of changes, and must be quick.
type Applier interface {
	ApplyRetained(topic string, m *Message)
}

// Retained is the table's driver. Create it with New before the
// Replicator runs.
type Retained struct {
	repl   *replication.Replicator
	broker Applier
	reads  *Reads
	log    *slog.Logger
}

// New returns the retained table over repl, telling broker about changes
// and counting reads in reads (which may be nil: reads not counted). The
// Replicator must have been built with Merged(log, reads) among its
// merged tables.
func New(repl *replication.Replicator, broker Applier, reads *Reads, log *slog.Logger) *Retained {
	t := &Retained{repl: repl, broker: broker, reads: reads, log: log}
	repl.Watch(Table, func(c replica.Change, _ bool) { t.apply(c.Key, c.New.Value, c.New.Live()) })
	if reads != nil {
		repl.Watch(ReadsTable, func(c replica.Change, remote bool) { reads.observe(c.Key, c.New.Value, c.New.Live(), remote) })
	}
	return t
}

// apply tells the broker; called under the replication lock.
func (t *Retained) apply(topic string, value []byte, live bool) {
	if t.reads != nil {
		t.reads.resolved(topic, value, live)
	}
	if !live {
		t.broker.ApplyRetained(topic, nil)
		return
	}
	m, err := Decode(value)
	if err != nil {
		t.log.Error("replicated retained value unreadable; keeping the local one", "topic", topic, "error", err)
		return
	}
	t.broker.ApplyRetained(topic, &m)
}

// Put sets topic's retained message (its Version is set here).
func (t *Retained) Put(topic string, m Message, now time.Time) error {
	m.Version = 0
	if cur, ok := t.Get(topic); ok {
		m.Version = cur.Version + 1
	}
	return t.repl.Put(Table, topic, Encode(m), now)
}

// Delete clears topic's retained message.
func (t *Retained) Delete(topic string, now time.Time) error {
	return t.repl.Delete(Table, topic, now)
}

// Get returns topic's resolved retained message.
func (t *Retained) Get(topic string) (Message, bool) {
	v, ok := t.repl.Get(Table, topic)
	if !ok {
		return Message{}, false
	}
	m, err := Decode(v)
	return m, err == nil
}

// Hit counts a read of topic's retained message (see Reads.Hit).
func (t *Retained) Hit(topic string, now time.Time) {
	if t.reads != nil {
		t.reads.Hit(topic, now)
	}
}

// Reads returns the reads of topic's resolved retained message summed
// over the nodes and the time of the last one (zero: never read), as a
// $retained policy would see them now; ok is false without a message.
func (t *Retained) Reads(topic string) (hits int64, last time.Time, ok bool) {
	v, ok := t.repl.Get(Table, topic)
	if !ok || t.reads == nil {
		return 0, time.Time{}, ok
	}
	hits, ms := t.reads.Count(topic, v)
	if ms > 0 {
		last = time.UnixMilli(ms)
	}
	return hits, last, true
}

// FlushReads writes this node's read counts to ReadsTable (see
// Reads.Flush): counts is set while the node is in a netsplit, and once
// after. Calls must be serialized.
func (t *Retained) FlushReads(counts bool, now time.Time) error {
	if t.reads == nil {
		return nil
	}
	ws := t.reads.Flush(counts)
	if len(ws) == 0 {
		return nil
	}
	batch := make([]replication.Write, len(ws))
	for i, w := range ws {
		batch[i] = replication.Write{Key: w.Key, Value: w.Value, Delete: w.Value == nil}
	}
	if err := t.repl.WriteBatch(ReadsTable, batch, now); err != nil {
		return fmt.Errorf("write retained read counts: %w", err)
	}
	return nil
}

// Len returns the number of retained messages.
func (t *Retained) Len() int { return t.repl.Len(Table) }

// Reapply makes the broker's retained message of topic the cluster's
// resolved one again (through ApplyRetained, serialized with replication).
func (t *Retained) Reapply(topic string) {
	t.repl.Reapply(Table, topic, func(v []byte, ok bool) { t.apply(topic, v, ok) })
}

// View is what the $retained policy sees of a version: Key the topic,
// Value the PUBLISH packet, Cost its size, the message's creation and
// expiry, its Version, and the write time on its node as last update and
// last stored time. Hits and LastAccessTime are 0 here: Reads.View adds
// the reads counted on the nodes.
func View(topic string, s replica.Sibling) merge.EntryView {
	v := merge.EntryView{Key: []byte(topic), Value: s.Value, Cost: int64(len(s.Value)), LastUpdateTime: s.TS, LastStoredTime: s.TS}
	if m, err := Decode(s.Value); err == nil {
		v.Value, v.Cost, v.Version = m.Publish, int64(len(m.Publish)), m.Version
		v.CreationTime, v.ExpirationTime = int64(unixMS(m.Created)), int64(unixMS(m.Expires))
	}
	return v
}

// Merged describes the table to replication: a deletion concurrent with a
// set is decided by the latest write (ties to the larger node id) — a
// tombstone is not an entry a policy can judge — and two sets by the
// $retained policy, which sees each version's reads from reads (nil: none
// counted). A Put verdict must carry an MQTT PUBLISH packet; anything
// else keeps the existing message (logged).
func Merged(log *slog.Logger, reads *Reads) replication.Merged {
	return replication.Merged{
		Table:   Table,
		MapName: MapName,
		View:    reads.View,
		Direct: func(_ string, existing, merging replica.Sibling) (replica.Sibling, bool) {
			if !existing.Live() || !merging.Live() {
				return replica.LatestWins.Resolve(Table, "", existing, merging), true
			}
			return replica.Sibling{}, false
		},
		Decide: func(topic string, existing, merging replica.Sibling, r merge.Result) replica.Sibling {
			ts := max(existing.TS, merging.TS)
			switch r.Verdict {
			case merge.TakeMerging:
				return merging
			case merge.Delete:
				return replica.Sibling{Node: merging.Node, TS: ts, Deleted: true}
			case merge.Put:
				if r.Entry == nil || !isPublish(r.Entry.Value) {
					log.Error("$retained policy built something that is not an MQTT PUBLISH; keeping the existing message", "topic", topic)
					return existing
				}
				em, _ := Decode(existing.Value)
				mm, _ := Decode(merging.Value)
				m := Message{Publish: r.Entry.Value, Version: max(em.Version, mm.Version) + 1,
					Created: fromMS(uint64(max(r.Entry.CreationTime, 0))), Expires: fromMS(uint64(max(r.Entry.ExpirationTime, 0)))}
				if m.Created.IsZero() {
					m.Created = mm.Created
				}
				return replica.Sibling{Node: merging.Node, TS: ts, Value: Encode(m)}
			}
			return existing
		},
	}
}

// isPublish reports whether b starts like an MQTT PUBLISH packet (packet
// type 3 and a remaining length that fits).
func isPublish(b []byte) bool {
	if len(b) < 2 || b[0]>>4 != 3 {
		return false
	}
	n, mult := 0, 1
	for i := 1; i < len(b) && i <= 4; i++ {
		n += int(b[i]&0x7f) * mult
		if b[i]&0x80 == 0 {
			return n == len(b)-i-1
		}
		mult *= 128
	}
	return false
}
