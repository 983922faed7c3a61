package reserved_test

import (
	"testing"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/broker/config"
	"github.com/mendmq/mendmq/broker/reserved"
)

const notAuthorized = 0x87

// TestPublishToReservedTopics publishes to '$' topics with real v5 and v3
// clients: each refusal has its version's answer, nothing is delivered or
// retained, and the refusals are counted.
func TestPublishToReservedTopics(t *testing.T) {
	t.Parallel()
	n := brokertest.Start(t, brokertest.Config())
	url := n.URL(0)
	sub := brokertest.MustV5(t, url, "watcher")
	// A subscriber that would see the '$' messages if they went through
	// ('#' does not match '$' topics [MQTT-4.7.2-1], so name them).
	for _, f := range []string{"$SYS/x/#", "$internal/#", "$share/g/x", "end"} {
		sub.Sub(f, 1)
	}
	pub := brokertest.MustV5(t, url, "pub5")
	for _, tc := range []struct {
		topic string
		qos   byte
		want  byte
	}{
		{"$SYS/x/a", 1, notAuthorized},    // mochi used to send no PUBACK at all
		{"$SYS/x/b", 2, notAuthorized},    // PUBREC 0x87
		{"$sys/x/c", 1, notAuthorized},    // any '$' topic, whatever the case
		{"$internal/a", 1, notAuthorized}, // mochi used to deliver it
		{"$internal/b", 2, notAuthorized},
		{"$share/g/x", 1, notAuthorized},
		{"$internal/q0", 0, 0}, // no ack exists: dropped and counted
		{"$SYS/x/q0", 0, 0},
	} {
		if got := pub.Pub(tc.topic, tc.qos, true, "forged"); got != tc.want {
			t.Errorf("v5 QoS %d publish to %s: reason 0x%02x, want 0x%02x", tc.qos, tc.topic, got, tc.want)
		}
	}
	// The connection is still usable; the marker comes after every
	// refused publish of the same client, so anything delivered would be
	// in front of it.
	pub.MustPub("end", 1, false, "marker")
	if got := sub.Until("end"); len(got) > 0 {
		t.Errorf("a '$' publish was delivered: %s", got[0].Topic)
	}
	for _, topic := range []string{"$internal/a", "$internal/q0", "$share/g/x"} {
		if _, ok := n.Server().Topics.Retained.Get(topic); ok {
			t.Errorf("retained message stored on %s", topic)
		}
	}
	n.WaitMetric(8, "mendmq_messages_dropped_total", "reason", "reserved_topic")

	// v3.1.1: QoS 0 is dropped and the client stays; QoS 1 closes the
	// connection, the only refusal MQTT 3.1.1 has [MQTT-3.3.5-2].
	c3 := brokertest.MustV3(t, url, "pub3")
	c3.MustPub("$SYS/x/v3", 0, false, "forged")
	c3.MustPub("end", 1, false, "marker")
	if got := sub.Until("end"); len(got) > 0 {
		t.Errorf("a v3 '$' publish was delivered: %s", got[0].Topic)
	}
	c3q1 := brokertest.MustV3(t, url, "pub3q1")
	_ = c3q1.Pub("$internal/v3", 1, false, "forged") // not acknowledged
	c3q1.WaitLost()
	n.WaitMetric(10, "mendmq_messages_dropped_total", "reason", "reserved_topic")
}

// TestReservedTopicWithACL: a '$' publish gets one answer (the hook's),
// not a second PUBACK from mochi's ACL refusal.
func TestReservedTopicWithACL(t *testing.T) {
	t.Parallel()
	cfg := brokertest.Config()
	cfg.Auth.ACL = []config.ACLRule{{Filter: "ok/#", Access: "readwrite"}, {Filter: "brokertest/#", Access: "readwrite"}}
	n := brokertest.Start(t, cfg)
	c := brokertest.MustV5(t, n.URL(0), "acl")
	for range 3 {
		if got := c.Pub("$internal/x", 1, false, "forged"); got != notAuthorized {
			t.Fatalf("reason 0x%02x, want 0x87", got)
		}
	}
	c.MustSub("ok/t", 1)
	c.MustPub("ok/t", 1, false, "fine")
	if m := c.Next(); m.Topic != "ok/t" {
		t.Fatalf("got %s", m.Topic)
	}
}

