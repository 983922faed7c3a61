package clusterhook_test

import (
	"encoding/json"
	"slices"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/broker/clusterhook"
	"github.com/mendmq/mendmq/broker/mochix"
	"github.com/mendmq/mendmq/cluster"
	"github.com/mendmq/mendmq/cluster/routes"
)

// healBlob is the queue of a dropped duplicate session as its node ships
// it (session.Heal).
func healBlob(t *testing.T, msgs ...wireMsg) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{"heal": true, "inflight": msgs})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// publishOn is publishMsg on another topic.
func publishOn(t *testing.T, topic, payload, from string, key uint64) wireMsg {
	t.Helper()
	b, err := clusterhook.EncodePublish(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName: topic, Payload: []byte(payload)})
	if err != nil {
		t.Fatal(err)
	}
	return wireMsg{T: packets.Publish, P: b, F: from, I: key}
}

// forward delivers payload on t/x as node from's publish id.
func forward(t *testing.T, n *node, from string, id uint64, payload string) {
	t.Helper()
	b, err := clusterhook.EncodePublish(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName: "t/x", Payload: []byte(payload)})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.hooks.Broker().DeliverForwarded(cluster.Delivery{From: from, ID: id, Msg: b}); err != nil {
		t.Fatal(err)
	}
}

