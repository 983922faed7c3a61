package mochix_test

// Pins of the mochi behaviours that broker/quirks.Acks and broker/limits
// work around or build on. When one fails after a mochi upgrade, revisit
// the workaround it names.

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/broker/mochix"
)

// decodeAck decodes a v5 PUBACK/PUBREC/PUBREL/PUBCOMP off the wire.
func decodeAck(t *testing.T, p brokertest.RawPacket) packets.Packet {
	t.Helper()
	pk := packets.Packet{ProtocolVersion: 5, FixedHeader: packets.FixedHeader{Type: p.Type, Remaining: len(p.Body)}}
	if err := pk.PubackDecode(p.Body); err != nil { // one decoder for the four
		t.Fatalf("decode ack type %d %x: %v", p.Type, p.Body, err)
	}
	return pk
}

// TestAckEchoesProperties pins what broker/quirks.Acks rewrites: mochi
// answers a v5 QoS 1 PUBLISH that carries properties with PUBACK reason
// 0x01 (its "granted QoS 1") and the publisher's user properties, and a
// QoS 2 one with a PUBREC carrying them too.
func TestAckEchoesProperties(t *testing.T) {
	_, addr := startServer(t)
	c, _ := brokertest.DialRawClient(t, addr, 5, "echo", brokertest.RawOptions{})
	user := []packets.UserProperty{{Key: "k", Val: "v"}}
	for _, tc := range []struct {
		qos      byte
		typ      byte
		wantCode byte
	}{
		{1, packets.Puback, 0x01},
		{2, packets.Pubrec, 0x00},
	} {
		c.Write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: tc.qos}, PacketID: 5,
			TopicName: "e", Payload: []byte("x"), Properties: packets.Properties{User: user}})
		ack := decodeAck(t, c.Expect(tc.typ))
		if ack.ReasonCode != tc.wantCode || len(ack.Properties.User) != 1 {
			t.Errorf("QoS %d: ack reason 0x%02x with user properties %v; mochi fixed its acks (want 0x%02x and the echo): "+
				"broker/quirks.Acks may go", tc.qos, ack.ReasonCode, ack.Properties.User, tc.wantCode)
		}
		if tc.qos == 2 {
			c.Write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: 5})
			c.Expect(packets.Pubcomp)
		}
	}
}

// TestPacketTooLargeUnannounced pins what broker/limits adds for
// mqtt.max_packet_size: mochi's CONNACK does not carry its Maximum Packet
// Size, and it closes a connection that sends a larger packet without a
// DISCONNECT, even to a v5 client.
func TestPacketTooLargeUnannounced(t *testing.T) {
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = 256
	_, addr := startServerWith(t, caps)
	c, p := brokertest.DialRawClient(t, addr, 5, "big", brokertest.RawOptions{})
	if ca := c.DecodeConnack(p); ca.Properties.MaximumPacketSize != 0 {
		t.Errorf("CONNACK announces Maximum Packet Size %d: broker/limits need not add it", ca.Properties.MaximumPacketSize)
	}
	c.Publish(1, "big", 1, string(make([]byte, 300)))
	if got, _ := brokertest.WaitClosedByPeer(t, c.Conn, brokertest.Timeout); len(got) != 0 {
		t.Errorf("mochi sent %v before closing: if a DISCONNECT 0x95, broker/limits' Wrap may go", got)
	}
}

// TestServerKeepaliveFromOnConnect pins the mechanism behind
// mqtt.server_keep_alive (broker/limits): a keep-alive an OnConnect hook
// writes into Client.State, with State.ServerKeepalive set, goes into the
// CONNACK as Server Keep Alive and arms the read deadline (1.5 times it,
// rounded down to whole seconds: 1 s for 1 s).
func TestServerKeepaliveFromOnConnect(t *testing.T) {
	rec := &recorder{provides: []byte{mqtt.OnConnect}, onConnect: func(cl *mqtt.Client, pk packets.Packet) error {
		cl.State.Keepalive = 1
		cl.State.ServerKeepalive = true
		return nil
	}}
	_, addr := startServer(t, rec)
	c, p := brokertest.DialRawClient(t, addr, 5, "ka", brokertest.RawOptions{KeepAlive: 60})
	start := time.Now()
	if ca := c.DecodeConnack(p); !ca.Properties.ServerKeepAliveFlag || ca.Properties.ServerKeepAlive != 1 {
		t.Fatalf("CONNACK Server Keep Alive %d (present %v), want 1", ca.Properties.ServerKeepAlive, ca.Properties.ServerKeepAliveFlag)
	}
	// Closed within Timeout, not after the client's 90 s.
	brokertest.WaitClosedByPeer(t, c.Conn, brokertest.Timeout)
	if took := time.Since(start); took < 750*time.Millisecond {
		t.Errorf("silent client closed after %v, want about 1 s", took)
	}
}

