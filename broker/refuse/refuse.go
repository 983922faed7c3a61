// Package refuse refuses an MQTT operation the way each protocol version
// expects, so that every refusal path (today: a registration that fails in
// the cluster, a publish the cluster could not forward; next: the netsplit
// gate) answers the client alike, and a refused operation is never
// acknowledged as a success.
//
// What a client gets (code is the caller's reason code; a code below 0x80
// is replaced by 0x80 unspecified error, so a refusal is never a success):
//
//	CONNECT      v5: CONNACK with code (0x88 server unavailable, 0x89 busy ...)
//	             v3: CONNACK with the return code for code (0x84 -> 1,
//	                 0x85 -> 2, 0x86 -> 4, 0x87 and 0x90 -> 5, anything
//	                 else -> 3
//	                 server unavailable)
//	             then the connection is closed
//	PUBLISH 0    dropped, counted (Options.Dropped); no local delivery
//	PUBLISH 1/2  v5: PUBACK (QoS 1) or PUBREC (QoS 2) with code and its
//	                 reason string; the message is not delivered
//	             v3: no acknowledgement; the connection is closed so the
//	                 client resends after reconnecting
//	SUBSCRIBE    v5: SUBACK with code for each refused filter (0x80, or 0x87
//	                 not authorized as VerneMQ answers during a netsplit, or
//	                 0x97 quota exceeded ...); filters not refused are
//	                 subscribed and acknowledged as usual
//	             v3: SUBACK 0x80 (failure) for each refused filter
//	UNSUBSCRIBE  v5: UNSUBACK with code for each refused filter, which stays
//	                 subscribed
//	             v3: an UNSUBACK carries no codes, so it could only say
//	                 "done": the connection is closed without one and no
//	                 filter of the packet is unsubscribed; the client
//	                 unsubscribes again after reconnecting
//
// How: an OnConnect error only closes the socket, so Connect writes the
// CONNACK first (as mochi does for its client limit). mochi answers an
// OnPublish error code with a PUBACK even for QoS 2, so Publish writes the
// ack itself and makes mochi drop the packet (ErrRejectPacket). A hook can
// refuse a subscription only through OnACLCheck (0x87, and the same check
// also gates deliveries) or by making the filter invalid (0x8F), and an
// unsubscription not at all; so Subscribe and Unsubscribe take the refused
// filters out of the packet (mochi neither applies nor stores them) and
// the Refuser, a hook itself, puts them back into mochi's SUBACK/UNSUBACK
// with the caller's code as it is encoded (OnPacketEncode).
package refuse

import (
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Options configures a Refuser.
type Options struct {
	// Dropped counts a refused QoS 0 publish (nil: not counted).
	Dropped func()
}

// Refuser refuses operations (see the package doc). It is a mochi hook:
// add it to the server before any hook that calls it, ideally first, so a
// gate can sit in front of every other hook. Its methods are safe for
// concurrent use; call each from the mochi hook event it names.
type Refuser struct {
	mqtt.HookBase
	srv  *mqtt.Server
	opts Options

	mu      sync.Mutex
	pending map[ackKey]*patch // acks to complete, by client and packet id
	n       atomic.Int32      // len(pending), for the fast path
}

// ackKey names the SUBACK or UNSUBACK of one packet of one client.
type ackKey struct {
	cl  *mqtt.Client
	typ byte // packets.Suback or packets.Unsuback
	id  uint16
}

// patch is how to rebuild mochi's ack: codes has one entry per filter of
// the client's packet, 0 where mochi's own code (in order) goes.
type patch struct {
	codes  []byte
	reason string
}

var _ mqtt.Hook = (*Refuser)(nil)

// New returns a Refuser for srv.
func New(srv *mqtt.Server, opts Options) *Refuser {
	return &Refuser{srv: srv, opts: opts, pending: map[ackKey]*patch{}}
}

// ID names the hook.
func (r *Refuser) ID() string { return "mendmq-refuse" }

// Provides declares the handled hook methods: only while an ack waits
// for its refused filters (mochi asks at every event, so the packets of
// everyone else do not pass through this hook).
func (r *Refuser) Provides(b byte) bool {
	switch b {
	case mqtt.OnPacketEncode, mqtt.OnDisconnect:
		return r.n.Load() > 0
	}
	return false
}

// failure returns code, or 0x80 unspecified error if code is not a
// failure.
func failure(code packets.Code) packets.Code {
	if code.Code < packets.ErrUnspecifiedError.Code {
		return packets.ErrUnspecifiedError
	}
	return code
}

// v3Connack is the MQTT 3.1.1 CONNACK return code for a v5 reason code
// (3.2.2.3): mochi's own map (packets.V5CodesToV3) lacks 0x87 and answers
// 0x86 with 5.
func v3Connack(code packets.Code) byte {
	switch code.Code {
	case packets.ErrUnsupportedProtocolVersion.Code:
		return 1
	case packets.ErrClientIdentifierNotValid.Code:
		return 2
	case packets.ErrBadUsernameOrPassword.Code:
		return 4
	case packets.ErrNotAuthorized.Code, packets.ErrTopicNameInvalid.Code:
		// 0x90 is a will topic the server does not accept (MQTT 5
		// §3.2.2.2); 3.1.1 has no closer code than "not authorized".
		return 5
	}
	return 3 // server unavailable
}

// Connect refuses a CONNECT: it writes the refusing CONNACK and returns
// the error OnConnect must return (mochi then closes the connection).
func (r *Refuser) Connect(cl *mqtt.Client, code packets.Code) error {
	code = failure(code)
	if cl.Properties.ProtocolVersion < 5 {
		_ = cl.WritePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ReasonCode: v3Connack(code)})
		return code
	}
	_ = r.srv.SendConnack(cl, code, false, nil)
	return code
}

