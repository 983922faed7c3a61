package quirks

import (
	"math"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/mochix"
)

// ReceiveQuota enforces the server's Receive Maximum (mqtt.receive_maximum,
// announced in every v5 CONNACK) on what clients send: a client that
// starts a QoS 1/2 PUBLISH while it has that many QoS 2 PUBLISHes the
// server has not completed (PUBREL not received yet; mochi acknowledges a
// QoS 1 PUBLISH before it reads the next packet) gets DISCONNECT 0x93
// Receive Maximum exceeded [MQTT-3.3.4-8]; an MQTT 3.1.1 client, which has
// no DISCONNECT from the server, is disconnected. Create it with
// NewReceiveQuota; add it before the hooks that act on a PUBLISH.
//
// Counted wrong (mochi v2.7.9): mochi keeps a receive quota per client
// that it also takes on a QoS 0 PUBLISH (a client at its maximum that
// sends one is disconnected) and on every PUBREC the client sends for the
// server's own QoS 2 deliveries (a subscriber with QoS 2 messages to
// complete is disconnected sooner), and that it checks before it knows
// whether a QoS 2 PUBLISH is a retransmission of one in progress (pinned
// in broker/mochix TestReceiveQuotaCountsWrong). The hook sets mochi's
// quota out of reach once the session is set up and counts the flows
// itself from mochi's own queue events: a QoS 2 PUBLISH's PUBREC is queued
// (OnQosPublish, also when a resumed session's are resent at reconnect)
// until the PUBREL completes it (OnQosComplete) or it is dropped
// (OnQosDropped).
type ReceiveQuota struct {
	mqtt.HookBase
	srv *mqtt.Server
	max int32

	open sync.Map // *mqtt.Client -> *atomic.Int32: QoS 2 flows not completed
}

var _ mqtt.Hook = (*ReceiveQuota)(nil)

// NewReceiveQuota returns the hook for srv with the server's Receive
// Maximum max (> 0).
func NewReceiveQuota(srv *mqtt.Server, max uint16) *ReceiveQuota {
	return &ReceiveQuota{srv: srv, max: int32(max)}
}

// ID names the hook.
func (r *ReceiveQuota) ID() string { return "mendmq-receive-quota" }

// Provides declares the handled hook methods.
func (r *ReceiveQuota) Provides(b byte) bool {
	switch b {
	case mqtt.OnSessionEstablished, mqtt.OnPacketRead, mqtt.OnQosPublish, mqtt.OnQosComplete,
		mqtt.OnQosDropped, mqtt.OnDisconnect:
		return true
	}
	return false
}

// count returns cl's counter.
func (r *ReceiveQuota) count(cl *mqtt.Client) *atomic.Int32 {
	if c, ok := r.open.Load(cl); ok {
		return c.(*atomic.Int32)
	}
	c, _ := r.open.LoadOrStore(cl, new(atomic.Int32))
	return c.(*atomic.Int32)
}

// OnSessionEstablished puts mochi's own receive quota out of reach (it is
// set when mochi parses the CONNECT and again when a takeover clones the
// session's queue), as mochi does for its inline client.
func (r *ReceiveQuota) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	cl.State.Inflight.ResetReceiveQuota(math.MaxInt32)
}

// OnQosPublish counts a QoS 2 flow from the client: mochi queued its
// PUBREC.
func (r *ReceiveQuota) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, _ int) {
	if pk.FixedHeader.Type == packets.Pubrec {
		r.count(cl).Add(1)
	}
}

// OnQosComplete ends a QoS 2 flow from the client (its PUBREL).
func (r *ReceiveQuota) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	if pk.FixedHeader.Type == packets.Pubrel {
		r.done(cl)
	}
}

// OnQosDropped ends a QoS 2 flow from the client that mochi dropped (a
// failing PUBREL, expiry, the session's end).
func (r *ReceiveQuota) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if t := pk.FixedHeader.Type; t == packets.Pubrel || t == packets.Pubrec {
		r.done(cl)
	}
}

func (r *ReceiveQuota) done(cl *mqtt.Client) {
	if c := r.count(cl); c.Add(-1) < 0 {
		c.Store(0) // a flow counted before the hook was added
	}
}

// OnDisconnect forgets the client's count.
func (r *ReceiveQuota) OnDisconnect(cl *mqtt.Client, _ error, _ bool) { r.open.Delete(cl) }

// OnPacketRead disconnects a client whose QoS 1/2 PUBLISH would exceed
// the server's Receive Maximum; the error stops mochi from handling it.
func (r *ReceiveQuota) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Qos == 0 || cl.Net.Inline {
		return pk, nil
	}
	if r.count(cl).Load() < r.max {
		return pk, nil
	}
	if q, ok := mochix.QueuedAt(cl, pk.PacketID); ok && q.FixedHeader.Type == packets.Pubrec {
		return pk, nil // a retransmission of a flow in progress
	}
	if cl.Properties.ProtocolVersion == 5 {
		_ = r.srv.DisconnectClient(cl, packets.ErrReceiveMaximum)
	} else {
		cl.Stop(packets.ErrReceiveMaximum)
	}
	return pk, packets.ErrReceiveMaximum
}
