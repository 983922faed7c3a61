package quirks_test

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/brokertest"
)

// rmSub is a raw MQTT 5 subscriber with a Receive Maximum that
// acknowledges only when the test says so, and fails the test as soon as
// the broker has more QoS 1/2 PUBLISHes open towards it than that.
type rmSub struct {
	*brokertest.RawClient
	t    *testing.T
	max  int
	open []uint16                  // packet ids received and not acknowledged, in arrival order
	pks  map[uint16]packets.Packet // by packet id
	got  []string                  // payloads in arrival order
}

func dialRMSub(t *testing.T, addr, id string, max uint16, o brokertest.RawOptions) (*rmSub, packets.Packet) {
	t.Helper()
	o.ReceiveMaximum = max
	c, p := brokertest.DialRawClient(t, addr, 5, id, o)
	s := &rmSub{RawClient: c, t: t, max: int(max), pks: map[uint16]packets.Packet{}}
	return s, c.DecodeConnack(p)
}

// take records a PUBLISH and checks the quota.
func (s *rmSub) take(p brokertest.RawPacket) packets.Packet {
	s.t.Helper()
	pk := s.DecodePublish(p)
	if pk.FixedHeader.Qos == 0 {
		return pk
	}
	if _, dup := s.pks[pk.PacketID]; dup {
		s.t.Fatalf("PUBLISH %q with packet id %d, which is still open (%q)", pk.Payload, pk.PacketID, s.pks[pk.PacketID].Payload)
	}
	s.open = append(s.open, pk.PacketID)
	s.pks[pk.PacketID] = pk
	s.got = append(s.got, string(pk.Payload))
	if len(s.open) > s.max {
		s.t.Fatalf("%d QoS 1/2 PUBLISHes open towards a client with Receive Maximum %d (received so far %v)", len(s.open), s.max, s.got)
	}
	return pk
}

// until reads packets up to the first PUBLISH on topic (a QoS 0 fence),
// recording the QoS 1/2 ones.
func (s *rmSub) until(topic string) {
	s.t.Helper()
	for range 1000 {
		p := s.Expect(packets.Publish)
		if pk := s.take(p); pk.TopicName == topic {
			return
		}
	}
	s.t.Fatalf("no PUBLISH on %s", topic)
}

// settle sends PINGREQ and reads up to the PINGRESP: everything the broker
// wrote while handling what the client sent before is read by then
// (mochi handles one client's packets in order, on one goroutine). It
// returns the PUBLISHes and the PUBREL ids read.
func (s *rmSub) settle() (pubs []packets.Packet, pubrels []uint16) {
	s.t.Helper()
	s.Write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	for range 1000 {
		p := s.Read()
		switch p.Type {
		case packets.Pingresp:
			return pubs, pubrels
		case packets.Publish:
			pubs = append(pubs, s.take(p))
		case packets.Pubrel:
			pk := packets.Packet{ProtocolVersion: 5, FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Remaining: len(p.Body)}}
			if err := pk.PubrelDecode(p.Body); err != nil {
				s.t.Fatalf("decode PUBREL %x: %v", p.Body, err)
			}
			pubrels = append(pubrels, pk.PacketID)
		default:
			s.t.Fatalf("packet type %d (body %x) while settling", p.Type, p.Body)
		}
	}
	s.t.Fatal("no PINGRESP")
	return nil, nil
}

