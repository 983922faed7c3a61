package clusterhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/metrics"
)

// Session handoff.
//
// A takeover moves a persistent session from its old node A to the new
// node N. The export is a snapshot: until every node routes the session's
// messages to N, publishes keep arriving at A (forwarded by nodes that
// still route to A, or published by A's own clients), and A must not
// drop them. So A keeps the taken-over client as a shadow: disconnected,
// still subscribed, and every QoS 1/2 message mochi queues for it is
// caught (OnQosPublish) and taken out of its queue:
//
//  1. pending: from the export until N's FinishTakeover, which N sends
//     once every node routes to it (PutSessionSync). What is caught is
//     returned in the answer and N adds it to the session before the
//     CONNACK.
//  2. forwarding: for a grace period after that, stragglers (a forward
//     that left a node before it applied the new route) are shipped to
//     N with AppendSession, in order, retried until the grace ends.
//
// Then A drops the shadow. A message can reach the session by two paths:
// N got it directly (a node that already routed to N, or N's own client)
// and A caught it too (forwarded to A for another subscriber, or before
// A applied the new route). N drops those from what A hands over: every
// publish carries an id unique to its origin node (Delivery.ID; OnPublish
// numbers local ones), A hands over each caught message with its id, and
// N remembers the ids it delivered to the session since the import
// (incoming), until A's grace period is over. Without it N would deliver
// such a QoS 2 message twice.
//
// QoS 0 messages are not queued for a disconnected session (mochi drops
// them), so the shadow does not see them either: at most once.

// graceFactor times the forward timeout is the forwarding phase. The
// pending phase lasts at most the register timeout plus the forward
// timeout: without N's FinishTakeover by then (N failed, or its CONNECT
// did) the shadow ships what it caught anyway.
const graceFactor = 2

// msgKey identifies a publish: its origin node and the id it got there.
type msgKey struct {
	from string
	id   uint64
}

// incoming is the new node's side of a handoff: which messages the
// session got here directly and which the old node handed over, so that
// each reaches it once, whichever path comes first. At most maxSeen of
// each are kept; beyond that duplicates are possible (logged).
type incoming struct {
	mu     sync.Mutex
	seen   map[msgKey]struct{}
	handed map[msgKey]struct{}
	full   bool
}

const maxSeen = 1 << 17

type shadow struct {
	id      string
	cl      *mqtt.Client
	newNode string

	mu        sync.Mutex
	caught    []inflightMsg
	finished  bool // FinishTakeover seen (or pending timed out)
	ended     bool
	kick      chan struct{}
	stop      chan struct{} // closed to end early (the client is back)
	done      chan struct{} // closed when the shadow is gone
	shipped   int
	discarded int
}

// shadowFor returns the live shadow of id, or nil.
func (h *Hook) shadowFor(id string) *shadow {
	if h.nShadows.Load() == 0 {
		return nil
	}
	h.shadowMu.Lock()
	defer h.shadowMu.Unlock()
	return h.shadows[id]
}

