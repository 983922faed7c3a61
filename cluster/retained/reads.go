package retained

import (
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/mendmq/mendmq/cluster/merge"
	"github.com/mendmq/mendmq/cluster/replica"
)

// ReadsTable is the replicated table of read counts ("hits"): key
// topic NUL node, value an encoded Count of that node's reads of the
// topic's retained message. Only the node named in a key writes it, so
// its versions never conflict.
//
// The name sorts before Table on purpose: anti-entropy sends the tables
// in name order, so a node that receives the two copies of a topic's
// retained message at a heal has, by then, the counts the other side
// kept of them.
const ReadsTable = "hits"

// Count is one node's reads of one retained message.
type Count struct {
	// ID identifies the message (MessageID of its replicated value):
	// counts of an earlier message of the topic are not this one's.
	ID uint64
	// Hits is the number of reads.
	Hits int64
	// Access is the time of the last read, Unix ms.
	Access int64
}

// MessageID identifies a replicated retained value (the Encode of a
// Message, its metadata included) on every node alike: a resolution that
// keeps one of two versions keeps its ID, a new message gets another.
func MessageID(value []byte) uint64 { return xxhash.Sum64(value) }

// countFormat is the first byte of an encoded Count.
const countFormat = 1

func encodeCount(c Count) []byte {
	b := make([]byte, 0, 1+8+2*binary.MaxVarintLen64)
	b = append(b, countFormat)
	b = binary.LittleEndian.AppendUint64(b, c.ID)
	b = binary.AppendUvarint(b, uint64(max(c.Hits, 0)))
	return binary.AppendUvarint(b, uint64(max(c.Access, 0)))
}

func decodeCount(b []byte) (Count, error) {
	if len(b) < 9 || b[0] != countFormat {
		return Count{}, fmt.Errorf("%w: read count of unknown format", errMalformed)
	}
	c := Count{ID: binary.LittleEndian.Uint64(b[1:9])}
	b = b[9:]
	for _, p := range []*int64{&c.Hits, &c.Access} {
		x, n := binary.Uvarint(b)
		if n <= 0 || x > 1<<62 {
			return Count{}, fmt.Errorf("%w: bad read count", errMalformed)
		}
		*p, b = int64(x), b[n:]
	}
	return c, nil
}

// readsKey is the ReadsTable key of node's count of topic. MQTT topic
// names cannot contain U+0000 [MQTT-4.7.3-2], so the split is unambiguous.
func readsKey(topic, node string) string { return topic + "\x00" + node }

func splitReadsKey(key string) (topic, node string, ok bool) {
	i := strings.LastIndexByte(key, 0)
	if i <= 0 || i == len(key)-1 {
		return "", "", false
	}
	return key[:i], key[i+1:], true
}

// counter is this node's count of the reads of a topic's current
// retained message. id is fixed; a new message gets a new counter.
type counter struct {
	id     uint64
	hits   atomic.Int64
	access atomic.Int64 // Unix ms
}

// Reads counts this node's reads of retained messages (a hit: the
// message delivered to a subscriber because it subscribed) and knows the
// counts other nodes published in ReadsTable, so that a $retained policy
// sees, for each copy of a message, the reads of that copy summed over
// the nodes (hits) and the latest of them (last access).
//
// The hot path, Hit, is a sync.Map lookup and atomic updates: no lock of
// the replicated tables. Counts reach the other nodes through Flush, which
// the node calls once per anti-entropy interval and which writes counts
// only while the node is in a netsplit (and once after): a count decides
// something only when two copies of a message meet, which takes writes on
// both sides of a split, so a healthy cluster replicates no read counts.
type Reads struct {
	node     string
	counters sync.Map // topic -> *counter: the resolved message's

	mu sync.Mutex
	// remote holds the other nodes' counts: topic -> node -> count.
	remote map[string]map[string]Count
	// written is what ReadsTable holds for this node (written by this
	// process, or by an earlier one under the same name).
	written map[string]Count
	// adopt holds counts of this node's earlier incarnation that arrived
	// from a peer before the message they count: a counter created for
	// that message starts from them.
	adopt map[string]Count
}

// NewReads returns an empty read counter for node.
func NewReads(node string) *Reads {
	return &Reads{node: node, remote: map[string]map[string]Count{}, written: map[string]Count{}, adopt: map[string]Count{}}
}

// Hit counts one read of topic's retained message at now. Topics without
// a replicated retained message (mochi's own $SYS ones) are not counted.
// Safe for concurrent use; lock-free once the topic's counter is known.
func (r *Reads) Hit(topic string, now time.Time) {
	v, ok := r.counters.Load(topic)
	if !ok {
		return
	}
	c := v.(*counter)
	c.hits.Add(1)
	ms := now.UnixMilli()
	for {
		old := c.access.Load()
		if ms <= old || c.access.CompareAndSwap(old, ms) {
			return
		}
	}
}

