package clustertests

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/broker/mochix"
)

// testSessionMove: a persistent v5 session subscribes on n1 and
// disconnects; QoS 1 and 2 messages published on n3 queue on n1. The
// client reconnects to n2: the session is present, every queued message
// arrives exactly once, and the session (with its subscriptions) now
// lives on n2 only. A second hop to n3 keeps working.
func testSessionMove(t *testing.T, c *testCluster) {
	const id = "mover"
	opts := brokertest.V5Options{KeepSession: true, SessionExpiry: 300}
	first := brokertest.MustV5(t, c.url("n1"), id, opts)
	first.MustSub("mv/q1/#", 1)
	first.MustSub("mv/q2/#", 2)
	first.MustSub("mv/marker", 1)
	first.Close()
	c.waitRoutes() // the disconnected session still routes to n1

	pub := brokertest.MustV5(t, c.url("n3"), "mv-pub")
	var want []string
	for i := range 5 {
		for _, q := range []byte{1, 2} {
			p := fmt.Sprintf("q%d-%d", q, i)
			pub.MustPub(fmt.Sprintf("mv/q%d/x", q), q, false, p)
			want = append(want, p)
		}
	}
	// Acked publishes are in the offline session on n1.
	if cl, ok := mochix.Client(c.node("n1").Server(), id); !ok {
		t.Fatal("n1 lost the disconnected persistent session")
	} else if got := mochix.QueueLen(cl); got != len(want) {
		t.Fatalf("n1 queued %d messages for the offline session, want %d", got, len(want))
	}

	second := brokertest.MustV5(t, c.url("n2"), id, opts)
	if !second.Connack.SessionPresent {
		t.Fatal("reconnect on n2: CONNACK session present = false, want true")
	}
	var got []*paho.Publish
	for range want {
		got = append(got, second.Next())
	}
	// Publishing the marker after the routes moved turns "no duplicate
	// follows" into an event.
	c.waitRoutes()
	pub.MustPub("mv/marker", 1, false, "marker")
	got = append(got, second.Until("mv/marker")...)
	expectOnce(t, "moved session n1 -> n2", counts(got), want)
	if _, ok := mochix.Client(c.node("n1").Server(), id); ok {
		t.Error("n1 still holds the session after it moved to n2")
	}
	c.eventually("the moved queue to be acknowledged", func() (bool, string) {
		cl, ok := mochix.Client(c.node("n2").Server(), id)
		if !ok {
			return false, "n2 has no session " + id
		}
		n := mochix.QueueLen(cl)
		return n == 0, fmt.Sprintf("%d inflight", n)
	})

	// Second hop, with a message queued while away, published on n3, the
	// node the session moves to: mochi acknowledges a publish before it
	// delivers it to local subscribers, so the session imported there
	// can get it both live and in the queue n2 hands over; its publish
	// id makes it arrive once.
	second.Close()
	c.waitRoutes()
	pub3 := brokertest.MustV5(t, c.url("n3"), "mv-pub-n3")
	pub3.MustPub("mv/q1/y", 1, false, "hop2")
	third := brokertest.MustV5(t, c.url("n3"), id, opts)
	if !third.Connack.SessionPresent {
		t.Fatal("reconnect on n3: session present = false")
	}
	m := third.Next()
	c.waitRoutes()
	pub.MustPub("mv/marker", 1, false, "marker")
	rest := third.Until("mv/marker")
	expectOnce(t, "moved session n2 -> n3", counts(append([]*paho.Publish{m}, rest...)), []string{"hop2"})
	third.Close()
	// End the session: a clean start discards it everywhere.
	brokertest.MustV5(t, c.url("n1"), id).Close()
	c.waitRoutes()
}

