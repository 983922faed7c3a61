package main

import (
	"bufio"
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

// TestPublishHeaderDecodesWithMochi checks the hand-written PUBLISH encoder against
// mochi's decoder, across versions, QoS levels and remaining-length widths.
func TestPublishHeaderDecodesWithMochi(t *testing.T) {
	for _, version := range []byte{4, 5} {
		for _, qos := range []byte{0, 1, 2} {
			for _, size := range []int{0, 28, 64, 100, 200, 20000, 3 << 20} {
				topic := "mqttbench/abc/7"
				payload := bytes.Repeat([]byte{0xA5}, size)
				b := appendPublishHeader(nil, version, qos, topic, 0xBEEF, size)
				b = append(b, payload...)

				hdr := b[0]
				n, used, err := packets.DecodeLength(bytes.NewReader(b[1:]))
				if err != nil {
					t.Fatal(err)
				}
				body := b[1+used:]
				if len(body) != n {
					t.Fatalf("v%d qos%d size %d: remaining length %d, actual %d", version, qos, size, n, len(body))
				}
				pk := packets.Packet{ProtocolVersion: version}
				if err := pk.FixedHeader.Decode(hdr); err != nil {
					t.Fatal(err)
				}
				pk.FixedHeader.Remaining = n
				if err := pk.PublishDecode(body); err != nil {
					t.Fatalf("v%d qos%d size %d: mochi cannot decode: %v", version, qos, size, err)
				}
				if pk.TopicName != topic || pk.FixedHeader.Qos != qos || !bytes.Equal(pk.Payload, payload) {
					t.Fatalf("v%d qos%d size %d: decoded topic %q qos %d payload %d bytes", version, qos, size, pk.TopicName, pk.FixedHeader.Qos, len(pk.Payload))
				}
				if qos > 0 && pk.PacketID != 0xBEEF {
					t.Fatalf("packet id %#x", pk.PacketID)
				}
				id, got, err := parsePublish(hdr, body, version)
				if err != nil || !bytes.Equal(got, payload) || (qos > 0 && id != 0xBEEF) {
					t.Fatalf("parsePublish: id %#x, %d bytes, err %v", id, len(got), err)
				}
			}
		}
	}
}

// TestParsePublishMochiEncoded decodes PUBLISH packets produced by mochi's encoder,
// including v5 properties the broker may add.
func TestParsePublishMochiEncoded(t *testing.T) {
	tests := []struct {
		name string
		pk   packets.Packet
	}{
		{"v4 qos0", packets.Packet{ProtocolVersion: 4, TopicName: "a/b", Payload: []byte("hello")}},
		{"v4 qos1", packets.Packet{ProtocolVersion: 4, TopicName: "a/b", PacketID: 7, Payload: []byte("hello"), FixedHeader: packets.FixedHeader{Qos: 1}}},
		{"v5 qos2 props", packets.Packet{ProtocolVersion: 5, TopicName: "t", PacketID: 9, Payload: []byte("xyz"),
			FixedHeader: packets.FixedHeader{Qos: 2},
			Properties:  packets.Properties{ContentType: "text/plain", User: []packets.UserProperty{{Key: "k", Val: "v"}}, SubscriptionIdentifier: []int{5}}}},
		{"v5 qos0 empty payload", packets.Packet{ProtocolVersion: 5, TopicName: "t"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.pk.FixedHeader.Type = packets.Publish
			var buf bytes.Buffer
			if err := tc.pk.PublishEncode(&buf); err != nil {
				t.Fatal(err)
			}
			c := &rawConn{br: bufio.NewReader(&buf)}
			hdr, body, err := c.readPacket()
			if err != nil {
				t.Fatal(err)
			}
			id, payload, err := parsePublish(hdr, body, tc.pk.ProtocolVersion)
			if err != nil {
				t.Fatal(err)
			}
			if id != tc.pk.PacketID || !bytes.Equal(payload, tc.pk.Payload) {
				t.Fatalf("id %d payload %q, want %d %q", id, payload, tc.pk.PacketID, tc.pk.Payload)
			}
		})
	}
}

func TestAckEncoding(t *testing.T) {
	// Each ack must decode with mochi (3.1.1 and 5: a 2-byte body means success).
	for _, pt := range []byte{ptPuback, ptPubrec, ptPubrel, ptPubcomp} {
		b := appendAck(nil, pt, 0x1234)
		var fh packets.FixedHeader
		if err := fh.Decode(b[0]); err != nil {
			t.Fatalf("type %d: %v", pt, err)
		}
		id, reason, err := ackID(b[2:])
		if err != nil || id != 0x1234 || reason != 0 || b[1] != 2 || fh.Type != pt {
			t.Fatalf("type %d: %x -> id %#x reason %d err %v", pt, b, id, reason, err)
		}
	}
	if _, _, err := ackID([]byte{1}); !errors.Is(err, errMalformed) {
		t.Fatalf("short ack: %v", err)
	}
}

func TestReadFrameHeaderLimits(t *testing.T) {
	// 0x30 then a 4-byte remaining length of 268435455 (> rawMaxPacket).
	_, _, err := readFrameHeader(bufio.NewReader(bytes.NewReader([]byte{0x30, 0xFF, 0xFF, 0xFF, 0x7F})))
	if !errors.Is(err, errPacketTooLarge) {
		t.Fatalf("oversized packet: %v", err)
	}
	_, _, err = readFrameHeader(bufio.NewReader(bytes.NewReader([]byte{0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01})))
	if err == nil || !strings.Contains(err.Error(), "remaining length") {
		t.Fatalf("5-byte length: %v", err)
	}
}

func FuzzParsePublish(f *testing.F) {
	f.Add(byte(0x30), []byte{0, 1, 't', 'x'}, byte(4))
	f.Add(byte(0x32), []byte{0, 1, 't', 0, 5, 'x'}, byte(4))
	f.Add(byte(0x34), []byte{0, 1, 't', 0, 5, 0, 'x'}, byte(5))
	f.Add(byte(0x30), []byte{0, 1, 't', 0x80, 0x80, 0x80, 0x80, 0x01}, byte(5))
	f.Fuzz(func(t *testing.T, hdr byte, body []byte, version byte) {
		_, payload, err := parsePublish(hdr, body, version)
		if err != nil {
			return
		}
		if len(payload) > len(body) || (len(payload) > 0 && &payload[len(payload)-1] != &body[len(body)-1]) {
			t.Fatalf("payload is not a suffix of the body")
		}
	})
}

func FuzzReadFrameHeader(f *testing.F) {
	f.Add([]byte{0x30, 0x05})
	f.Add([]byte{0x30, 0xFF, 0xFF, 0xFF, 0x7F})
	f.Add([]byte{0x30, 0x80})
	f.Fuzz(func(t *testing.T, in []byte) {
		_, n, err := readFrameHeader(bufio.NewReader(bytes.NewReader(in)))
		if err == nil && (n < 0 || n > rawMaxPacket) {
			t.Fatalf("length %d accepted", n)
		}
	})
}
