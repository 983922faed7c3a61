package mochix_test

// Each test here pins one behaviour of the mochi version in go.mod that
// mendmq relies on (see the package doc). A failure after a mochi upgrade
// names the workaround to revisit.

import (
	"bytes"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/broker/mochix"
)

const origin = "ORIGIN-NODE-7"

// stampID uses both halves of the id's two fields.
const stampID = uint64(3)<<32 | 0xfedcba98

func checkStamp(t *testing.T, where string, pk packets.Packet, topic string) {
	t.Helper()
	o, id, tp, ok := mochix.StampOf(pk)
	if !ok || o != origin || id != stampID || tp != topic {
		t.Errorf("%s: StampOf = %q %x %q %v, want %q %x %q", where, o, id, tp, ok, origin, stampID, topic)
	}
}

// TestStampRidesIntoEveryDelivery pins the publish-identity side channel:
// a stamp put on the packet in OnPublish (or on a packet given to
// InjectPacket) is in every delivery mochi makes of it (the copy it queues,
// OnQosPublish, OnPacketEncode), including a delivery that carries a topic
// alias instead of the topic, and never on the wire.
func TestStampRidesIntoEveryDelivery(t *testing.T) {
	queued := make(chan packets.Packet, 16)
	encoded := make(chan packets.Packet, 16)
	rec := &recorder{provides: []byte{mqtt.OnPublish, mqtt.OnQosPublish, mqtt.OnPacketEncode},
		onPublish: func(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
			if !cl.Net.Inline {
				mochix.Stamp(&pk, origin, stampID)
			}
			return pk, nil
		},
		onQosPublish: func(cl *mqtt.Client, pk packets.Packet) {
			if pk.FixedHeader.Type == packets.Publish { // not the publisher's own ack record
				queued <- pk
			}
		},
		onEncode: func(cl *mqtt.Client, pk packets.Packet) packets.Packet {
			if pk.FixedHeader.Type == packets.Publish {
				encoded <- pk
			}
			return pk
		}}
	srv, addr := startServer(t, rec)

	sub, _ := brokertest.DialRawClient(t, addr, 5, "sub", brokertest.RawOptions{})
	sub.Subscribe(1, 1, "s/#")
	pub, _ := brokertest.DialRawClient(t, addr, 5, "pub", brokertest.RawOptions{})
	pub.Publish(1, "s/x", 1, "one")
	pub.Expect(packets.Puback)

	pk := <-queued
	checkStamp(t, "OnQosPublish", pk, "s/x")
	cl, _ := mochix.Client(srv, "sub")
	for _, q := range mochix.Queued(cl) {
		checkStamp(t, "queued copy", q, "s/x")
	}
	checkStamp(t, "OnPacketEncode", <-encoded, "s/x")
	wire := sub.Expect(packets.Publish)
	if bytes.Contains(wire.Body, []byte(origin)) {
		t.Errorf("the stamp reached the wire: %x", wire.Body)
	}
	if got := sub.DecodePublish(wire); string(got.Payload) != "one" || got.TopicName != "s/x" {
		t.Errorf("delivery on the wire: %q on %q", got.Payload, got.TopicName)
	}

	// InjectPacket with an inline client: the stamp on the injected packet.
	inj := mochix.Inline(srv, "injector")
	in := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: "s/y", PacketID: 1, Payload: []byte("two")}
	mochix.Stamp(&in, origin, stampID)
	if err := srv.InjectPacket(inj, in); err != nil {
		t.Fatal(err)
	}
	checkStamp(t, "injected OnQosPublish", <-queued, "s/y")
	checkStamp(t, "injected OnPacketEncode", <-encoded, "s/y")
	sub.Expect(packets.Publish)
}

