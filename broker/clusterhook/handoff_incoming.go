package clusterhook

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/handoff"
	"github.com/mendmq/mendmq/broker/metrics"
	"github.com/mendmq/mendmq/broker/mochix"
)

// The new node's side of a handoff: the session imported at the client's
// CONNECT gets messages directly (mochi's deliveries here) and from the
// old node (the FinishTakeover answer, then AppendSession). Incoming
// decides which copy reaches the session; the driver takes a direct copy
// back before mochi writes it (withdraw) or queues a handed-over one
// (appendMsgs).

// incomingRun is one session's Incoming, under its mutex.
type incomingRun struct {
	mu sync.Mutex
	in *handoff.Incoming
}

// startIncoming opens the new node's side of a handoff of client id,
// whose exported queue is snapshot. Call it before the session is
// subscribed here.
func (h *HandoffHook) startIncoming(id string, snapshot []inflightMsg) {
	var keys []handoff.Key
	for _, m := range snapshot {
		keys = append(keys, msgKey(m))
	}
	now := time.Now()
	run := &incomingRun{in: handoff.NewIncoming(h.sh.hcfg, now, keys)}
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.incoming[id]; !ok {
		h.nIncoming.Add(1)
	}
	h.incoming[id] = run
	// Drop it once over, so the hook's per-message events switch off.
	time.AfterFunc(h.sh.hcfg.Lifetime(), func() {
		h.mu.Lock()
		if h.incoming[id] == run {
			delete(h.incoming, id)
			h.nIncoming.Add(-1)
		}
		h.mu.Unlock()
	})
}

func (r *incomingRun) expired(now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.in.Expired(now)
}