// ack completes the open delivery id: PUBACK, or PUBREC/PUBREL/PUBCOMP
// (PUBREC with code, if code >= 0x80, ends a QoS 2 flow at once). It
// returns the PUBLISHes the freed slot let through.
func (s *rmSub) ack(id uint16, code byte) []packets.Packet {
	s.t.Helper()
	pk, ok := s.pks[id]
	if !ok {
		s.t.Fatalf("ack of packet id %d, not open", id)
	}
	s.open = slices.DeleteFunc(s.open, func(o uint16) bool { return o == id })
	delete(s.pks, id)
	if pk.FixedHeader.Qos == 1 {
		s.Write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: id})
		pubs, _ := s.settle()
		return pubs
	}
	s.Write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: id, ReasonCode: code})
	pubs, rels := s.settle()
	if code >= 0x80 {
		if len(rels) > 0 {
			s.t.Fatalf("PUBREL %v after PUBREC 0x%02x", rels, code)
		}
		return pubs
	}
	if len(pubs) > 0 || !slices.Equal(rels, []uint16{id}) {
		s.t.Fatalf("after PUBREC %d: PUBLISHes %d and PUBRELs %v, want only PUBREL %d", id, len(pubs), rels, id)
	}
	s.Write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubcomp}, PacketID: id})
	pubs, _ = s.settle()
	return pubs
}

// drain acknowledges open deliveries (newest first if lifo) until none is
// left, checking that each freed slot lets exactly one more through
// while any waits; refuse names payloads to answer with PUBREC 0x80.
func (s *rmSub) drain(total int, lifo bool, refuse map[string]bool) {
	s.t.Helper()
	for step := 0; len(s.open) > 0 && step < 10*total; step++ {
		id := s.open[0]
		if lifo {
			id = s.open[len(s.open)-1]
		}
		var code byte
		if refuse[string(s.pks[id].Payload)] {
			code = 0x80
		}
		before := len(s.got)
		pubs := s.ack(id, code)
		if want := min(1, total-before); len(pubs) != want {
			s.t.Fatalf("a freed slot let %d PUBLISHes through, want %d (received %d of %d)", len(pubs), want, before, total)
		}
	}
}

// publishMixed publishes n messages "0".."n-1" to topic through a v5
// client, QoS 1 and 2 alternating, each acknowledged before the next,
// then a QoS 0 fence on fence.
func publishMixed(t *testing.T, url, topic string, n int, fence string) {
	t.Helper()
	p := brokertest.MustV5(t, url, "rm-pub")
	for i := range n {
		p.MustPub(topic, byte(1+i%2), false, strconv.Itoa(i))
	}
	if fence != "" {
		p.MustPub(fence, 0, false, "fence")
	}
	p.Close()
}

// inOrder reports whether got is "0".."n-1".
func inOrder(got []string, n int) bool {
	if len(got) != n {
		return false
	}
	for i, g := range got {
		if g != strconv.Itoa(i) {
			return false
		}
	}
	return true
}

// TestReceiveMaximum: an MQTT 5 client with Receive Maximum N that
// withholds its acknowledgements gets exactly N of 40 QoS 1/2 messages
// (20 of each), and each acknowledgement (PUBACK, PUBCOMP, or a PUBREC
// with a failure code) lets exactly one more through; all 40 arrive once,
// in the order they were published [MQTT-3.3.4-9] [MQTT-4.9.0-2]. Before
// broker/quirks.SendQuota, the broker wrote all 40 at once.
func TestReceiveMaximum(t *testing.T) {
	const total = 40
	for _, tc := range []struct {
		name   string
		max    uint16
		lifo   bool
		refuse map[string]bool
	}{
		{"receive maximum 2", 2, false, nil},
		{"receive maximum 3, newest acknowledged first", 3, true, nil},
		{"receive maximum 4", 4, false, nil},
		{"receive maximum 5, newest acknowledged first", 5, true, nil},
		{"PUBREC failures free slots", 2, false, map[string]bool{"1": true, "7": true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := brokertest.Start(t, brokertest.Config())
			addr := n.ListenerAddr(0)
			s, _ := dialRMSub(t, addr, "rm-sub", tc.max, brokertest.RawOptions{})
			s.Subscribe(1, 2, "rm/x")
			s.Subscribe(2, 0, "rm/fence")
			publishMixed(t, n.URL(0), "rm/x", total, "rm/fence")
			s.until("rm/fence")
			if len(s.open) != int(tc.max) {
				t.Fatalf("%d QoS 1/2 PUBLISHes before any acknowledgement, want the Receive Maximum %d", len(s.open), tc.max)
			}
			s.drain(total, tc.lifo, tc.refuse)
			if !inOrder(s.got, total) {
				t.Fatalf("received %v, want 0 to %d once each in order", s.got, total-1)
			}
		})
	}
}

