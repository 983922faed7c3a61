package brokertest

import (
	"bytes"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// fakeBroker accepts one MQTT v5 connection, answers its CONNECT, and
// then does what script says to it.
func fakeBroker(t *testing.T, script func(c net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if p, err := ReadPacket(c, time.Now().Add(Timeout)); err != nil || p.Type != packets.Connect {
			t.Errorf("fake broker: first packet %d, %v", p.Type, err)
			return
		}
		if _, err := c.Write([]byte{packets.Connack << 4, 3, 0, 0, 0}); err != nil {
			t.Errorf("fake broker: CONNACK: %v", err)
			return
		}
		script(c)
	}()
	return "tcp://" + l.Addr().String()
}

func encodePublish(t *testing.T, id uint16, payload string, dup bool) []byte {
	t.Helper()
	pk := packets.Packet{ProtocolVersion: 5, FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2, Dup: dup},
		TopicName: "t", PacketID: id, Payload: []byte(payload)}
	var buf bytes.Buffer
	if err := pk.PublishEncode(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// acksUntilClosed reads what the client sends until the connection ends
// or the deadline passes, and returns the packet ids of its PUBRECs.
func acksUntilClosed(c net.Conn, deadline time.Time) map[uint16]bool {
	acked := map[uint16]bool{}
	for {
		p, err := ReadPacket(c, deadline)
		if err != nil {
			return acked
		}
		if p.Type == packets.Pubrec && len(p.Body) >= 2 {
			acked[uint16(p.Body[0])<<8|uint16(p.Body[1])] = true
		}
	}
}

// TestV5AcknowledgesOnlyDelivered rules out a client-side explanation of
// a message lost in a live session takeover (1 run in 23, last stage): the
// V5 client (paho.golang) acknowledges a QoS 2 PUBLISH (PUBREC) only after
// handing it to the test, whether the broker then takes the session over
// (DISCONNECT 0x8E) or just drops the connection, at any point of a burst.
// So a message the broker saw acknowledged by a taken-over V5 client is
// in that client's Msgs. The one PUBREC without a delivery is for a PUBLISH
// with DUP set that reuses the id of one PUBREC'd and not yet released
// (MQTT-4.3.3: the same message again), which a broker sends only when it
// resends a session's queue at connect.
func TestV5AcknowledgesOnlyDelivered(t *testing.T) {
	for _, burst := range []int{1, 2, 5, 20, 100} {
		for _, cut := range []string{"disconnect 0x8E", "close"} {
			t.Run(fmt.Sprintf("%d then %s", burst, cut), func(t *testing.T) {
				acks := make(chan map[uint16]bool, 1)
				url := fakeBroker(t, func(c net.Conn) {
					var b []byte
					for i := 1; i <= burst; i++ {
						b = append(b, encodePublish(t, uint16(i), fmt.Sprint(i), false)...)
					}
					if cut == "disconnect 0x8E" {
						b = append(b, packets.Disconnect<<4, 1, 0x8E)
					}
					_, _ = c.Write(b)
					if cut == "close" {
						_ = c.(*net.TCPConn).CloseWrite()
					}
					acks <- acksUntilClosed(c, time.Now().Add(Timeout))
				})
				v5 := MustV5(t, url, "live", V5Options{KeepSession: true, SessionExpiry: 300})
				v5.WaitClosed()
				got := map[string]bool{}
				for len(v5.Msgs()) > 0 {
					got[string((<-v5.Msgs()).Payload)] = true
				}
				acked := <-acks
				for id := range acked {
					if !got[fmt.Sprint(id)] {
						t.Errorf("PUBREC for message %d, which the client never delivered (got %d)", id, len(got))
					}
				}
				t.Logf("%d delivered, %d acknowledged", len(got), len(acked))
			})
		}
	}
}

// TestV5AcknowledgesDuplicateWithoutDelivery pins the exception above.
func TestV5AcknowledgesDuplicateWithoutDelivery(t *testing.T) {
	done := make(chan map[uint16]bool, 1)
	url := fakeBroker(t, func(c net.Conn) {
		_, _ = c.Write(encodePublish(t, 1, "first", false))
		for { // (paho may ping first)
			p, err := ReadPacket(c, time.Now().Add(Timeout))
			if err != nil {
				t.Errorf("no PUBREC for the first message: %v", err)
				return
			}
			if p.Type == packets.Pubrec {
				break
			}
		}
		_, _ = c.Write(encodePublish(t, 1, "second, same id, DUP", true))
		_, _ = c.Write([]byte{packets.Disconnect << 4, 1, 0x8E})
		done <- acksUntilClosed(c, time.Now().Add(Timeout))
	})
	v5 := MustV5(t, url, "dup", V5Options{KeepSession: true, SessionExpiry: 300})
	v5.WaitClosed()
	if !(<-done)[1] {
		t.Fatal("no PUBREC for the DUP publish")
	}
	var got []string
	for len(v5.Msgs()) > 0 {
		got = append(got, string((<-v5.Msgs()).Payload))
	}
	if len(got) != 1 || got[0] != "first" {
		t.Fatalf("delivered %q; paho.golang used to acknowledge the DUP without delivering it", got)
	}
}
