package quirks

import (
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Acks makes every PUBACK, PUBREC, PUBREL and PUBCOMP the broker writes
// carry a reason code valid for its packet type and no property but the
// server's own reason string (MQTT 5 §3.4.2.1, §3.5.2.1, §3.6.2.1,
// §3.7.2.1). Create it with NewAcks; it has no state.
//
// Echoed properties and code 0x01 (mochi v2.7.9): mochi builds these acks
// (Server.buildAck) from the packet they answer, copying all its
// properties: a PUBLISH's user properties, content type, correlation data
// and so on come back in the PUBACK or PUBREC, and a PUBREC's in the PUBREL.
// For a QoS 1 PUBLISH it passes its "granted QoS 1" code (0x01, not a
// PUBACK reason code) as the reason; the encoder writes the code only when
// properties follow, so it reaches the wire exactly when the publisher sent
// properties, and strict client libraries then reject the PUBACK. mochi's
// Compatibilities.NoInheritedPropertiesOnAck drops the copy but keeps
// 0x01 in the packet, and it does not cover acks built before it was set
// (a PUBREL restored from storage and resent at reconnect); the hook
// rewrites every ack as it is encoded, whoever built it.
//
// Contract: a hook that wants to send user properties on one of these
// acks must run after this one (none does today).
type Acks struct {
	mqtt.HookBase
}

var _ mqtt.Hook = (*Acks)(nil)

// NewAcks returns the ack hook.
func NewAcks() *Acks { return &Acks{} }

// ID names the hook.
func (a *Acks) ID() string { return "mendmq-acks" }

// Provides declares the handled hook methods.
func (a *Acks) Provides(b byte) bool { return b == mqtt.OnPacketEncode }

// OnPacketEncode rewrites an ack as CleanAck does; other packets pass.
func (a *Acks) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	switch pk.FixedHeader.Type {
	case packets.Puback, packets.Pubrec, packets.Pubrel, packets.Pubcomp:
		CleanAck(&pk)
	}
	return pk
}

// CleanAck gives the PUBACK, PUBREC, PUBREL or PUBCOMP pk a reason code
// valid for its type and drops every property but the reason string of a
// failure:
//
//   - a valid code is kept;
//   - any other code below 0x80 (mochi's 0x01 "granted QoS 1") is a
//     success: 0x00;
//   - any other failure becomes the type's generic failure: 0x80
//     unspecified error (PUBACK, PUBREC) or 0x92 packet identifier not
//     found (PUBREL, PUBCOMP: their only failure code).
func CleanAck(pk *packets.Packet) {
	code := pk.ReasonCode
	if !validAckCode(pk.FixedHeader.Type, code) {
		switch {
		case code < packets.ErrUnspecifiedError.Code:
			code = packets.CodeSuccess.Code
		case pk.FixedHeader.Type == packets.Puback || pk.FixedHeader.Type == packets.Pubrec:
			code = packets.ErrUnspecifiedError.Code
		default:
			code = packets.ErrPacketIdentifierNotFound.Code
		}
	}
	reason := ""
	if code >= packets.ErrUnspecifiedError.Code {
		reason = pk.Properties.ReasonString // mochi's, or a refusal's (broker/refuse)
	}
	pk.ReasonCode = code
	pk.Properties = packets.Properties{ReasonString: reason}
}

// validAckCode reports whether code is a reason code of ack type typ
// (MQTT 5 §3.4.2.1 PUBACK, §3.5.2.1 PUBREC, §3.6.2.1 PUBREL, §3.7.2.1
// PUBCOMP).
func validAckCode(typ, code byte) bool {
	switch typ {
	case packets.Puback, packets.Pubrec:
		switch code {
		case packets.CodeSuccess.Code, packets.CodeNoMatchingSubscribers.Code, packets.ErrUnspecifiedError.Code,
			packets.ErrImplementationSpecificError.Code, packets.ErrNotAuthorized.Code, packets.ErrTopicNameInvalid.Code,
			packets.ErrPacketIdentifierInUse.Code, packets.ErrQuotaExceeded.Code, packets.ErrPayloadFormatInvalid.Code:
			return true
		}
	case packets.Pubrel, packets.Pubcomp:
		return code == packets.CodeSuccess.Code || code == packets.ErrPacketIdentifierNotFound.Code
	}
	return false
}
