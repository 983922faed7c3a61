package clusterhook

import (
	"fmt"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/handoff"
	"github.com/mendmq/mendmq/broker/mochix"
)

// exportSession captures a client's session for a move to another node.
// The caller has already stopped the client. keyOf identifies each queued
// publish, so the new node can tell it from a direct copy.
func exportSession(cl *mqtt.Client, keyOf func(packets.Packet) (handoff.Key, string, bool)) (session, error) {
	s := session{
		ProtocolVersion: cl.Properties.ProtocolVersion,
		Clean:           cl.Properties.Clean,
		Expiry:          cl.Properties.Props.SessionExpiryInterval,
		ExpiryFlag:      cl.Properties.Props.SessionExpiryIntervalFlag,
		Username:        cl.Properties.Username,
		Subs:            mochix.Subscriptions(cl),
	}
	for _, pk := range mochix.Queued(cl) {
		m := inflightMsg{Type: pk.FixedHeader.Type, PacketID: pk.PacketID, Created: pk.Created, Expiry: pk.Expiry}
		if pk.FixedHeader.Type == packets.Publish {
			if k, _, ok := keyOf(pk); ok {
				m.From, m.ID = k.From, k.ID
			}
			b, err := EncodePublish(pk)
			if err != nil {
				return s, fmt.Errorf("export inflight %d of %s: %w", pk.PacketID, cl.ID, err)
			}
			m.Publish = b
		}
		s.Inflight = append(s.Inflight, m)
	}
	return s, nil
}

// importSession installs s as a disconnected session of id in srv, the way
// mochi restores sessions from storage, so that mochi's own takeover at
// the client's CONNECT hands it to the connecting client.
func importSession(srv *mqtt.Server, id string, s session) error {
	var pks []packets.Packet
	for _, m := range s.Inflight {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: m.Type}, PacketID: m.PacketID}
		if m.Type == packets.Publish {
			var err error
			if pk, err = DecodePublish(m.Publish); err != nil {
				return fmt.Errorf("import inflight %d of %s: %w", m.PacketID, id, err)
			}
			pk.PacketID = m.PacketID
		}
		pk.Created, pk.Expiry = m.Created, m.Expiry
		pks = append(pks, pk)
	}
	mochix.Detached(srv, id, func(cl *mqtt.Client) {
		cl.Properties.ProtocolVersion = s.ProtocolVersion
		cl.Properties.Clean = s.Clean
		cl.Properties.Username = s.Username
		cl.Properties.Props.SessionExpiryInterval = s.Expiry
		cl.Properties.Props.SessionExpiryIntervalFlag = s.ExpiryFlag
		for _, pk := range pks {
			mochix.Restore(cl, pk)
		}
		for _, sub := range s.Subs {
			mochix.Subscribe(srv, cl, sub)
		}
	})
	return nil
}

// msgKey is the handoff key a moved message carries.
func msgKey(m inflightMsg) handoff.Key { return handoff.Key{From: m.From, ID: m.ID} }
