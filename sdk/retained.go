package sdk

import (
	"errors"
	"iter"
	"unicode/utf8"
)

// RetainedMap is the map name under which retained MQTT messages are merged.
const RetainedMap = "$retained"

// ErrMalformedRetained is returned (wrapped) by DecodeRetained for a value
// that is not a retained message as sdk/ABI.md §8 lays it out.
var ErrMalformedRetained = errors.New("sdk: malformed retained message")

// MQTT 5.0 PUBLISH property identifiers (MQTT 5.0 §3.3.2.3).
const (
	PropPayloadFormat          = 0x01
	PropMessageExpiryInterval  = 0x02
	PropContentType            = 0x03
	PropResponseTopic          = 0x08
	PropCorrelationData        = 0x09
	PropSubscriptionIdentifier = 0x0B
	PropTopicAlias             = 0x23
	PropUserProperty           = 0x26
)

// Retained is a retained MQTT message: the Value of an EntryView of map
// "$retained", decoded by DecodeRetained. The value is a complete MQTT 5.0
// PUBLISH packet (sdk/ABI.md §8). Every byte slice aliases the value, so it
// is valid only while the policy function runs. The message's creation time
// and expiry are in the EntryView (CreationTime, ExpirationTime).
type Retained struct {
	// Topic is the topic name; it equals the EntryView's Key.
	Topic []byte
	// QoS is the message's quality of service, 0, 1 or 2.
	QoS byte
	// Retain is the packet's RETAIN flag (set for retained messages).
	Retain bool
	// PacketID is the packet identifier: the broker writes 1 when QoS > 0
	// (identifiers belong to connections, not to stored messages), and
	// none for QoS 0.
	PacketID uint16
	// Payload is the application message.
	Payload []byte
	// PayloadFormat is property 0x01 (0: bytes, 1: UTF-8 text), valid when
	// HasPayloadFormat.
	PayloadFormat    byte
	HasPayloadFormat bool
	// MessageExpiry is property 0x02, the Message Expiry Interval in
	// seconds, valid when HasMessageExpiry. The EntryView's ExpirationTime
	// is CreationTime + 1000 × MessageExpiry (0 when absent).
	MessageExpiry    uint32
	HasMessageExpiry bool
	// ContentType is property 0x03 (UTF-8), nil when absent.
	ContentType []byte
	// ResponseTopic is property 0x08 (UTF-8), nil when absent.
	ResponseTopic []byte
	// CorrelationData is property 0x09 (binary), nil when absent.
	CorrelationData []byte
	// Properties is the whole property section as encoded (without its
	// length prefix): UserProperties and Property walk it.
	Properties []byte
}

