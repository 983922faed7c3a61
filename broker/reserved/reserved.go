// Package reserved keeps MQTT clients out of the broker's own namespaces:
// topic names beginning with '$' ($SYS/..., where the broker publishes its
// state, and any other '$' topic the broker may use internally) and the
// client ids of the broker's internal clients.
//
// Topic names starting with '$' are the server's [MQTT-4.7.2-1]; MQTT 5
// §4.7.2 adds that applications cannot use them for their own purposes.
// mochi v2.7.9 drops a client's publish to $SYS without any answer (a QoS 1
// publisher waits for a PUBACK that never comes) and accepts other '$'
// topics. This hook refuses every client publish to a '$' topic as mochi
// refuses a publish its ACL denies:
//
//	              MQTT 5                        MQTT 3.1.1
//	QoS 0         dropped (counted)             dropped (counted)
//	QoS 1         PUBACK 0x87 not authorized    connection closed [MQTT-3.3.5-2]
//	QoS 2         PUBREC 0x87 not authorized    connection closed
//
// A will is a publish too, and mochi sends it without the checks above, so
// a CONNECT whose will topic starts with '$' is refused: v5 CONNACK 0x90
// topic name invalid ("the Will Topic Name is not malformed, but is not
// accepted by this Server", MQTT 5 §3.2.2.2), v3 CONNACK return code 5
// (not authorized; 3.1.1 has no closer code).
//
// A CONNECT whose client id starts with '$' (the cluster's injector
// clients are "$cluster-injector-N", the admin API's "$mendmq-admin") or
// is mochi's inline client id "inline" is refused: v5 CONNACK 0x85 client
// identifier not valid, v3 CONNACK return code 2 (identifier rejected).
// Such a client would be mistaken for an internal one: its session would
// not be replicated, and its publishes would be filtered as injected ones.
//
// Inline clients (mochi's, the cluster's injectors) are the broker itself
// and pass. So does the operator client (Operator), which the admin API
// publishes through: its publishes take a client's path through mochi (so
// the storage and cluster hooks replicate them) without a client's ACL.
package reserved

import (
	"bytes"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/refuse"
)

// Internal client ids and prefixes. InjectorPrefix must equal the prefix
// broker/clusterhook gives its injector clients (a cluster test checks
// it).
const (
	InjectorPrefix = "$cluster-injector-"
	OperatorID     = "$mendmq-admin"
)

// reservedTopicCode answers a client's publish to a '$' topic.
var reservedTopicCode = packets.Code{Code: packets.ErrNotAuthorized.Code,
	Reason: "topic names beginning with $ are reserved for the broker"}

// ReservedClientID reports whether a client may not use clientID.
func ReservedClientID(clientID string) bool {
	return strings.HasPrefix(clientID, "$") || clientID == mqtt.InlineClientId
}

// ReservedTopic reports whether topic belongs to the broker.
func ReservedTopic(topic string) bool { return strings.HasPrefix(topic, "$") }

// Hook is the mochi hook. Add it before the cluster hook, so that a
// refused CONNECT never registers and a refused publish is never
// forwarded.
type Hook struct {
	mqtt.HookBase
	srv      *mqtt.Server
	refuse   *refuse.Refuser
	operator *mqtt.Client
	opts     Options
}

// Options are the hook's counters; nil ones are not called.
type Options struct {
	// Dropped is called for each refused publish, whatever its QoS.
	Dropped func()
	// Refused is called for each refused CONNECT with the reason:
	// "reserved_client_id" or "reserved_will_topic".
	Refused func(reason string)
}

var _ mqtt.Hook = (*Hook)(nil)

// New returns the hook for srv; its refusals are written by r, so they
// read like every other refusal of the broker.
func New(srv *mqtt.Server, r *refuse.Refuser, o Options) *Hook {
	h := &Hook{srv: srv, refuse: r, opts: o}
	cl := srv.NewClient(nil, "admin", OperatorID, false)
	cl.Properties.ProtocolVersion = 5
	// Not inline (the cluster hook ignores inline clients' retains), so
	// mochi applies the receive quota: lift it as it does for inline ones.
	cl.State.Inflight.ResetReceiveQuota(1 << 30)
	h.operator = cl
	return h
}

// ID names the hook.
func (h *Hook) ID() string { return "mendmq-reserved" }

// Provides declares the handled hook methods.
func (h *Hook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnect, mqtt.OnPacketRead, mqtt.OnPublish, mqtt.OnACLCheck}, []byte{b})
}

// Operator is the client the admin API publishes through
// (Server.InjectPacket); callers use it one publish at a time.
func (h *Hook) Operator() *mqtt.Client { return h.operator }

// OnConnect refuses reserved client ids and wills to '$' topics through
// the Refuser (v3: 0x85 is return code 2, 0x90 return code 5).
func (h *Hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	code, reason := packets.CodeSuccess, ""
	switch {
	case ReservedClientID(cl.ID):
		code, reason = packets.ErrClientIdentifierNotValid, "reserved_client_id"
	case pk.Connect.WillFlag && ReservedTopic(pk.Connect.WillTopic):
		code, reason = packets.ErrTopicNameInvalid, "reserved_will_topic"
	default:
		return nil
	}
	if h.opts.Refused != nil {
		h.opts.Refused(reason)
	}
	return h.refuse.Connect(cl, code)
}

// OnPacketRead answers a client's publish to a '$' topic (table above).
// mochi itself then drops a $SYS publish before any hook sees it, and
// OnPublish rejects the others; the topic alias of a refused publish is
// removed so that no alias can ever name a '$' topic.
func (h *Hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type != packets.Publish || cl.Net.Inline || !ReservedTopic(pk.TopicName) {
		return pk, nil
	}
	pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = 0, false
	if h.opts.Dropped != nil {
		h.opts.Dropped()
	}
	if pk.FixedHeader.Qos == 0 {
		return pk, nil
	}
	if cl.Properties.ProtocolVersion < 5 {
		// A v3 client cannot be told; closing is what the spec allows.
		return pk, packets.ErrRejectPacket
	}
	h.refuse.Ack(cl, pk, reservedTopicCode)
	return pk, nil
}

// OnPublish keeps a '$' publish of a client from being delivered,
// retained or forwarded (OnPacketRead answered it already).
func (h *Hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if !cl.Net.Inline && cl != h.operator && ReservedTopic(pk.TopicName) {
		return pk, packets.ErrRejectPacket
	}
	return pk, nil
}

// OnACLCheck admits the operator client. mochi asks every ACL hook and
// allows when any says yes, so for other clients this defers to the auth
// hook, except for a publish to a '$' topic: OnPacketRead has answered
// it and OnPublish rejects it, and an ACL refusal would send mochi's own
// PUBACK as a second answer.
func (h *Hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	return cl == h.operator || (write && !cl.Net.Inline && ReservedTopic(topic))
}
