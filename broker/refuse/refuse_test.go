package refuse_test

import (
	"bytes"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/broker/refuse"
)

// gate refuses what a test names, through the Refuser, as the netsplit
// gate will: client ids starting with "refuse" (CONNECT), topics and
// filters starting with "no/" (PUBLISH, SUBSCRIBE, UNSUBSCRIBE), with the
// reason code the test set. The test's own publishes (inline) pass.
type gate struct {
	mqtt.HookBase
	r    *refuse.Refuser
	code atomic.Pointer[packets.Code]
	// subscribeAll lets every SUBSCRIBE through (to set up a test of
	// UNSUBSCRIBE).
	subscribeAll atomic.Bool

	mu         sync.Mutex
	subscribed []string // filters OnSubscribed saw
}

func (g *gate) ID() string { return "gate" }
func (g *gate) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnPublish,
		mqtt.OnSubscribe, mqtt.OnUnsubscribe, mqtt.OnSubscribed}, []byte{b})
}
func (g *gate) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }
func (g *gate) OnACLCheck(*mqtt.Client, string, bool) bool              { return true }

func refused(s packets.Subscription) bool { return strings.HasPrefix(s.Filter, "no/") }

func (g *gate) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if strings.HasPrefix(cl.ID, "refuse") {
		return g.r.Connect(cl, *g.code.Load())
	}
	return nil
}

func (g *gate) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if !cl.Net.Inline && strings.HasPrefix(pk.TopicName, "no/") {
		return g.r.Publish(cl, pk, *g.code.Load())
	}
	return pk, nil
}

func (g *gate) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if g.subscribeAll.Load() {
		return pk
	}
	return g.r.Subscribe(cl, pk, *g.code.Load(), refused)
}

func (g *gate) OnUnsubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	return g.r.Unsubscribe(cl, pk, *g.code.Load(), refused)
}

func (g *gate) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	g.mu.Lock()
	for _, f := range pk.Filters {
		g.subscribed = append(g.subscribed, f.Filter)
	}
	g.mu.Unlock()
}

type server struct {
	srv     *mqtt.Server
	addr    string
	g       *gate
	dropped atomic.Int32
}

func start(t *testing.T) *server {
	t.Helper()
	s := &server{}
	s.srv = mqtt.New(&mqtt.Options{InlineClient: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	r := refuse.New(s.srv, refuse.Options{Dropped: func() { s.dropped.Add(1) }})
	s.g = &gate{r: r}
	s.setCode(packets.ErrServerUnavailable)
	for _, h := range []mqtt.Hook{r, s.g} {
		if err := s.srv.AddHook(h, nil); err != nil {
			t.Fatal(err)
		}
	}
	l := listeners.NewTCP(listeners.Config{ID: "t", Address: "127.0.0.1:0"})
	if err := s.srv.AddListener(l); err != nil {
		t.Fatal(err)
	}
	if err := s.srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.srv.Close() })
	s.addr = l.Address()
	return s
}

func (s *server) setCode(c packets.Code) { s.g.code.Store(&c) }

func code(b byte) packets.Code { return packets.Code{Code: b, Reason: "refused for test"} }

// TestConnect: a refused CONNECT gets a CONNACK with the code (v3: its
// return code) and the connection is closed.
func TestConnect(t *testing.T) {
	s := start(t)
	for _, tc := range []struct {
		name string
		v    byte
		code packets.Code
		want byte
	}{
		{"v5 server unavailable", 5, packets.ErrServerUnavailable, 0x88},
		{"v5 not authorized", 5, packets.ErrNotAuthorized, 0x87},
		{"v5 success code is no refusal", 5, packets.CodeSuccess, 0x80},
		{"v3 server unavailable", 4, packets.ErrServerUnavailable, 3},
		{"v3 server busy", 4, packets.ErrServerBusy, 3},
		{"v3 not authorized", 4, packets.ErrNotAuthorized, 5},
		{"v3 bad credentials", 4, packets.ErrBadUsernameOrPassword, 4},
		{"v3 identifier rejected", 4, packets.ErrClientIdentifierNotValid, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.setCode(tc.code)
			c, ack := brokertest.DialRawClient(t, s.addr, tc.v, "refuse-"+tc.name, brokertest.RawOptions{})
			if ack.Type != packets.Connack || len(ack.Body) < 2 || ack.Body[0] != 0 || ack.Body[1] != tc.want {
				t.Fatalf("answer type %d body %x, want CONNACK with code 0x%02x, no session", ack.Type, ack.Body, tc.want)
			}
			if got, _ := brokertest.WaitClosedByPeer(t, c.Conn, brokertest.Timeout); len(got) != 0 {
				t.Errorf("after the CONNACK: %v", got)
			}
		})
	}
}