// testTakenOver: a client id connected on n1 connects again on n2. The
// n1 connection gets DISCONNECT 0x8E (v5) or is closed (v3), and one
// session remains: a publish is received once, by the new connection.
func testTakenOver(t *testing.T, c *testCluster) {
	pub := brokertest.MustV5(t, c.url("n3"), "to-pub")

	t.Run("v5", func(t *testing.T) {
		opts := brokertest.V5Options{KeepSession: true, SessionExpiry: 60}
		old := brokertest.MustV5(t, c.url("n1"), "dup", opts)
		old.MustSub("dup/t", 1)
		old.MustSub("dup/m", 1)
		c.waitRoutes()
		nw := brokertest.MustV5(t, c.url("n2"), "dup", opts)
		if d := old.WaitServerDisconnect(); d.ReasonCode != 0x8E {
			t.Errorf("old connection got DISCONNECT 0x%02x, want 0x8E session taken over", d.ReasonCode)
		}
		if !nw.Connack.SessionPresent {
			t.Error("new connection: session present = false; the session (and its subscriptions) should have moved")
		}
		c.waitRoutes()
		if _, ok := mochix.Client(c.node("n1").Server(), "dup"); ok {
			t.Error("n1 still holds a session for the taken-over client")
		}
		pub.MustPub("dup/t", 1, false, "once")
		pub.MustPub("dup/m", 1, false, "marker")
		expectOnce(t, "new connection", counts(nw.Until("dup/m")), []string{"once"})
		if n := len(old.Msgs()); n != 0 {
			t.Errorf("old connection received %d messages after being taken over", n)
		}
		nw.Close()
		brokertest.MustV5(t, c.url("n2"), "dup").Close() // discard the session
	})

	t.Run("v3", func(t *testing.T) {
		old := brokertest.MustV3(t, c.url("n1"), "dup3")
		old.MustSub("dup3/t", 1)
		c.waitRoutes()
		nw := brokertest.MustV3(t, c.url("n3"), "dup3")
		if err := old.WaitLost(); err == nil {
			t.Error("old v3 connection: lost without an error")
		}
		nw.MustSub("dup3/t", 1)
		nw.MustSub("dup3/m", 1)
		c.waitRoutes()
		if _, ok := mochix.Client(c.node("n1").Server(), "dup3"); ok {
			t.Error("n1 still holds a session for the taken-over client")
		}
		pub.MustPub("dup3/t", 1, false, "once")
		pub.MustPub("dup3/m", 1, false, "marker")
		var got []string
		for _, m := range nw.Until("dup3/m") {
			got = append(got, string(m.Payload()))
		}
		if len(got) != 1 || got[0] != "once" {
			t.Errorf("new v3 connection got %q, want [once]", got)
		}
	})
}

// testWill: a client with a (retained) will dies on n1 without
// DISCONNECT; subscribers on n2 and n3 get the will once, and it is
// retained on every node.
func testWill(t *testing.T, c *testCluster) {
	var subs []*brokertest.V5
	for _, n := range []string{"n2", "n3"} {
		s := brokertest.MustV5(t, c.url(n), "will-sub-"+n)
		s.MustSub("will/#", 1)
		subscribed(t, s)
		subs = append(subs, s)
	}
	w := brokertest.MustV5(t, c.url("n1"), "will-client", brokertest.V5Options{
		Will: &paho.WillMessage{Topic: "will/w", QoS: 1, Retain: true, Payload: []byte("gone")},
	})
	c.waitRoutes()
	w.Drop()
	// The will and the marker come from different publishers, so their
	// order is not guaranteed (the receiving node serves forwarded QoS 1
	// messages concurrently): wait for the will itself, then use the
	// marker to see that no second copy follows.
	for i, s := range subs {
		if m := s.Next(); string(m.Payload) != "gone" || m.Topic != "will/w" {
			t.Errorf("subscriber %d: got %q on %s, want the will", i, m.Payload, m.Topic)
		}
	}
	c.waitRetained("will/w", "gone")
	marker := brokertest.MustV5(t, c.url("n1"), "will-marker")
	marker.MustPub("will/m", 1, false, "marker")
	for i, s := range subs {
		expectOnce(t, fmt.Sprintf("subscriber %d after the will", i), counts(s.Until("will/m")), nil)
	}
	marker.MustPub("will/w", 1, true, "")
	c.waitRetained("will/w", "")
}

// testDelayedWillOfEndedSession: a will with a delay, of a session that
// ends with its connection, is due at once (the delay or the end of the
// session, whichever comes first) and reaches subscribers on every node.
func testDelayedWillOfEndedSession(t *testing.T, c *testCluster) {
	s := brokertest.MustV5(t, c.url("n2"), "dwill-sub")
	s.MustSub("dwill/#", 1)
	w := brokertest.MustV5(t, c.url("n1"), "dwill-client", brokertest.V5Options{
		Will:           &paho.WillMessage{Topic: "dwill/w", QoS: 1, Payload: []byte("gone")},
		WillProperties: &paho.WillProperties{WillDelayInterval: ptr(uint32(300))},
	})
	c.waitRoutes()
	w.Drop()
	if m := s.Next(); string(m.Payload) != "gone" {
		t.Fatalf("got %q on %s, want the will", m.Payload, m.Topic)
	}
}

