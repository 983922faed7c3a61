// Package limits applies the node's MQTT 5 connection limits where mochi
// (v2.7.9) leaves them unapplied or unannounced:
//
//   - Server Keep Alive (mqtt.server_keep_alive): a v5 client's keep-alive
//     is capped, a client without one gets the cap, the CONNACK says so and
//     the connection is closed after 1.5 times that without a packet
//     [MQTT-3.1.2-21] [MQTT-3.1.2-22]. mochi has the mechanism (a hook may
//     set Client.State.Keepalive and ServerKeepalive in OnConnect, before
//     it arms the read deadline and writes the CONNACK) but no setting.
//   - Maximum Packet Size (mqtt.max_packet_size): mochi refuses a larger
//     packet but does not announce the limit in CONNACK (MQTT 5 §3.2.2.3.6),
//     and closes the connection without DISCONNECT 0x95 [MQTT-3.2.2-15
//     area: MQTT 5 §4.13]: it detects the size while reading the fixed
//     header and no hook runs between that and the close. The hook adds
//     the property to a successful v5 CONNACK; Wrap watches the bytes a
//     client sends and, once mochi has handled every packet before the
//     oversized one, has mochi send DISCONNECT 0x95 (v5 clients only; a
//     v3 connection is just closed, as MQTT 3.1.1 has no DISCONNECT from
//     the server).
//
// MQTT 3.1.1 clients keep their own keep-alive: 3.1.1 has no way to tell a
// client another one, and one that pings at its own slower pace would be
// cut off.
package limits

import (
	"net"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// ProtocolMaxPacketSize is the largest packet MQTT can express (a 4-byte
// remaining length) [MQTT-2.2.3].
const ProtocolMaxPacketSize = 268435455

// Options are the limits to apply.
type Options struct {
	// ServerKeepAlive is mqtt.server_keep_alive in seconds; 0 leaves every
	// client its own keep-alive.
	ServerKeepAlive uint16
	// MaxPacketSize is mochi's Capabilities.MaximumPacketSize in bytes
	// (mqtt.max_packet_size); 0 or ProtocolMaxPacketSize means no limit
	// below the protocol's, which is not announced.
	MaxPacketSize uint32
}

// Hook applies Options (see the package doc). Its methods are safe for
// concurrent use; it keeps no state per client.
type Hook struct {
	mqtt.HookBase
	srv  *mqtt.Server
	opts Options
}

var _ mqtt.Hook = (*Hook)(nil)

// New returns the hook for srv. Connections must come through Wrap for
// the DISCONNECT 0x95.
func New(srv *mqtt.Server, opts Options) *Hook {
	if opts.MaxPacketSize >= ProtocolMaxPacketSize {
		opts.MaxPacketSize = 0
	}
	return &Hook{srv: srv, opts: opts}
}

// ID names the hook.
func (h *Hook) ID() string { return "mendmq-limits" }

// Provides declares the handled hook methods: only those a configured
// limit needs.
func (h *Hook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect:
		return h.opts.ServerKeepAlive > 0
	case mqtt.OnSessionEstablished, mqtt.OnPacketEncode:
		return h.opts.MaxPacketSize > 0
	}
	return false
}

// KeepAlive is the keep-alive in seconds a client that asked for client
// gets under a server keep-alive of max (> 0): its own if it is not over
// max, else max; a client that asked for none (0) gets max.
func KeepAlive(client, max uint16) uint16 {
	if client == 0 || client > max {
		return max
	}
	return client
}

// OnConnect imposes the server keep-alive on a v5 client: mochi arms the
// read deadline from Client.State.Keepalive after OnConnect and writes it
// into the CONNACK as Server Keep Alive when State.ServerKeepalive is set.
func (h *Hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if cl.Properties.ProtocolVersion == 5 {
		cl.State.Keepalive = KeepAlive(pk.Connect.Keepalive, h.opts.ServerKeepAlive)
		cl.State.ServerKeepalive = true
	}
	return nil
}

// OnPacketEncode announces the maximum packet size in a successful v5
// CONNACK.
func (h *Hook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Connack && pk.ProtocolVersion == 5 && pk.ReasonCode < packets.ErrUnspecifiedError.Code {
		pk.Properties.MaximumPacketSize = h.opts.MaxPacketSize
	}
	return pk
}

// OnSessionEstablished runs after the CONNACK, on the goroutine that then
// reads the client's packets: from here an oversized packet from a v5
// client is answered with DISCONNECT 0x95 (mochi writes it under the
// client's write lock and closes the connection).
func (h *Hook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	if cl.Properties.ProtocolVersion != 5 {
		return
	}
	if c, ok := cl.Net.Conn.(*sizeConn); ok {
		f := func() { _ = h.srv.DisconnectClient(cl, packets.ErrPacketTooLarge) }
		c.oversize.Store(&f)
	}
}

