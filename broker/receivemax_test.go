package broker_test

import (
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/brokertest"
)

// TestServerReceiveMaximum: with mqtt.receive_maximum 2 the CONNACK
// announces Receive Maximum 2, and a v5 client that starts a QoS 1/2
// PUBLISH while two of its QoS 2 PUBLISHes are not completed (no PUBREL
// yet) gets DISCONNECT 0x93 [MQTT-3.3.4-8]; QoS 0, a retransmission of a
// flow in progress, a PUBLISH after a PUBREL freed a slot, and PUBRECs for
// the server's own QoS 2 deliveries do not count. mochi v2.7.9 disconnected
// the client in the QoS 0, retransmission and PUBREC cases (pinned in
// broker/mochix TestReceiveQuotaCountsWrong; broker/quirks.ReceiveQuota
// counts instead).
func TestServerReceiveMaximum(t *testing.T) {
	t.Parallel()
	cfg := brokertest.Config()
	cfg.MQTT.ReceiveMaximum = 2
	n := brokertest.Start(t, cfg)
	addr := n.ListenerAddr(0)
	// open starts two QoS 2 flows, answered with PUBREC.
	open := func(c *brokertest.RawClient) {
		for id := uint16(1); id <= 2; id++ {
			c.Publish(id, "srm/a", 2, "x")
			c.Expect(packets.Pubrec)
		}
	}
	for _, tc := range []struct {
		name       string
		run        func(c *brokertest.RawClient)
		disconnect bool // DISCONNECT 0x93 expected; else the connection carries on
	}{
		{"third QoS 2", func(c *brokertest.RawClient) { open(c); c.Publish(3, "srm/a", 2, "x") }, true},
		{"QoS 1 at the maximum", func(c *brokertest.RawClient) { open(c); c.Publish(3, "srm/a", 1, "x") }, true},
		{"QoS 0 at the maximum", func(c *brokertest.RawClient) { open(c); c.Publish(0, "srm/a", 0, "x") }, false},
		{"retransmission at the maximum", func(c *brokertest.RawClient) {
			open(c)
			c.Write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2, Dup: true}, PacketID: 2,
				TopicName: "srm/a", Payload: []byte("x")})
			c.Expect(packets.Pubrec)
		}, false},
		{"after a PUBREL", func(c *brokertest.RawClient) {
			open(c)
			c.Write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: 1})
			c.Expect(packets.Pubcomp)
			c.Publish(3, "srm/a", 2, "x")
			c.Expect(packets.Pubrec)
		}, false},
		{"subscriber completing QoS 2 deliveries", func(c *brokertest.RawClient) {
			c.Subscribe(9, 2, "srm/in")
			p := brokertest.MustV5(t, n.URL(0), "srm-pub")
			for range 3 {
				p.MustPub("srm/in", 2, false, "in")
				pk := c.DecodePublish(c.Expect(packets.Publish))
				c.Write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: pk.PacketID})
				c.Expect(packets.Pubrel) // its PUBCOMP withheld: the flow stays open
			}
			c.Publish(1, "srm/a", 1, "x")
			c.Expect(packets.Puback)
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, p := brokertest.DialRawClient(t, addr, 5, "srm", brokertest.RawOptions{})
			if got := c.DecodeConnack(p).Properties.ReceiveMaximum; got != 2 {
				t.Fatalf("CONNACK Receive Maximum %d, want 2", got)
			}
			tc.run(c)
			if !tc.disconnect {
				c.Ping()
				return
			}
			d := c.Expect(packets.Disconnect)
			if len(d.Body) == 0 || d.Body[0] != packets.ErrReceiveMaximum.Code {
				t.Fatalf("DISCONNECT %x, want reason 0x93", d.Body)
			}
			brokertest.WaitClosedByPeer(t, c.Conn, brokertest.Timeout)
		})
	}
}
