package clusterhook_test

// The policy SDK's "$retained" decoders (Go: sdk.DecodeRetained; C:
// sdk/c/mendmq_retained.h, held to the Go one by plugins'
// FuzzCRetainedMatchesGo) must read the retained value exactly as the
// broker writes and reads it: a v5 PUBLISH from EncodePublish, decoded by
// DecodePublish (mochi's decoder). sdk/ABI.md §8 documents the layout.

import (
	"bytes"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/clusterhook"
	"github.com/mendmq/mendmq/sdk"
)

// TestSDKRetainedExample pins sdk/ABI.md §8's worked example to the
// broker's encoder.
func TestSDKRetainedExample(t *testing.T) {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: true},
		TopicName:   "a/b",
		Payload:     []byte("hi"),
		Properties: packets.Properties{
			MessageExpiryInterval: 60,
			ContentType:           "text/plain",
			User:                  []packets.UserProperty{{Key: "k", Val: "v"}},
		},
	}
	got, err := clusterhook.EncodePublish(pk)
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{
		0x33, 0x23, 0x00, 0x03, 'a', '/', 'b', 0x00, 0x01, 0x19,
		0x02, 0x00, 0x00, 0x00, 0x3c,
		0x03, 0x00, 0x0a, 't', 'e', 'x', 't', '/', 'p', 'l', 'a', 'i', 'n',
		0x26, 0x00, 0x01, 'k', 0x00, 0x01, 'v',
		'h', 'i',
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("EncodePublish\n% x\nABI.md §8 example\n% x", got, want)
	}
	checkAgainstMochi(t, got)
}

// checkAgainstMochi decodes v with the SDK and with the broker and fails
// unless both refuse it or both read the same message. It returns whether
// the SDK accepted it.
func checkAgainstMochi(t *testing.T, v []byte) bool {
	t.Helper()
	m, serr := sdk.DecodeRetained(v)
	pk, merr := clusterhook.DecodePublish(v)
	if serr != nil {
		return false
	}
	if merr != nil {
		t.Fatalf("SDK accepted what the broker refuses (%v):\n% x", merr, v)
	}
	p := &pk.Properties
	var users []packets.UserProperty
	for k, val := range m.UserProperties() {
		users = append(users, packets.UserProperty{Key: string(k), Val: string(val)})
	}
	switch {
	case string(m.Topic) != pk.TopicName, m.QoS != pk.FixedHeader.Qos, m.Retain != pk.FixedHeader.Retain,
		m.PacketID != pk.PacketID, !bytes.Equal(m.Payload, pk.Payload):
		t.Fatalf("header or payload differ: sdk %+v\nbroker %+v", m, pk)
	case m.HasPayloadFormat != p.PayloadFormatFlag, m.PayloadFormat != p.PayloadFormat,
		m.MessageExpiry != p.MessageExpiryInterval, string(m.ContentType) != p.ContentType,
		string(m.ResponseTopic) != p.ResponseTopic, !bytes.Equal(m.CorrelationData, p.CorrelationData):
		t.Fatalf("properties differ: sdk %+v\nbroker %+v", m, *p)
	case len(users) != len(p.User):
		t.Fatalf("user properties: sdk %v, broker %v", users, p.User)
	}
	for i := range users {
		if users[i] != p.User[i] {
			t.Fatalf("user property %d: sdk %v, broker %v", i, users[i], p.User[i])
		}
	}
	return true
}

// FuzzSDKRetainedMatchesMochi builds retained messages from fuzzed fields,
// encodes them as the broker does, and holds the SDK's decoder to the
// broker's: same accept/refuse verdict, same fields, and AppendTo gives the
// broker's bytes back.
func FuzzSDKRetainedMatchesMochi(f *testing.F) {
	f.Add("a/b", byte(1), true, []byte("hi"), uint32(60), "text/plain", "", []byte(nil), byte(0), false, "k", "v")
	f.Add("t", byte(0), false, []byte{}, uint32(0), "", "reply/to", []byte{0, 1}, byte(1), true, "", "")
	f.Add("a\x00b", byte(2), true, []byte("x"), uint32(1), "\xff", "r", []byte("c"), byte(7), true, "k\x00", "v")
	f.Fuzz(func(t *testing.T, topic string, qos byte, retain bool, payload []byte, expiry uint32,
		contentType, responseTopic string, correlation []byte, format byte, hasFormat bool, userKey, userVal string) {
		pk := packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos % 3, Retain: retain},
			TopicName:   topic,
			Payload:     payload,
			Properties: packets.Properties{
				MessageExpiryInterval: expiry,
				ContentType:           contentType,
				ResponseTopic:         responseTopic,
				CorrelationData:       correlation,
				PayloadFormat:         format,
				PayloadFormatFlag:     hasFormat,
			},
		}
		if userKey != "" || userVal != "" {
			pk.Properties.User = []packets.UserProperty{{Key: userKey, Val: userVal}, {Key: "second", Val: userKey}}
		}
		if len(topic) > 0xffff || len(contentType) > 0xffff || len(responseTopic) > 0xffff ||
			len(correlation) > 0xffff || len(userKey) > 0xffff || len(userVal) > 0xffff {
			return // MQTT strings hold 65535 bytes; mochi's encoder truncates the length
		}
		v, err := clusterhook.EncodePublish(pk)
		if err != nil {
			return
		}
		_, merr := clusterhook.DecodePublish(v)
		accepted := checkAgainstMochi(t, v)
		if accepted != (merr == nil) {
			t.Fatalf("broker decode err %v, SDK accepted %v:\n% x", merr, accepted, v)
		}
		if accepted {
			m, _ := sdk.DecodeRetained(v)
			if again := m.AppendTo(nil); !bytes.Equal(again, v) {
				t.Fatalf("AppendTo\n% x\nbroker\n% x", again, v)
			}
		}
	})
}

// FuzzSDKRetainedBytes: on arbitrary bytes, whatever the SDK accepts the
// broker reads the same way (the SDK may refuse more: a Remaining Length
// over 4 bytes, repeated single-use properties, packet identifier 0).
func FuzzSDKRetainedBytes(f *testing.F) {
	f.Add([]byte{0x33, 0x0a, 0x00, 0x01, 't', 0x00, 0x01, 0x03, 0x01, 0x01, 0x00, 'p'})
	f.Add([]byte{0x30, 0x04, 0x00, 0x01, 't', 0x00})
	f.Fuzz(func(t *testing.T, v []byte) { checkAgainstMochi(t, v) })
}