// Wrap returns c watched for a packet over maxSize bytes, by mochi's own
// measure (remaining length + 1 > maxSize, client.go ReadFixedHeader), or
// c itself when there is no limit below the protocol's. Give mochi the
// returned connection.
//
// How: mochi reads through a bufio.Reader, which reads from the connection
// only once it has handed out every byte read before. The wrapper follows
// the packet boundaries in what it reads (headers only; bodies are
// skipped by count) and hands mochi the bytes up to the oversized
// packet's fixed header; when mochi asks for more, every packet before it
// has been read and handled, so the DISCONNECT goes out after their
// answers, and then mochi gets the header and ends the connection with
// packets.ErrPacketTooLarge as before (will, OnDisconnect, metrics).
func Wrap(c net.Conn, maxSize uint32) net.Conn {
	if maxSize == 0 || maxSize >= ProtocolMaxPacketSize {
		return c
	}
	return &sizeConn{Conn: c, max: maxSize}
}

// sizeConn is a connection watched by Wrap. Read is called by one
// goroutine at a time (mochi's reader); oversize is set by the hook on
// that same goroutine, atomic for the race detector's sake.
type sizeConn struct {
	net.Conn
	max      uint32
	sc       scanner
	held     []byte // the oversized packet's header and what followed, not yet handed out
	done     bool   // oversized packet found: no more scanning
	tripped  bool   // answered
	oversize atomic.Pointer[func()]
}

// NetConn returns the connection Wrap wrapped (a *tls.Conn on a tls
// listener), for code that needs its concrete type: mochi's Client.Net.Conn
// is the wrapper.
func (c *sizeConn) NetConn() net.Conn { return c.Conn }

// Read reads from the connection, holding back the oversized packet (see
// Wrap).
func (c *sizeConn) Read(p []byte) (int, error) {
	if c.held != nil {
		c.trip()
		n := copy(p, c.held)
		c.held = c.held[n:]
		if len(c.held) == 0 {
			c.held = nil
		}
		return n, nil
	}
	n, err := c.Conn.Read(p)
	if c.done || n == 0 {
		return n, err
	}
	at := c.sc.scan(p[:n], c.max)
	switch {
	case at < 0:
	case at == 0:
		// The header starts here or started in an earlier read: mochi
		// has handled every packet before it.
		c.done = true
		c.trip()
	default:
		// Hand out what precedes it; the rest waits for the next read.
		// (A read error that came with these bytes is dropped: mochi
		// stops at the oversized header before it would see it.)
		c.done = true
		c.held = append([]byte(nil), p[at:n]...)
		return at, nil
	}
	return n, err
}

// trip answers the oversized packet, once.
func (c *sizeConn) trip() {
	if c.tripped {
		return
	}
	c.tripped = true
	if f := c.oversize.Load(); f != nil {
		(*f)()
	}
}

// scanner follows MQTT packet boundaries across reads.
type scanner struct {
	state  uint8 // scanHeader, scanLength, scanBody or scanStopped
	length int   // remaining length decoded so far
	mult   int
	nlen   int // length bytes read
	skip   int // body bytes still to skip
}

const (
	scanHeader = iota
	scanLength
	scanBody
	scanStopped
)

// scan advances over b and returns where in b the fixed header of the
// first packet over maxSize begins (0 if it began in an earlier b), or -1
// if b holds none. A malformed remaining length stops the scan for good
// (mochi refuses it itself).
func (s *scanner) scan(b []byte, maxSize uint32) int {
	headerAt := 0
	for i := 0; i < len(b); {
		switch s.state {
		case scanHeader:
			headerAt = i
			s.state, s.length, s.mult, s.nlen = scanLength, 0, 1, 0
			i++
		case scanLength:
			v := b[i]
			i++
			s.length += int(v&0x7f) * s.mult
			s.mult *= 128
			s.nlen++
			if v&0x80 != 0 {
				if s.nlen == 4 {
					s.state = scanStopped
					return -1
				}
				continue
			}
			if uint64(s.length)+1 > uint64(maxSize) {
				s.state = scanStopped
				return headerAt
			}
			s.skip = s.length
			s.state = scanBody
			if s.skip == 0 {
				s.state = scanHeader
			}
		case scanBody:
			k := min(s.skip, len(b)-i)
			s.skip -= k
			i += k
			if s.skip == 0 {
				s.state = scanHeader
			}
		default:
			return -1
		}
	}
	return -1
}
