// Package outbox holds the QoS 1/2 publishes (and wills) this node
// accepted for peers it cannot reach — a netsplit with
// cluster.allow_publish_during_netsplit, or a will whose subscribers are
// on the far side — until the peer is back, in the order they were held.
// Each peer's queue is bounded in messages and bytes: a full queue refuses
// (the publisher gets an error ack), it never drops silently.
//
// With a Store (storage.path) held messages survive a restart of this
// node. The queue is the state; the cluster's driver drains it (Peek, then
// Remove what the peer acknowledged).
package outbox

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
)

// ErrFull: the peer's queue is at its bound.
var ErrFull = errors.New("outbox: the queue for the unreachable node is full")

// Message is one held publish.
type Message struct {
	// Seq orders a peer's messages (assigned by Hold, increasing).
	Seq uint64
	// Payload is the forward payload (shared groups, the publish's id,
	// the encoded publish).
	Payload []byte
}

// Store persists held messages. Implementations must be safe for
// concurrent use. Keys are (peer, seq).
type Store interface {
	Put(peer string, seq uint64, payload []byte) error
	Delete(peer string, seqs []uint64) error
	// Load returns every stored message by peer, each peer's in seq
	// order.
	Load() (map[string][]Message, error)
}

// Config bounds each peer's queue.
type Config struct {
	// MaxMessages and MaxBytes bound one peer's queue
	// (cluster.netsplit_queue_messages, cluster.netsplit_queue_bytes).
	MaxMessages int
	MaxBytes    int
	// Store, if set, persists the queues.
	Store Store
}

// Outbox is every peer's queue. It is safe for concurrent use.
type Outbox struct {
	cfg Config

	mu     sync.Mutex
	queues map[string]*queue
	held   uint64 // messages ever held
}

type queue struct {
	msgs  []Message
	bytes int
	next  uint64
}

// New returns an Outbox, loading what the Store holds.
func New(cfg Config) (*Outbox, error) {
	o := &Outbox{cfg: cfg, queues: map[string]*queue{}}
	if cfg.Store == nil {
		return o, nil
	}
	stored, err := cfg.Store.Load()
	if err != nil {
		return nil, fmt.Errorf("load held messages: %w", err)
	}
	for peer, msgs := range stored {
		q := &queue{msgs: msgs}
		for _, m := range msgs {
			q.bytes += len(m.Payload)
			q.next = max(q.next, m.Seq+1)
		}
		o.queues[peer] = q
	}
	return o, nil
}

// Held is one message to hold for one peer (HoldAll).
type Held struct {
	Peer    string
	Payload []byte
}

// HoldAll holds every message or none: it fails with ErrFull if one
// peer's queue would pass its bound, or with the Store's error (then the
// ones already stored are removed again).
func (o *Outbox) HoldAll(hs []Held) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	need := map[string][2]int{}
	for _, h := range hs {
		n := need[h.Peer]
		need[h.Peer] = [2]int{n[0] + 1, n[1] + len(h.Payload)}
	}
	for peer, n := range need {
		msgs, bytes := 0, 0
		if q := o.queues[peer]; q != nil {
			msgs, bytes = len(q.msgs), q.bytes
		}
		if (o.cfg.MaxMessages > 0 && msgs+n[0] > o.cfg.MaxMessages) || (o.cfg.MaxBytes > 0 && bytes+n[1] > o.cfg.MaxBytes) {
			return fmt.Errorf("%w (%s: %d messages, %d bytes)", ErrFull, peer, msgs, bytes)
		}
	}
	var done []Held
	var seqs []uint64
	for _, h := range hs {
		if err := o.holdLocked(h.Peer, h.Payload); err != nil {
			for i := len(done) - 1; i >= 0; i-- {
				o.unholdLocked(done[i].Peer, seqs[i])
			}
			return err
		}
		q := o.queues[h.Peer]
		done, seqs = append(done, h), append(seqs, q.msgs[len(q.msgs)-1].Seq)
	}
	return nil
}

