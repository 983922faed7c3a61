package quirks

import (
	"bytes"
	"errors"
	"slices"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/mochix"
)

// SendQuota enforces an MQTT 5 client's Receive Maximum: at most that many
// QoS 1/2 PUBLISHes unacknowledged towards the client [MQTT-3.3.4-9]
// [MQTT-4.9.0-2]. Get it from Hook.SendQuota and add it right after Hook
// (it must see only the packets Hook lets through) and before the storage
// hook; Hook.ResendOrder applies it to the resend at reconnect.
//
// Why not mochi's own (v2.7.9): it deadlocks (see Hook), so Hook sets
// mochi's send quota to zero, and mochi then writes every delivery at once.
//
// Live connection: a delivery stays in the session's queue (mochi's
// inflight map: stored, carried over at a takeover, moved by a handoff and
// resent at reconnect as before); only its write waits. The hook counts
// the QoS 1/2 flows the client has open (PUBLISHes written and not
// answered with PUBACK, PUBCOMP or a PUBREC with a failure code, and
// PUBRELs awaiting PUBCOMP). A PUBLISH that comes to be written while the
// count is at the client's Receive Maximum, or while others wait, is
// withheld (mochix.Withhold: the write loop skips it) and joins the
// client's wait list, in the order the writes came, which is the order
// mochi queued the deliveries. An acknowledgement frees its slot as mochi
// reads it (OnPacketRead, on the client's read loop) and the hook writes
// the next waiting deliveries there, as mochi writes PUBREL and PINGRESP
// there. No hook blocks: a publisher never waits for a slow client, and
// the read loop only writes. A write-loop PUBLISH that comes while a
// release writes joins the wait list behind the released ones.
//
// Reconnect: mochi resends the session's whole queue right after the
// CONNACK, from a snapshot it takes then, and cannot skip a write (a
// failed one ends the connection). So when the CONNACK of a resumed
// session is encoded, ResendOrder asks the quota to split the queue,
// taken in publish order: the first Receive Maximum flows stay for the
// resend, the others leave mochi's queue before the snapshot and head the
// wait list. Until the session is established, deliveries mochi queues for
// the client leave the queue as well (OnQosPublish, on the publisher's
// goroutine) and join the list behind them: otherwise the snapshot could
// catch them, and the resend would write them over the quota and ahead of
// older messages. Once the session is established they are queued
// again, in order, under their packet ids, and stored again (mochi's
// takeover deleted the clone's records from storage; its resend stores
// only what it resends). Their ids stay theirs meanwhile: the split moves
// the client's packet id counter past the newest queued message
// (mochix.SkipPacketIDs; a client that took a session over counts from
// 0), so ids stay in publish order for the next resend and the same
// message has the same id in every queue it passed through, which Hook's
// takeover bookkeeping relies on (it knows the split-off messages as
// carried over: splitOff). Write-loop copies of the messages taken out
// are skipped when they come (they wait in the list already). A
// connection that fails between the CONNACK and its session being
// established calls no hook, and one that a reconnect takes over then
// must hand its whole queue to the clone: the next connection to start
// (OnSessionEstablish, before mochi's takeover) puts the messages back
// into such a connection's queue.
//
// What remains: a delivery mochi queues in the instant between its Set
// and this hook's OnQosPublish may still be caught by the snapshot; the
// resend then writes it, one over the quota (it is put back in the queue
// under its id, so it completes normally). A client that lowers its
// Receive Maximum across a reconnect gets the messages beyond the new
// value that went out before again later, without DUP.
type SendQuota struct {
	mqtt.HookBase
	h *Hook

	flows   sync.Map     // *mqtt.Client -> *flow
	n       atomic.Int32 // flows, for the fast path
	windows atomic.Int32 // flows between a split and their session being established

	connMu     sync.Mutex
	connecting map[*mqtt.Client]*flow // from OnSessionEstablish to OnSessionEstablished
}

// flow is the quota state of one connection.
type flow struct {
	max int // the client's Receive Maximum

	// requeueMu is held while split entries are queued again (one
	// putBack or OnSessionEstablished at a time).
	requeueMu sync.Mutex

	mu        sync.Mutex
	out       map[uint16]packets.Packet // open flows by packet id
	held      []*heldPub                // waiting for a slot, in order
	releasing bool                      // a release is writing
	passing   *packets.Packet           // what the release writes now
	// window: split, session not established yet (see SendQuota).
	window bool
	// checkQueued: after a split, write-loop copies of messages taken
	// out of the queue may still come (to be skipped); splitIDs holds
	// those messages by packet id until they are written.
	checkQueued bool
	splitIDs    map[uint16]*heldPub
}

