package clusterhook

import (
	"fmt"
	"sort"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/cluster/routes"
)

// exportSession captures a client's session for a move to another node.
// The caller has already stopped the client.
func exportSession(cl *mqtt.Client, keyOf func(packets.Packet) (msgKey, string, bool)) (session, error) {
	s := session{
		ProtocolVersion: cl.Properties.ProtocolVersion,
		Clean:           cl.Properties.Clean,
		Expiry:          cl.Properties.Props.SessionExpiryInterval,
		ExpiryFlag:      cl.Properties.Props.SessionExpiryIntervalFlag,
		Username:        cl.Properties.Username,
	}
	for _, sub := range cl.State.Subscriptions.GetAll() {
		s.Subs = append(s.Subs, sub)
	}
	sort.Slice(s.Subs, func(i, j int) bool { return s.Subs[i].Filter < s.Subs[j].Filter })
	for _, pk := range cl.State.Inflight.GetAll(false) {
		m := inflightMsg{Type: pk.FixedHeader.Type, PacketID: pk.PacketID, Created: pk.Created, Expiry: pk.Expiry}
		if pk.FixedHeader.Type == packets.Publish {
			if k, _, ok := keyOf(pk); ok {
				m.From, m.ID = k.from, k.id // so the new node can tell it from a direct copy
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
// mochi restores sessions from storage, so that mochi's own takeover
// (inheritClientSession) hands it to the connecting client.
func importSession(srv *mqtt.Server, id string, s session) error {
	cl := srv.NewClient(nil, "cluster", id, false)
	cl.Properties.ProtocolVersion = s.ProtocolVersion
	cl.Properties.Clean = s.Clean
	cl.Properties.Username = s.Username
	cl.Properties.Props.SessionExpiryInterval = s.Expiry
	cl.Properties.Props.SessionExpiryIntervalFlag = s.ExpiryFlag
	cl.Stop(packets.ErrSessionTakenOver)
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
		cl.State.Inflight.Set(pk)
	}
	for _, sub := range s.Subs {
		srv.Topics.Subscribe(id, sub)
		cl.State.Subscriptions.Add(sub.Filter, sub)
	}
	srv.Clients.Add(cl)
	return nil
}

// record describes a client's session for the replicated "sub" table.
func record(node string, cl *mqtt.Client) routes.SessionRecord {
	rec := routes.SessionRecord{Node: node, Clean: isEphemeral(cl)}
	if !rec.Clean {
		rec.ExpiryInterval = cl.Properties.Props.SessionExpiryInterval
		if cl.Properties.ProtocolVersion < 5 {
			rec.ExpiryInterval = 0xFFFFFFFF // v3 persistent sessions never expire by protocol
		}
	}
	for _, sub := range cl.State.Subscriptions.GetAll() {
		rec.Subs = append(rec.Subs, routes.Subscription{
			Filter:            sub.Filter,
			QoS:               sub.Qos,
			NoLocal:           sub.NoLocal,
			RetainAsPublished: sub.RetainAsPublished,
			RetainHandling:    sub.RetainHandling,
			Identifier:        sub.Identifier,
		})
	}
	sort.Slice(rec.Subs, func(i, j int) bool { return rec.Subs[i].Filter < rec.Subs[j].Filter })
	return rec
}

// isEphemeral reports whether the session ends with the connection.
func isEphemeral(cl *mqtt.Client) bool {
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval == 0
	}
	return cl.Properties.Clean
}