// TestStampSurvivesTakeoverAndAlias pins the rest of the side channel: a
// stamped message queued for a disconnected session keeps its stamp in
// the queue mochi clones for the reconnecting client (resent with DUP
// set), and a delivery carrying a topic alias instead of its topic keeps
// the topic in the stamp.
func TestStampSurvivesTakeoverAndAlias(t *testing.T) {
	encoded := make(chan packets.Packet, 16)
	rec := &recorder{provides: []byte{mqtt.OnPublish, mqtt.OnPacketEncode},
		onPublish: func(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
			mochix.Stamp(&pk, origin, stampID)
			return pk, nil
		},
		onEncode: func(cl *mqtt.Client, pk packets.Packet) packets.Packet {
			if pk.FixedHeader.Type == packets.Publish && cl.ID == "alias" {
				encoded <- pk
			}
			return pk
		}}
	srv, addr := startServer(t, rec)
	keep := brokertest.RawOptions{KeepSession: true, SessionExpiry: 300}
	s1, _ := brokertest.DialRawClient(t, addr, 5, "persist", keep)
	s1.Subscribe(1, 1, "p/#")
	_ = s1.Conn.Close()
	brokertest.Eventually(t, "the session to be disconnected", func() bool {
		cl, ok := mochix.Client(srv, "persist")
		return ok && cl.Closed()
	})
	pub, _ := brokertest.DialRawClient(t, addr, 5, "pub", brokertest.RawOptions{})
	pub.Publish(1, "p/x", 1, "queued")
	pub.Expect(packets.Puback)
	old, _ := mochix.Client(srv, "persist")
	// mochi acknowledges a publish before it fans it out.
	brokertest.Eventually(t, "the message to be queued for the session", func() bool { return mochix.QueueLen(old) == 1 })

	s2, ack := brokertest.DialRawClient(t, addr, 5, "persist", keep)
	if len(ack.Body) < 2 || ack.Body[0]&1 == 0 {
		t.Fatalf("CONNACK %x: session not present", ack.Body)
	}
	p := s2.Expect(packets.Publish)
	if p.Flags&0x08 == 0 {
		t.Error("the resent queued message has no DUP flag")
	}
	cl, _ := mochix.Client(srv, "persist")
	if cl == old || !old.IsTakenOver() {
		t.Fatal("the reconnect did not take the session over")
	}
	for _, q := range mochix.Queued(cl) {
		checkStamp(t, "cloned queue", q, "p/x")
	}

	// Topic alias: the second delivery to a client with an alias maximum
	// carries an empty topic.
	a, _ := brokertest.DialRawClient(t, addr, 5, "alias", brokertest.RawOptions{TopicAliasMaximum: 10})
	a.Subscribe(1, 0, "a/#")
	pub.Publish(0, "a/x", 0, "first")
	pub.Publish(0, "a/x", 0, "second")
	<-encoded
	second := <-encoded
	if second.TopicName != "" {
		t.Fatalf("second delivery carries topic %q; mochi no longer replaces it by an alias", second.TopicName)
	}
	checkStamp(t, "aliased delivery", second, "a/x")
}

// TestGroupsReachSelectSubscribers pins the shared-groups side channel:
// the filter list of a PUBLISH given to InjectPacket reaches
// OnSelectSubscribers unchanged.
func TestGroupsReachSelectSubscribers(t *testing.T) {
	seen := make(chan [2]bool, 1)
	rec := &recorder{provides: []byte{mqtt.OnSelectSubscribers},
		onSelect: func(subs *mqtt.Subscribers, pk packets.Packet) *mqtt.Subscribers {
			seen <- [2]bool{mochix.InGroups(pk, "$share/g/t"), mochix.InGroups(pk, "$share/h/t")}
			return subs
		}}
	srv, addr := startServer(t, rec)
	sub, _ := brokertest.DialRawClient(t, addr, 5, "sub", brokertest.RawOptions{})
	sub.Subscribe(1, 0, "$share/g/t")
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "t", Payload: []byte("x")}
	mochix.SetGroups(&pk, []string{"$share/g/t"})
	if err := srv.InjectPacket(mochix.Inline(srv, "inj"), pk); err != nil {
		t.Fatal(err)
	}
	if got := <-seen; !got[0] || got[1] {
		t.Fatalf("OnSelectSubscribers saw groups %v, want [true false]", got)
	}
	sub.Expect(packets.Publish)
}

