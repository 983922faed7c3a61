package clustertests

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/brokertest"
)

// rawSession is a hand-made MQTT 5 subscriber that records every PUBLISH
// it reads before acknowledging it, so what it got is exact even when the
// broker cuts the connection mid-exchange (a client library may have
// acknowledged a message it never handed to the application).
type rawSession struct {
	nc   net.Conn
	mu   sync.Mutex
	got  []string
	done chan struct{}
	err  error
}

// dialRawSession connects id with a persistent session at addr,
// subscribes to filter with QoS 2 and starts reading.
func dialRawSession(t testing.TB, addr, id, filter string) *rawSession {
	t.Helper()
	nc := brokertest.DialRaw(t, addr)
	write := func(pk packets.Packet, enc func(*packets.Packet, *bytes.Buffer) error) {
		t.Helper()
		var buf bytes.Buffer
		pk.ProtocolVersion = 5
		if err := enc(&pk, &buf); err != nil {
			t.Fatal(err)
		}
		if _, err := nc.Write(buf.Bytes()); err != nil {
			t.Fatal(err)
		}
	}
	write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect:    packets.ConnectParams{ProtocolName: []byte("MQTT"), Keepalive: 30, ClientIdentifier: id},
		Properties: packets.Properties{SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true},
	}, (*packets.Packet).ConnectEncode)
	if p := brokertest.ReadRaw(t, nc); p.Type != packets.Connack || len(p.Body) < 2 || p.Body[1] != 0 {
		t.Fatalf("raw connect %s: type %d %x", id, p.Type, p.Body)
	}
	write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: filter, Qos: 2}}}, (*packets.Packet).SubscribeEncode)
	if p := brokertest.ReadRaw(t, nc); p.Type != packets.Suback {
		t.Fatalf("raw subscribe %s: type %d %x", id, p.Type, p.Body)
	}
	s := &rawSession{nc: nc, done: make(chan struct{})}
	go s.read()
	return s
}

func (s *rawSession) read() {
	defer close(s.done)
	ack := func(typ byte, id uint16) error {
		_, err := s.nc.Write([]byte{typ<<4 | map[byte]byte{packets.Pubrel: 2}[typ], 2, byte(id >> 8), byte(id)})
		return err
	}
	for {
		p, err := brokertest.ReadPacket(s.nc, time.Now().Add(time.Minute))
		if err != nil {
			// The broker closes the connection after DISCONNECT 0x8E;
			// under load mochi may close it before that packet leaves
			// its write buffer, so a plain close is fine too.
			if !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
				s.err = err
			}
			return
		}
		switch p.Type {
		case packets.Publish:
			pk := packets.Packet{ProtocolVersion: 5}
			if err := pk.FixedHeader.Decode(p.Type<<4 | p.Flags); err != nil {
				s.err = err
				return
			}
			pk.FixedHeader.Remaining = len(p.Body)
			if err := pk.PublishDecode(p.Body); err != nil {
				s.err = fmt.Errorf("decode PUBLISH: %w", err)
				return
			}
			s.mu.Lock()
			s.got = append(s.got, string(pk.Payload))
			s.mu.Unlock()
			switch pk.FixedHeader.Qos {
			case 1:
				err = ack(packets.Puback, pk.PacketID)
			case 2:
				err = ack(packets.Pubrec, pk.PacketID)
			}
		case packets.Pubrel:
			if len(p.Body) >= 2 {
				err = ack(packets.Pubcomp, uint16(p.Body[0])<<8|uint16(p.Body[1]))
			}
		case packets.Disconnect:
			return
		}
		if err != nil {
			return
		}
	}
}

// received returns what the session read so far.
func (s *rawSession) received() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.got...)
}

// testLiveTakeoverUnderLoad: like testTakeoverUnderLoad, but the session
// is taken over while its first connection (a raw client that records
// every PUBLISH it reads) is still connected and receiving. Every
// acknowledged message reaches one of the two connections; none reaches
// the new one twice.
func testLiveTakeoverUnderLoad(t *testing.T, c *testCluster) {
	const (
		id     = "live-streamer"
		before = 60
		total  = 160
	)
	old := dialRawSession(t, c.node("n1").ListenerAddr(0), id, "lt/#")
	c.waitRoutes()

	var nw *brokertest.V5
	want := streamDuringMove(t, c, "lt", before, total, func() {
		opts := brokertest.V5Options{KeepSession: true, SessionExpiry: 300}
		nw = brokertest.MustV5(t, c.url("n2"), id, opts)
		if !nw.Connack.SessionPresent {
			t.Fatal("live takeover on n2 under load: session present = false")
		}
	})
	select {
	case <-old.done:
	case <-time.After(brokertest.Timeout):
		t.Fatal("the taken-over connection was not closed")
	}
	if old.err != nil {
		t.Errorf("taken-over raw connection: %v", old.err)
	}
	oldGot := map[string]int{}
	for _, p := range old.received() {
		oldGot[p]++
	}
	expectHandedOver(t, c, "lt", want, oldGot, nw)
	nw.Close()
	brokertest.MustV5(t, c.url("n2"), id).Close() // discard the session
	c.waitRoutes()
}
