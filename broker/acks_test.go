package broker_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/broker/config"
)

// ackCodes are the reason codes MQTT 5 allows per ack type (§3.4.2.1,
// §3.5.2.1, §3.6.2.1, §3.7.2.1), written out here rather than taken from
// the code under test.
var ackCodes = map[byte][]byte{
	packets.Puback:  {0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99},
	packets.Pubrec:  {0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99},
	packets.Pubrel:  {0x00, 0x92},
	packets.Pubcomp: {0x00, 0x92},
}

// echoProps are properties a client puts on its packets that the broker
// must not send back on the ack.
var echoProps = packets.Properties{
	ContentType: "text/plain", CorrelationData: []byte("corr"), ResponseTopic: "reply/here",
	User: []packets.UserProperty{{Key: "k", Val: "v"}, {Key: "trace", Val: "abc"}},
}

// strictAck decodes a v5 ack off the wire and fails the test unless it
// has type typ, packet id id, reason code want (itself valid for typ) and
// no property but a reason string on a failure.
func strictAck(t *testing.T, c *brokertest.RawClient, typ byte, id uint16, want byte) {
	t.Helper()
	raw := c.Expect(typ)
	pk := packets.Packet{ProtocolVersion: 5, FixedHeader: packets.FixedHeader{Type: typ, Remaining: len(raw.Body)}}
	var err error
	switch typ {
	case packets.Puback:
		err = pk.PubackDecode(raw.Body)
	case packets.Pubrec:
		err = pk.PubrecDecode(raw.Body)
	case packets.Pubrel:
		err = pk.PubrelDecode(raw.Body)
	case packets.Pubcomp:
		err = pk.PubcompDecode(raw.Body)
	}
	if err != nil {
		t.Fatalf("ack type %d %x: %v", typ, raw.Body, err)
	}
	valid := false
	for _, c := range ackCodes[typ] {
		valid = valid || c == pk.ReasonCode
	}
	if !valid {
		t.Errorf("ack type %d: reason code 0x%02x is not valid for the type (%x)", typ, pk.ReasonCode, raw.Body)
	}
	if pk.PacketID != id || pk.ReasonCode != want {
		t.Errorf("ack type %d: packet id %d reason 0x%02x, want id %d reason 0x%02x", typ, pk.PacketID, pk.ReasonCode, id, want)
	}
	props := pk.Properties
	if pk.ReasonCode >= 0x80 && props.ReasonString == "" {
		t.Errorf("ack type %d: failure 0x%02x without a reason string", typ, pk.ReasonCode)
	}
	props.ReasonString = ""
	if !reflect.DeepEqual(props, packets.Properties{}) {
		t.Errorf("ack type %d carries properties the server did not mean to send: %+v", typ, props)
	}
}

// TestAcksStrict: every PUBACK, PUBREC, PUBREL and PUBCOMP decodes with a
// valid reason code for its type and without the properties of the packet
// it answers. Without broker/quirks.Acks, mochi v2.7.9 answers a QoS 1
// PUBLISH carrying properties with PUBACK 0x01 and echoes the properties
// on every one of them (pinned in broker/mochix: TestAckEchoesProperties).
func TestAcksStrict(t *testing.T) {
	t.Parallel()
	cfg := brokertest.Config()
	cfg.Auth.ACL = []config.ACLRule{{Filter: "ok/#", Access: "readwrite"}} // anything else: not authorized
	n := brokertest.Start(t, cfg)
	addr := n.ListenerAddr(0)

	pub := func(id uint16, topic string, qos byte) packets.Packet {
		return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, PacketID: id,
			TopicName: topic, Payload: []byte("x"), Properties: echoProps}
	}
	ack := func(typ byte, id uint16) packets.Packet {
		fh := packets.FixedHeader{Type: typ}
		if typ == packets.Pubrel {
			fh.Qos = 1
		}
		return packets.Packet{FixedHeader: fh, PacketID: id, Properties: packets.Properties{ReasonString: "client's", User: echoProps.User}}
	}
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, c *brokertest.RawClient)
	}{
		{"puback success, subscribed", func(t *testing.T, c *brokertest.RawClient) {
			c.Subscribe(1, 0, "ok/sub")
			c.Write(pub(2, "ok/sub", 1))
			strictAck(t, c, packets.Puback, 2, 0x00)
		}},
		{"puback success, no subscriber", func(t *testing.T, c *brokertest.RawClient) {
			c.Write(pub(3, "ok/nobody", 1))
			strictAck(t, c, packets.Puback, 3, 0x00)
		}},
		{"puback not authorized", func(t *testing.T, c *brokertest.RawClient) {
			c.Write(pub(4, "denied", 1))
			strictAck(t, c, packets.Puback, 4, 0x87)
		}},
		{"pubrec and pubcomp", func(t *testing.T, c *brokertest.RawClient) {
			c.Write(pub(5, "ok/q2", 2))
			strictAck(t, c, packets.Pubrec, 5, 0x00)
			c.Write(ack(packets.Pubrel, 5))
			strictAck(t, c, packets.Pubcomp, 5, 0x00)
		}},
		{"pubrec not authorized", func(t *testing.T, c *brokertest.RawClient) {
			c.Write(pub(6, "denied", 2))
			strictAck(t, c, packets.Pubrec, 6, 0x87)
		}},
		{"pubcomp unknown id", func(t *testing.T, c *brokertest.RawClient) {
			c.Write(ack(packets.Pubrel, 77))
			strictAck(t, c, packets.Pubcomp, 77, 0x92)
		}},
		{"pubrel unknown id", func(t *testing.T, c *brokertest.RawClient) {
			c.Write(ack(packets.Pubrec, 78))
			strictAck(t, c, packets.Pubrel, 78, 0x92)
		}},
		{"pubrel of a delivery", func(t *testing.T, c *brokertest.RawClient) {
			c.Subscribe(1, 2, "ok/deliver")
			other, _ := brokertest.DialRawClient(t, addr, 5, "acks-other", brokertest.RawOptions{})
			other.Publish(1, "ok/deliver", 2, "to you")
			other.Expect(packets.Pubrec)
			d := c.DecodePublish(c.Expect(packets.Publish))
			c.Write(ack(packets.Pubrec, d.PacketID))
			strictAck(t, c, packets.Pubrel, d.PacketID, 0x00)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, connack := brokertest.DialRawClient(t, addr, 5, "acks-"+strings.ReplaceAll(tc.name, " ", "-"), brokertest.RawOptions{})
			if connack.Type != packets.Connack || len(connack.Body) < 2 || connack.Body[1] != 0 {
				t.Fatalf("CONNECT answered with type %d %x", connack.Type, connack.Body)
			}
			tc.run(t, c)
		})
	}

	// The same through a real client library: the response paho hands
	// the application has a success code and no echoed properties.
	c := brokertest.MustV5(t, n.URL(0), "acks-paho")
	for _, qos := range []byte{1, 2} {
		resp, err := c.Publish(t.Context(), &paho.Publish{Topic: "ok/paho", QoS: qos, Payload: []byte("x"),
			Properties: &paho.PublishProperties{ContentType: "text/plain", User: paho.UserProperties{{Key: "k", Value: "v"}}}})
		if err != nil {
			t.Fatalf("QoS %d publish: %v", qos, err)
		}
		if resp.ReasonCode != 0 {
			t.Errorf("QoS %d publish: response reason 0x%02x, want 0x00", qos, resp.ReasonCode)
		}
		if resp.Properties != nil && len(resp.Properties.User) > 0 {
			t.Errorf("QoS %d publish: response carries the publisher's user properties %v", qos, resp.Properties.User)
		}
	}
}