// TestWithholdSkipsTheWrite pins the withholding trick: a PUBLISH given
// the Reserved type in OnPacketEncode is not written, WritePacket reports
// an error for it, and the connection carries on.
func TestWithholdSkipsTheWrite(t *testing.T) {
	rec := &recorder{provides: []byte{mqtt.OnPacketEncode},
		onEncode: func(cl *mqtt.Client, pk packets.Packet) packets.Packet {
			if pk.FixedHeader.Type == packets.Publish && string(pk.Payload) == "withheld" {
				mochix.Withhold(cl, &pk)
			}
			return pk
		}}
	srv, addr := startServer(t, rec)
	sub, _ := brokertest.DialRawClient(t, addr, 5, "sub", brokertest.RawOptions{})
	sub.Subscribe(1, 0, "w/#")
	for _, p := range []string{"withheld", "kept"} {
		if err := srv.Publish("w/x", []byte(p), false, 0); err != nil {
			t.Fatal(err)
		}
	}
	if got := sub.DecodePublish(sub.Expect(packets.Publish)); string(got.Payload) != "kept" {
		t.Fatalf("first PUBLISH written: %q, want the one after the withheld one", got.Payload)
	}
	cl, _ := mochix.Client(srv, "sub")
	err := cl.WritePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "w/x", Payload: []byte("withheld")})
	if !errors.Is(err, packets.ErrNoValidPacketAvailable) {
		t.Errorf("WritePacket of a withheld packet: %v, want ErrNoValidPacketAvailable", err)
	}
	if err := srv.Publish("w/x", []byte("after"), false, 0); err != nil {
		t.Fatal(err)
	}
	if got := sub.DecodePublish(sub.Expect(packets.Publish)); string(got.Payload) != "after" {
		t.Fatalf("after a withheld write: %q", got.Payload)
	}
}

// TestInjectWithInlineClient pins how forwarded publishes enter mochi: an
// inline client's InjectPacket runs OnPublish (with cl.Net.Inline set, so
// hooks can skip it) and OnRetainMessage, delivers QoS 1/2 as such, keeps
// nothing in the injector's queue, and refuses a QoS 1/2 packet without a
// packet id.
func TestInjectWithInlineClient(t *testing.T) {
	var inlinePublish, inlineRetain atomic.Int32
	rec := &recorder{provides: []byte{mqtt.OnPublish, mqtt.OnRetainMessage},
		onPublish: func(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
			if cl.Net.Inline {
				inlinePublish.Add(1)
			}
			return pk, nil
		},
		onRetain: func(cl *mqtt.Client, pk packets.Packet) {
			if cl.Net.Inline {
				inlineRetain.Add(1)
			}
		}}
	srv, addr := startServer(t, rec)
	sub, _ := brokertest.DialRawClient(t, addr, 5, "sub", brokertest.RawOptions{})
	sub.Subscribe(1, 2, "i/#")
	inj := mochix.Inline(srv, "inj")
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2, Retain: true}, TopicName: "i/x", PacketID: 1, Payload: []byte("x")}
	if err := srv.InjectPacket(inj, pk); err != nil {
		t.Fatal(err)
	}
	got := sub.Expect(packets.Publish)
	if qos := (got.Flags >> 1) & 3; qos != 2 {
		t.Errorf("injected QoS 2 delivered with QoS %d", qos)
	}
	if inlinePublish.Load() != 1 || inlineRetain.Load() != 1 {
		t.Errorf("OnPublish/OnRetainMessage saw the inline client %d/%d times, want 1/1", inlinePublish.Load(), inlineRetain.Load())
	}
	if n := mochix.QueueLen(inj); n != 0 {
		t.Errorf("injector's queue holds %d messages", n)
	}
	pk.PacketID = 0
	if err := srv.InjectPacket(inj, pk); err == nil {
		t.Error("InjectPacket accepted a QoS 2 PUBLISH without packet id")
	}
}