// resolved tells Reads the resolved value of topic (live false: none).
// Called under the replication lock, in change order.
func (r *Reads) resolved(topic string, value []byte, live bool) {
	if !live {
		r.counters.Delete(topic)
		return
	}
	id := MessageID(value)
	if v, ok := r.counters.Load(topic); ok && v.(*counter).id == id {
		return // the same message (a resolution's write-back)
	}
	c := &counter{id: id}
	r.mu.Lock()
	if a, ok := r.adopt[topic]; ok && a.ID == id {
		c.hits.Store(a.Hits)
		c.access.Store(a.Access)
		delete(r.adopt, topic)
	}
	r.mu.Unlock()
	r.counters.Store(topic, c)
}

// observe tells Reads about a change of ReadsTable. remote is set when
// the change came from a peer. Called under the replication lock.
func (r *Reads) observe(key string, value []byte, live, remote bool) {
	topic, node, ok := splitReadsKey(key)
	if !ok {
		return
	}
	var c Count
	if live {
		var err error
		if c, err = decodeCount(value); err != nil {
			live = false
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if node != r.node {
		m := r.remote[topic]
		switch {
		case live && m == nil:
			r.remote[topic] = map[string]Count{node: c}
		case live:
			m[node] = c
		case m != nil:
			delete(m, node)
			if len(m) == 0 {
				delete(r.remote, topic)
			}
		}
		return
	}
	if !remote {
		return // this node's own write: written already records it
	}
	// This node's count as an earlier incarnation left it: continue
	// from it rather than overwrite it with a count from zero.
	if !live {
		delete(r.written, topic)
		return
	}
	r.written[topic] = c
	if v, ok := r.counters.Load(topic); ok && v.(*counter).id == c.ID {
		cur := v.(*counter)
		cur.hits.Add(c.Hits)
		if a := cur.access.Load(); c.Access > a {
			cur.access.CompareAndSwap(a, c.Access)
		}
		return
	}
	r.adopt[topic] = c
}

// Count returns the reads of the retained value of topic summed over
// the nodes, and the latest of them (Unix ms; 0: never read).
func (r *Reads) Count(topic string, value []byte) (hits, access int64) {
	id := MessageID(value)
	if v, ok := r.counters.Load(topic); ok {
		if c := v.(*counter); c.id == id {
			hits, access = c.hits.Load(), c.access.Load()
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.remote[topic] {
		if c.ID == id {
			hits += c.Hits
			access = max(access, c.Access)
		}
	}
	return hits, access
}

// View is the package's View with the reads of the version: Hits summed
// over the nodes, LastAccessTime the latest read or, if later, the write
// (the EntryView's "last read or write").
func (r *Reads) View(topic string, s replica.Sibling) merge.EntryView {
	v := View(topic, s)
	if r != nil && s.Live() {
		hits, access := r.Count(topic, s.Value)
		v.Hits, v.LastAccessTime = hits, max(access, v.LastUpdateTime)
	}
	return v
}

// ReadsWrite is one write of ReadsTable that Flush asks for: a put of
// Value, or a deletion (Value nil).
type ReadsWrite struct {
	Key   string
	Value []byte
}

// Flush returns the writes that bring ReadsTable up to date with this
// node's counts: with counts set, a put for every read message whose
// count changed since it was last written; always, a deletion of the
// written counts of topics whose message is gone or was replaced and not
// read since. The caller writes them (and Flush records them as written).
// Calls must be serialized.
func (r *Reads) Flush(counts bool) []ReadsWrite {
	var out []ReadsWrite
	r.mu.Lock()
	defer r.mu.Unlock()
	if counts {
		r.counters.Range(func(k, v any) bool {
			topic, c := k.(string), v.(*counter)
			cur := Count{ID: c.id, Hits: c.hits.Load(), Access: c.access.Load()}
			if cur.Hits == 0 || r.written[topic] == cur {
				return true
			}
			r.written[topic] = cur
			out = append(out, ReadsWrite{Key: readsKey(topic, r.node), Value: encodeCount(cur)})
			return true
		})
	}
	for topic, w := range r.written {
		v, ok := r.counters.Load(topic)
		if ok && (v.(*counter).id == w.ID || v.(*counter).hits.Load() > 0) {
			continue // current, or to be overwritten by the next counts
		}
		delete(r.written, topic)
		out = append(out, ReadsWrite{Key: readsKey(topic, r.node)})
	}
	return out
}