// DecodeRetained decodes a "$retained" value. It allocates nothing on
// success, checks every length against the value, never panics, and accepts
// exactly the packets sdk/ABI.md §8 describes: a PUBLISH with QoS 0-2 (DUP
// only with QoS > 0; it is ignored), a
// Remaining Length of at most 4 bytes equal to the bytes that follow, a
// non-empty UTF-8 topic without U+0000, a non-zero packet identifier when
// QoS > 0,
// and a property section holding only PUBLISH properties, each at most
// once except user properties and subscription identifiers, with UTF-8
// strings where MQTT requires them. Anything else is ErrMalformedRetained.
func DecodeRetained(value []byte) (Retained, error) {
	var m Retained
	if len(value) < 2 {
		return m, badRetained("shorter than a fixed header")
	}
	h := value[0]
	if h>>4 != 3 {
		return m, badRetained("not a PUBLISH packet (type %d)", uint64(h>>4))
	}
	m.QoS = (h >> 1) & 3
	if m.QoS == 3 {
		return m, badRetained("QoS 3")
	}
	if m.QoS == 0 && h&0x08 != 0 {
		return m, badRetained("DUP set with QoS 0") // [MQTT-3.3.1-2]
	}
	m.Retain = h&1 != 0
	rem, n, ok := uvarint(value[1:])
	if !ok {
		return m, badRetained("bad Remaining Length")
	}
	b := value[1+n:]
	if uint64(len(b)) != rem {
		return m, badRetained("Remaining Length %d, but %d bytes follow", rem, uint64(len(b)))
	}
	topic, b, ok := mqttString(b)
	if !ok || len(topic) == 0 {
		return m, badRetained("bad topic name")
	}
	m.Topic = topic
	if m.QoS > 0 {
		if len(b) < 2 {
			return m, badRetained("packet identifier missing")
		}
		m.PacketID = uint16(b[0])<<8 | uint16(b[1])
		if m.PacketID == 0 {
			return m, badRetained("packet identifier 0 with QoS %d", uint64(m.QoS)) // [MQTT-2.2.1-3]
		}
		b = b[2:]
	}
	plen, n, ok := uvarint(b)
	if !ok || plen > uint64(len(b)-n) {
		return m, badRetained("bad property length")
	}
	m.Properties = b[n : n+int(plen) : n+int(plen)]
	m.Payload = b[n+int(plen):]
	var seen uint64 // bit per property id seen, for the at-most-once rule
	for p := m.Properties; len(p) > 0; {
		id, val, rest, ok := nextProperty(p)
		if !ok {
			return m, badRetained("bad property at offset %d", uint64(len(m.Properties)-len(p)))
		}
		p = rest
		if id != PropUserProperty && id != PropSubscriptionIdentifier {
			if seen&(1<<id) != 0 {
				return m, badRetained("property %d twice", uint64(id))
			}
			seen |= 1 << id
		}
		switch id {
		case PropPayloadFormat:
			m.PayloadFormat, m.HasPayloadFormat = val[0], true
		case PropMessageExpiryInterval:
			m.MessageExpiry = uint32(val[0])<<24 | uint32(val[1])<<16 | uint32(val[2])<<8 | uint32(val[3])
			m.HasMessageExpiry = true
		case PropContentType:
			m.ContentType = val
		case PropResponseTopic:
			m.ResponseTopic = val
		case PropCorrelationData:
			m.CorrelationData = val
		}
	}
	return m, nil
}

// nextProperty splits the first property off p. val is the property's value
// without its length prefixes: 1 byte (0x01), 4 bytes (0x02), 2 bytes
// (0x23), the string or binary data (0x03, 0x08, 0x09), the variable byte
// integer's bytes (0x0B), or for a user property (0x26) both strings with
// their length prefixes (split them with userProperty). ok is false for an
// identifier PUBLISH does not carry, a value running past p, or a string
// that is not UTF-8 without U+0000.
func nextProperty(p []byte) (id byte, val, rest []byte, ok bool) {
	id, p = p[0], p[1:]
	switch id {
	case PropPayloadFormat:
		return fixed(id, p, 1)
	case PropMessageExpiryInterval:
		return fixed(id, p, 4)
	case PropTopicAlias:
		return fixed(id, p, 2)
	case PropContentType, PropResponseTopic:
		s, rest, ok := mqttString(p)
		return id, s, rest, ok
	case PropCorrelationData:
		s, rest, ok := mqttBinary(p)
		return id, s, rest, ok
	case PropSubscriptionIdentifier:
		_, n, ok := uvarint(p)
		if !ok {
			return id, nil, nil, false
		}
		return id, p[:n:n], p[n:], true
	case PropUserProperty:
		_, r1, ok1 := mqttString(p)
		if !ok1 {
			return id, nil, nil, false
		}
		_, r2, ok2 := mqttString(r1)
		if !ok2 {
			return id, nil, nil, false
		}
		n := len(p) - len(r2)
		return id, p[:n:n], r2, true
	}
	return id, nil, nil, false
}

func fixed(id byte, p []byte, n int) (byte, []byte, []byte, bool) {
	if len(p) < n {
		return id, nil, nil, false
	}
	return id, p[:n:n], p[n:], true
}

// UserProperties yields the message's user properties (0x26) in order, as
// key and value; both alias the value. It allocates nothing when the loop
// body does not keep the iterator.
func (m *Retained) UserProperties() iter.Seq2[[]byte, []byte] {
	props := m.Properties
	return func(yield func(key, value []byte) bool) {
		for p := props; len(p) > 0; {
			id, val, rest, ok := nextProperty(p)
			if !ok {
				return // DecodeRetained checked the section: not reached
			}
			p = rest
			if id == PropUserProperty {
				k, r, _ := mqttString(val)
				v, _, _ := mqttString(r)
				if !yield(k, v) {
					return
				}
			}
		}
	}
}

