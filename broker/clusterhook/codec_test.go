package clusterhook

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

func TestPublishRoundTrip(t *testing.T) {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2, Retain: true},
		TopicName:   "a/b",
		Payload:     []byte("hello"),
		PacketID:    77,
		Properties: packets.Properties{
			ContentType: "text/plain", ResponseTopic: "r/t", CorrelationData: []byte{1, 2},
			MessageExpiryInterval: 30, PayloadFormat: 1, PayloadFormatFlag: true,
			User: []packets.UserProperty{{Key: "k", Val: "v"}}, TopicAlias: 5, TopicAliasFlag: true,
		},
	}
	b, err := EncodePublish(pk)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodePublish(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.TopicName != "a/b" || !bytes.Equal(got.Payload, pk.Payload) || got.FixedHeader.Qos != 2 || !got.FixedHeader.Retain {
		t.Fatalf("header/body lost: %+v", got)
	}
	p := got.Properties
	if p.ContentType != "text/plain" || p.ResponseTopic != "r/t" || !bytes.Equal(p.CorrelationData, []byte{1, 2}) ||
		p.MessageExpiryInterval != 30 || len(p.User) != 1 || p.User[0].Val != "v" {
		t.Fatalf("properties lost: %+v", p)
	}
	if p.TopicAlias != 0 {
		t.Fatalf("topic alias crossed nodes: %d", p.TopicAlias)
	}
}

func TestDecodePublishRejects(t *testing.T) {
	good, _ := EncodePublish(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "t", Payload: []byte("x")})
	for name, b := range map[string][]byte{
		"empty":       nil,
		"one byte":    {0x30},
		"not publish": {0x10, 0x00},
		"qos 3":       {0x36, 0x00},
		"truncated":   good[:len(good)-1],
		"extra":       append(append([]byte{}, good...), 0),
		"empty topic": {0x30, 0x03, 0x00, 0x00, 0x00},
	} {
		if _, err := DecodePublish(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzDecodePublish(f *testing.F) {
	for _, qos := range []byte{0, 1, 2} {
		b, _ := EncodePublish(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, TopicName: "a/b",
			Payload: []byte("p"), Properties: packets.Properties{User: []packets.UserProperty{{Key: "k", Val: "v"}}}})
		f.Add(b)
	}
	f.Add([]byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x7f})
	f.Fuzz(func(t *testing.T, b []byte) {
		pk, err := DecodePublish(b)
		if err != nil {
			return
		}
		if _, err := EncodePublish(pk); err != nil {
			t.Fatalf("decoded packet does not re-encode: %v", err)
		}
	})
}

// mochiEncode is mochi's own encoding of pk as EncodePublish prepares it.
func mochiEncode(t testing.TB, pk packets.Packet) []byte {
	pk.ProtocolVersion = 5
	pk.Mods = packets.Mods{AllowResponseInfo: true}
	pk.FixedHeader.Type = packets.Publish
	if pk.FixedHeader.Qos > 0 {
		pk.PacketID = 1
	}
	var buf bytes.Buffer
	if err := pk.PublishEncode(&buf); err != nil {
		t.Fatalf("mochi encode: %v", err)
	}
	return buf.Bytes()
}

func TestEncodeBarePublishMatchesMochi(t *testing.T) {
	for _, size := range []int{0, 1, 120, 121, 122, 127, 128, 16377, 16378, 16384, 2_097_145, 2_097_152} {
		for _, qos := range []byte{0, 1, 2} {
			for _, retain := range []bool{false, true} {
				pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos, Retain: retain},
					TopicName: "a/b", Payload: bytes.Repeat([]byte{'x'}, size)}
				got, err := EncodePublish(pk)
				if err != nil {
					t.Fatal(err)
				}
				if want := mochiEncode(t, pk); !bytes.Equal(got, want) {
					t.Fatalf("payload %d B qos %d retain %v: fast path differs from mochi (%d vs %d bytes)", size, qos, retain, len(got), len(want))
				}
			}
		}
	}
}

func FuzzEncodeBarePublish(f *testing.F) {
	f.Add("a/b", []byte("p"), byte(1), true)
	f.Add("", []byte(nil), byte(0), false)
	f.Fuzz(func(t *testing.T, topic string, payload []byte, qos byte, retain bool) {
		if len(topic) > 65535 {
			return
		}
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos % 3, Retain: retain},
			TopicName: topic, Payload: payload}
		if pk.FixedHeader.Qos > 0 {
			pk.PacketID = 1
		}
		got := encodeBarePublish(&pk)
		if want := mochiEncode(t, pk); !bytes.Equal(got, want) {
			t.Fatalf("fast path differs from mochi: %x vs %x", got, want)
		}
	})
}

func FuzzDecodeBarePublishMatchesMochi(f *testing.F) {
	for _, qos := range []byte{0, 1, 2} {
		for _, retain := range []bool{false, true} {
			b, _ := EncodePublish(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos, Retain: retain},
				TopicName: "a/b", Payload: []byte("payload")})
			f.Add(b)
		}
	}
	f.Add([]byte{0x30, 0x04, 0x00, 0x01, 't', 0x00})                 // empty payload
	f.Add([]byte{0x30, 0x85, 0x00, 0x00, 0x01, 't', 0x00, 'x', 'y'}) // non-minimal length
	f.Add([]byte{0x38, 0x04, 0x00, 0x01, 't', 0x00})                 // dup
	f.Add([]byte{0x30, 0x05, 0x00, 0x02, 0xc3, 0x28, 0x00})          // invalid UTF-8
	f.Add([]byte{0x30, 0x05, 0x00, 0x02, 't', 0x00, 0x00})           // NUL in topic
	f.Fuzz(func(t *testing.T, b []byte) {
		fast, ok := decodeBarePublish(b)
		if !ok {
			return
		}
		slow, err := decodePublishGeneral(b)
		if err != nil {
			t.Fatalf("fast path accepted what mochi refuses (%v): %x", err, b)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("fast path differs from mochi for %x:\n fast %+v\n mochi %+v", b, fast, slow)
		}
	})
}