func ptr[T any](v T) *T { return &v }

// testPublishRightAfterMove: QoS 1 publishes from a third node, acked right
// after a moved session's CONNACK, all reach the session on its new node.
// Before the moved record was replicated synchronously at CONNECT, the
// publisher's node could still route to the old node, which had dropped
// the subscriptions: acked and lost. The session hops between n1 and n2
// several times to give the race room.
func testPublishRightAfterMove(t *testing.T, c *testCluster) {
	const id = "quick-mover"
	opts := brokertest.V5Options{KeepSession: true, SessionExpiry: 300}
	first := brokertest.MustV5(t, c.url("n1"), id, opts)
	first.MustSub("qm/#", 1)
	first.Close()
	c.waitRoutes()
	pub := brokertest.MustV5(t, c.url("n3"), "qm-pub")
	for hop := range 12 {
		to := []string{"n2", "n1"}[hop%2]
		cl := brokertest.MustV5(t, c.url(to), id, opts)
		want := seq(fmt.Sprintf("qm%d-", hop), 5)
		for _, p := range want {
			pub.MustPub("qm/x", 1, false, p)
		}
		// A message of an earlier hop may come again: the client closed
		// before its PUBACK was processed, so it stayed in the session
		// and is redelivered (QoS 1 is at least once). Those are skipped.
		var got []*paho.Publish
		prefix := fmt.Sprintf("qm%d-", hop)
		for len(got) < len(want) {
			m := cl.Next()
			if !strings.HasPrefix(string(m.Payload), prefix) {
				continue
			}
			got = append(got, m)
		}
		expectOnce(t, fmt.Sprintf("hop %d to %s: publishes right after the move", hop, to), counts(got), want)
		cl.Close()
		srv := c.node(to).Server()
		brokertest.Eventually(t, "the mover to be disconnected on "+to, func() bool {
			old, ok := mochix.Client(srv, id)
			return !ok || old.Closed()
		})
	}
	pub.Close()
	c.waitDisconnected()
}

// testTakeoverUnderLoad: a persistent session moves from n1 to n2 while
// QoS 2 messages stream in from publishers on n1 (the old node's own
// clients), n2 (the new node) and n3 (a third node). Every acknowledged
// message reaches the client, on the first connection or on the second,
// and the second never gets one twice. Without the handoff
// (broker/clusterhook handoff.go) the old node dropped what arrived
// between its export and the moment every node routed to the new one.
//
// The first connection disconnects (keeping its session) just before the
// move rather than being taken over live: a paho client that is cut off
// mid-exchange may have acknowledged a QoS 2 message it never handed to
// the application, which a new client instance (without the old one's
// session state) cannot make up for. That is client behaviour, not the
// broker's; testTakenOver covers the live takeover itself.
func testTakeoverUnderLoad(t *testing.T, c *testCluster) {
	const (
		id     = "streamer"
		before = 60 // messages per publisher before the takeover
		total  = 160
	)
	opts := brokertest.V5Options{KeepSession: true, SessionExpiry: 300}
	old := brokertest.MustV5(t, c.url("n1"), id, opts)
	old.MustSub("ld/#", 2)
	c.waitRoutes()

	// Clients whose QoS 2 wills go to the session die while it moves: a
	// will has no publish id of its own in mochi's deliveries, yet it
	// must reach the session once too, whether the old node's shadow
	// caught it or the new node delivered it (or both).
	const nWills = 8
	var willers []*brokertest.V5
	var wantWills []string
	for k := range nWills {
		n := []string{"n1", "n2"}[k%2]
		payload := fmt.Sprintf("will-%s-%d", n, k)
		willers = append(willers, brokertest.MustV5(t, c.url(n), "ld-will-"+payload, brokertest.V5Options{
			Will: &paho.WillMessage{Topic: "ld/will", QoS: 2, Payload: []byte(payload)},
		}))
		wantWills = append(wantWills, payload)
	}
	var nw *brokertest.V5
	want := streamDuringMove(t, c, "ld", before, total, func() {
		old.Close()
		willsDone := make(chan struct{})
		go func() {
			defer close(willsDone)
			for _, w := range willers {
				w.Drop()
				time.Sleep(2 * time.Millisecond) // spread them over the move
			}
		}()
		nw = brokertest.MustV5(t, c.url("n2"), id, opts)
		<-willsDone
		if !nw.Connack.SessionPresent {
			t.Fatal("reconnect on n2 under load: session present = false")
		}
	})
	want = append(want, wantWills...)
	oldGot := map[string]int{}
	for drained := false; !drained; {
		select {
		case m := <-old.Msgs():
			oldGot[string(m.Payload)]++
		default:
			drained = true
		}
	}
	expectHandedOver(t, c, "ld", want, oldGot, nw)
	nw.Close()
	brokertest.MustV5(t, c.url("n2"), id).Close() // discard the session
	c.waitRoutes()
}