// TestPublish: a refused publish is never delivered; QoS 0 is dropped
// and counted; v5 QoS 1/2 get PUBACK/PUBREC with the code; v3 QoS 1/2 get
// no ack and a closed connection.
func TestPublish(t *testing.T) {
	s := start(t)
	for _, tc := range []struct {
		name    string
		v, qos  byte
		code    packets.Code
		ack     byte // expected ack type; 0: none
		rc      byte
		closed  bool
		dropped int32
	}{
		{"v5 qos0", 5, 0, code(0x83), 0, 0, false, 1},
		{"v5 qos1", 5, 1, code(0x83), packets.Puback, 0x83, false, 0},
		{"v5 qos2", 5, 2, code(0x80), packets.Pubrec, 0x80, false, 0},
		{"v5 qos2 quota exceeded", 5, 2, packets.ErrQuotaExceeded, packets.Pubrec, 0x97, false, 0},
		{"v5 qos1 success code is no refusal", 5, 1, packets.CodeSuccess, packets.Puback, 0x80, false, 0},
		{"v3 qos0", 4, 0, code(0x83), 0, 0, false, 1},
		{"v3 qos1", 4, 1, code(0x83), 0, 0, true, 0},
		{"v3 qos2", 4, 2, code(0x83), 0, 0, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.setCode(tc.code)
			s.dropped.Store(0)
			sub, _ := brokertest.DialRawClient(t, s.addr, 5, "sub-"+tc.name, brokertest.RawOptions{})
			sub.Subscribe(1, 2, "no/#", "yes/#")
			pub, _ := brokertest.DialRawClient(t, s.addr, tc.v, "pub-"+tc.name, brokertest.RawOptions{})
			pub.Publish(7, "no/x", tc.qos, "refused")
			switch {
			case tc.closed:
				got, _ := brokertest.WaitClosedByPeer(t, pub.Conn, brokertest.Timeout)
				for _, p := range got {
					if p.Type != packets.Disconnect {
						t.Errorf("v3 publisher got packet type %d before the close", p.Type)
					}
				}
			case tc.ack != 0:
				p := pub.Expect(tc.ack)
				if len(p.Body) < 3 || p.Body[0] != 0 || p.Body[1] != 7 || p.Body[2] != tc.rc {
					t.Errorf("ack body %x, want id 7 and code 0x%02x", p.Body, tc.rc)
				}
				if !bytes.Contains(p.Body, []byte(tc.code.Reason)) && tc.code.Code >= 0x80 {
					t.Errorf("ack body %x lacks the reason string %q", p.Body, tc.code.Reason)
				}
				pub.Ping() // nothing else (no PUBREL exchange)
			default:
				pub.Ping()
			}
			if n := s.dropped.Load(); n != tc.dropped {
				t.Errorf("Dropped called %d times, want %d", n, tc.dropped)
			}
			// The refused message reached no subscriber: the next
			// delivery is a later, accepted one.
			if err := s.srv.Publish("yes/after", []byte("accepted"), false, 0); err != nil {
				t.Fatal(err)
			}
			if got := sub.DecodePublish(sub.Expect(packets.Publish)); string(got.Payload) != "accepted" {
				t.Errorf("subscriber got %q: the refused message was delivered", got.Payload)
			}
		})
	}
}