// heldPub is a delivery waiting for a slot.
type heldPub struct {
	pk packets.Packet
	// split: taken out of the queue at reconnect and not queued again
	// yet; such entries head the list, and a release stops at them.
	// late: taken out after the split (so the resend may have written it
	// after all).
	split, late bool
}

// takeOut takes pk out of cl's queue to wait at the tail of the list as
// a split entry; f.mu is held.
func (f *flow) takeOut(srv *mqtt.Server, cl *mqtt.Client, pk packets.Packet, late bool) {
	if !mochix.Dequeue(srv, cl, pk.PacketID) {
		return
	}
	hp := &heldPub{pk: pk, split: true, late: late}
	f.held = append(f.held, hp)
	if f.splitIDs == nil {
		f.splitIDs = map[uint16]*heldPub{}
	}
	f.splitIDs[pk.PacketID] = hp
	f.checkQueued = true
}

// written forgets hp as a split entry (it goes out now); f.mu is held.
func (f *flow) written(hp *heldPub) {
	if f.splitIDs[hp.pk.PacketID] == hp {
		delete(f.splitIDs, hp.pk.PacketID)
	}
}

var _ mqtt.Hook = (*SendQuota)(nil)

func newSendQuota(h *Hook) *SendQuota {
	return &SendQuota{h: h, connecting: map[*mqtt.Client]*flow{}}
}

// ID names the hook.
func (q *SendQuota) ID() string { return "mendmq-send-quota" }

// Provides declares the handled hook methods; the per-packet ones only
// while some client has a quota (OnQosPublish: a split one).
func (q *SendQuota) Provides(b byte) bool {
	switch b {
	case mqtt.OnSessionEstablish, mqtt.OnSessionEstablished, mqtt.OnDisconnect:
		return true
	case mqtt.OnPacketEncode, mqtt.OnPacketRead:
		return q.n.Load() > 0
	case mqtt.OnQosPublish:
		return q.windows.Load() > 0
	}
	return false
}

// flow returns cl's quota state, nil if it has none.
func (q *SendQuota) flow(cl *mqtt.Client) *flow {
	if q.n.Load() == 0 {
		return nil
	}
	if f, ok := q.flows.Load(cl); ok {
		return f.(*flow)
	}
	return nil
}

// OnSessionEstablish gives a connecting MQTT 5 client that announced a
// Receive Maximum below 65535 its quota (65535 cannot be exceeded: packet
// ids are 16 bits).
//
// It first puts the messages a split took out of a queue back into it for
// connections that failed before their session was established (they call
// no further hook), and for a connection of the same client still being
// set up, which this one is about to take over: mochi's takeover then
// clones them with the rest, under the same ids, as Hook's takeover
// bookkeeping expects (put back later, into a client taken over, they
// would be reported to it as lost while older reports of them are still
// pending: queued twice).
func (q *SendQuota) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	q.connMu.Lock()
	back := map[*mqtt.Client]*flow{}
	for c, f := range q.connecting {
		if c != cl && (c.Closed() || c.ID == cl.ID) {
			back[c] = f
			if c.Closed() {
				delete(q.connecting, c)
			}
		}
	}
	q.connMu.Unlock()
	for c, f := range back {
		q.putBack(c, f)
		if c.Closed() {
			q.forget(c)
		}
	}
	rm := pk.Properties.ReceiveMaximum
	if cl.Properties.ProtocolVersion != 5 || rm == 0 || rm == 65535 {
		return
	}
	f := &flow{max: int(rm), out: map[uint16]packets.Packet{}}
	v, loaded := q.flows.LoadOrStore(cl, f)
	if !loaded {
		q.n.Add(1)
	}
	q.connMu.Lock()
	q.connecting[cl] = v.(*flow)
	q.connMu.Unlock()
}

// putBack queues the split-off messages of a connection whose session
// was not established yet back into its queue, and ends its window.
func (q *SendQuota) putBack(cl *mqtt.Client, f *flow) {
	f.mu.Lock()
	q.closeWindow(f)
	f.mu.Unlock()
	q.requeueSplit(cl, f)
}

