package brokertest

import (
	"bytes"
	"net"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

// RawClient is a hand-made MQTT client for tests that check packets byte
// by byte: it writes exactly the packets a test gives it (encoded by
// mochi's encoders for its protocol version) and reads packet by packet.
// Every call fails the test on a transport error or after Timeout.
type RawClient struct {
	T       testing.TB
	Conn    net.Conn
	Version byte // 4 (v3.1.1) or 5
}

// RawOptions shape a RawClient's CONNECT; the zero value is a clean,
// session-less connect with a 30 s keep-alive.
type RawOptions struct {
	// KeepSession clears Clean Start (v5) / Clean Session (v3).
	KeepSession bool
	// SessionExpiry is the v5 Session Expiry Interval in seconds.
	SessionExpiry uint32
	// TopicAliasMaximum lets the broker send topic aliases (v5).
	TopicAliasMaximum uint16
	// KeepAlive in seconds; 0 means 30 unless NoKeepAlive.
	KeepAlive uint16
	// NoKeepAlive sends keep-alive 0 (no keep-alive).
	NoKeepAlive bool
	// ReceiveMaximum is the v5 Receive Maximum (0: not sent).
	ReceiveMaximum uint16
}

// DialRawClient connects clientID to addr (host:port) with protocol
// version v and returns the client and the broker's answer (a CONNACK,
// unless the broker closed the connection; then the test fails).
func DialRawClient(t testing.TB, addr string, v byte, clientID string, o RawOptions) (*RawClient, RawPacket) {
	t.Helper()
	c := &RawClient{T: t, Conn: DialRaw(t, addr), Version: v}
	keepAlive := o.KeepAlive
	switch {
	case o.NoKeepAlive:
		keepAlive = 0
	case keepAlive == 0:
		keepAlive = 30
	}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: !o.KeepSession, Keepalive: keepAlive, ClientIdentifier: clientID}}
	if o.SessionExpiry > 0 {
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = o.SessionExpiry, true
	}
	pk.Properties.TopicAliasMaximum = o.TopicAliasMaximum
	pk.Properties.ReceiveMaximum = o.ReceiveMaximum
	c.Write(pk)
	return c, c.Read()
}

// Write encodes pk for the client's protocol version and writes it.
func (c *RawClient) Write(pk packets.Packet) {
	c.T.Helper()
	pk.ProtocolVersion = c.Version
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Puback:
		err = pk.PubackEncode(&buf)
	case packets.Pubrec:
		err = pk.PubrecEncode(&buf)
	case packets.Pubrel:
		err = pk.PubrelEncode(&buf)
	case packets.Pubcomp:
		err = pk.PubcompEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	case packets.Unsubscribe:
		err = pk.UnsubscribeEncode(&buf)
	case packets.Pingreq:
		err = pk.PingreqEncode(&buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(&buf)
	default:
		c.T.Fatalf("raw client: cannot encode packet type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		c.T.Fatalf("raw client: encode packet type %d: %v", pk.FixedHeader.Type, err)
	}
	if _, err := c.Conn.Write(buf.Bytes()); err != nil {
		c.T.Fatalf("raw client: write: %v", err)
	}
}

// Read reads the next packet.
func (c *RawClient) Read() RawPacket {
	c.T.Helper()
	return ReadRaw(c.T, c.Conn)
}

// Expect reads the next packet and fails the test unless it has type typ.
func (c *RawClient) Expect(typ byte) RawPacket {
	c.T.Helper()
	p := c.Read()
	if p.Type != typ {
		c.T.Fatalf("raw client: read packet type %d (body %x), want %d", p.Type, p.Body, typ)
	}
	return p
}

// Subscribe sends a SUBSCRIBE with packet id id for filters at qos and
// returns the SUBACK.
func (c *RawClient) Subscribe(id uint16, qos byte, filters ...string) RawPacket {
	c.T.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: id}
	for _, f := range filters {
		pk.Filters = append(pk.Filters, packets.Subscription{Filter: f, Qos: qos})
	}
	c.Write(pk)
	return c.Expect(packets.Suback)
}

// Publish sends a PUBLISH (id is ignored for QoS 0).
func (c *RawClient) Publish(id uint16, topic string, qos byte, payload string) {
	c.T.Helper()
	if qos == 0 {
		id = 0
	}
	c.Write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, PacketID: id,
		TopicName: topic, Payload: []byte(payload)})
}

// Ping sends a PINGREQ and fails the test unless the next packet is the
// PINGRESP: the broker handles one client's packets in order, so
// everything sent before was processed, and nothing was answered.
func (c *RawClient) Ping() {
	c.T.Helper()
	c.Write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	c.Expect(packets.Pingresp)
}

// DecodeConnack decodes a CONNACK read off the connection (v5: with its
// properties).
func (c *RawClient) DecodeConnack(p RawPacket) packets.Packet {
	c.T.Helper()
	if p.Type != packets.Connack {
		c.T.Fatalf("raw client: packet type %d (body %x), want CONNACK", p.Type, p.Body)
	}
	pk := packets.Packet{ProtocolVersion: c.Version, FixedHeader: packets.FixedHeader{Type: packets.Connack, Remaining: len(p.Body)}}
	if err := pk.ConnackDecode(p.Body); err != nil {
		c.T.Fatalf("raw client: decode CONNACK %x: %v", p.Body, err)
	}
	return pk
}

// DecodePublish decodes a PUBLISH read off the connection.
func (c *RawClient) DecodePublish(p RawPacket) packets.Packet {
	c.T.Helper()
	pk := packets.Packet{ProtocolVersion: c.Version}
	if err := pk.FixedHeader.Decode(p.Type<<4 | p.Flags); err != nil {
		c.T.Fatal(err)
	}
	pk.FixedHeader.Remaining = len(p.Body)
	if err := pk.PublishDecode(p.Body); err != nil {
		c.T.Fatalf("raw client: decode PUBLISH: %v", err)
	}
	return pk
}

// Ack is the reason codes of a SUBACK or UNSUBACK (v5: after the
// properties; v3 SUBACK: the return codes; v3 UNSUBACK: none).
func (c *RawClient) Ack(p RawPacket) []byte {
	c.T.Helper()
	if len(p.Body) < 2 {
		c.T.Fatalf("raw client: ack too short: %x", p.Body)
	}
	b := p.Body[2:]
	if c.Version == 5 {
		n, used := decodeVarint(b)
		if used == 0 || used+n > len(b) {
			c.T.Fatalf("raw client: ack properties malformed: %x", p.Body)
		}
		b = b[used+n:]
	}
	return b
}

func decodeVarint(b []byte) (n, used int) {
	mult := 1
	for i := 0; i < len(b) && i < 4; i++ {
		n += int(b[i]&0x7f) * mult
		if b[i]&0x80 == 0 {
			return n, i + 1
		}
		mult *= 128
	}
	return 0, 0
}