// TestReservedClientIDs: the ids of the broker's internal clients are
// refused at CONNECT, with v5 0x85 and v3 return code 2.
func TestReservedClientIDs(t *testing.T) {
	t.Parallel()
	n := brokertest.Start(t, brokertest.Config())
	url := n.URL(0)
	for _, id := range []string{reserved.InjectorPrefix + "1", reserved.OperatorID, "$anything", "inline"} {
		_, err := brokertest.ConnectV5(t, url, id, brokertest.V5Options{})
		if code, ok := brokertest.RefusedCode(err); !ok || code != 0x85 {
			t.Errorf("v5 CONNECT as %q: %v, want CONNACK 0x85", id, err)
		}
		_, err = brokertest.ConnectV3(t, url, id, brokertest.V3Options{})
		if code, ok := brokertest.RefusedCode(err); !ok || code != 2 {
			t.Errorf("v3 CONNECT as %q: %v, want CONNACK return code 2", id, err)
		}
	}
	n.WaitMetric(8, "mendmq_connections_refused_total", "reason", "reserved_client_id")
	if _, ok := n.Server().Clients.Get(reserved.InjectorPrefix + "1"); ok {
		t.Error("a refused client id has a session")
	}
	// Ids that merely contain '$' or "inline" are fine.
	brokertest.MustV5(t, url, "a$b")
	brokertest.MustV3(t, url, "inline-2")
}

// TestWillToReservedTopic: mochi sends a will without a publish's checks,
// so a will topic starting with '$' is refused at CONNECT (v5 0x90, v3 rc
// 5) and nothing is ever published there.
func TestWillToReservedTopic(t *testing.T) {
	t.Parallel()
	n := brokertest.Start(t, brokertest.Config())
	url := n.URL(0)
	_, err := brokertest.ConnectV5(t, url, "will5", brokertest.V5Options{Will: &paho.WillMessage{Topic: "$SYS/broker/forged", Payload: []byte("x"), Retain: true}})
	if code, ok := brokertest.RefusedCode(err); !ok || code != 0x90 {
		t.Errorf("v5 CONNECT with a $SYS will: %v, want CONNACK 0x90", err)
	}
	_, err = brokertest.ConnectV3(t, url, "will3", brokertest.V3Options{WillTopic: "$internal/x", WillPayload: "x", WillRetain: true})
	if code, ok := brokertest.RefusedCode(err); !ok || code != 5 {
		t.Errorf("v3 CONNECT with a '$' will: %v, want CONNACK return code 5", err)
	}
	n.WaitMetric(2, "mendmq_connections_refused_total", "reason", "reserved_will_topic")
	for _, topic := range []string{"$SYS/broker/forged", "$internal/x"} {
		if _, ok := n.Server().Topics.Retained.Get(topic); ok {
			t.Errorf("retained will on %s", topic)
		}
	}
	// A will elsewhere is fine.
	brokertest.MustV5(t, url, "will-ok", brokertest.V5Options{Will: &paho.WillMessage{Topic: "status/will-ok", Payload: []byte("gone")}})
}

func TestReservedNames(t *testing.T) {
	for id, want := range map[string]bool{"$x": true, "inline": true, "x$": false, "inlinex": false, "": false} {
		if got := reserved.ReservedClientID(id); got != want {
			t.Errorf("ReservedClientID(%q) = %v", id, got)
		}
	}
	for topic, want := range map[string]bool{"$SYS/a": true, "$x": true, "a/$SYS": false, "": false} {
		if got := reserved.ReservedTopic(topic); got != want {
			t.Errorf("ReservedTopic(%q) = %v", topic, got)
		}
	}
}