// TestQueueAccounting pins the queue operations: Enqueue takes a free
// packet id and counts the message in Info.Inflight, Dequeue takes it out
// once, and a client taken over refuses a message (ErrTakenOver).
func TestQueueAccounting(t *testing.T) {
	srv, addr := startServer(t)
	d := mochix.Detached(srv, "d", func(cl *mqtt.Client) {
		cl.Properties.ProtocolVersion = 5
		cl.Properties.Props.SessionExpiryInterval = 300
		mochix.Restore(cl, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 1, TopicName: "q", Payload: []byte("r")})
	})
	before := atomic.LoadInt64(&srv.Info.Inflight)
	q, err := mochix.Enqueue(srv, d, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: "q", Payload: []byte("e")})
	if err != nil {
		t.Fatal(err)
	}
	if q.PacketID == 0 || q.PacketID == 1 {
		t.Errorf("Enqueue chose packet id %d (1 is in use)", q.PacketID)
	}
	if n := atomic.LoadInt64(&srv.Info.Inflight); n != before+1 {
		t.Errorf("Info.Inflight %d after Enqueue, want %d", n, before+1)
	}
	if !mochix.Dequeue(srv, d, q.PacketID) || mochix.Dequeue(srv, d, q.PacketID) {
		t.Error("Dequeue twice: want true then false")
	}
	if n := atomic.LoadInt64(&srv.Info.Inflight); n != before {
		t.Errorf("Info.Inflight %d after Dequeue, want %d", n, before)
	}

	c, _ := brokertest.DialRawClient(t, addr, 5, "d", brokertest.RawOptions{KeepSession: true, SessionExpiry: 300})
	c.Expect(packets.Publish) // the restored message, resent
	if !d.IsTakenOver() {
		t.Fatal("connecting did not take the detached session over")
	}
	if _, err := mochix.Enqueue(srv, d, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: "q"}); !errors.Is(err, mochix.ErrTakenOver) {
		t.Errorf("Enqueue to a taken-over client: %v, want ErrTakenOver", err)
	}
	if mochix.QueueLen(d) != 0 {
		t.Error("the taken-over client kept the message")
	}
}

// TestDetachedSessionIsInherited pins how a moved session is installed: a
// Detached session is taken over by the next CONNECT of its id (session
// present), which gets its queue (resent) and subscriptions; mochi
// reports the old queue's messages with OnQosDropped on the taken-over
// client (broker/quirks collects what it queued there after the clone).
func TestDetachedSessionIsInherited(t *testing.T) {
	dropped := make(chan bool, 4)
	rec := &recorder{provides: []byte{mqtt.OnQosDropped},
		onDropped: func(cl *mqtt.Client, pk packets.Packet) { dropped <- cl.IsTakenOver() }}
	srv, addr := startServer(t, rec)
	mochix.Detached(srv, "m", func(cl *mqtt.Client) {
		cl.Properties.ProtocolVersion = 5
		cl.Properties.Props.SessionExpiryInterval = 300
		mochix.Restore(cl, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 7, TopicName: "m/old", Payload: []byte("old")})
		mochix.Subscribe(srv, cl, packets.Subscription{Filter: "m/#", Qos: 1})
	})
	c, ack := brokertest.DialRawClient(t, addr, 5, "m", brokertest.RawOptions{KeepSession: true, SessionExpiry: 300})
	if len(ack.Body) < 2 || ack.Body[0]&1 == 0 || ack.Body[1] != 0 {
		t.Fatalf("CONNACK %x: want success with session present", ack.Body)
	}
	if got := c.DecodePublish(c.Expect(packets.Publish)); string(got.Payload) != "old" || got.PacketID != 7 {
		t.Errorf("resent %q id %d, want the queued message with its id 7", got.Payload, got.PacketID)
	}
	if !<-dropped {
		t.Error("OnQosDropped of the old queue: client not marked taken over")
	}
	if err := srv.Publish("m/new", []byte("new"), false, 1); err != nil {
		t.Fatal(err)
	}
	if got := c.DecodePublish(c.Expect(packets.Publish)); string(got.Payload) != "new" {
		t.Errorf("after the takeover: %q, want the subscription to carry over", got.Payload)
	}
}

// TestOnConnectErrorSendsNothing pins why a refusal sends its CONNACK
// itself: an OnConnect error closes the connection without one.
func TestOnConnectErrorSendsNothing(t *testing.T) {
	// called orders the connection goroutine's start (mochi's NewClient
	// reads server fields) before the cleanup's Close, which writes them
	// without synchronization in mochi v2.7.9 (the race detector saw it
	// about once in 200 runs).
	called := make(chan struct{}, 1)
	rec := &recorder{provides: []byte{mqtt.OnConnect},
		onConnect: func(*mqtt.Client, packets.Packet) error {
			called <- struct{}{}
			return packets.ErrServerUnavailable
		}}
	_, addr := startServer(t, rec)
	c := brokertest.DialRaw(t, addr)
	if _, err := c.Write(brokertest.RawConnect(5, "x")); err != nil {
		t.Fatal(err)
	}
	if got, _ := brokertest.WaitClosedByPeer(t, c, brokertest.Timeout); len(got) != 0 {
		t.Fatalf("after an OnConnect error the broker sent %v; want the connection closed with nothing sent", got)
	}
	<-called
}