// startShadow makes the taken-over cl a shadow and exports its session:
// the messages it had queued go into the export, everything queued from
// now on is caught.
func (h *Hook) startShadow(cl *mqtt.Client, newNode string) ([]byte, error) {
	sh := &shadow{id: cl.ID, cl: cl, newNode: newNode,
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	h.shadowMu.Lock()
	if old := h.shadows[cl.ID]; old != nil {
		h.shadowMu.Unlock()
		return nil, fmt.Errorf("session %s is already being handed off to %s", cl.ID, old.newNode)
	}
	h.shadows[cl.ID] = sh
	h.nShadows.Add(1)
	h.shadowMu.Unlock()

	// Every queued message is taken exactly once, by the export or by a
	// catch: both delete it from the queue under sh.mu.
	sh.mu.Lock()
	s, err := exportSession(cl, h.keyOf)
	var blob []byte
	if err == nil {
		// Exactly what was exported: a message queued since (its
		// catch waits for sh.mu) is the catch's.
		for _, m := range s.Inflight {
			if cl.State.Inflight.Delete(m.PacketID) {
				atomic.AddInt64(&h.srv.Info.Inflight, -1)
			}
			h.unstoreQueued(cl, m.PacketID)
		}
		blob, err = encodeSession(s)
	}
	sh.mu.Unlock()
	if err != nil {
		h.endShadow(sh, "export failed")
		return nil, err
	}
	h.wg.Add(1)
	go h.runShadow(sh)
	return blob, nil
}

// A publish's identity (origin node and id) and topic ride in the packet
// itself to every delivery mochi makes of it, queued copies included, in
// fields of the packet's CONNECT parameters, which a PUBLISH does not use
// and mochi copies into every delivery (Packet.Copy): the origin in the
// client identifier, the id in the will properties' session expiry (high
// 32 bits) and maximum packet size (low 32 bits), the topic in the will
// topic (a delivery may carry a topic alias instead). OnPublish stamps a
// local client's publish, DeliverForwarded a forwarded one; noting them
// anywhere else would race with the deliveries that follow on the same
// goroutine.

// stamp records the publish's origin node, id and topic in pk.
func stamp(pk *packets.Packet, from string, id uint64) {
	pk.Connect.ClientIdentifier = from
	pk.Connect.WillProperties.SessionExpiryInterval = uint32(id >> 32)
	pk.Connect.WillProperties.MaximumPacketSize = uint32(id)
	pk.Connect.WillTopic = pk.TopicName
}

// stampOf returns what stamp recorded in pk; ok is false for a publish
// without one (a will, a message restored from storage).
func stampOf(pk packets.Packet) (k msgKey, topic string, ok bool) {
	id := uint64(pk.Connect.WillProperties.SessionExpiryInterval)<<32 | uint64(pk.Connect.WillProperties.MaximumPacketSize)
	if id == 0 || pk.Connect.ClientIdentifier == "" {
		return msgKey{}, "", false
	}
	return msgKey{pk.Connect.ClientIdentifier, id}, pk.Connect.WillTopic, true
}

// catch takes a message mochi queued for a shadow (OnQosPublish).
func (h *Hook) catch(sh *shadow, pk packets.Packet) {
	k, topic, _ := h.keyOf(pk)
	// mochi may have replaced the topic by an alias of the connection
	// that is gone; the original publish still names it.
	if pk.TopicName == "" {
		pk.TopicName = topic
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if !sh.cl.State.Inflight.Delete(pk.PacketID) {
		return // exported with the snapshot
	}
	atomic.AddInt64(&h.srv.Info.Inflight, -1)
	h.unstoreQueued(sh.cl, pk.PacketID)
	if sh.ended {
		return
	}
	b, err := EncodePublish(pk)
	if err != nil {
		h.log.Error("encode message for a moved session; dropped", "client", sh.id, "error", err)
		h.opts.Metrics.Dropped(metrics.ReasonHandoff)
		sh.discarded++
		return
	}
	sh.caught = append(sh.caught, inflightMsg{Type: packets.Publish, Created: pk.Created, Expiry: pk.Expiry, Publish: b,
		From: k.from, ID: k.id})
	if sh.finished {
		select {
		case sh.kick <- struct{}{}:
		default:
		}
	}
}

// startIncoming opens the new node's side of a handoff of id, whose
// exported queue is snapshot; it ends when the old node's grace period
// is surely over. Call it before the session is subscribed here.
func (h *Hook) startIncoming(id string, snapshot []inflightMsg) {
	in := &incoming{seen: map[msgKey]struct{}{}, handed: map[msgKey]struct{}{}}
	for _, m := range snapshot {
		if m.ID != 0 {
			in.add(h, id, in.handed, msgKey{m.From, m.ID})
		}
	}
	h.shadowMu.Lock()
	if _, ok := h.incoming[id]; !ok {
		h.nIncoming.Add(1)
	}
	h.incoming[id] = in
	h.shadowMu.Unlock()
	time.AfterFunc(h.opts.RegisterTimeout+(graceFactor+2)*h.opts.ForwardTimeout, func() {
		h.shadowMu.Lock()
		if h.incoming[id] == in {
			delete(h.incoming, id)
			h.nIncoming.Add(-1)
		}
		h.shadowMu.Unlock()
	})
}

func (h *Hook) incomingFor(id string) *incoming {
	if h.nIncoming.Load() == 0 {
		return nil
	}
	h.shadowMu.Lock()
	defer h.shadowMu.Unlock()
	return h.incoming[id]
}

// seen runs when mochi queues pk for cl, whose session is being handed
// over to this node: if the old node handed the message over already,
// this copy is withdrawn; else it is recorded.
func (h *Hook) seen(in *incoming, cl *mqtt.Client, pk packets.Packet) {
	if pk.FixedHeader.Dup {
		return // mochi resending the queue, not a new delivery
	}
	k, _, ok := h.keyOf(pk)
	if !ok {
		return
	}
	in.mu.Lock()
	if _, dup := in.handed[k]; dup {
		in.mu.Unlock()
		h.withdraw(cl, pk)
		return
	}
	in.add(h, cl.ID, in.seen, k)
	in.mu.Unlock()
}

// add records k in set, up to maxSeen; in.mu is held.
func (in *incoming) add(h *Hook, clientID string, set map[msgKey]struct{}, k msgKey) {
	if len(set) >= maxSeen {
		if !in.full {
			in.full = true
			h.log.Warn("too many messages during a session handoff to track; duplicates possible", "client", clientID)
		}
		return
	}
	set[k] = struct{}{}
}

// withdraw takes back a message mochi just queued for cl (OnQosPublish
// runs before mochi writes it): out of the queue, and not written
// (OnPacketEncode). Matching by content as well as packet id keeps a
// later message that reuses the id from being withheld.
func (h *Hook) withdraw(cl *mqtt.Client, pk packets.Packet) {
	if cl.State.Inflight.Delete(pk.PacketID) {
		atomic.AddInt64(&h.srv.Info.Inflight, -1)
	}
	h.unstoreQueued(cl, pk.PacketID)
	if cl.Closed() {
		return // mochi does not write to a disconnected client
	}
	h.wdMu.Lock()
	h.withdrawn[cl] = append(h.withdrawn[cl], pk)
	h.nWithdrawn.Add(1)
	h.wdMu.Unlock()
}

// withheld reports whether pk, about to be written to cl, was withdrawn.
func (h *Hook) withheld(cl *mqtt.Client, pk packets.Packet) bool {
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

// forgetWithdrawn drops what was withdrawn for a connection that ended.
func (h *Hook) forgetWithdrawn(cl *mqtt.Client) {
	if h.nWithdrawn.Load() == 0 {
		return
	}
	h.wdMu.Lock()
	h.nWithdrawn.Add(-int32(len(h.withdrawn[cl])))
	delete(h.withdrawn, cl)
	h.wdMu.Unlock()
}

// pass adds a message handed over for a session that is itself being
// handed off to what the shadow hands on; false if the shadow ended.
func (h *Hook) pass(sh *shadow, m inflightMsg) bool {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.ended {
		return false
	}
	sh.caught = append(sh.caught, m)
	if sh.finished {
		select {
		case sh.kick <- struct{}{}:
		default:
		}
	}
	return true
}

// FinishTakeover implements cluster.Broker: newNode routes the session
// now; hand over what the shadow caught and ship stragglers from now on.
func (h *Hook) FinishTakeover(clientID, newNode string) ([]byte, error) {
	sh := h.shadowFor(clientID)
	if sh == nil || sh.newNode != newNode {
		return nil, nil // nothing was caught, or the shadow already ended
	}
	sh.mu.Lock()
	msgs := sh.caught
	sh.caught = nil
	sh.finished = true
	sh.shipped += len(msgs)
	sh.mu.Unlock()
	select {
	case sh.kick <- struct{}{}:
	default:
	}
	if len(msgs) == 0 {
		return nil, nil
	}
	return encodeSession(session{Inflight: msgs})
}

// runShadow drives a shadow through its phases and drops it.
func (h *Hook) runShadow(sh *shadow) {
	defer h.wg.Done()
	pending := time.NewTimer(h.opts.RegisterTimeout + h.opts.ForwardTimeout)
	defer pending.Stop()
	var grace <-chan time.Time
	startGrace := func() {
		sh.mu.Lock()
		sh.finished = true
		sh.mu.Unlock()
		t := time.NewTimer(graceFactor * h.opts.ForwardTimeout)
		grace = t.C
		pending.Stop()
	}
	reason := "handed off"
	for {
		select {
		case <-pending.C:
			h.log.Warn("moved session's new node did not finish the takeover; shipping what was caught", "client", sh.id, "new_node", sh.newNode)
			startGrace()
			h.ship(sh, time.Now().Add(graceFactor*h.opts.ForwardTimeout))
		case <-sh.kick:
			sh.mu.Lock()
			fin := sh.finished
			sh.mu.Unlock()
			if fin && grace == nil {
				startGrace()
			}
			if fin {
				h.ship(sh, time.Now().Add(graceFactor*h.opts.ForwardTimeout))
			}
		case <-grace:
			h.ship(sh, time.Now().Add(h.opts.ForwardTimeout))
			h.endShadow(sh, reason)
			return
		case <-sh.stop:
			h.ship(sh, time.Now().Add(h.opts.ForwardTimeout))
			h.endShadow(sh, "client came back")
			return
		case <-h.done:
			h.endShadow(sh, "node stopping")
			return
		}
	}
}

// ship sends what the shadow caught to its new node, retrying until
// deadline; what cannot be delivered by then is discarded (logged and
// counted).
func (h *Hook) ship(sh *shadow, deadline time.Time) {
	c := h.cluster()
	for {
		sh.mu.Lock()
		msgs := sh.caught
		sh.mu.Unlock()
		if len(msgs) == 0 || c == nil {
			return
		}
		blob, err := encodeSession(session{Inflight: msgs})
		if err == nil {
			ctx, cancel := context.WithDeadline(context.Background(), deadline)
			err = c.AppendSession(ctx, sh.newNode, sh.id, blob)
			cancel()
		}
		if err == nil {
			sh.mu.Lock()
			sh.caught = sh.caught[len(msgs):]
			sh.shipped += len(msgs)
			sh.mu.Unlock()
			continue
		}
		if !time.Now().Before(deadline) {
			sh.mu.Lock()
			n := len(sh.caught)
			sh.discarded += n
			sh.caught = nil
			sh.mu.Unlock()
			h.opts.Metrics.DroppedN(metrics.ReasonHandoff, n)
			h.log.Error("messages for a moved session could not be handed to its new node; discarded",
				"client", sh.id, "new_node", sh.newNode, "messages", n, "error", err)
			return
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-h.done:
			return
		}
	}
}

// endShadow drops the shadow's subscriptions and client.
func (h *Hook) endShadow(sh *shadow, reason string) {
	sh.mu.Lock()
	if sh.ended {
		sh.mu.Unlock()
		return
	}
	sh.ended = true
	left := len(sh.caught)
	sh.caught = nil
	shipped, discarded := sh.shipped, sh.discarded+left
	sh.mu.Unlock()
	if left > 0 {
		h.opts.Metrics.DroppedN(metrics.ReasonHandoff, left)
	}
	cl := sh.cl
	h.dropLocal(cl)
	// The old session's events are long flushed.
	h.forgetMoved(sh.id, cl)
	h.shadowMu.Lock()
	if h.shadows[sh.id] == sh {
		delete(h.shadows, sh.id)
		h.nShadows.Add(-1)
	}
	h.shadowMu.Unlock()
	close(sh.done)
	h.log.Debug("session handoff ended", "client", sh.id, "new_node", sh.newNode, "reason", reason,
		"shipped", shipped, "discarded", discarded)
}

// endShadowNow ends id's shadow before a new connection of the same id
// is set up on this node, shipping what it caught first.
func (h *Hook) endShadowNow(id string) {
	sh := h.shadowFor(id)
	if sh == nil {
		return
	}
	select {
	case <-sh.stop:
	default:
		close(sh.stop)
	}
	t := time.NewTimer(2 * h.opts.ForwardTimeout)
	defer t.Stop()
	select {
	case <-sh.done:
	case <-t.C:
		h.log.Warn("previous handoff of the session did not end in time", "client", id)
	}
}

// AppendSession implements cluster.Broker: add messages the session's
// old node caught to the local session of clientID.
func (h *Hook) AppendSession(clientID string, msgs []byte) error {
	s, err := decodeSession(msgs)
	if err != nil {
		return err
	}
	return h.appendInflight(clientID, s.Inflight)
}

// errNoSession makes the old node retry: the session may not be
// imported yet.
var errNoSession = errors.New("clusterhook: no session for the handed-off messages")

// appendInflight queues msgs for clientID's session like mochi queues a
// delivery: a new packet id, into the inflight store, and written out if
// the client is connected.
func (h *Hook) appendInflight(clientID string, msgs []inflightMsg) error {
	in := h.incomingFor(clientID)
	for i, m := range msgs {
		if m.Type != packets.Publish {
			continue
		}
		if in != nil && m.ID != 0 {
			k := msgKey{m.From, m.ID}
			in.mu.Lock()
			_, dup := in.seen[k]
			if !dup {
				in.add(h, clientID, in.handed, k)
			}
			in.mu.Unlock()
			if dup {
				continue // the session got it here directly
			}
		}
		if sh := h.shadowFor(clientID); sh != nil {
			// The session moved on again: pass the message along.
			if cl, ok := h.srv.Clients.Get(clientID); ok && cl == sh.cl && h.pass(sh, m) {
				continue
			}
		}
		pk, err := DecodePublish(m.Publish)
		if err != nil {
			return fmt.Errorf("append message %d for %s: %w", i, clientID, err)
		}
		pk.Created, pk.Expiry = m.Created, m.Expiry
		// A session being taken over again hands its queue to the new
		// connection (mochi clones it): follow it, at most a few hops.
		for hop := 0; ; hop++ {
			cl, ok := h.srv.Clients.Get(clientID)
			if !ok {
				return fmt.Errorf("%w: %s", errNoSession, clientID)
			}
			id, err := cl.NextPacketID()
			if err != nil {
				h.opts.Metrics.Dropped(metrics.ReasonInflightLimit)
				h.log.Warn("packet ids exhausted for a handed-off message; dropped", "client", clientID)
				break
			}
			pk.PacketID = uint16(id)
			if cl.State.Inflight.Set(pk) {
				atomic.AddInt64(&h.srv.Info.Inflight, 1)
			}
			if cl.IsTakenOver() && hop < 3 {
				if cl.State.Inflight.Delete(pk.PacketID) {
					atomic.AddInt64(&h.srv.Info.Inflight, -1)
				}
				continue
			}
			h.storeQueued(cl, pk)
			if !cl.Closed() {
				// Before the CONNACK, broker/quirks holds the write and
				// keeps mochi's resend from repeating it.
				_ = cl.WritePacket(pk)
			}
			break
		}
	}
	return nil
}