// requeueSplit queues f's split entries back into cl's queue, under their
// ids, where they wait at the head of the list. An entry stays marked
// split until it is back in the queue: Hook reads splitOff, then the
// queue, and must find each message in one of them.
func (q *SendQuota) requeueSplit(cl *mqtt.Client, f *flow) {
	f.requeueMu.Lock()
	defer f.requeueMu.Unlock()
	f.mu.Lock()
	var split []*heldPub
	for _, hp := range f.held {
		if hp.split {
			split = append(split, hp)
		}
	}
	f.mu.Unlock()
	// Queued without f.mu: a release stops at split entries, and writes
	// only add to the list's tail.
	gone := map[*heldPub]bool{}
	for _, hp := range split {
		pk, ok, err := q.h.requeue(cl, requeued(hp.pk))
		if err != nil {
			q.h.srv.Log.Warn("message of a resumed session dropped", "client", cl.ID, "error", err)
		}
		f.mu.Lock()
		if !ok {
			gone[hp] = true // dropped, or followed the session to a newer connection
			f.written(hp)
		} else {
			if pk.PacketID != hp.pk.PacketID {
				f.written(hp)
				f.splitIDs[pk.PacketID] = hp
			}
			hp.pk, hp.split, hp.late = pk, false, false
		}
		f.mu.Unlock()
	}
	if len(gone) == 0 {
		return
	}
	f.mu.Lock()
	kept := f.held[:0]
	for _, hp := range f.held {
		if !gone[hp] {
			kept = append(kept, hp)
		}
	}
	clear(f.held[len(kept):])
	f.held = kept
	f.mu.Unlock()
}

// closeWindow ends f's window; f.mu is held.
func (q *SendQuota) closeWindow(f *flow) {
	if f.window {
		f.window = false
		q.windows.Add(-1)
	}
}

// requeued prepares a split-off message for queuing again: mochi marks
// the deliveries its own quota held with expiry -1 (it may have done so
// before the quota was switched off: a takeover's clone sets it again).
func requeued(pk packets.Packet) packets.Packet {
	if pk.Expiry < 0 {
		pk.Expiry = 0
	}
	return pk
}

// forget drops cl's quota state.
func (q *SendQuota) forget(cl *mqtt.Client) {
	v, ok := q.flows.LoadAndDelete(cl)
	if !ok {
		return
	}
	q.n.Add(-1)
	f := v.(*flow)
	f.mu.Lock()
	q.closeWindow(f)
	f.mu.Unlock()
}

// split is called by ResendOrder when the CONNACK of cl's resumed session
// is encoded, with the session's queued PUBLISHes in publish order and the
// packet ids of its PUBRELs awaiting PUBCOMP. It returns the PUBLISHes to
// resend and whether cl has a quota; the others are taken out of the
// queue to wait (see SendQuota).
func (q *SendQuota) split(cl *mqtt.Client, pubs []packets.Packet, pubrels []uint16) ([]packets.Packet, bool) {
	mochix.DisableSendQuota(cl) // the takeover's clone set mochi's quota again
	f := q.flow(cl)
	if f == nil {
		return pubs, false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.window {
		f.window = true
		q.windows.Add(1)
	}
	for _, id := range pubrels {
		f.out[id] = packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel}, PacketID: id}
	}
	if len(pubs) > 0 {
		// The ids taken out stay theirs: new ones follow the queue's
		// (moved before they are free).
		ids := append([]uint16(nil), pubrels...)
		for _, pk := range pubs {
			ids = append(ids, pk.PacketID)
		}
		mochix.SkipPacketIDs(cl, func(last uint16) uint16 { return pastIDs(ids, last) })
	}
	keep := min(max(f.max-len(pubrels), 0), len(pubs))
	for _, pk := range pubs[:keep] {
		f.out[pk.PacketID] = pk
	}
	for _, pk := range pubs[keep:] {
		f.takeOut(q.h.srv, cl, pk, false)
	}
	return pubs[:keep], true
}