// TestReceiveMaximumResume: a session resumed with QoS 1/2 messages
// queued gets at most its Receive Maximum of them at once, also in the
// resend right after the CONNACK (mochi resends the whole queue there);
// the rest follow as it acknowledges, every message once and in order.
// The session is resumed after being offline, taken over from a live
// connection that had the maximum open, and after a restart that restored
// it from storage.
func TestReceiveMaximumResume(t *testing.T) {
	const total = 20
	for _, tc := range []struct {
		name    string
		max     uint16
		live    bool
		restart bool
	}{
		{"offline, receive maximum 2", 2, false, false},
		{"offline, receive maximum 5", 5, false, false},
		{"live takeover, receive maximum 3", 3, true, false},
		{"restart with storage, receive maximum 3", 3, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := brokertest.Config()
			if tc.restart {
				cfg.Storage.Path = filepath.Join(t.TempDir(), "s.db")
			}
			n := brokertest.Start(t, cfg)
			keep := brokertest.RawOptions{KeepSession: true, SessionExpiry: 300}
			first, _ := dialRMSub(t, n.ListenerAddr(0), "rm-resume", tc.max, keep)
			first.Subscribe(1, 2, "rm/x")
			first.Subscribe(2, 0, "rm/fence")
			var before []string // open on the first connection at the takeover
			if tc.live {
				publishMixed(t, n.URL(0), "rm/x", total, "rm/fence")
				first.until("rm/fence")
				before = slices.Clone(first.got)
			} else {
				_ = first.Conn.Close()
				n.WaitMetric(0, "mendmq_clients_connected")
				publishMixed(t, n.URL(0), "rm/x", total, "")
			}
			if tc.restart {
				n.Stop()
				n = brokertest.Start(t, cfg)
			}
			s, ca := dialRMSub(t, n.ListenerAddr(0), "rm-resume", tc.max, keep)
			if !ca.SessionPresent {
				t.Fatal("session not present")
			}
			pubs, _ := s.settle()
			if len(pubs) != int(tc.max) {
				t.Fatalf("resend wrote %d PUBLISHes (%v), want the Receive Maximum %d", len(pubs), s.got, tc.max)
			}
			for i, pk := range pubs {
				if !pk.FixedHeader.Dup {
					t.Errorf("resent PUBLISH %d (%q) without DUP", i, pk.Payload)
				}
			}
			if before != nil && !slices.Equal(s.got, before) {
				t.Fatalf("resent %v, want what was open before the takeover, %v", s.got, before)
			}
			s.drain(total, false, nil)
			if !inOrder(s.got, total) {
				t.Fatalf("received %v, want 0 to %d once each in order", s.got, total-1)
			}
		})
	}
}

// TestReceiveMaximumUntouched: a client that sends no Receive Maximum
// (65535) or announces 65535 gets every queued message at once, as
// before.
func TestReceiveMaximumUntouched(t *testing.T) {
	n := brokertest.Start(t, brokertest.Config())
	for _, max := range []uint16{0, 65535} {
		t.Run(fmt.Sprint(max), func(t *testing.T) {
			id := fmt.Sprintf("rm-untouched-%d", max)
			s, _ := dialRMSub(t, n.ListenerAddr(0), id, max, brokertest.RawOptions{})
			s.max = 65535
			s.Subscribe(1, 2, "rmu/"+id)
			s.Subscribe(2, 0, "rmu/fence")
			publishMixed(t, n.URL(0), "rmu/"+id, 10, "rmu/fence")
			s.until("rmu/fence")
			if len(s.open) != 10 {
				t.Fatalf("%d of 10 open before any acknowledgement", len(s.open))
			}
		})
	}
}