// TestSubscribe: refused filters get the code in the SUBACK (v3: 0x80),
// are not subscribed and no hook sees them subscribed; the others are
// subscribed as usual.
func TestSubscribe(t *testing.T) {
	s := start(t)
	for _, tc := range []struct {
		name    string
		v       byte
		code    packets.Code
		filters []string
		want    []byte
	}{
		{"v5 one refused", 5, packets.ErrNotAuthorized, []string{"ok/a", "no/b", "ok/c"}, []byte{1, 0x87, 1}},
		{"v5 all refused", 5, code(0x80), []string{"no/a", "no/b"}, []byte{0x80, 0x80}},
		{"v5 none refused", 5, code(0x80), []string{"ok/a"}, []byte{1}},
		{"v5 success code is no refusal", 5, packets.CodeSuccess, []string{"no/a"}, []byte{0x80}},
		{"v3 one refused", 4, packets.ErrNotAuthorized, []string{"no/a", "ok/b"}, []byte{0x80, 1}},
		{"v3 all refused", 4, code(0x88), []string{"no/a"}, []byte{0x80}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.setCode(tc.code)
			s.g.mu.Lock()
			s.g.subscribed = nil
			s.g.mu.Unlock()
			c, _ := brokertest.DialRawClient(t, s.addr, tc.v, "s-"+tc.name, brokertest.RawOptions{})
			ack := c.Subscribe(9, 1, tc.filters...)
			if got := c.Ack(ack); !bytes.Equal(got, tc.want) {
				t.Errorf("SUBACK codes %x, want %x", got, tc.want)
			}
			if ack.Body[0] != 0 || ack.Body[1] != 9 {
				t.Errorf("SUBACK for packet id %x", ack.Body[:2])
			}
			s.g.mu.Lock()
			for _, f := range s.g.subscribed {
				if strings.HasPrefix(f, "no/") {
					t.Errorf("OnSubscribed saw refused filter %s", f)
				}
			}
			s.g.mu.Unlock()
			// Deliveries: only the kept filters.
			c.Subscribe(10, 0, "ok/end")
			for _, f := range tc.filters {
				_ = s.srv.Publish(f, []byte(f), false, 0)
			}
			_ = s.srv.Publish("ok/end", []byte("end"), false, 0)
			for {
				got := c.DecodePublish(c.Expect(packets.Publish))
				if string(got.Payload) == "end" {
					break
				}
				if strings.HasPrefix(got.TopicName, "no/") {
					t.Errorf("delivery on refused filter %s", got.TopicName)
				}
			}
		})
	}
}

// TestUnsubscribe: v5 refused filters get the code in the UNSUBACK and
// stay subscribed; v3 gets no UNSUBACK, the connection is closed and
// nothing is unsubscribed.
func TestUnsubscribe(t *testing.T) {
	s := start(t)
	unsubscribe := func(c *brokertest.RawClient, filters ...string) {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe, Qos: 1}, PacketID: 11}
		for _, f := range filters {
			pk.Filters = append(pk.Filters, packets.Subscription{Filter: f})
		}
		c.Write(pk)
	}
	// deliveries publishes to each filter and returns the topics c gets
	// (c is subscribed to ok/fence).
	deliveries := func(c *brokertest.RawClient, filters ...string) []string {
		for _, f := range filters {
			_ = s.srv.Publish(f, []byte(f), false, 0)
		}
		_ = s.srv.Publish("ok/fence", []byte("fence"), false, 0)
		var got []string
		for {
			pk := c.DecodePublish(c.Expect(packets.Publish))
			if pk.TopicName == "ok/fence" {
				return got
			}
			got = append(got, pk.TopicName)
		}
	}

	t.Run("v5", func(t *testing.T) {
		s.setCode(code(0x80))
		c, _ := brokertest.DialRawClient(t, s.addr, 5, "u5", brokertest.RawOptions{})
		s.g.subscribeAll.Store(true)
		c.Subscribe(1, 0, "ok/a", "no/b", "ok/fence")
		s.g.subscribeAll.Store(false)
		s.setCode(packets.ErrNotAuthorized)
		unsubscribe(c, "ok/a", "no/b")
		if got := c.Ack(c.Expect(packets.Unsuback)); !bytes.Equal(got, []byte{0, 0x87}) {
			t.Errorf("UNSUBACK codes %x, want 00 87", got)
		}
		if got := deliveries(c, "ok/a", "no/b"); !slices.Equal(got, []string{"no/b"}) {
			t.Errorf("after the unsubscribe, deliveries on %v, want only no/b", got)
		}
	})
	t.Run("v3", func(t *testing.T) {
		s.setCode(code(0x80))
		keep := brokertest.RawOptions{KeepSession: true}
		c, _ := brokertest.DialRawClient(t, s.addr, 4, "u3", keep)
		s.g.subscribeAll.Store(true)
		c.Subscribe(1, 0, "ok/a", "no/b", "ok/fence")
		s.g.subscribeAll.Store(false)
		unsubscribe(c, "ok/a", "no/b")
		got, _ := brokertest.WaitClosedByPeer(t, c.Conn, brokertest.Timeout)
		for _, p := range got {
			if p.Type == packets.Unsuback {
				t.Error("v3 client got an UNSUBACK for a refused unsubscribe")
			}
		}
		c, ack := brokertest.DialRawClient(t, s.addr, 4, "u3", keep)
		if len(ack.Body) < 2 || ack.Body[0]&1 == 0 {
			t.Fatalf("reconnect CONNACK %x: session not present", ack.Body)
		}
		if got := deliveries(c, "ok/a", "no/b"); !slices.Equal(got, []string{"ok/a", "no/b"}) {
			t.Errorf("after the refused unsubscribe, deliveries on %v, want both filters", got)
		}
	})
}