// TestPublishHookErrors pins why a refused QoS 2 publish is acknowledged
// by hand: a v5 QoS 2 publish whose OnPublish fails with a reason code is
// answered with a PUBACK (not a PUBREC), and one failing with
// ErrRejectPacket is not answered at all.
func TestPublishHookErrors(t *testing.T) {
	rec := &recorder{provides: []byte{mqtt.OnPublish},
		onPublish: func(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
			switch pk.TopicName {
			case "code":
				return pk, packets.ErrImplementationSpecificError
			case "reject":
				return pk, packets.ErrRejectPacket
			}
			return pk, nil
		}}
	_, addr := startServer(t, rec)
	c, _ := brokertest.DialRawClient(t, addr, 5, "p", brokertest.RawOptions{})
	c.Publish(1, "code", 2, "x")
	if p := c.Read(); p.Type != packets.Puback || len(p.Body) < 3 || p.Body[2] != 0x83 {
		t.Fatalf("QoS 2 publish failed by a hook code: type %d body %x; mochi used to answer PUBACK 0x83", p.Type, p.Body)
	}
	c.Publish(2, "reject", 2, "x")
	c.Ping() // no ack before the PINGRESP
}

// TestQosPublishBeforeWrite pins the order the handoff relies on to take
// back a queued message before it is written: OnQosPublish runs once the
// message is in the client's queue and before its OnPacketEncode.
func TestQosPublishBeforeWrite(t *testing.T) {
	events := make(chan string, 8)
	rec := &recorder{provides: []byte{mqtt.OnQosPublish, mqtt.OnPacketEncode},
		onQosPublish: func(cl *mqtt.Client, pk packets.Packet) {
			inQueue := false
			for _, q := range mochix.Queued(cl) {
				inQueue = inQueue || q.PacketID == pk.PacketID
			}
			if inQueue {
				events <- "queued"
			} else {
				events <- "queued-but-missing"
			}
		},
		onEncode: func(cl *mqtt.Client, pk packets.Packet) packets.Packet {
			if pk.FixedHeader.Type == packets.Publish {
				events <- "encode"
			}
			return pk
		}}
	srv, addr := startServer(t, rec)
	sub, _ := brokertest.DialRawClient(t, addr, 5, "s", brokertest.RawOptions{})
	sub.Subscribe(1, 1, "o/#")
	if err := srv.Publish("o/x", []byte("x"), false, 1); err != nil {
		t.Fatal(err)
	}
	sub.Expect(packets.Publish)
	if a, b := <-events, <-events; a != "queued" || b != "encode" {
		t.Fatalf("events %q, %q; want queued, then encode", a, b)
	}
}

// TestWillDelayAndIdentity pins what the will hook relies on: mochi reads
// a will's delay from the client's properties, not from the will OnWill
// returns, and a will's delivery carries its client's id as Origin and
// its creation second.
func TestWillDelayAndIdentity(t *testing.T) {
	deliveries := make(chan packets.Packet, 4)
	rec := &recorder{provides: []byte{mqtt.OnWill, mqtt.OnQosPublish},
		onWill: func(cl *mqtt.Client, w mqtt.Will) (mqtt.Will, error) {
			if cl.ID == "now" {
				mochix.ClearWillDelay(cl)
			}
			w.WillDelayInterval = 0 // ignored by mochi
			return w, nil
		},
		onQosPublish: func(cl *mqtt.Client, pk packets.Packet) { deliveries <- pk }}
	_, addr := startServer(t, rec)
	sub, _ := brokertest.DialRawClient(t, addr, 5, "sub", brokertest.RawOptions{})
	sub.Subscribe(1, 1, "will/#")
	withWill := func(id string) {
		c := &brokertest.RawClient{T: t, Conn: brokertest.DialRaw(t, addr), Version: 5}
		c.Write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
			Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: id,
				WillFlag: true, WillTopic: "will/" + id, WillPayload: []byte(id), WillQos: 1,
				WillProperties: packets.Properties{WillDelayInterval: 30}}})
		c.Expect(packets.Connack)
		_ = c.Conn.Close()
	}
	before := time.Now().Unix()
	withWill("later") // delayed 30 s: must not come before "now"'s
	withWill("now")
	got := sub.DecodePublish(sub.Expect(packets.Publish))
	if string(got.Payload) != "now" {
		t.Fatalf("first will delivered: %q; mochi took the delay from the will OnWill returned", got.Payload)
	}
	pk := <-deliveries
	if pk.Origin != "now" || pk.Created < before || pk.Created > time.Now().Unix() {
		t.Errorf("will delivery: origin %q created %d; want the client id and the time of its will", pk.Origin, pk.Created)
	}
}

