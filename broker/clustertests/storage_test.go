package clustertests

import (
	"bytes"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/broker/config"
	"github.com/mendmq/mendmq/broker/mochix"
)

// TestMovedSessionSurvivesRestart: with storage, a persistent session that
// moved from n1 to n2 lives in n2's store (subscriptions and queued
// messages, handed-over ones included) and no longer in n1's. Restarting
// both nodes, n2 brings the session back with its queue and n1 does not
// resurrect the stale copy it held before the move (which would take the
// session's routes back and swallow its messages).
func TestMovedSessionSurvivesRestart(t *testing.T) {
	c := newCluster(t, 3, clusterOptions{Storage: true})
	const id = "ms-persistent"
	opts := brokertest.V5Options{KeepSession: true, SessionExpiry: 3600}
	pub := brokertest.MustV5(t, c.url("n3"), "ms-pub")

	s := brokertest.MustV5(t, c.url("n1"), id, opts)
	s.MustSub("ms/#", 1)
	s.Close()
	c.waitRoutes()
	pub.MustPub("ms/queued-on-n1", 1, false, "a")

	// The session moves to n2 with its queue; the client takes nothing
	// and leaves, and another message queues on n2.
	resumeWithoutAck(t, c.node("n2").ListenerAddr(0), id)
	c.waitRoutes()
	pub.MustPub("ms/queued-on-n2", 1, false, "b")
	pub.Close()

	// Restart both. n2 first, so that n1 comes back to a cluster that
	// knows where the session lives.
	for _, n := range []string{"n2", "n1"} {
		c.stop(n)
		c.start(n)
		c.waitFormed()
		c.waitTables()
	}
	if cl, ok := mochix.Client(c.node("n1").Broker.Server(), id); ok {
		t.Errorf("n1 restored the session that moved to n2 (its node is %s)", cl.Net.Listener)
	}

	s = brokertest.MustV5(t, c.url("n2"), id, opts)
	if !s.Connack.SessionPresent {
		t.Fatal("reconnect on n2 after its restart: session present = false")
	}
	pub = brokertest.MustV5(t, c.url("n3"), "ms-pub")
	pub.MustPub("ms/after-restart", 1, false, "c")
	pub.MustPub("ms/m", 1, false, "marker")
	expectOnce(t, "session after the restarts", counts(s.Until("ms/m")), []string{"a", "b", "c"})
	s.Close()
	brokertest.MustV5(t, c.url("n2"), id).Close() // discard the session
}

// resumeWithoutAck resumes the v5 session of id at addr over a raw
// connection, reads the first queued PUBLISH without acknowledging it and
// drops the connection, so that the message stays queued.
func resumeWithoutAck(t *testing.T, addr, id string) {
	t.Helper()
	pk := packets.Packet{
		ProtocolVersion: 5,
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Keepalive: 30, ClientIdentifier: id},
		Properties:      packets.Properties{SessionExpiryInterval: 3600, SessionExpiryIntervalFlag: true},
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	nc := brokertest.DialRaw(t, addr)
	if _, err := nc.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	ack := brokertest.ReadRaw(t, nc)
	if ack.Type != packets.Connack || len(ack.Body) < 2 || ack.Body[0]&1 == 0 || ack.Body[1] != 0 {
		t.Fatalf("resume %s on %s: got packet type %d %x, want a CONNACK with session present", id, addr, ack.Type, ack.Body)
	}
	deadline := time.Now().Add(brokertest.Timeout)
	for {
		p, err := brokertest.ReadPacket(nc, deadline)
		if err != nil {
			t.Fatalf("resume %s on %s: no queued PUBLISH: %v", id, addr, err)
		}
		if p.Type == packets.Publish {
			break
		}
	}
	_ = nc.Close()
}

// TestRestoredSessionSuperseded: n1 crashes while it holds a persistent
// session with a queued message; the client reconnects on n2, which
// cannot take the session from a dead node and starts a new one (and
// subscribes again). When n1 comes back with its storage, its restored
// copy must not take the session's routes back: it is dropped, its queued
// message — acknowledged to its publisher — goes to the session on n2
// (as a duplicate's queue does at a netsplit's heal, heal.go), and the
// client's messages keep reaching it on n2, once.
func TestRestoredSessionSuperseded(t *testing.T) {
	// The client reconnects on n2 while n1 is down: n2 is in a
	// netsplit until n1 is back, so registration must be allowed then.
	c := newCluster(t, 3, clusterOptions{Faults: true, Storage: true, Mutate: func(_ string, cfg *config.Config) {
		cfg.Cluster.AllowRegisterDuringNetsplit = true
		cfg.Cluster.AllowSubscribeDuringNetsplit = true
	}})
	const id = "rs-persistent"
	opts := brokertest.V5Options{KeepSession: true, SessionExpiry: 3600}
	s := brokertest.MustV5(t, c.url("n1"), id, opts)
	s.MustSub("rs/#", 1)
	s.Close()
	c.waitRoutes()
	pub := brokertest.MustV5(t, c.url("n3"), "rs-pub")
	pub.MustPub("rs/queued-on-n1", 1, false, "stale")

	crash(t, c, "n1")
	s = brokertest.MustV5(t, c.url("n2"), id, opts)
	if s.Connack.SessionPresent {
		t.Fatal("connect on n2 while n1 is down: session present = true, want a new session")
	}
	s.MustSub("rs/#", 1)
	c.waitRoutes()

	c.net.Heal()
	restarted := c.start("n1")
	c.waitFormed()
	c.waitTables()
	restarted.WaitMetric(1, "mendmq_session_heal_messages_total", "outcome", "shipped")
	c.node("n2").WaitMetric(1, "mendmq_session_heal_messages_total", "outcome", "appended")
	if d := restarted.Metric("mendmq_messages_dropped_total", "reason", "session_superseded"); d != 0 {
		t.Errorf("restarted n1 dropped %v queued messages as superseded, want 0 (moved to n2)", d)
	}
	if _, ok := mochix.Client(restarted.Broker.Server(), id); ok {
		t.Error("restarted n1 kept the session that lives on n2")
	}
	for _, n := range c.names {
		if got, ok := c.node(n).Cluster().SessionNode(id); !ok || got != "n2" {
			t.Errorf("%s places the session on %q (%v), want n2", n, got, ok)
		}
	}
	pub.MustPub("rs/after", 1, false, "fresh")
	pub.MustPub("rs/m", 1, false, "marker")
	expectOnce(t, "session on n2", counts(s.Until("rs/m")), []string{"stale", "fresh"})
	s.Close()
	brokertest.MustV5(t, c.url("n2"), id).Close() // discard the session

	// Restarted again, n1 has nothing of the session left in storage.
	c.stop("n1")
	again := c.start("n1")
	c.waitFormed()
	if _, ok := mochix.Client(again.Broker.Server(), id); ok {
		t.Error("n1 restored the superseded session again")
	}
}
