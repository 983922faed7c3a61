package broker_test

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/broker/config"
)

// TestServerKeepAlive: with mqtt.server_keep_alive set, a v5 client's
// CONNACK carries Server Keep Alive (its own keep-alive if shorter, the
// server's otherwise or when it asked for none) and a client that stays
// silent is disconnected after 1.5 times that; v3 clients keep theirs.
// mochi v2.7.9 has no such setting (a hook must impose it in OnConnect:
// pinned in broker/mochix TestServerKeepaliveFromOnConnect).
func TestServerKeepAlive(t *testing.T) {
	t.Parallel()
	const server = 2 // seconds
	cfg := brokertest.Config()
	cfg.MQTT.ServerKeepAlive = server * time.Second
	n := brokertest.Start(t, cfg)
	addr := n.ListenerAddr(0)

	t.Run("paho", func(t *testing.T) {
		t.Parallel()
		c := brokertest.MustV5(t, n.URL(0), "ska-paho", brokertest.V5Options{KeepAlive: 600})
		if p := c.Connack.Properties; p == nil || p.ServerKeepAlive == nil || *p.ServerKeepAlive != server {
			t.Errorf("CONNACK properties %+v, want Server Keep Alive %d", p, server)
		}
	})
	for _, tc := range []struct {
		name    string
		version byte
		opts    brokertest.RawOptions
		want    uint16 // Server Keep Alive in CONNACK; 0: absent, and the connection stays open
	}{
		{"v5 without keep-alive", 5, brokertest.RawOptions{NoKeepAlive: true}, server},
		{"v5 longer keep-alive", 5, brokertest.RawOptions{KeepAlive: 60}, server},
		{"v5 shorter keep-alive", 5, brokertest.RawOptions{KeepAlive: 1}, 1},
		{"v3 without keep-alive", 4, brokertest.RawOptions{NoKeepAlive: true}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, p := brokertest.DialRawClient(t, addr, tc.version, "ska-"+strings.ReplaceAll(tc.name, " ", "-"), tc.opts)
			start := time.Now()
			ca := c.DecodeConnack(p)
			if ca.ReasonCode != 0 {
				t.Fatalf("CONNACK reason 0x%02x", ca.ReasonCode)
			}
			if got := ca.Properties.ServerKeepAlive; ca.Properties.ServerKeepAliveFlag != (tc.want != 0) || got != tc.want {
				t.Fatalf("CONNACK Server Keep Alive %d (present %v), want %d (present %v)",
					got, ca.Properties.ServerKeepAliveFlag, tc.want, tc.want != 0)
			}
			// Silent from here: closed after 1.5 x the keep-alive
			// [MQTT-3.1.2-22], or never (waited for 1.5 x the server's
			// plus a second).
			// mochi rounds 1.5 x down to whole seconds (1 s for 1 s).
			limit := time.Duration(tc.want+tc.want/2) * time.Second
			if tc.want == 0 {
				_, err := brokertest.ReadPacket(c.Conn, start.Add(server*1500*time.Millisecond+time.Second))
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("connection with its own keep-alive 0 ended: %v", err)
				}
				return
			}
			got, took := brokertest.WaitClosedByPeer(t, c.Conn, limit+brokertest.Timeout)
			if len(got) != 0 {
				t.Errorf("broker sent %v before closing", got)
			}
			if took < limit-250*time.Millisecond {
				t.Errorf("closed after %v, before %v (keep-alive %d s)", took, limit, tc.want)
			}
		})
	}
}

// TestServerKeepAliveOff: by default CONNACK carries no Server Keep Alive.
func TestServerKeepAliveOff(t *testing.T) {
	t.Parallel()
	n := brokertest.Start(t, brokertest.Config())
	c := brokertest.MustV5(t, n.URL(0), "ska-off")
	if p := c.Connack.Properties; p != nil && p.ServerKeepAlive != nil {
		t.Errorf("CONNACK Server Keep Alive %d with mqtt.server_keep_alive off", *p.ServerKeepAlive)
	}
}

// TestOversizedPacketOrder: a v5 client that sends a valid QoS 1 PUBLISH
// and an oversized one in one write gets the PUBACK of the first, then
// DISCONNECT 0x95, then the close; the same right after CONNECT (the
// oversized packet arrives with the CONNECT, before the session is
// established). mochi v2.7.9 reads ahead: the DISCONNECT must wait until
// it has handled what came before.
func TestOversizedPacketOrder(t *testing.T) {
	t.Parallel()
	cfg := brokertest.Config()
	cfg.MQTT.MaxPacketSize = 512
	cfg.MQTT.Listeners = append(cfg.MQTT.Listeners, config.ListenerConfig{Type: "ws", Address: brokertest.FreeAddr(t)})
	n := brokertest.Start(t, cfg)

	big := func(version byte) []byte {
		return encode(t, packets.Packet{ProtocolVersion: version, FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
			PacketID: 9, TopicName: "big", Payload: make([]byte, 600)})
	}
	small := func(version byte) []byte {
		return encode(t, packets.Packet{ProtocolVersion: version, FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
			PacketID: 8, TopicName: "small", Payload: []byte("x")})
	}
	type step struct {
		typ  byte
		code byte // DISCONNECT reason
	}
	t.Run("cases", func(t *testing.T) {
		for _, tc := range []struct {
			name     string
			listener int // 0 tcp, 1 ws
			version  byte
			connect  bool // send CONNECT in the same write
			want     []step
		}{
			{"v5 after a publish", 0, 5, false, []step{{typ: packets.Puback}, {typ: packets.Disconnect, code: 0x95}}},
			{"v5 with the connect", 0, 5, true, []step{{typ: packets.Connack}, {typ: packets.Puback}, {typ: packets.Disconnect, code: 0x95}}},
			{"v3 after a publish", 0, 4, false, []step{{typ: packets.Puback}}},
			{"v3 with the connect", 0, 4, true, []step{{typ: packets.Connack}, {typ: packets.Puback}}},
			{"v5 over websocket", 1, 5, false, []step{{typ: packets.Puback}, {typ: packets.Disconnect, code: 0x95}}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				id := "big-" + strings.ReplaceAll(tc.name, " ", "-")
				c, err := brokertest.Dial(t.Context(), n.URL(tc.listener), nil)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = c.Close() })
				var b []byte
				if tc.connect {
					b = append(b, brokertest.RawConnect(tc.version, id)...)
				} else {
					if _, err := c.Write(brokertest.RawConnect(tc.version, id)); err != nil {
						t.Fatal(err)
					}
					if p := brokertest.ReadRaw(t, c); p.Type != packets.Connack {
						t.Fatalf("CONNECT answered with type %d", p.Type)
					}
				}
				b = append(b, small(tc.version)...)
				b = append(b, big(tc.version)...)
				if _, err := c.Write(b); err != nil {
					t.Fatal(err)
				}
				got, _ := brokertest.WaitClosedByPeer(t, c, brokertest.Timeout)
				ok := len(got) == len(tc.want)
				for i := 0; ok && i < len(got); i++ {
					ok = got[i].Type == tc.want[i].typ
					if ok && tc.want[i].typ == packets.Disconnect {
						ok = len(got[i].Body) > 0 && got[i].Body[0] == tc.want[i].code
					}
				}
				if !ok {
					t.Errorf("broker sent %v before the close, want %v", got, tc.want)
				}
			})
		}
	})
	n.WaitMetric(5, "mendmq_messages_dropped_total", "reason", "packet_too_large")
}