// incomingFor returns the handoff of client id under way to this node,
// or nil.
func (h *HandoffHook) incomingFor(id string) *incomingRun {
	if h.nIncoming.Load() == 0 {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.incoming[id]
	if r != nil && r.expired(time.Now()) {
		delete(h.incoming, id)
		h.nIncoming.Add(-1)
		return nil
	}
	return r
}

// direct runs when mochi queues pk for cl, whose session is being handed
// over to this node (or tracked around a netsplit): if the old node (the
// duplicate's) handed the message over already, this copy is withdrawn,
// and direct returns true; else it is noted.
func (h *HandoffHook) direct(run *incomingRun, cl *mqtt.Client, pk packets.Packet) bool {
	if pk.FixedHeader.Dup {
		return false // mochi resending the queue, not a new delivery
	}
	k, _, ok := h.keyOf(pk)
	if !ok {
		return false
	}
	run.mu.Lock()
	withdraw := run.in.Direct(k)
	full := run.in.Overflowed()
	run.mu.Unlock()
	if full {
		h.sh.log.Warn("too many messages during a session handoff to track; duplicates possible", "client", cl.ID)
	}
	if withdraw {
		h.withdraw(cl, pk)
	}
	return withdraw
}

// AppendSession implements cluster.Broker: add messages the session's
// old node caught to the local session of clientID.
func (h *HandoffHook) AppendSession(clientID string, msgs []byte) error {
	s, err := decodeSession(msgs)
	if err != nil {
		return err
	}
	if s.Heal {
		return h.appendHealed(clientID, s.Inflight)
	}
	return h.appendMsgs(clientID, s.Inflight)
}

// errNoSession makes the old node retry: the session may not be
// imported yet.
var errNoSession = errors.New("clusterhook: no session for the handed-off messages")

// appendMsgs queues msgs, handed over by the session's old node, for
// clientID's session, skipping those the session got here directly.
func (h *HandoffHook) appendMsgs(clientID string, msgs []inflightMsg) error {
	run := h.incomingFor(clientID)
	for i, m := range msgs {
		if m.Type != packets.Publish {
			continue
		}
		k := msgKey(m)
		if run != nil {
			run.mu.Lock()
			deliver := run.in.Handed(k)
			full := run.in.Overflowed()
			run.mu.Unlock()
			if full {
				h.sh.log.Warn("too many messages during a session handoff to track; duplicates possible", "client", clientID)
			}
			if !deliver {
				continue // the session got it here directly, or has it already
			}
		}
		if err := h.queueHanded(clientID, m); err != nil {
			if run != nil {
				run.mu.Lock()
				run.in.Unhand(k) // the old node's retry brings it again
				run.mu.Unlock()
			}
			return fmt.Errorf("append message %d for %s: %w", i, clientID, err)
		}
	}
	return nil
}

// queueHanded queues one handed-over message for clientID's session: to
// the shadow if the session moved on from here meanwhile, else like
// mochi queues a delivery (broker/quirks follows the session if a
// reconnect takes it over meanwhile).
func (h *HandoffHook) queueHanded(clientID string, m inflightMsg) error {
	return h.queuePublish(clientID, m, nil)
}

// queuePublish is queueHanded with the message decoded already (pk not
// nil), possibly adjusted to the session's subscriptions.
func (h *HandoffHook) queuePublish(clientID string, m inflightMsg, pk *packets.Packet) error {
	cl, ok := mochix.Client(h.sh.srv, clientID)
	if !ok {
		return fmt.Errorf("%w: %s", errNoSession, clientID)
	}
	if run := h.shadowFor(clientID); run != nil && run.cl == cl && h.pass(run, m) {
		return nil
	}
	if pk == nil {
		d, err := DecodePublish(m.Publish)
		if err != nil {
			return err
		}
		pk = &d
	}
	if k := msgKey(m); k.Known() {
		// The key stays with the queued copy: a later move of the
		// session hands it over with it.
		mochix.Stamp(pk, k.From, k.ID)
	}
	pk.Created, pk.Expiry = m.Created, m.Expiry
	if err := h.sh.opts.Queue.Queue(cl, *pk); err != nil {
		h.sh.opts.Metrics.Dropped(metrics.ReasonInflightLimit)
		h.sh.log.Warn("handed-off message dropped", "client", clientID, "error", err)
	}
	return nil
}

// withdraw takes back a message mochi just queued for cl (OnQosPublish
// runs before mochi writes it): out of the queue, and not written
// (OnPacketEncode). Matching by content as well as packet id keeps a
// later message that reuses the id from being withheld.
func (h *HandoffHook) withdraw(cl *mqtt.Client, pk packets.Packet) {
	mochix.Dequeue(h.sh.srv, cl, pk.PacketID)
	h.sh.unstoreQueued(cl, pk.PacketID)
	if cl.Closed() {
		return // mochi does not write to a disconnected client
	}
	h.wdMu.Lock()
	h.withdrawn[cl] = append(h.withdrawn[cl], pk)
	h.nWithdrawn.Add(1)
	h.wdMu.Unlock()
}

// OnPacketEncode keeps a withdrawn message from being written (a session
// handoff delivered it by the other path first). Such a message is
// written by the client's write loop, which ignores the write's error.
func (h *HandoffHook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if h.withheld(cl, pk) {
		mochix.Withhold(cl, &pk)
	}
	return pk
}

// withheld reports whether pk, about to be written to cl, was withdrawn.
func (h *HandoffHook) withheld(cl *mqtt.Client, pk packets.Packet) bool {
	if h.nWithdrawn.Load() == 0 || pk.FixedHeader.Type != packets.Publish {
		return false
	}
	h.wdMu.Lock()
	defer h.wdMu.Unlock()
	list := h.withdrawn[cl]
	for i, w := range list {
		if w.PacketID == pk.PacketID && w.TopicName == pk.TopicName && bytes.Equal(w.Payload, pk.Payload) {
			h.withdrawn[cl] = append(list[:i], list[i+1:]...)
			if len(h.withdrawn[cl]) == 0 {
				delete(h.withdrawn, cl)
			}
			h.nWithdrawn.Add(-1)
			return true
		}
	}
	return false
}

// OnDisconnect drops what was withdrawn for a connection that ended.
func (h *HandoffHook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if h.nWithdrawn.Load() == 0 {
		return
	}
	h.wdMu.Lock()
	h.nWithdrawn.Add(-int32(len(h.withdrawn[cl])))
	delete(h.withdrawn, cl)
	h.wdMu.Unlock()
}