// TestResendOrderIsMapOrder pins what broker/quirks.ResendOrder reorders:
// mochi resends a resumed session's queue sorted by the low 16 bits of the
// creation second with an unstable sort, so messages queued within one
// second come back in map order, not in the order they were published.
func TestResendOrderIsMapOrder(t *testing.T) {
	srv, addr := startServer(t)
	keep := brokertest.RawOptions{KeepSession: true, SessionExpiry: 300}
	s, _ := brokertest.DialRawClient(t, addr, 5, "resume", keep)
	s.Subscribe(1, 1, "r/#")
	_ = s.Conn.Close()
	brokertest.Eventually(t, "the session to be disconnected", func() bool {
		cl, ok := mochix.Client(srv, "resume")
		return ok && cl.Closed()
	})
	const n = 64
	pub, _ := brokertest.DialRawClient(t, addr, 5, "pub", brokertest.RawOptions{})
	for i := range n {
		pub.Publish(uint16(i+1), "r/x", 1, string(rune('0'+i)))
		pub.Expect(packets.Puback)
	}
	s, _ = brokertest.DialRawClient(t, addr, 5, "resume", keep)
	inOrder := true
	for i := range n {
		pk := s.DecodePublish(s.Expect(packets.Publish))
		inOrder = inOrder && string(pk.Payload) == string(rune('0'+i))
	}
	if inOrder {
		t.Errorf("mochi resent %d queued messages in publish order: broker/quirks.ResendOrder may go "+
			"(or they happened to come out in order: run again)", n)
	}
}

// TestSendQuotaDeadlocks pins why broker/quirks switches mochi's send
// quota off (mochix.DisableSendQuota) and enforces Receive Maximum in
// quirks.SendQuota instead: with the quota on, mochi calls
// Inflight.NextImmediate after every packet from the client, which takes
// the queue's read lock and calls GetAll, which takes it again; a
// publisher queuing a message (Set, the write lock) in between blocks the
// second read lock behind its own, and all three wait for good (upstream
// mochi-mqtt/server#488 class). Reproduced here on the queue alone: one
// goroutine calls NextImmediate, another Set, until they stop making
// progress. The two goroutines stay blocked until the test binary exits.
func TestSendQuotaDeadlocks(t *testing.T) {
	inf := mqtt.NewInflights()
	inf.Set(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 1, Expiry: -1})
	var calls atomic.Int64
	go func() {
		for {
			inf.NextImmediate()
			calls.Add(1)
		}
	}()
	go func() {
		for i := 0; ; i++ {
			inf.Set(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: uint16(2 + i%100)})
		}
	}()
	// Stuck: no call completes for a while. Seen within milliseconds.
	const still = 500 * time.Millisecond
	last, since := int64(-1), time.Now()
	for start := time.Now(); time.Since(start) < 20*time.Second; {
		if n := calls.Load(); n != last {
			last, since = n, time.Now()
		} else if time.Since(since) > still {
			return
		}
		runtime.Gosched()
	}
	t.Errorf("Inflight.NextImmediate made progress for 20 s under concurrent Set (%d calls): mochi's send quota "+
		"may no longer deadlock; mochix.DisableSendQuota may go (quirks.SendQuota could defer to mochi)", calls.Load())
}

// TestResendIgnoresReceiveMaximum pins what quirks.SendQuota's split at
// the CONNACK works around: when a session resumes, mochi writes every
// queued QoS 1/2 message right after the CONNACK, more than the client's
// Receive Maximum, before the client can acknowledge any.
func TestResendIgnoresReceiveMaximum(t *testing.T) {
	srv, addr := startServer(t)
	keep := brokertest.RawOptions{KeepSession: true, SessionExpiry: 300, ReceiveMaximum: 2}
	s, _ := brokertest.DialRawClient(t, addr, 5, "rm", keep)
	s.Subscribe(1, 1, "rm/#")
	_ = s.Conn.Close()
	brokertest.Eventually(t, "the session to be disconnected", func() bool {
		cl, ok := mochix.Client(srv, "rm")
		return ok && cl.Closed()
	})
	const n = 6
	for i := range n {
		if err := srv.Publish("rm/x", []byte{byte('0' + i)}, false, 1); err != nil {
			t.Fatal(err)
		}
	}
	s, _ = brokertest.DialRawClient(t, addr, 5, "rm", keep)
	s.Write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	pubs := 0
	for p := s.Read(); p.Type != packets.Pingresp; p = s.Read() {
		if p.Type == packets.Publish {
			pubs++
		}
	}
	if pubs <= 2 {
		t.Errorf("resend wrote %d of %d queued messages to a client with Receive Maximum 2: mochi's resend "+
			"honours it; quirks.SendQuota's split may go", pubs, n)
	}
}