// toggled provides OnPacketEncode only while on is set.
type toggled struct {
	mqtt.HookBase
	on, calls atomic.Int32
}

func (h *toggled) ID() string { return "toggled" }
func (h *toggled) Provides(b byte) bool {
	return b == mqtt.OnPacketEncode && h.on.Load() > 0
}
func (h *toggled) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	h.calls.Add(1)
	return pk
}

// TestProvidesAskedAtEveryEvent pins what keeps the per-message hooks off
// the hot path (broker/refuse, the cluster's handoff hook): mochi asks a
// hook's Provides at every event, so a hook can take part in an event only
// while it has something to do.
func TestProvidesAskedAtEveryEvent(t *testing.T) {
	h := new(toggled)
	_, addr := startServer(t, h)
	c, _ := brokertest.DialRawClient(t, addr, 5, "c", brokertest.RawOptions{})
	c.Ping()
	if n := h.calls.Load(); n != 0 {
		t.Fatalf("OnPacketEncode called %d times while not provided", n)
	}
	h.on.Store(1)
	c.Ping()
	if n := h.calls.Load(); n != 1 {
		t.Fatalf("OnPacketEncode called %d times for one PINGRESP once provided; mochi caches Provides", n)
	}
}

// TestDisconnectListener: the listener's connected clients get DISCONNECT
// 0x8B and are closed, as with mochi's own close function.
func TestDisconnectListener(t *testing.T) {
	srv, addr := startServer(t)
	c, _ := brokertest.DialRawClient(t, addr, 5, "c", brokertest.RawOptions{})
	mochix.DisconnectListener(srv, "other")
	c.Ping() // a client of another listener is untouched
	mochix.DisconnectListener(srv, "t")
	got, _ := brokertest.WaitClosedByPeer(t, c.Conn, brokertest.Timeout)
	if len(got) != 1 || got[0].Type != packets.Disconnect || len(got[0].Body) < 1 || got[0].Body[0] != 0x8B {
		t.Fatalf("before the close the client got %v, want DISCONNECT 0x8B", got)
	}
}

// TestCancelDelayedWill pins the table CancelDelayedWill reaches into: a
// client that loses its connection with a will delay, its session kept,
// leaves its will in mochi's table of delayed wills under its id.
func TestCancelDelayedWill(t *testing.T) {
	srv, addr := startServer(t)
	c, _ := brokertest.DialRawClient(t, addr, 5, "dw", brokertest.RawOptions{})
	_ = c.Conn.Close()
	brokertest.Eventually(t, "the client to be disconnected", func() bool {
		cl, ok := mochix.Client(srv, "dw")
		return !ok || cl.Closed()
	})
	if mochix.CancelDelayedWill(srv, "dw") {
		t.Fatal("a client without a will has a delayed will")
	}
	wc := connectWithDelayedWill(t, addr, "dw2")
	_ = wc.Conn.Close()
	brokertest.Eventually(t, "the will to be delayed", func() bool {
		cl, ok := mochix.Client(srv, "dw2")
		return ok && cl.Closed()
	})
	if !mochix.CancelDelayedWill(srv, "dw2") {
		t.Fatal("no delayed will in mochi's table (Server.loop.willDelayed) for a client that left one: " +
			"mochix.CancelDelayedWill reaches nothing; delayed wills are no longer cancelled across nodes")
	}
	if mochix.CancelDelayedWill(srv, "dw2") {
		t.Error("the delayed will is still there after CancelDelayedWill")
	}
}

