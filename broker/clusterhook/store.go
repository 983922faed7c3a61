package clusterhook

import (
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/mochix"
)

// Store is the node's storage hook, told about the session state the
// hooks move into or out of mochi outside mochi's own events (a session
// imported from another node, messages handed over or taken back, a
// session that moved away), so that after a restart a moved session is
// found on its new node with its queue and not resurrected on its old
// one. mochi's storage hooks implement it.
type Store interface {
	OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte)
	OnUnsubscribed(cl *mqtt.Client, pk packets.Packet)
	OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, resends int)
	OnQosComplete(cl *mqtt.Client, pk packets.Packet)
	OnClientExpired(cl *mqtt.Client)
}

// storeSession writes cl's subscriptions and queue (an imported session).
// Its client record is written by the storage hook when the connecting
// client's session is established.
func (s *shared) storeSession(cl *mqtt.Client) {
	st := s.opts.Store
	if st == nil {
		return
	}
	var pk packets.Packet
	var qos []byte
	for _, sub := range mochix.Subscriptions(cl) {
		pk.Filters = append(pk.Filters, sub)
		qos = append(qos, sub.Qos)
	}
	if len(pk.Filters) > 0 {
		st.OnSubscribed(cl, pk, qos)
	}
	for _, m := range mochix.Queued(cl) {
		st.OnQosPublish(cl, m, m.Created, 0)
	}
}

// unstoreQueued deletes the stored message with packet id from cl's
// queue: it was taken out of the queue (handed to another node, or
// withdrawn as delivered by another path).
func (s *shared) unstoreQueued(cl *mqtt.Client, id uint16) {
	if s.opts.Store != nil {
		s.opts.Store.OnQosComplete(cl, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, PacketID: id})
	}
}

// unstoreSession deletes cl's session from storage (it moved to another
// node): its subscriptions, the messages with the given packet ids and
// its client record.
func (s *shared) unstoreSession(cl *mqtt.Client, filters []string, ids []uint16) {
	st := s.opts.Store
	if st == nil {
		return
	}
	if len(filters) > 0 {
		var pk packets.Packet
		for _, f := range filters {
			pk.Filters = append(pk.Filters, packets.Subscription{Filter: f})
		}
		st.OnUnsubscribed(cl, pk)
	}
	for _, id := range ids {
		s.unstoreQueued(cl, id)
	}
	st.OnClientExpired(cl)
}