// Publish refuses a PUBLISH (call it in OnPublish and return what it
// returns): QoS 0 is dropped and counted; QoS 1/2 gets an error ack (v5)
// or a closed connection (v3).
func (r *Refuser) Publish(cl *mqtt.Client, pk packets.Packet, code packets.Code) (packets.Packet, error) {
	code = failure(code)
	switch {
	case pk.FixedHeader.Qos == 0:
		if r.opts.Dropped != nil {
			r.opts.Dropped()
		}
	case cl.Properties.ProtocolVersion == 5:
		r.Ack(cl, pk, code)
	default:
		_ = r.srv.DisconnectClient(cl, packets.ErrServerUnavailable)
	}
	return pk, packets.ErrRejectPacket
}

// Ack writes the refusing acknowledgement of a v5 QoS 1/2 publish:
// PUBACK (QoS 1) or PUBREC (QoS 2, which ends the exchange
// [MQTT-4.3.3-4]) with code and its reason string. For hooks that must
// answer before OnPublish (mochi drops a $SYS publish before any hook's
// OnPublish sees it); the caller keeps the packet from being delivered.
func (r *Refuser) Ack(cl *mqtt.Client, pk packets.Packet, code packets.Code) {
	code = failure(code)
	ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID,
		ReasonCode: code.Code, Properties: packets.Properties{ReasonString: code.Reason}}
	if pk.FixedHeader.Qos == 2 {
		ack.FixedHeader.Type = packets.Pubrec
	}
	_ = cl.WritePacket(ack)
}

// Subscribe refuses the filters of a SUBSCRIBE for which refused returns
// true (every filter if refused is nil) with code. Call it in OnSubscribe
// and return the packet it returns: mochi subscribes and acknowledges the
// other filters as usual, and the SUBACK carries code (v3: 0x80) at the
// refused filters' places.
func (r *Refuser) Subscribe(cl *mqtt.Client, pk packets.Packet, code packets.Code, refused func(packets.Subscription) bool) packets.Packet {
	code = failure(code)
	if cl.Properties.ProtocolVersion < 5 {
		code = packets.ErrUnspecifiedError // the one v3 failure code
	}
	kept, p := split(pk.Filters, code, refused)
	if p == nil {
		return pk
	}
	r.expect(ackKey{cl, packets.Suback, pk.PacketID}, p)
	pk.Filters = kept
	return pk
}

// Unsubscribe refuses the filters of an UNSUBSCRIBE for which refused
// returns true (every filter if refused is nil) with code. Call it in
// OnUnsubscribe and return the packet it returns. v5: the other filters
// are unsubscribed as usual and the UNSUBACK carries code at the refused
// filters' places. v3: nothing is unsubscribed and the connection is
// closed without an UNSUBACK (see the package doc).
func (r *Refuser) Unsubscribe(cl *mqtt.Client, pk packets.Packet, code packets.Code, refused func(packets.Subscription) bool) packets.Packet {
	kept, p := split(pk.Filters, failure(code), refused)
	if p == nil {
		return pk
	}
	if cl.Properties.ProtocolVersion < 5 {
		_ = r.srv.DisconnectClient(cl, packets.ErrServerUnavailable)
		pk.Filters = nil
		return pk
	}
	r.expect(ackKey{cl, packets.Unsuback, pk.PacketID}, p)
	pk.Filters = kept
	return pk
}

// split separates the refused filters from the kept ones; p is nil if
// none is refused.
func split(filters packets.Subscriptions, code packets.Code, refused func(packets.Subscription) bool) (packets.Subscriptions, *patch) {
	var kept packets.Subscriptions
	var p *patch
	for i, f := range filters {
		if refused != nil && !refused(f) {
			kept = append(kept, f)
			continue
		}
		if p == nil {
			p = &patch{codes: make([]byte, len(filters)), reason: code.Reason}
		}
		p.codes[i] = code.Code
	}
	return kept, p
}

func (r *Refuser) expect(k ackKey, p *patch) {
	r.mu.Lock()
	if _, ok := r.pending[k]; !ok {
		r.n.Add(1)
	}
	r.pending[k] = p
	r.mu.Unlock()
}

// OnPacketEncode puts the refused filters' codes into the SUBACK or
// UNSUBACK mochi wrote for the filters it kept.
func (r *Refuser) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if r.n.Load() == 0 || (pk.FixedHeader.Type != packets.Suback && pk.FixedHeader.Type != packets.Unsuback) {
		return pk
	}
	k := ackKey{cl, pk.FixedHeader.Type, pk.PacketID}
	r.mu.Lock()
	p, ok := r.pending[k]
	if ok {
		delete(r.pending, k)
		r.n.Add(-1)
	}
	r.mu.Unlock()
	if !ok {
		return pk
	}
	codes := make([]byte, len(p.codes))
	mine := pk.ReasonCodes
	for i, c := range p.codes {
		if c == 0 && len(mine) > 0 {
			c, mine = mine[0], mine[1:]
		}
		codes[i] = c
	}
	pk.ReasonCodes = codes
	if pk.Properties.ReasonString == "" {
		pk.Properties.ReasonString = p.reason
	}
	return pk
}

// OnDisconnect forgets acks of a client whose connection ended before
// they were written.
func (r *Refuser) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if r.n.Load() == 0 {
		return
	}
	r.mu.Lock()
	for k := range r.pending {
		if k.cl == cl {
			delete(r.pending, k)
			r.n.Add(-1)
		}
	}
	r.mu.Unlock()
}