// TestWithheldLastWriteStrandsTheBuffer pins why Withhold flushes: mochi
// buffers a packet while more wait in the client's outbound queue and
// writes the buffer out with the last one; a withheld last packet fails
// before that, so the packets before it stay in the buffer (here:
// nothing arrives) until FlushWrites — or, with Withhold, not at all. If
// this mochi flushes anyway, the flush in Withhold can go.
func TestWithheldLastWriteStrandsTheBuffer(t *testing.T) {
	for _, withhold := range []string{"reserved type only", "Withhold"} {
		t.Run(withhold, func(t *testing.T) {
			release, lastSeen := make(chan struct{}), make(chan struct{})
			rec := &recorder{provides: []byte{mqtt.OnPacketEncode},
				onEncode: func(cl *mqtt.Client, pk packets.Packet) packets.Packet {
					switch string(pk.Payload) {
					case "p0":
						<-release // the write loop waits while the rest queue up
					case "last":
						if withhold == "Withhold" {
							mochix.Withhold(cl, &pk)
						} else {
							pk.FixedHeader.Type = packets.Reserved
						}
						close(lastSeen)
					}
					return pk
				}}
			srv, addr := startServer(t, rec)
			sub, _ := brokertest.DialRawClient(t, addr, 5, "sub", brokertest.RawOptions{})
			sub.Subscribe(1, 0, "w/#")
			for _, p := range []string{"p0", "p1", "p2", "last"} {
				if err := srv.Publish("w/x", []byte(p), false, 0); err != nil {
					t.Fatal(err)
				}
			}
			close(release)
			<-lastSeen
			if withhold != "Withhold" {
				// Nothing can be awaited: the point is that nothing comes.
				if p, err := brokertest.ReadPacket(sub.Conn, time.Now().Add(300*time.Millisecond)); err == nil {
					t.Fatalf("a packet (type %d) arrived: mochi flushes after a withheld last write now; drop the flush in Withhold", p.Type)
				}
				cl, _ := mochix.Client(srv, "sub")
				if err := mochix.FlushWrites(cl); err != nil {
					t.Fatalf("FlushWrites: %v", err)
				}
			}
			for _, want := range []string{"p0", "p1", "p2"} {
				if got := sub.DecodePublish(sub.Expect(packets.Publish)); string(got.Payload) != want {
					t.Fatalf("got %q, want %q", got.Payload, want)
				}
			}
		})
	}
}

// connectWithDelayedWill connects a v5 client id whose session and will
// delay last 10 minutes.
func connectWithDelayedWill(t *testing.T, addr, id string) *brokertest.RawClient {
	t.Helper()
	w := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Keepalive: 30, ClientIdentifier: id,
			WillFlag: true, WillTopic: "dw/w", WillPayload: []byte("gone"),
			WillProperties: packets.Properties{WillDelayInterval: 600}},
		Properties: packets.Properties{SessionExpiryInterval: 600, SessionExpiryIntervalFlag: true}}
	wc := &brokertest.RawClient{T: t, Conn: brokertest.DialRaw(t, addr), Version: 5}
	wc.Write(w)
	wc.Expect(packets.Connack)
	return wc
}

// TestDropWill pins what DropWill relies on: mochi's sendLWT returns at
// once while the will flag is clear, so a client whose flag was cleared
// while connected leaves no delayed will when its connection ends.
func TestDropWill(t *testing.T) {
	srv, addr := startServer(t)
	wc := connectWithDelayedWill(t, addr, "dropw")
	cl, ok := mochix.Client(srv, "dropw")
	if !ok {
		t.Fatal("no client dropw")
	}
	mochix.DropWill(cl)
	_ = wc.Conn.Close()
	brokertest.Eventually(t, "the client to be disconnected", func() bool { return cl.Closed() })
	if mochix.CancelDelayedWill(srv, "dropw") {
		t.Fatal("mochi queued the will of a client whose will flag DropWill cleared: " +
			"mochix.DropWill no longer stops a will; a takeover across nodes would publish it")
	}
}
