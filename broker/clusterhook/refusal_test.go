package clusterhook_test

import (
	"errors"
	"slices"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/broker/mochix"
)

// TestRegistrationRefused: a CONNECT whose registration with the cluster
// fails gets CONNACK 0x88 (v3: return code 3) and a closed connection.
func TestRegistrationRefused(t *testing.T) {
	n := startNode(t, &fakeCluster{registerErr: errors.New("leader unreachable")}, nil)
	for _, tc := range []struct {
		v    byte
		want byte
	}{{5, 0x88}, {4, 3}} {
		c, ack := brokertest.DialRawClient(t, n.addr, tc.v, "r", brokertest.RawOptions{})
		if ack.Type != packets.Connack || len(ack.Body) < 2 || ack.Body[1] != tc.want {
			t.Errorf("v%d: answer type %d body %x, want CONNACK 0x%02x", tc.v, ack.Type, ack.Body, tc.want)
		}
		brokertest.WaitClosedByPeer(t, c.Conn, brokertest.Timeout)
	}
}

// TestForwardRefused: a QoS 1/2 publish the cluster could not forward is
// never acknowledged as a success nor delivered: v5 PUBACK/PUBREC 0x83,
// v3 disconnected without an ack. QoS 0 is delivered locally anyway.
func TestForwardRefused(t *testing.T) {
	fake := &fakeCluster{forwardErr: errors.New("peer unreachable")}
	n := startNode(t, fake, nil)
	sub, _ := brokertest.DialRawClient(t, n.addr, 5, "sub", brokertest.RawOptions{})
	sub.Subscribe(1, 2, "f/#")
	for _, tc := range []struct {
		name   string
		v, qos byte
		ack    byte
	}{
		{"v5 qos1", 5, 1, packets.Puback},
		{"v5 qos2", 5, 2, packets.Pubrec},
		{"v3 qos1", 4, 1, 0},
		{"v3 qos2", 4, 2, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pub, _ := brokertest.DialRawClient(t, n.addr, tc.v, "pub", brokertest.RawOptions{})
			pub.Publish(5, "f/x", tc.qos, "refused")
			if tc.ack != 0 {
				if p := pub.Expect(tc.ack); len(p.Body) < 3 || p.Body[2] != 0x83 {
					t.Fatalf("ack %x, want code 0x83", p.Body)
				}
				pub.Ping()
			} else {
				got, _ := brokertest.WaitClosedByPeer(t, pub.Conn, brokertest.Timeout)
				for _, p := range got {
					if p.Type == packets.Puback || p.Type == packets.Pubrec {
						t.Fatalf("v3 publisher got ack type %d", p.Type)
					}
				}
			}
		})
	}
	// QoS 0: forwarded (and failed), delivered here all the same.
	pub, _ := brokertest.DialRawClient(t, n.addr, 5, "pub0", brokertest.RawOptions{})
	pub.Publish(0, "f/x", 0, "qos0")
	if got := sub.DecodePublish(sub.Expect(packets.Publish)); string(got.Payload) != "qos0" {
		t.Fatalf("subscriber got %q first, want the QoS 0 message (refused ones never)", got.Payload)
	}
}

// deliveries is a hook that hands each queued delivery to a channel.
type deliveries struct {
	mqtt.HookBase
	ch chan packets.Packet
}

func (d *deliveries) ID() string           { return "deliveries" }
func (d *deliveries) Provides(b byte) bool { return b == mqtt.OnQosPublish }
func (d *deliveries) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, resends int) {
	if pk.FixedHeader.Type == packets.Publish {
		d.ch <- pk
	}
}

// TestPublishIDInDeliveries: a local publish's id (the one Forward got)
// is in its local deliveries as they are queued, so a handoff knows them
// at once. (Found under load: the id was noted after Forward returned,
// too late for a delivery made while a peer was slow to accept.)
func TestPublishIDInDeliveries(t *testing.T) {
	fake := &fakeCluster{}
	d := &deliveries{ch: make(chan packets.Packet, 4)}
	n := startNode(t, fake, nil, d)
	sub, _ := brokertest.DialRawClient(t, n.addr, 5, "sub", brokertest.RawOptions{})
	sub.Subscribe(1, 1, "i/#")
	pub, _ := brokertest.DialRawClient(t, n.addr, 5, "pub", brokertest.RawOptions{})
	pub.Publish(1, "i/x", 1, "x")
	pk := <-d.ch
	from, id, _, ok := mochix.StampOf(pk)
	fake.mu.Lock()
	forwarded := slices.Clone(fake.forwarded)
	fake.mu.Unlock()
	if !ok || from != "n2" || !slices.Contains(forwarded, id) {
		t.Fatalf("delivery stamped %q/%d (%v), want n2 and the id given to Forward (%v)", from, id, ok, forwarded)
	}
}