// TestWithholdWithoutFlushStrandsWrites pins why mochix.Withhold flushes:
// while a client's write loop has more packets queued, mochi buffers
// writes (here a PINGRESP) for the write that finds the queue empty to
// flush; if that write is withheld, the buffered packet stays unsent.
// mochix.Flush writes it out.
func TestWithholdWithoutFlushStrandsWrites(t *testing.T) {
	gate := make(chan struct{})
	blocked := make(chan struct{}, 1)
	pinged := make(chan struct{}, 1)
	var first atomic.Bool
	rec := &recorder{provides: []byte{mqtt.OnPacketEncode, mqtt.OnPacketProcessed},
		onEncode: func(cl *mqtt.Client, pk packets.Packet) packets.Packet {
			if pk.FixedHeader.Type != packets.Publish || pk.TopicName != "s/x" {
				return pk
			}
			if first.CompareAndSwap(false, true) {
				blocked <- struct{}{}
				<-gate // the write loop waits with the others queued
			}
			pk.FixedHeader.Type = packets.Reserved // withheld, no flush
			return pk
		},
		onProcessed: func(cl *mqtt.Client, pk packets.Packet) {
			if pk.FixedHeader.Type == packets.Pingreq {
				pinged <- struct{}{}
			}
		}}
	srv, addr := startServer(t, rec)
	c, _ := brokertest.DialRawClient(t, addr, 5, "strand", brokertest.RawOptions{})
	c.Subscribe(1, 0, "s/#")
	for range 3 {
		if err := srv.Publish("s/x", []byte("p"), false, 0); err != nil {
			t.Fatal(err)
		}
	}
	<-blocked
	c.Write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	select {
	case <-pinged: // PINGRESP buffered: two publishes still queued
	case <-time.After(brokertest.Timeout):
		t.Fatal("PINGREQ not processed")
	}
	close(gate)
	// The withheld writes end the burst; give the write loop time to
	// finish it (absence can only be shown by waiting).
	if p, err := brokertest.ReadPacket(c.Conn, time.Now().Add(300*time.Millisecond)); err == nil {
		t.Fatalf("got packet type %d after the withheld writes: mochi flushes its buffer without a write; "+
			"mochix.Withhold need not flush", p.Type)
	}
	cl, _ := mochix.Client(srv, "strand")
	if err := mochix.FlushWrites(cl); err != nil {
		t.Fatal(err)
	}
	c.Expect(packets.Pingresp)
}

// TestSkipPacketIDs pins the packet id counter mochix.SkipPacketIDs moves:
// the next delivery takes the next free id after it.
func TestSkipPacketIDs(t *testing.T) {
	srv, addr := startServer(t)
	c, _ := brokertest.DialRawClient(t, addr, 5, "skip", brokertest.RawOptions{})
	c.Subscribe(1, 1, "k/#")
	cl, _ := mochix.Client(srv, "skip")
	var seen uint16
	if !mochix.SkipPacketIDs(cl, func(last uint16) uint16 { seen = last; return 500 }) {
		t.Fatal("mochi's Client has no packet id counter (State.packetID): quirks.SendQuota's split reuses ids")
	}
	if err := srv.Publish("k/x", []byte("x"), false, 1); err != nil {
		t.Fatal(err)
	}
	if pk := c.DecodePublish(c.Expect(packets.Publish)); pk.PacketID != 501 || seen != 0 {
		t.Errorf("counter read %d (want 0 for a new client), next id %d (want 501)", seen, pk.PacketID)
	}
}

// TestReceiveQuotaCountsWrong pins what broker/quirks.ReceiveQuota counts
// instead of mochi: with a server Receive Maximum of 2 and two QoS 2
// PUBLISHes of the client not completed, mochi disconnects the client
// (0x93) for a QoS 0 PUBLISH, and a subscriber that has sent PUBREC for two
// of the server's QoS 2 deliveries for its first QoS 1 PUBLISH.
func TestReceiveQuotaCountsWrong(t *testing.T) {
	caps := mqtt.NewDefaultServerCapabilities()
	caps.ReceiveMaximum = 2
	srv, addr := startServerWith(t, caps)
	for _, tc := range []struct {
		name string
		run  func(c *brokertest.RawClient)
	}{
		{"QoS 0 at the maximum", func(c *brokertest.RawClient) {
			for id := uint16(1); id <= 2; id++ {
				c.Publish(id, "q/a", 2, "x")
				c.Expect(packets.Pubrec)
			}
			c.Publish(0, "q/a", 0, "x")
		}},
		{"PUBRECs of a subscriber", func(c *brokertest.RawClient) {
			c.Subscribe(9, 2, "q/in")
			for range 2 {
				if err := srv.Publish("q/in", []byte("in"), false, 2); err != nil {
					t.Fatal(err)
				}
				pk := c.DecodePublish(c.Expect(packets.Publish))
				c.Write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: pk.PacketID})
				c.Expect(packets.Pubrel)
			}
			c.Publish(1, "q/a", 1, "x")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := brokertest.DialRawClient(t, addr, 5, "rq", brokertest.RawOptions{})
			tc.run(c)
			c.Write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
			if p := c.Read(); p.Type != packets.Disconnect || len(p.Body) == 0 || p.Body[0] != packets.ErrReceiveMaximum.Code {
				t.Errorf("got packet type %d %x, not DISCONNECT 0x93: mochi counts its receive quota right here; "+
					"broker/quirks.ReceiveQuota may go", p.Type, p.Body)
			}
		})
	}
}