// pastIDs returns where a packet id counter at last (mochi hands out the
// next free id after it, 1 after 65535, 0 meaning none handed out yet)
// must be for the ids that follow to stay clear of ids for a long while:
// the end of the arc of the circle of ids that ids cover (its complement
// is the widest gap between them), unless last is already in the first
// half of that gap (allocations since the queue was read).
func pastIDs(ids []uint16, last uint16) uint16 {
	if len(ids) == 0 {
		return last
	}
	const space = 65535 // ids 1..65535
	s := slices.Clone(ids)
	slices.Sort(s)
	s = slices.Compact(s)
	// The widest gap: from hi (an id) forward to the next id.
	hi, gap := s[len(s)-1], int(s[0])+space-int(s[len(s)-1])
	for i := 1; i < len(s); i++ {
		if g := int(s[i]) - int(s[i-1]); g > gap {
			hi, gap = s[i-1], g
		}
	}
	cur := int(last)
	if cur == 0 {
		cur = space // next is 1, as after 65535
	}
	if d := (cur - int(hi) + space) % space; d < gap/2 {
		return last
	}
	return hi
}

// splitOff returns the messages split off cl's queue and not queued
// again yet, under their old packet ids.
func (q *SendQuota) splitOff(cl *mqtt.Client) []packets.Packet {
	f := q.flow(cl)
	if f == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []packets.Packet
	for _, hp := range f.held {
		if hp.split {
			out = append(out, hp.pk)
		}
	}
	return out
}

// OnQosPublish takes a delivery mochi queued for a client between its
// split and its session being established out of the queue again, behind
// the split-off ones (see SendQuota). mochi's resend also calls it, with
// DUP set: those stay.
func (q *SendQuota) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, _ int) {
	if pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Dup || cl.IsTakenOver() {
		return
	}
	f := q.flow(cl)
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.window {
		return
	}
	if o, ok := f.out[pk.PacketID]; ok && sameMessage(o, pk) {
		return // the resend wrote it already
	}
	if o, ok := mochix.QueuedAt(cl, pk.PacketID); !ok || !sameMessage(o, pk) {
		return
	}
	f.takeOut(q.h.srv, cl, pk, true)
}

// OnSessionEstablished queues the split-off messages again, under their
// packet ids, at the head of the wait list, and writes what the quota
// allows.
func (q *SendQuota) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	q.connMu.Lock()
	delete(q.connecting, cl)
	q.connMu.Unlock()
	f := q.flow(cl)
	if f == nil {
		return
	}
	f.mu.Lock()
	q.closeWindow(f)
	f.mu.Unlock()
	q.requeueSplit(cl, f)
	f.mu.Lock()
	q.release(cl, f) // unlocks
}

// OnDisconnect drops cl's quota state; what waited stays in its session's
// queue.
func (q *SendQuota) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	q.connMu.Lock()
	delete(q.connecting, cl)
	q.connMu.Unlock()
	q.forget(cl)
}

// sameMessage reports whether a and b are the same queued delivery.
func sameMessage(a, b packets.Packet) bool {
	return a.Created == b.Created && samePublish(a, b)
}

// OnPacketEncode counts a QoS 1/2 PUBLISH to a client with a quota, or
// withholds it to wait for a slot (see SendQuota).
func (q *SendQuota) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Qos == 0 {
		return pk
	}
	f := q.flow(cl)
	if f == nil {
		return pk
	}
	id := pk.PacketID
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.passing != nil && id == f.passing.PacketID && sameMessage(*f.passing, pk) {
		f.passing = nil // a release's write, counted already
		return pk
	}
	if pk.FixedHeader.Dup {
		// mochi's resend at reconnect (or ResendOrder's end of it): the
		// split counted what it resends, but for a late delivery its
		// snapshot caught (see SendQuota).
		f.out[id] = pk
		if f.checkQueued {
			f.writtenLate(q.h.srv, cl, pk)
		}
		return pk
	}
	if o, ok := f.out[id]; ok && sameMessage(o, pk) {
		mochix.Withhold(cl, &pk) // the resend wrote it already
		return pk
	}
	if f.checkQueued {
		hp, waits := f.splitIDs[id]
		if o, ok := mochix.QueuedAt(cl, id); !ok || !sameMessage(o, pk) || waits && sameMessage(hp.pk, pk) {
			mochix.Withhold(cl, &pk) // split off: it waits in the list already
			return pk
		}
	}
	if len(f.held) > 0 || f.releasing || len(f.out) >= f.max {
		f.held = append(f.held, &heldPub{pk: pk})
		if len(f.held) > 2*int(q.h.srv.Options.Capabilities.MaximumInflight) {
			f.prune(cl)
		}
		mochix.Withhold(cl, &pk)
		return pk
	}
	if !fits(pk) {
		return pk // mochi refuses to write it: it takes no slot
	}
	f.out[id] = pk
	return pk
}