// streamDuringMove has a client on every node publish total QoS 2
// messages to prefix/<node>, runs move once each has sent before of
// them (the publishers go on meanwhile), and returns the payloads that
// were acknowledged with success.
func streamDuringMove(t *testing.T, c *testCluster, prefix string, before, total int, move func()) []string {
	t.Helper()
	pubNodes := slices.Clone(c.names)
	acked := make([][]string, len(pubNodes))
	errs := make([]error, len(pubNodes))
	reached := make(chan struct{}, len(pubNodes))
	goOn := make(chan struct{})
	var wg sync.WaitGroup
	for i, n := range pubNodes {
		p := brokertest.MustV5(t, c.url(n), prefix+"-pub-"+n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range total {
				if k == before {
					reached <- struct{}{}
					<-goOn
				}
				payload := fmt.Sprintf("%s-%d", n, k)
				ctx, cancel := timeoutCtx()
				resp, err := p.Publish(ctx, &paho.Publish{Topic: prefix + "/" + n, QoS: 2, Payload: []byte(payload)})
				cancel()
				if err != nil {
					errs[i] = fmt.Errorf("publish %s: %w", payload, err)
					if k < before {
						reached <- struct{}{}
						<-goOn
					}
					return
				}
				if resp.ReasonCode < 0x80 {
					acked[i] = append(acked[i], payload)
				}
			}
		}()
	}
	for range pubNodes {
		<-reached
	}
	close(goOn)
	move()
	wg.Wait()
	var want []string
	for i := range pubNodes {
		if errs[i] != nil {
			t.Fatalf("publisher on %s: %v", pubNodes[i], errs[i])
		}
		want = append(want, acked[i]...)
	}
	return want
}

// expectHandedOver waits until every payload of want reached the old
// connection (oldGot) or the new one (nw), then closes the stream with a
// marker on prefix/m from every node and fails on any payload the new
// connection got more than once.
func expectHandedOver(t *testing.T, c *testCluster, prefix string, want []string, oldGot map[string]int, nw *brokertest.V5) {
	t.Helper()
	newGot := map[string]int{}
	missing := func() []string {
		var out []string
		for _, p := range want {
			if oldGot[p] == 0 && newGot[p] == 0 {
				out = append(out, p)
			}
		}
		return out
	}
	deadline := time.After(brokertest.Timeout)
	for len(missing()) > 0 {
		select {
		case m := <-nw.Msgs():
			newGot[string(m.Payload)]++
		case <-deadline:
			miss := missing()
			t.Fatalf("%d of %d acknowledged messages never reached the client (old got %d, new got %d): %v",
				len(miss), len(want), len(oldGot), len(newGot), miss[:min(len(miss), 20)])
		}
	}
	// Nothing more than once on the new connection, including what is
	// still in flight: a marker from each publishing node closes it.
	for _, n := range c.names {
		m := brokertest.MustV5(t, c.url(n), prefix+"-marker-"+n)
		m.MustPub(prefix+"/m", 1, false, "marker")
		for _, p := range nw.Until(prefix + "/m") {
			newGot[string(p.Payload)]++
		}
		m.Close()
	}
	for p, k := range newGot {
		if k > 1 {
			t.Errorf("new connection got QoS 2 message %s %d times", p, k)
		}
	}
	t.Logf("%d acknowledged: %d on the old connection, %d on the new one", len(want), len(oldGot), len(newGot))
}