// UserProperty returns the value of the first user property named key.
func (m *Retained) UserProperty(key string) (value []byte, ok bool) {
	for k, v := range m.UserProperties() {
		if string(k) == key {
			return v, true
		}
	}
	return nil, false
}

// AppendTo appends m encoded as a "$retained" value, the layout of
// sdk/ABI.md §8: fixed header (PUBLISH, m.QoS, m.Retain), Remaining Length,
// m.Topic, packet identifier 1 when m.QoS > 0 (m.PacketID if non-zero),
// m.Properties as they are, m.Payload. The typed property fields
// (ContentType, MessageExpiry, …) are views of m.Properties and are not
// consulted: to change them, change m.Properties. Use it to store a
// message a policy built, e.g. the existing message with a merged payload:
//
//	m, err := sdk.DecodeRetained(existing.Value)
//	…
//	m.Payload = merged
//	out := *existing
//	out.Value = m.AppendTo(nil)
//	out.Cost = int64(len(out.Value))
//	return sdk.Put(&out)
//
// Decoding what AppendTo wrote gives back m's fields; a value DecodeRetained
// accepted re-encodes to the same bytes when its length prefixes use the
// fewest bytes (the broker's always do).
func (m *Retained) AppendTo(dst []byte) []byte {
	qos := m.QoS & 3
	if qos == 3 {
		qos = 2
	}
	rem := 2 + len(m.Topic) + varintLen(uint64(len(m.Properties))) + len(m.Properties) + len(m.Payload)
	if qos > 0 {
		rem += 2
	}
	h := byte(0x30) | qos<<1
	if m.Retain {
		h |= 1
	}
	dst = append(dst, h)
	dst = appendVarint(dst, uint64(rem))
	dst = append(dst, byte(len(m.Topic)>>8), byte(len(m.Topic)))
	dst = append(dst, m.Topic...)
	if qos > 0 {
		id := m.PacketID
		if id == 0 {
			id = 1
		}
		dst = append(dst, byte(id>>8), byte(id))
	}
	dst = appendVarint(dst, uint64(len(m.Properties)))
	dst = append(dst, m.Properties...)
	return append(dst, m.Payload...)
}

// uvarint reads an MQTT Variable Byte Integer (MQTT 5.0 §1.5.5): at most 4
// bytes, 7 bits each, least significant first. n is the bytes read.
func uvarint(b []byte) (v uint64, n int, ok bool) {
	for i := 0; i < 4 && i < len(b); i++ {
		v |= uint64(b[i]&0x7f) << (7 * i)
		if b[i]&0x80 == 0 {
			return v, i + 1, true
		}
	}
	return 0, 0, false
}

func varintLen(v uint64) int {
	n := 1
	for ; v >= 0x80; v >>= 7 {
		n++
	}
	return n
}

func appendVarint(dst []byte, v uint64) []byte {
	for {
		d := byte(v & 0x7f)
		v >>= 7
		if v > 0 {
			d |= 0x80
		}
		dst = append(dst, d)
		if v == 0 {
			return dst
		}
	}
}

// mqttBinary reads Binary Data: a big-endian uint16 length, then the bytes.
func mqttBinary(b []byte) (s, rest []byte, ok bool) {
	if len(b) < 2 {
		return nil, nil, false
	}
	n := int(b[0])<<8 | int(b[1])
	if len(b)-2 < n {
		return nil, nil, false
	}
	return b[2 : 2+n : 2+n], b[2+n:], true
}

// mqttString reads a UTF-8 Encoded String: Binary Data that is valid UTF-8
// without U+0000 ([MQTT-1.5.4-1], [MQTT-1.5.4-2]), as the broker's decoder
// requires.
func mqttString(b []byte) (s, rest []byte, ok bool) {
	s, rest, ok = mqttBinary(b)
	if !ok || !utf8.Valid(s) {
		return nil, nil, false
	}
	for _, c := range s {
		if c == 0 {
			return nil, nil, false
		}
	}
	return s, rest, true
}

// badRetained builds an ErrMalformedRetained-wrapping error without fmt
// (see malformed).
func badRetained(format string, args ...uint64) error {
	return &retainedError{msg: expand(format, args)}
}

type retainedError struct{ msg string }

func (e *retainedError) Error() string { return "sdk: malformed retained message: " + e.msg }
func (e *retainedError) Unwrap() error { return ErrMalformedRetained }