// writtenLate handles the resend of a late delivery that was taken out of
// the queue after mochi's snapshot caught it: it went out after all, so it
// goes back into the queue under its id instead of waiting; f.mu is held.
func (f *flow) writtenLate(srv *mqtt.Server, cl *mqtt.Client, pk packets.Packet) {
	for i, hp := range f.held {
		if hp.late && hp.split && hp.pk.PacketID == pk.PacketID && sameMessage(hp.pk, pk) {
			f.held = append(f.held[:i], f.held[i+1:]...)
			f.written(hp)
			if !mochix.Requeue(srv, cl, hp.pk) {
				srv.Log.Warn("resent message's packet id reused meanwhile", "client", cl.ID, "packet_id", pk.PacketID)
			}
			return
		}
	}
}

// prune drops waiting deliveries that left the queue (expired); f.mu is
// held. mochi bounds the queue, not this list.
func (f *flow) prune(cl *mqtt.Client) {
	kept := f.held[:0]
	for _, hp := range f.held {
		if hp.split {
			kept = append(kept, hp)
			continue
		}
		if o, ok := mochix.QueuedAt(cl, hp.pk.PacketID); ok && sameMessage(o, hp.pk) {
			kept = append(kept, hp)
		} else {
			f.written(hp)
		}
	}
	clear(f.held[len(kept):])
	f.held = kept
}

// fits reports whether pk fits the client's Maximum Packet Size, which
// mochi (WritePacket) sets as pk.Mods.MaxSize before the encode hooks and
// checks after them.
func fits(pk packets.Packet) bool {
	if pk.Mods.MaxSize == 0 {
		return true
	}
	var buf bytes.Buffer
	if err := pk.PublishEncode(&buf); err != nil {
		return false
	}
	return uint32(buf.Len()) <= pk.Mods.MaxSize
}

// OnPacketRead frees the slot of the flow a PUBACK, a PUBCOMP or a failing
// PUBREC ends, and writes the next waiting deliveries. It runs on the
// client's read loop before mochi handles the packet (the message is
// still queued, so its packet id cannot be reused meanwhile).
func (q *SendQuota) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	switch pk.FixedHeader.Type {
	case packets.Puback, packets.Pubcomp:
	case packets.Pubrec:
		if pk.ReasonCode < packets.ErrUnspecifiedError.Code && pk.ReasonCodeValid() {
			return pk, nil // the flow goes on with PUBREL (as mochi decides)
		}
	default:
		return pk, nil
	}
	f := q.flow(cl)
	if f == nil {
		return pk, nil
	}
	f.mu.Lock()
	if _, ok := f.out[pk.PacketID]; !ok {
		f.mu.Unlock()
		return pk, nil
	}
	delete(f.out, pk.PacketID)
	q.release(cl, f)
	return pk, nil
}

// release writes waiting deliveries while the quota allows; f.mu is held
// and is unlocked on return. One release writes at a time: another that
// finds one under way leaves the freed slot to it.
func (q *SendQuota) release(cl *mqtt.Client, f *flow) {
	if f.releasing {
		f.mu.Unlock()
		return
	}
	f.releasing = true
	for {
		if len(f.held) == 0 || len(f.out) >= f.max || f.held[0].split {
			f.releasing = false
			f.mu.Unlock()
			return
		}
		hp := f.held[0]
		pk := hp.pk
		f.held[0] = nil
		f.held = f.held[1:]
		f.written(hp)
		if o, ok := mochix.QueuedAt(cl, pk.PacketID); !ok || !sameMessage(o, pk) {
			continue // expired or dropped while it waited
		}
		f.out[pk.PacketID] = pk
		f.passing = &pk
		f.mu.Unlock()
		err := cl.WritePacket(pk)
		f.mu.Lock()
		f.passing = nil
		if err != nil {
			// Not written; it stays queued (resent at reconnect).
			delete(f.out, pk.PacketID)
			if errors.Is(err, mqtt.ErrConnectionClosed) {
				f.releasing = false
				f.mu.Unlock()
				return
			}
		}
	}
}
