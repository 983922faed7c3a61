package limits

import (
	"bytes"
	"io"
	"net"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

func TestKeepAlive(t *testing.T) {
	for _, tc := range []struct{ client, max, want uint16 }{
		{0, 60, 60},   // none asked: the server's
		{30, 60, 30},  // shorter: the client's
		{60, 60, 60},  // equal
		{600, 60, 60}, // longer: capped
		{65535, 1, 1}, // extremes
		{1, 65535, 1}, //
		{0, 65535, 65535},
	} {
		if got := KeepAlive(tc.client, tc.max); got != tc.want {
			t.Errorf("KeepAlive(%d, %d) = %d, want %d", tc.client, tc.max, got, tc.want)
		}
	}
}

// stream encodes pks back to back and returns the bytes and where each
// packet starts.
func stream(t *testing.T, pks ...packets.Packet) ([]byte, []int) {
	t.Helper()
	var b bytes.Buffer
	var starts []int
	for _, pk := range pks {
		starts = append(starts, b.Len())
		pk.ProtocolVersion = 5
		var err error
		switch pk.FixedHeader.Type {
		case packets.Publish:
			err = pk.PublishEncode(&b)
		case packets.Pingreq:
			err = pk.PingreqEncode(&b)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes(), starts
}

func pub(n int) packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 1, TopicName: "t", Payload: make([]byte, n)}
}

// TestScanEverySplit feeds a stream to the scanner cut at every pair of
// positions and checks that the oversized packet is found where it starts
// (0 when it started in an earlier chunk), against a naive reading of the
// whole stream. Payload sizes cover 1-, 2- and 3-byte remaining lengths.
func TestScanEverySplit(t *testing.T) {
	const maxSize = 200
	ping := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}
	for _, tc := range []struct {
		name string
		pks  []packets.Packet
		big  int // index of the first oversized packet, -1 for none
	}{
		{"none", []packets.Packet{pub(10), ping, pub(190)}, -1},
		// A v5 QoS 1 PUBLISH on "t" has 6 bytes before its payload.
		{"limit exactly", []packets.Packet{pub(200 - 1 - 6)}, -1}, // remaining length + 1 == 200 (mochi's measure)
		{"one over", []packets.Packet{pub(200 - 6)}, 0},
		{"first", []packets.Packet{pub(300), ping}, 0},
		{"after small ones", []packets.Packet{ping, pub(5), ping, pub(1000), pub(1)}, 3},
		{"three-byte length", []packets.Packet{pub(20), pub(20000)}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, starts := stream(t, tc.pks...)
			want, hdrEnd := -1, -1
			if tc.big >= 0 {
				want = starts[tc.big]
				hdrEnd = want + 1
				for b[hdrEnd]&0x80 != 0 {
					hdrEnd++
				}
				hdrEnd++ // one past the last length byte
			}
			for i := 0; i <= len(b); i += max(1, len(b)/97) {
				for j := i; j <= len(b); j += max(1, len(b)/89) {
					var s scanner
					got := -1
					for _, ch := range [][2]int{{0, i}, {i, j}, {j, len(b)}} {
						at := s.scan(b[ch[0]:ch[1]], maxSize)
						if at >= 0 {
							got = ch[0] + at
							if at == 0 && want >= 0 && want < ch[0] && ch[0] < hdrEnd {
								got = want // began in an earlier chunk, ends in this one: reported at 0
							}
							break
						}
					}
					if got != want {
						t.Fatalf("cut at %d,%d: oversized packet found at %d, want %d", i, j, got, want)
					}
				}
			}
		})
	}
}

// TestConnHoldsTheOversizedPacket: through the wrapper, a reader gets the
// bytes before the oversized packet first; the hook's function runs at
// the next read, which then hands out the rest unchanged.
func TestConnHoldsTheOversizedPacket(t *testing.T) {
	b, starts := stream(t, pub(10), pub(500), pub(3))
	client, server := net.Pipe()
	defer client.Close()
	go func() {
		_, _ = client.Write(b)
		_ = client.Close()
	}()
	c := Wrap(server, 100).(*sizeConn)
	tripped := 0
	f := func() { tripped++ }
	c.oversize.Store(&f)
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil || n != starts[1] || tripped != 0 {
		t.Fatalf("first read: %d bytes, %v, tripped %d; want the %d bytes before the big packet", n, err, tripped, starts[1])
	}
	got := append([]byte(nil), buf[:n]...)
	rest, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if tripped != 1 {
		t.Errorf("oversize function ran %d times, want once", tripped)
	}
	if got = append(got, rest...); !bytes.Equal(got, b) {
		t.Errorf("bytes changed through the wrapper")
	}
	if c.NetConn() != server {
		t.Error("NetConn is not the wrapped connection")
	}
	if Wrap(server, 0) != server || Wrap(server, ProtocolMaxPacketSize) != server {
		t.Error("Wrap without a limit below the protocol's should not wrap")
	}
}
