package brokertest

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// DialRaw opens a plain TCP connection to addr (host:port) for writing
// hand-made bytes; it is closed at test cleanup.
func DialRaw(t testing.TB, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, Timeout)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// RawConnect encodes a CONNECT for protocol version 4 (v3.1.1) or 5 with a
// clean session and a 30 s keep-alive.
func RawConnect(version byte, clientID string) []byte {
	pk := packets.Packet{
		ProtocolVersion: version,
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			Clean:            true,
			Keepalive:        30,
			ClientIdentifier: clientID,
		},
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		panic("brokertest: encode CONNECT: " + err.Error()) // fixed, valid input
	}
	return buf.Bytes()
}

// RawPacket is one MQTT control packet read off a raw connection.
type RawPacket struct {
	Type  byte   // packets.Connack, packets.Disconnect, ...
	Flags byte   // the low 4 bits of the fixed header (PUBLISH: dup, QoS, retain)
	Body  []byte // variable header and payload
}

// ReadRaw reads one control packet from c within Timeout; an error (EOF
// included) fails the test.
func ReadRaw(t testing.TB, c net.Conn) RawPacket {
	t.Helper()
	p, err := ReadPacket(c, time.Now().Add(Timeout))
	if err != nil {
		t.Fatalf("read a packet from %s: %v", c.RemoteAddr(), err)
	}
	return p
}

var errMalformed = errors.New("malformed remaining length")

// ReadPacket reads one control packet from c, waiting until deadline; for
// tests that expect a read to fail (ReadRaw fails the test instead).
func ReadPacket(c net.Conn, deadline time.Time) (RawPacket, error) {
	if err := c.SetReadDeadline(deadline); err != nil {
		return RawPacket{}, err
	}
	var h [1]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return RawPacket{}, err
	}
	n, mult := 0, 1
	for i := 0; ; i++ {
		if i == 4 {
			return RawPacket{}, errMalformed
		}
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return RawPacket{}, err
		}
		n += int(b[0]&0x7f) * mult
		if b[0]&0x80 == 0 {
			break
		}
		mult *= 128
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(c, body); err != nil {
		return RawPacket{}, err
	}
	return RawPacket{Type: h[0] >> 4, Flags: h[0] & 0x0f, Body: body}, nil
}

// WaitClosedByPeer reads from c until the broker closes it and returns the
// packets it sent before closing. It fails the test if c is still open
// after within, and returns how long the close took from the call.
func WaitClosedByPeer(t testing.TB, c net.Conn, within time.Duration) ([]RawPacket, time.Duration) {
	t.Helper()
	start := time.Now()
	deadline := start.Add(within)
	var got []RawPacket
	for {
		p, err := ReadPacket(c, deadline)
		switch {
		case err == nil:
			got = append(got, p)
			continue
		case errors.Is(err, os.ErrDeadlineExceeded):
			t.Fatalf("connection to %s still open after %v (read %d packets)", c.RemoteAddr(), within, len(got))
		case errors.Is(err, errMalformed):
			t.Fatalf("connection to %s: broker sent a malformed packet", c.RemoteAddr())
		}
		// EOF or connection reset: the peer is gone.
		return got, time.Since(start)
	}
}
