package quirks

import (
	"cmp"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/mochix"
)

// ResendOrder makes mochi resend a resumed session's queued PUBLISHes in
// the order they were published [MQTT-4.6.0-1]. Create it with
// NewResendOrder and add it before Hook: Hook must see the packets as they
// go out.
//
// Resend order (mochi v2.7.9): after a CONNACK with session present,
// mochi writes the session's queue (Client.ResendInflightMessages) in the
// order of Inflight.GetAll, which sorts by the low 16 bits of each
// message's creation time in whole seconds, with an unstable sort: the
// messages of one second come out in map order, and the order wraps every
// 18 hours. The resend cannot be reordered before it starts (no hook runs
// between mochi's snapshot of the queue and its writes) and a write cannot
// be skipped (a failed write ends the resend and the connection), so the
// hook swaps packets as they are encoded: when the CONNACK is encoded it
// takes the queue's PUBLISHes in publish order (creation second, then
// packet id, which mochi hands out in sequence, modulo 65535), and each
// PUBLISH the resend then writes is replaced by the next of that list. A
// message queued after the CONNACK that mochi's snapshot still caught
// goes after them; one the list holds that the resend did not write
// (expired meanwhile) leaves a slot that the hook fills when the session
// is established, with the remaining messages still queued.
type ResendOrder struct {
	mqtt.HookBase
	quota *SendQuota // nil: no Receive Maximum applied to the resend

	mu      sync.Mutex
	resends map[*mqtt.Client]*resend
	n       atomic.Int32 // len(resends), for the fast path
}

// resend is one client's resend in progress.
type resend struct {
	pending []packets.Packet    // what goes out at the next resent PUBLISH, in order
	listed  map[uint16]struct{} // ids in the CONNACK-time list
}

var _ mqtt.Hook = (*ResendOrder)(nil)

// NewResendOrder returns the resend-order hook, without a send quota
// (Hook.ResendOrder returns one with Hook's).
func NewResendOrder() *ResendOrder {
	return &ResendOrder{resends: map[*mqtt.Client]*resend{}}
}

// ID names the hook.
func (o *ResendOrder) ID() string { return "mendmq-resend-order" }

// Provides declares the handled hook methods; OnSessionEstablished and
// OnDisconnect only while a resend is in progress.
func (o *ResendOrder) Provides(b byte) bool {
	switch b {
	case mqtt.OnPacketEncode:
		return true
	case mqtt.OnSessionEstablished, mqtt.OnDisconnect:
		return o.n.Load() > 0
	}
	return false
}

// PublishOrder sorts queued PUBLISHes (of one client) into the order they
// were published: by creation second, then by packet id, read as a
// sequence that may have wrapped past 65535 within that second.
func PublishOrder(pks []packets.Packet) {
	slices.SortStableFunc(pks, func(a, b packets.Packet) int { return cmp.Compare(a.Created, b.Created) })
	for i := 0; i < len(pks); {
		j := i + 1
		lo, hi := pks[i].PacketID, pks[i].PacketID
		for ; j < len(pks) && pks[j].Created == pks[i].Created; j++ {
			lo, hi = min(lo, pks[j].PacketID), max(hi, pks[j].PacketID)
		}
		wrapped := hi-lo > 1<<15 // ids from before the wrap are the high ones
		key := func(id uint16) int {
			if wrapped && id < 1<<15 {
				return int(id) + 1<<16
			}
			return int(id)
		}
		slices.SortFunc(pks[i:j], func(a, b packets.Packet) int { return cmp.Compare(key(a.PacketID), key(b.PacketID)) })
		i = j
	}
}

// OnPacketEncode starts a client's resend at its CONNACK (session
// present) and swaps the PUBLISHes the resend writes (see ResendOrder).
func (o *ResendOrder) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	switch {
	case pk.FixedHeader.Type == packets.Connack && pk.SessionPresent:
		o.start(cl)
	case pk.FixedHeader.Type == packets.Publish && pk.FixedHeader.Dup && o.n.Load() > 0:
		return o.swap(cl, pk)
	}
	return pk
}

// start lists cl's queued PUBLISHes in publish order, if there is
// anything to reorder or a send quota to apply (which may take some out
// of the queue: see SendQuota). It also forgets resends of closed
// clients: mochi calls no hook when a CONNACK or a resend write fails.
func (o *ResendOrder) start(cl *mqtt.Client) {
	var pubs []packets.Packet
	var pubrels []uint16
	for _, pk := range mochix.Queued(cl) {
		switch pk.FixedHeader.Type {
		case packets.Publish:
			pubs = append(pubs, pk)
		case packets.Pubrel:
			pubrels = append(pubrels, pk.PacketID)
		}
	}
	PublishOrder(pubs)
	limited := false
	if o.quota != nil {
		pubs, limited = o.quota.split(cl, pubs, pubrels)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for c := range o.resends {
		if c.Closed() {
			o.forget(c)
		}
	}
	if len(pubs) < 2 && !limited {
		return
	}
	r := &resend{pending: pubs, listed: make(map[uint16]struct{}, len(pubs))}
	for _, pk := range pubs {
		r.listed[pk.PacketID] = struct{}{}
	}
	if _, ok := o.resends[cl]; !ok {
		o.n.Add(1)
	}
	o.resends[cl] = r
}

// swap returns the packet to write in place of the resent pk.
func (o *ResendOrder) swap(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	o.mu.Lock()
	defer o.mu.Unlock()
	r, ok := o.resends[cl]
	if !ok {
		return pk
	}
	if _, listed := r.listed[pk.PacketID]; !listed {
		r.pending = append(r.pending, pk) // queued after the CONNACK: after the listed ones
	}
	if len(r.pending) == 0 {
		return pk
	}
	out := r.pending[0]
	r.pending = r.pending[1:]
	return asWritten(out, pk)
}

// asWritten prepares out, a queued PUBLISH, as WritePacket prepared like
// (the resent packet it replaces) before the encode hooks: resend flag,
// protocol version, encoding limits, remaining expiry.
func asWritten(out, like packets.Packet) packets.Packet {
	out.FixedHeader.Dup = true // [MQTT-3.3.1-1]
	out.ProtocolVersion = like.ProtocolVersion
	out.Mods = like.Mods
	if out.Expiry > 0 {
		out.Properties.MessageExpiryInterval = uint32(max(out.Expiry-time.Now().Unix(), 1)) // [MQTT-3.3.2-6]
	}
	return out
}

// OnSessionEstablished ends cl's resend: listed messages that the resend
// did not write (an expired one took no slot) go out now if still queued.
func (o *ResendOrder) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	o.mu.Lock()
	r, ok := o.resends[cl]
	if ok {
		o.forget(cl)
	}
	o.mu.Unlock()
	if !ok {
		return
	}
	for _, pk := range r.pending {
		if q, ok := cl.State.Inflight.Get(pk.PacketID); ok && q.Created == pk.Created && samePublish(q, pk) {
			pk.FixedHeader.Dup = true
			_ = cl.WritePacket(pk) // a failed write: the connection is gone, the message stays queued
		}
	}
}

// OnDisconnect forgets cl's resend.
func (o *ResendOrder) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	o.mu.Lock()
	o.forget(cl)
	o.mu.Unlock()
}

// forget drops cl's resend; mu is held.
func (o *ResendOrder) forget(cl *mqtt.Client) {
	if _, ok := o.resends[cl]; ok {
		delete(o.resends, cl)
		o.n.Add(-1)
	}
}
