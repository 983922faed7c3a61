package clusterhook

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"unicode/utf8"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Publishes cross the data plane, and retained messages sit in the
// replicated table, as MQTT v5 PUBLISH packets: mochi already encodes and
// validates them, v5 carries every property a v3 packet could, and the
// receiving node re-encodes per subscriber's protocol version as it would
// for a local publish.

// errNotPublish is returned for bytes that are not a PUBLISH packet.
var errNotPublish = errors.New("clusterhook: not a PUBLISH packet")

// EncodePublish encodes pk (its topic, payload, QoS, retain flag and v5
// properties) as a v5 PUBLISH packet, fixed header included.
func EncodePublish(pk packets.Packet) ([]byte, error) {
	pk.ProtocolVersion = 5
	// mochi writes Response Topic and Correlation Data only with
	// AllowResponseInfo (a per-client CONNACK rule [MQTT-3.1.2-28] that
	// does not apply between nodes); without it they were lost across
	// nodes. The receiving node re-encodes per subscriber.
	pk.Mods = packets.Mods{AllowResponseInfo: true}
	pk.FixedHeader.Type = packets.Publish
	pk.FixedHeader.Dup = false
	pk.Properties.TopicAlias = 0 // aliases are per connection [MQTT-3.3.2-10]
	pk.Properties.TopicAliasFlag = false
	if pk.FixedHeader.Qos > 0 {
		pk.PacketID = 1 // ids are per connection; PUBLISH needs one to encode
	}
	if reflect.ValueOf(&pk.Properties).Elem().IsZero() {
		return encodeBarePublish(&pk), nil
	}
	var buf bytes.Buffer
	if err := pk.PublishEncode(&buf); err != nil {
		return nil, fmt.Errorf("encode publish %q: %w", pk.TopicName, err)
	}
	return buf.Bytes(), nil
}

// encodeBarePublish is what PublishEncode writes for a v5 PUBLISH without
// properties (every v3 client's): mochi's property encoder alone was 3/4
// of EncodePublish's CPU, about a tenth of a forwarding node's.
// TestEncodeBarePublishMatchesMochi keeps the two byte-identical.
func encodeBarePublish(pk *packets.Packet) []byte {
	rem := 2 + len(pk.TopicName) + 1 + len(pk.Payload)
	if pk.FixedHeader.Qos > 0 {
		rem += 2
	}
	b := make([]byte, 0, 5+rem)
	h := byte(packets.Publish<<4) | pk.FixedHeader.Qos<<1
	if pk.FixedHeader.Retain {
		h |= 1
	}
	b = append(b, h)
	for {
		d := byte(rem % 128)
		rem /= 128
		if rem > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if rem == 0 {
			break
		}
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(pk.TopicName)))
	b = append(b, pk.TopicName...)
	if pk.FixedHeader.Qos > 0 {
		b = binary.BigEndian.AppendUint16(b, pk.PacketID)
	}
	b = append(b, 0) // property length
	return append(b, pk.Payload...)
}

// DecodePublish decodes bytes made by EncodePublish. It never panics on
// hostile input (fuzzed).
func DecodePublish(b []byte) (pk packets.Packet, err error) {
	if pk, ok := decodeBarePublish(b); ok {
		return pk, nil
	}
	return decodePublishGeneral(b)
}

// decodePublishGeneral is DecodePublish through mochi's decoder.
func decodePublishGeneral(b []byte) (pk packets.Packet, err error) {
	if len(b) < 2 {
		return pk, fmt.Errorf("decode publish: %d bytes: %w", len(b), packets.ErrMalformedPacket)
	}
	var fh packets.FixedHeader
	if err := fh.Decode(b[0]); err != nil {
		return pk, fmt.Errorf("decode publish header: %w", err)
	}
	if fh.Type != packets.Publish {
		return pk, errNotPublish
	}
	r := bytes.NewReader(b[1:])
	n, bu, err := packets.DecodeLength(r)
	if err != nil {
		return pk, fmt.Errorf("decode publish length: %w", err)
	}
	rest := b[1+bu:]
	if n != len(rest) {
		return pk, fmt.Errorf("decode publish: length %d, have %d bytes: %w", n, len(rest), packets.ErrMalformedPacket)
	}
	fh.Remaining = n
	pk = packets.Packet{FixedHeader: fh, ProtocolVersion: 5}
	defer func() {
		// mochi's decoders index slices on lengths they read; guard the
		// node against a peer (or a bug) sending a malformed packet.
		if r := recover(); r != nil {
			err = fmt.Errorf("decode publish: %v: %w", r, packets.ErrMalformedPacket)
		}
	}()
	if err := pk.PublishDecode(rest); err != nil {
		return packets.Packet{}, fmt.Errorf("decode publish: %w", err)
	}
	if pk.TopicName == "" {
		return packets.Packet{}, fmt.Errorf("decode publish: empty topic: %w", packets.ErrMalformedTopic)
	}
	return pk, nil
}