// TestHealAppend: the winner's side. A session registered during a
// netsplit gets a message directly; at the heal the duplicate's queue
// arrives with that message again, one on a topic the winner is not
// subscribed to, one without an origin id and one new. The session gets
// each message once, at the QoS of its own subscription; a retried
// shipment adds nothing but the message without an origin id, which
// cannot be recognized (at least once); a message shipped before its
// direct copy arrives is not written twice.
func TestHealAppend(t *testing.T) {
	fake := &fakeCluster{split: true}
	n := startNode(t, fake, nil)
	c := brokertest.MustV5(t, n.url(), "w", brokertest.V5Options{KeepSession: true, SessionExpiry: 300})
	c.MustSub("t/#", 1)

	forward(t, n, "n3", 7, "direct")
	if m := c.Next(); string(m.Payload) != "direct" {
		t.Fatalf("got %q, want the direct delivery", m.Payload)
	}
	fake.mu.Lock()
	fake.split = false // healed
	fake.mu.Unlock()
	shipment := healBlob(t,
		publishMsg(t, 11, "direct", "n3", 7), // got it already
		publishMsg(t, 12, "shipped", "n1", 1),
		publishOn(t, "other/x", "unsubscribed", "n1", 2),
		publishMsg(t, 13, "no-key", "", 0),
		wireMsg{T: packets.Pubrel, ID: 14},
	)
	for range 2 { // a retried shipment
		if err := n.hooks.Broker().AppendSession("w", shipment); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.hooks.Broker().AppendSession("w", healBlob(t, publishMsg(t, 15, "ship-then-forward", "n3", 8))); err != nil {
		t.Fatal(err)
	}
	forward(t, n, "n3", 8, "ship-then-forward")
	forward(t, n, "n3", 9, "end")
	got := map[string]int{}
	for {
		m := c.Next()
		if string(m.Payload) == "end" {
			break
		}
		got[string(m.Payload)]++
		if m.QoS != 1 {
			t.Errorf("%q delivered at QoS %d, want the subscription's 1", m.Payload, m.QoS)
		}
	}
	expectOnce(t, got, "shipped", "no-key", "no-key", "ship-then-forward")
	// Three shipments: direct (had it), shipped, unsubscribed, no-key;
	// the same again; ship-then-forward.
	for _, tc := range []struct {
		outcome string
		want    float64
	}{
		{"appended", 4},       // shipped, no-key twice, ship-then-forward
		{"duplicate", 3},      // direct twice, shipped retried
		{"not_subscribed", 2}, // unsubscribed twice
	} {
		if got := n.counter(t, "mendmq_session_heal_messages_total", "outcome", tc.outcome); got != tc.want {
			t.Errorf("heal messages %s = %v, want %v", tc.outcome, got, tc.want)
		}
	}
	if got := n.counter(t, "mendmq_messages_dropped_total", "reason", "session_superseded"); got != 2 {
		t.Errorf("dropped as superseded = %v, want 2 (the unsubscribed ones)", got)
	}
}

// expectOnce fails unless got holds exactly want (counting repeats).
func expectOnce(t *testing.T, got map[string]int, want ...string) {
	t.Helper()
	w := map[string]int{}
	for _, p := range want {
		w[p]++
	}
	for p, k := range got {
		if w[p] != k {
			t.Errorf("%q received %d times, want %d", p, k, w[p])
		}
	}
	for p, k := range w {
		if got[p] == 0 {
			t.Errorf("%q never received, want %d", p, k)
		}
	}
}

// TestDropDuplicate: the loser's side. The local session lost to another
// node's: its client gets DISCONNECT 0x8E, the session is gone, and a
// persistent session's queued PUBLISH packets (not a QoS 2 exchange the
// client had begun) are shipped, with their origin ids, to the winner's
// node; a clean session's are not, nor are they when the winning CONNECT
// asked for a clean start.
func TestDropDuplicate(t *testing.T) {
	fake := &fakeCluster{}
	n := startNode(t, fake, nil)
	for _, id := range []string{"p", "s"} {
		mochix.Detached(n.srv, id, func(cl *mqtt.Client) {
			cl.Properties.ProtocolVersion = 5
			cl.Properties.Props.SessionExpiryInterval = 300
			for i, p := range []string{"q1", "q2"} {
				pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
					PacketID: uint16(i + 1), TopicName: "t/x", Payload: []byte(p)}
				mochix.Stamp(&pk, "n1", uint64(i+1))
				mochix.Restore(cl, pk)
			}
			mochix.Restore(cl, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel}, PacketID: 3})
			mochix.Subscribe(n.srv, cl, packets.Subscription{Filter: "t/#", Qos: 1})
		})
	}
	clean := brokertest.MustV5(t, n.url(), "e")
	clean.MustSub("t/#", 1)

	n.hooks.Broker().DropDuplicate("p", routes.SessionRecord{Node: "n3"})
	n.hooks.Broker().DropDuplicate("e", routes.SessionRecord{Node: "n3"})
	// The winning CONNECT asked for a clean start: nothing moves.
	n.hooks.Broker().DropDuplicate("s", routes.SessionRecord{Node: "n3", CleanStart: true})
	// "s"'s two queued PUBLISH packets are discarded at once (counted);
	// "e", a clean session, had nothing queued.
	if got := n.counter(t, "mendmq_messages_dropped_total", "reason", "session_superseded"); got != 2 {
		t.Errorf("dropped as superseded = %v, want 2 (the clean-started winner's duplicate's queue)", got)
	}
	if d := clean.WaitServerDisconnect(); d.ReasonCode != 0x8E {
		t.Errorf("the clean session's client got DISCONNECT 0x%02x, want 0x8E", d.ReasonCode)
	}
	for _, id := range []string{"p", "e", "s"} {
		if _, ok := mochix.Client(n.srv, id); ok {
			t.Errorf("session %s still on the node", id)
		}
	}
	brokertest.Eventually(t, "the shipment", func() bool {
		return n.counter(t, "mendmq_session_heal_messages_total", "outcome", "shipped") == 2
	})
	fake.mu.Lock()
	shipped := slices.Clone(fake.appended)
	fake.mu.Unlock()
	if len(shipped) != 1 {
		t.Fatalf("%d shipments, want 1 (the persistent session's)", len(shipped))
	}
	var s struct {
		Heal     bool      `json:"heal"`
		Inflight []wireMsg `json:"inflight"`
	}
	if err := json.Unmarshal(shipped[0], &s); err != nil {
		t.Fatal(err)
	}
	var keys []uint64
	for _, m := range s.Inflight {
		if m.T != packets.Publish || m.F != "n1" {
			t.Errorf("shipped %+v", m)
		}
		keys = append(keys, m.I)
	}
	slices.Sort(keys)
	if !s.Heal || !slices.Equal(keys, []uint64{1, 2}) || !slices.Equal(decodeInflight(t, shipped[0]), []string{"q1", "q2"}) {
		t.Errorf("shipment: heal %v, keys %v, payloads %v; want heal, keys [1 2], q1 q2", s.Heal, keys, decodeInflight(t, shipped[0]))
	}
}
