package broker_test

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/broker/config"
)

// MQTT v5 reason codes and v3.1.1 return codes asserted below, as mochi
// v2.7.9 sends them.
const (
	v5BadUserOrPassword = 0x86
	v5NotAuthorized     = 0x87
	v5ServerBusy        = 0x89
	v5ShuttingDown      = 0x8B
	v5PacketTooLarge    = 0x95
	v3NotAuthorized     = 5 // mochi maps v5 0x86 to 5, not 4 (bad user name or password)
	v3ServerUnavailable = 3
	v3SubackFailure     = 0x80
)

func bcryptHash(t *testing.T, password string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func TestConnect(t *testing.T) {
	t.Parallel()
	n := brokertest.Start(t, brokertest.Config())
	url := n.URL(0)

	c5 := brokertest.MustV5(t, url, "v5-client")
	if c5.Connack.ReasonCode != 0 || c5.Connack.SessionPresent {
		t.Errorf("v5 CONNACK = code 0x%02x, session present %v; want success, no session", c5.Connack.ReasonCode, c5.Connack.SessionPresent)
	}
	c3 := brokertest.MustV3(t, url, "v3-client")
	if c3.SessionPresent {
		t.Error("v3 CONNACK: session present for a clean session")
	}
	n.WaitMetric(2, "mendmq_clients_connected")
	c5.Close()
	c3.Close()
	n.WaitMetric(0, "mendmq_clients_connected")
}

func TestAuthentication(t *testing.T) {
	t.Parallel()
	cfg := brokertest.Config()
	cfg.Auth.AllowAnonymous = false
	cfg.Auth.Users = []config.UserConfig{{Username: "alice", PasswordHash: bcryptHash(t, "s3cret")}}
	n := brokertest.Start(t, cfg)
	url := n.URL(0)

	for _, tc := range []struct {
		name       string
		user, pass string
		ok         bool
	}{
		{"anonymous", "", "", false},
		{"password without user", "", "s3cret", false},
		{"unknown user", "mallory", "s3cret", false},
		{"wrong password", "alice", "wrong", false},
		{"empty password", "alice", "", false},
		{"right password", "alice", "s3cret", true},
	} {
		t.Run(tc.name+"/v5", func(t *testing.T) {
			c, err := brokertest.ConnectV5(t, url, "a5-"+strings.ReplaceAll(tc.name, " ", "-"), brokertest.V5Options{Username: tc.user, Password: tc.pass})
			checkRefused(t, err, tc.ok, v5BadUserOrPassword)
			if c != nil {
				c.Close()
			}
		})
		t.Run(tc.name+"/v3", func(t *testing.T) {
			c, err := brokertest.ConnectV3(t, url, "a3-"+strings.ReplaceAll(tc.name, " ", "-"), brokertest.V3Options{Username: tc.user, Password: tc.pass})
			checkRefused(t, err, tc.ok, v3NotAuthorized)
			if c != nil {
				c.Close()
			}
		})
	}
	// 5 refusals per protocol version.
	n.WaitMetric(10, "mendmq_connections_refused_total", "reason", "not_authorized")
}

// checkRefused asserts a connect result: success when ok, otherwise a
// CONNACK refusal with code.
func checkRefused(t *testing.T, err error, ok bool, code byte) {
	t.Helper()
	got, refused := brokertest.RefusedCode(err)
	switch {
	case ok && err != nil:
		t.Fatalf("connect: %v, want success", err)
	case !ok && !refused:
		t.Fatalf("connect: %v, want a CONNACK refusal 0x%02x", err, code)
	case !ok && got != code:
		t.Fatalf("CONNACK code 0x%02x, want 0x%02x", got, code)
	}
}

// aclConfig lets each client write under devices/<client id>/ and read
// under cmd/<username>/, and user admin do anything.
func aclConfig(t *testing.T) config.Config {
	cfg := brokertest.Config()
	cfg.Auth.AllowAnonymous = false
	cfg.Auth.Users = []config.UserConfig{
		{Username: "alice", PasswordHash: bcryptHash(t, "pw-alice")},
		{Username: "admin", PasswordHash: bcryptHash(t, "pw-admin")},
	}
	cfg.Auth.ACL = []config.ACLRule{
		{Username: "admin", Filter: "#", Access: "readwrite"},
		{Filter: "devices/%c/#", Access: "write"},
		{Filter: "cmd/%u/#", Access: "read"},
	}
	return cfg
}

func TestACLv5(t *testing.T) {
	t.Parallel()
	n := brokertest.Start(t, aclConfig(t))
	url := n.URL(0)
	admin := brokertest.MustV5(t, url, "ops", brokertest.V5Options{Username: "admin", Password: "pw-admin"})
	dev := brokertest.MustV5(t, url, "dev1", brokertest.V5Options{Username: "alice", Password: "pw-alice"})
	admin.MustSub("devices/#", 1)

	// Subscriptions: inside granted, outside refused with 0x87.
	for _, tc := range []struct {
		filter string
		want   byte
	}{
		{"cmd/alice/#", 1},
		{"cmd/alice/lamp", 1},
		{"cmd/bob/#", v5NotAuthorized},
		{"cmd/#", v5NotAuthorized},
		{"devices/dev1/#", v5NotAuthorized}, // write-only
		{"#", v5NotAuthorized},
		{"$share/g/cmd/alice/#", 1},
		{"$share/g/cmd/bob/#", v5NotAuthorized},
	} {
		if rc := dev.Sub(tc.filter, 1); rc != tc.want {
			t.Errorf("SUBACK for %s = 0x%02x, want 0x%02x", tc.filter, rc, tc.want)
		}
	}

	// Publishes: outside refused with PUBACK 0x87 and not delivered.
	for _, tc := range []struct {
		topic string
		qos   byte
		want  byte
	}{
		{"devices/dev1/temp", 1, 0},
		{"devices/dev2/temp", 1, v5NotAuthorized},
		{"devices/dev2/temp", 0, 0}, // QoS 0 has no ack: dropped silently
		{"cmd/alice/lamp", 1, v5NotAuthorized},
		{"devices/dev1", 1, 0}, // # includes the parent level
	} {
		if rc := dev.Pub(tc.topic, tc.qos, false, "x"); rc != tc.want {
			t.Errorf("publish QoS %d to %s: reason 0x%02x, want 0x%02x", tc.qos, tc.topic, rc, tc.want)
		}
	}
	dev.MustPub("devices/dev1/end", 1, false, "end")
	var got []string
	for _, m := range admin.Until("devices/dev1/end") {
		got = append(got, m.Topic)
	}
	if want := []string{"devices/dev1/temp", "devices/dev1"}; !slices.Equal(got, want) {
		t.Errorf("admin received %q, want only the authorized %q", got, want)
	}
	// Two refused QoS 1 publishes and one QoS 0.
	n.WaitMetric(3, "mendmq_messages_dropped_total", "reason", "not_authorized")

	// Reading inside the rule works (admin may write anywhere). dev1's
	// plain and shared subscriptions both match; mochi merges them into one
	// delivery per client.
	admin.MustPub("cmd/alice/lamp", 1, false, "on")
	admin.MustPub("cmd/alice/end", 1, false, "")
	ms := dev.Until("cmd/alice/end")
	if len(ms) != 1 || ms[0].Topic != "cmd/alice/lamp" || string(ms[0].Payload) != "on" {
		t.Errorf("dev1 received %d messages, want one cmd/alice/lamp \"on\"", len(ms))
	}
}

func TestACLv3(t *testing.T) {
	t.Parallel()
	n := brokertest.Start(t, aclConfig(t))
	url := n.URL(0)
	admin := brokertest.MustV5(t, url, "ops", brokertest.V5Options{Username: "admin", Password: "pw-admin"})
	dev := brokertest.MustV3(t, url, "dev1", brokertest.V3Options{Username: "alice", Password: "pw-alice"})
	admin.MustSub("devices/#", 1)

	if rc := dev.Sub("cmd/alice/#", 1); rc != 1 {
		t.Errorf("SUBACK inside = 0x%02x, want 1", rc)
	}
	if rc := dev.Sub("cmd/bob/#", 1); rc != v3SubackFailure {
		t.Errorf("SUBACK outside = 0x%02x, want 0x80", rc)
	}
	dev.MustPub("devices/dev1/temp", 1, false, "21")
	admin.MustPub("cmd/alice/lamp", 1, false, "on")
	if m := dev.Next(); m.Topic() != "cmd/alice/lamp" {
		t.Errorf("dev1 received %s, want cmd/alice/lamp", m.Topic())
	}
	dev.MustPub("devices/dev2/temp", 0, false, "dropped")
	dev.MustPub("devices/dev1/end", 1, false, "end")
	if ms := admin.Until("devices/dev1/end"); len(ms) != 1 || ms[0].Topic != "devices/dev1/temp" {
		t.Errorf("admin received %d messages before the marker, want only devices/dev1/temp", len(ms))
	}

	// v3.1.1 has no negative PUBACK: mochi closes the connection of a
	// client whose QoS 1 publish is refused, so it is not acknowledged.
	dev.Publish("devices/dev2/temp", 1, false, "refused")
	dev.WaitLost()
	admin.MustPub("devices/ops/end", 1, false, "end")
	if ms := admin.Until("devices/ops/end"); len(ms) != 0 {
		t.Errorf("admin received %s from a refused publish", ms[0].Topic)
	}
}

func TestQoSRoundTrip(t *testing.T) {
	t.Parallel()
	n := brokertest.Start(t, brokertest.Config())
	url := n.URL(0)
	for _, pubV := range []int{3, 5} {
		for _, subV := range []int{3, 5} {
			for _, qos := range []byte{0, 1, 2} {
				name := fmt.Sprintf("v%d-to-v%d-qos%d", pubV, subV, qos)
				t.Run(name, func(t *testing.T) {
					topic := "rt/" + name
					payload := "payload " + name
					var next func() (string, string, byte)
					if subV == 5 {
						s := brokertest.MustV5(t, url, "sub-"+name)
						s.MustSub(topic, qos)
						next = func() (string, string, byte) { m := s.Next(); return m.Topic, string(m.Payload), m.QoS }
					} else {
						s := brokertest.MustV3(t, url, "sub-"+name)
						s.MustSub(topic, qos)
						next = func() (string, string, byte) { m := s.Next(); return m.Topic(), string(m.Payload()), m.Qos() }
					}
					if pubV == 5 {
						brokertest.MustV5(t, url, "pub-"+name).MustPub(topic, qos, false, payload)
					} else {
						brokertest.MustV3(t, url, "pub-"+name).MustPub(topic, qos, false, payload)
					}
					gotTopic, gotPayload, gotQoS := next()
					if gotTopic != topic || gotPayload != payload || gotQoS != qos {
						t.Errorf("received %s %q QoS %d, want %s %q QoS %d", gotTopic, gotPayload, gotQoS, topic, payload, qos)
					}
				})
			}
		}
	}
}

func TestWildcards(t *testing.T) {
	t.Parallel()
	n := brokertest.Start(t, brokertest.Config())
	url := n.URL(0)
	plus := brokertest.MustV5(t, url, "plus")
	hash := brokertest.MustV3(t, url, "hash")
	plus.MustSub("wc/+/temp", 1)
	plus.MustSub("end", 1)
	hash.MustSub("wc/a/#", 1)
	hash.MustSub("end", 1)

	p := brokertest.MustV5(t, url, "pub")
	for _, topic := range []string{"wc/a/temp", "wc/a/b/temp", "wc/b/temp", "wc/a", "wc/a/x/y", "wc//temp", "wcx/a/temp"} {
		p.MustPub(topic, 1, false, topic)
	}
	p.MustPub("end", 1, false, "")

	var got []string
	for _, m := range plus.Until("end") {
		got = append(got, m.Topic)
	}
	if want := []string{"wc/a/temp", "wc/b/temp", "wc//temp"}; !slices.Equal(got, want) {
		t.Errorf("wc/+/temp received %q, want %q", got, want)
	}
	got = nil
	for _, m := range hash.Until("end") {
		got = append(got, m.Topic())
	}
	if want := []string{"wc/a/temp", "wc/a/b/temp", "wc/a", "wc/a/x/y"}; !slices.Equal(got, want) {
		t.Errorf("wc/a/# received %q, want %q", got, want)
	}
}

func TestRetained(t *testing.T) {
	t.Parallel()
	n := brokertest.Start(t, brokertest.Config())
	url := n.URL(0)
	p := brokertest.MustV5(t, url, "pub")
	p.MustPub("ret/a", 1, true, "v1")
	p.MustPub("ret/b", 1, true, "b1")
	p.MustPub("ret/a", 1, true, "v2") // replaces v1
	// The PUBACK for v2 may come before mochi has looked for subscribers;
	// without the fence s5 could subscribe in between and get v2 twice.
	p.Fence()
	// mochi stores a retained message before it acks the publish, so the
	// gauge is current once Pub returns. It also counts the retained $SYS
	// topics, but only from the first client retained message on (mochi
	// updates its counter there), so compare differences.
	retained := n.Metric("mendmq_retained_messages")
	if retained < 2 {
		t.Errorf("mendmq_retained_messages = %v, want >= 2", retained)
	}

	// Retained messages arrive after SUBACK, before anything the same
	// client publishes next: its packets are processed in order. (The
	// marker is subscribed first: see brokertest.V5.Sub on packet ids.)
	s5 := brokertest.MustV5(t, url, "s5")
	s5.MustSub("mark5", 0)
	s5.MustSub("ret/#", 1)
	s5.MustPub("mark5", 0, false, "")
	got := map[string]string{}
	for _, m := range s5.Until("mark5") {
		if !m.Retain {
			t.Errorf("v5 %s arrived without the retain flag", m.Topic)
		}
		got[m.Topic] = string(m.Payload)
	}
	if want := map[string]string{"ret/a": "v2", "ret/b": "b1"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("v5 retained on subscribe = %v, want %v", got, want)
	}
	s3 := brokertest.MustV3(t, url, "s3")
	s3.MustSub("ret/a", 1)
	if m := s3.Next(); m.Topic() != "ret/a" || string(m.Payload()) != "v2" || !m.Retained() {
		t.Errorf("v3 received %s %q retained=%v, want ret/a \"v2\" retained", m.Topic(), m.Payload(), m.Retained())
	}

	// An empty retained payload clears the topic [MQTT-3.3.1-6]; the
	// subscribers receive that publish live, without the retain flag.
	p.MustPub("ret/a", 1, true, "")
	if m := s5.Next(); m.Topic != "ret/a" || len(m.Payload) != 0 || m.Retain {
		t.Errorf("v5 live clear = %s %q retain=%v", m.Topic, m.Payload, m.Retain)
	}
	if got := n.Metric("mendmq_retained_messages"); got != retained-1 {
		t.Errorf("mendmq_retained_messages after clearing = %v, want %v", got, retained-1)
	}
	late := brokertest.MustV5(t, url, "late")
	late.MustSub("mark-late", 0)
	late.MustSub("ret/#", 1)
	late.MustPub("mark-late", 0, false, "")
	ms := late.Until("mark-late")
	if len(ms) != 1 || ms[0].Topic != "ret/b" {
		var topics []string
		for _, m := range ms {
			topics = append(topics, m.Topic)
		}
		t.Errorf("after clearing ret/a a new subscriber got %q, want only ret/b", topics)
	}
}

func TestSharedSubscription(t *testing.T) {
	t.Parallel()
	n := brokertest.Start(t, brokertest.Config())
	url := n.URL(0)
	m5 := brokertest.MustV5(t, url, "member5")
	m3 := brokertest.MustV3(t, url, "member3")
	for _, sub := range []func(string, byte){m5.MustSub, m3.MustSub} {
		sub("$share/workers/jobs/#", 1)
		sub("jobs-end", 1)
	}
	const total = 40
	p := brokertest.MustV5(t, url, "pub")
	for i := range total {
		p.MustPub("jobs/"+strconv.Itoa(i), 1, false, strconv.Itoa(i))
	}
	p.MustPub("jobs-end", 1, false, "")

	seen := map[string]string{}
	count := map[string]int{}
	for _, m := range m5.Until("jobs-end") {
		if prev, dup := seen[string(m.Payload)]; dup {
			t.Errorf("job %s delivered to %s and member5", m.Payload, prev)
		}
		seen[string(m.Payload)] = "member5"
		count["member5"]++
	}
	for _, m := range m3.Until("jobs-end") {
		if prev, dup := seen[string(m.Payload())]; dup {
			t.Errorf("job %s delivered to %s and member3", m.Payload(), prev)
		}
		seen[string(m.Payload())] = "member3"
		count["member3"]++
	}
	if len(seen) != total {
		t.Errorf("%d of %d jobs delivered", len(seen), total)
	}
	// mochi picks a member at random (map order); all 40 to one member
	// has probability 2^-39.
	if count["member5"] == 0 || count["member3"] == 0 {
		t.Errorf("deliveries per member %v: one member got nothing", count)
	}
}

func TestSysTopics(t *testing.T) {
	t.Parallel()
	cfg := brokertest.Config()
	cfg.MQTT.SysInterval = time.Second
	n := brokertest.Start(t, cfg)
	c := brokertest.MustV5(t, n.URL(0), "sys")
	c.MustSub("$SYS/broker/clients/connected", 0)
	// One value is the retained one sent on subscribe; later ones are
	// published live by the sys_interval ticker.
	var sawRetained, sawLive bool
	for i := 0; i < 4 && !(sawRetained && sawLive); i++ {
		m := c.Next()
		v, err := strconv.Atoi(string(m.Payload))
		if err != nil {
			t.Errorf("%s = %q, want a number", m.Topic, m.Payload)
		}
		if !m.Retain && v < 1 {
			t.Errorf("live %s = %d with this client connected", m.Topic, v)
		}
		sawRetained = sawRetained || m.Retain
		sawLive = sawLive || !m.Retain
	}
	if !sawRetained || !sawLive {
		t.Errorf("$SYS: retained value seen %v, live update seen %v; want both", sawRetained, sawLive)
	}
}

func TestPersistentSessionV5(t *testing.T) {
	t.Parallel()
	n := brokertest.Start(t, brokertest.Config())
	url := n.URL(0)
	opts := brokertest.V5Options{KeepSession: true, SessionExpiry: 60}
	s := brokertest.MustV5(t, url, "keeper", opts)
	if s.Connack.SessionPresent {
		t.Fatal("first connect: session present")
	}
	s.MustSub("away/#", 1)
	s.Close()
	// Reconnecting with the same id while mochi still tears the old
	// connection down races in mochi v2.7.9: its clean-up can delete the
	// new client from the registry (Clients.Delete by id), after which
	// nothing is delivered to it. Wait until the old one is gone.
	n.WaitMetric(0, "mendmq_clients_connected")

	p := brokertest.MustV5(t, url, "pub")
	const queued = 5
	for i := range queued {
		p.MustPub("away/"+strconv.Itoa(i), 1, false, strconv.Itoa(i))
	}
	// Let mochi finish queueing before the session resumes: a publish
	// fanned out while the session is being taken over can be queued on
	// the old client after its state was copied, and is then lost (a
	// mochi v2.7.9 race).
	p.Fence()

	s = brokertest.MustV5(t, url, "keeper", opts)
	if !s.Connack.SessionPresent {
		t.Fatal("reconnect with clean start 0: session not present")
	}
	got := map[string]bool{}
	for range queued {
		m := s.Next()
		got[string(m.Payload)] = true
	}
	for i := range queued {
		if !got[strconv.Itoa(i)] {
			t.Errorf("queued message %d lost; got %v", i, got)
		}
	}
	// Moving the queue to the new connection drops nothing.
	if d := n.Metric("mendmq_messages_dropped_total"); d != 0 {
		t.Errorf("mendmq_messages_dropped_total = %v after a session resumed", d)
	}
	// The subscription survived too: a live message arrives without a new
	// SUBSCRIBE.
	p.MustPub("away/live", 1, false, "live")
	if m := s.Next(); string(m.Payload) != "live" {
		t.Errorf("after resume received %q, want \"live\"", m.Payload)
	}
	s.Close()
	n.WaitMetric(1, "mendmq_clients_connected")

	// Clean start discards the session.
	fresh := brokertest.MustV5(t, url, "keeper")
	if fresh.Connack.SessionPresent {
		t.Error("clean start: session present")
	}
}

func TestPersistentSessionV3(t *testing.T) {
	t.Parallel()
	n := brokertest.Start(t, brokertest.Config())
	url := n.URL(0)
	opts := brokertest.V3Options{KeepSession: true}
	s := brokertest.MustV3(t, url, "keeper3", opts)
	if s.SessionPresent {
		t.Fatal("first connect: session present")
	}
	s.MustSub("away3/#", 1)
	s.Close()
	n.WaitMetric(0, "mendmq_clients_connected")

	p := brokertest.MustV5(t, url, "pub3")
	const queued = 5
	for i := range queued {
		p.MustPub("away3/"+strconv.Itoa(i), 1, false, strconv.Itoa(i))
	}
	p.Fence() // see TestPersistentSessionV5

	s = brokertest.MustV3(t, url, "keeper3", opts)
	if !s.SessionPresent {
		t.Fatal("reconnect with clean session 0: session not present")
	}
	got := map[string]bool{}
	for range queued {
		got[string(s.Next().Payload())] = true
	}
	for i := range queued {
		if !got[strconv.Itoa(i)] {
			t.Errorf("queued message %d lost; got %v", i, got)
		}
	}
	if d := n.Metric("mendmq_messages_dropped_total"); d != 0 {
		t.Errorf("mendmq_messages_dropped_total = %v after a session resumed", d)
	}
	p.MustPub("away3/live", 1, false, "live")
	if m := s.Next(); string(m.Payload()) != "live" {
		t.Errorf("after resume received %q, want \"live\"", m.Payload())
	}
}