// decodeBarePublish decodes what encodeBarePublish writes (a v5 PUBLISH
// without properties: every v3 client's) without mochi's general decoder
// and its allocations, about a tenth of a receiving node's CPU per
// forwarded message. ok is false for anything else, which DecodePublish
// then decodes the general way; when ok, the packet is exactly what the
// general way returns (FuzzDecodeBarePublishMatchesMochi).
func decodeBarePublish(b []byte) (pk packets.Packet, ok bool) {
	if len(b) < 2 || b[0]>>4 != packets.Publish || b[0]&0x08 != 0 { // EncodePublish clears dup
		return pk, false
	}
	qos := (b[0] >> 1) & 3
	if qos == 3 {
		return pk, false
	}
	n, bu := binary.Uvarint(b[1:])
	// Only the shortest length encoding of at most 4 bytes, as MQTT
	// requires; mochi judges anything else.
	if bu <= 0 || bu > 4 || bu != uvarintLen(n) || n != uint64(len(b)-1-bu) {
		return pk, false
	}
	rest := b[1+bu:]
	if len(rest) < 2 {
		return pk, false
	}
	tl := int(binary.BigEndian.Uint16(rest))
	off := 2 + tl
	if tl == 0 || off > len(rest) {
		return pk, false
	}
	topic := rest[2:off]
	if !utf8.Valid(topic) || bytes.IndexByte(topic, 0) >= 0 {
		return pk, false
	}
	var id uint16
	if qos > 0 {
		if off+2 > len(rest) {
			return pk, false
		}
		id = binary.BigEndian.Uint16(rest[off:])
		off += 2
	}
	if off >= len(rest) || rest[off] != 0 { // property length 0
		return pk, false
	}
	off++
	return packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: qos, Retain: b[0]&1 != 0, Remaining: int(n)},
		ProtocolVersion: 5,
		TopicName:       string(topic),
		PacketID:        id,
		Payload:         rest[off:],
	}, true
}

// uvarintLen is the length of the shortest uvarint encoding of v.
func uvarintLen(v uint64) int {
	n := 1
	for ; v >= 0x80; v >>= 7 {
		n++
	}
	return n
}

// session is the portable state of a persistent MQTT session, moved
// between nodes on takeover (DESIGN §2: subscriptions and queued QoS1/2
// messages). Takeovers are rare, so JSON keeps it debuggable.
type session struct {
	ProtocolVersion byte                   `json:"v"`
	Clean           bool                   `json:"clean"`
	Expiry          uint32                 `json:"expiry"`
	ExpiryFlag      bool                   `json:"expiry_flag"`
	Username        []byte                 `json:"user,omitempty"`
	Subs            []packets.Subscription `json:"subs,omitempty"`
	Inflight        []inflightMsg          `json:"inflight,omitempty"`
	// Heal marks the queue of a duplicate session that lost at a
	// netsplit's heal (heal.go), shipped to the session that won: the
	// receiver keeps what that session's subscriptions match and it did
	// not get already.
	Heal bool `json:"heal,omitempty"`
}

// inflightMsg is one inflight entry: an outbound PUBLISH awaiting its ack,
// or the PUBREC/PUBREL state of a QoS2 exchange.
type inflightMsg struct {
	Type     byte   `json:"t"`
	PacketID uint16 `json:"id"`
	Created  int64  `json:"c"`
	Expiry   int64  `json:"e"`
	Publish  []byte `json:"p,omitempty"`
	// From and ID identify a message a session's old node caught during
	// a handoff (see handoff.go), to drop what the new node already has.
	From string `json:"f,omitempty"`
	ID   uint64 `json:"i,omitempty"`
}

func encodeSession(s session) ([]byte, error) { return json.Marshal(s) }

func decodeSession(b []byte) (session, error) {
	var s session
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("decode session: %w", err)
	}
	return s, nil
}