// unholdLocked takes back the last message held for peer.
func (o *Outbox) unholdLocked(peer string, seq uint64) {
	q := o.queues[peer]
	if q == nil || len(q.msgs) == 0 || q.msgs[len(q.msgs)-1].Seq != seq {
		return
	}
	q.bytes -= len(q.msgs[len(q.msgs)-1].Payload)
	q.msgs = q.msgs[:len(q.msgs)-1]
	o.held--
	if o.cfg.Store != nil {
		_ = o.cfg.Store.Delete(peer, []uint64{seq})
	}
}

// Hold appends a message for peer. It fails with ErrFull at the bound, or
// with the Store's error; either way nothing is held.
func (o *Outbox) Hold(peer string, payload []byte) error {
	return o.HoldAll([]Held{{peer, payload}})
}

// holdLocked appends one message, past the bounds check.
func (o *Outbox) holdLocked(peer string, payload []byte) error {
	q := o.queues[peer]
	if q == nil {
		q = &queue{}
	}
	m := Message{Seq: q.next, Payload: payload}
	if o.cfg.Store != nil {
		if err := o.cfg.Store.Put(peer, m.Seq, payload); err != nil {
			return fmt.Errorf("store held message for %s: %w", peer, err)
		}
	}
	q.next++
	o.queues[peer] = q
	q.msgs = append(q.msgs, m)
	q.bytes += len(payload)
	o.held++
	return nil
}

// Peek returns up to max of peer's oldest messages (and at most maxBytes
// of payload, but at least one message).
func (o *Outbox) Peek(peer string, max, maxBytes int) []Message {
	o.mu.Lock()
	defer o.mu.Unlock()
	q := o.queues[peer]
	if q == nil {
		return nil
	}
	n, size := 0, 0
	for n < len(q.msgs) && n < max && (n == 0 || size+len(q.msgs[n].Payload) <= maxBytes) {
		size += len(q.msgs[n].Payload)
		n++
	}
	return slices.Clone(q.msgs[:n])
}

// Remove drops peer's messages up to and including seq (they were
// delivered).
func (o *Outbox) Remove(peer string, through uint64) error {
	o.mu.Lock()
	q := o.queues[peer]
	if q == nil {
		o.mu.Unlock()
		return nil
	}
	i := 0
	var seqs []uint64
	for i < len(q.msgs) && q.msgs[i].Seq <= through {
		q.bytes -= len(q.msgs[i].Payload)
		seqs = append(seqs, q.msgs[i].Seq)
		i++
	}
	q.msgs = q.msgs[i:]
	if len(q.msgs) == 0 {
		delete(o.queues, peer)
	}
	o.mu.Unlock()
	if o.cfg.Store != nil && len(seqs) > 0 {
		if err := o.cfg.Store.Delete(peer, seqs); err != nil {
			return fmt.Errorf("delete delivered messages for %s: %w", peer, err)
		}
	}
	return nil
}

// Drop discards everything held for peer (it was removed from the
// cluster for good) and returns how many messages that was.
func (o *Outbox) Drop(peer string) (int, error) {
	o.mu.Lock()
	q := o.queues[peer]
	delete(o.queues, peer)
	o.mu.Unlock()
	if q == nil {
		return 0, nil
	}
	if o.cfg.Store != nil {
		seqs := make([]uint64, len(q.msgs))
		for i, m := range q.msgs {
			seqs[i] = m.Seq
		}
		if err := o.cfg.Store.Delete(peer, seqs); err != nil {
			return len(q.msgs), err
		}
	}
	return len(q.msgs), nil
}

// Len returns how many messages and bytes are held for peer.
func (o *Outbox) Len(peer string) (messages, bytes int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if q := o.queues[peer]; q != nil {
		return len(q.msgs), q.bytes
	}
	return 0, 0
}

// Peers returns the peers with held messages, sorted.
func (o *Outbox) Peers() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make([]string, 0, len(o.queues))
	for p := range o.queues {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// Held counts the messages ever held.
func (o *Outbox) Held() uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.held
}

// Key encodes a Store key: the peer's name, a NUL, the big-endian seq.
func Key(peer string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(append([]byte(peer), 0), seq)
}

// ParseKey decodes Key.
func ParseKey(k []byte) (peer string, seq uint64, err error) {
	if len(k) < 9 || k[len(k)-9] != 0 {
		return "", 0, fmt.Errorf("outbox: bad key %x", k)
	}
	return string(k[:len(k)-9]), binary.BigEndian.Uint64(k[len(k)-8:]), nil
}
