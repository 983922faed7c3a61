package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// The raw engine is a minimal MQTT 3.1.1/5 client written for this benchmark. Why not
// only paho: with 50 pairs on a 2-core machine the generator shares the CPU with the
// broker under test, and every microsecond the generator spends per message is taken
// from the broker. paho.mqtt.golang hands every message through several goroutines and
// channels and writes each packet with its own syscall; paho.golang's subscriber path
// allocates per packet and routes through a channel. The raw engine does the work
// inline in one read loop per connection, encodes PUBLISH into a bufio.Writer, and
// batches acknowledgements until the read buffer is empty (a flush always happens
// before the client would block, so no ack or publish waits on a timer). Handshake
// packets (CONNECT, SUBSCRIBE, CONNACK, SUBACK) are encoded and decoded with mochi's
// packets package; the hot path (PUBLISH, PUBACK/PUBREC/PUBREL/PUBCOMP) is hand-coded
// and checked against mochi's decoder in tests. Measured cost: see README/report.

const (
	rawKeepalive    = 30 * time.Second
	rawMaxPacket    = 1<<20 + 1024 // largest packet accepted: max payload plus headers
	rawReadBufSize  = 64 << 10
	rawWriteBufSize = 16 << 10
)

// MQTT control packet types (first nibble of the fixed header).
const (
	ptConnack    = 2
	ptPublish    = 3
	ptPuback     = 4
	ptPubrec     = 5
	ptPubrel     = 6
	ptPubcomp    = 7
	ptSuback     = 9
	ptPingresp   = 13
	ptDisconnect = 14
)

var (
	errPacketTooLarge = errors.New("mqttbench: packet larger than limit")
	errMalformed      = errors.New("mqttbench: malformed packet")
)

// rawEngine dials rawConn-based clients.
type rawEngine struct{ opts engineOptions }

func (e *rawEngine) Name() string { return clientRaw }

// rawConn is one MQTT connection: a buffered reader owned by the read loop and a
// buffered writer shared under wmu by the read loop (acks) and the caller (publishes).
type rawConn struct {
	conn    net.Conn
	br      *bufio.Reader
	version byte
	rbuf    []byte

	wmu sync.Mutex
	bw  *bufio.Writer

	closing  atomic.Bool
	done     chan struct{} // closed when the read loop has exited
	errMu    sync.Mutex
	err      error // why the read loop exited, if not closing
	pinging  bool  // startPinger was called (by the goroutine that later calls close)
	stopPing chan struct{}
	pingDone chan struct{}
}

// dialRaw connects and completes the CONNECT/CONNACK handshake. receiveMax is sent
// as the v5 Receive Maximum (0 omits it; ignored for 3.1.1). It returns the broker's Receive
// Maximum for v5 (65535 when absent, and for 3.1.1).
func dialRaw(ctx context.Context, addr string, version byte, clientID string, receiveMax uint16) (*rawConn, uint16, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, 0, fmt.Errorf("dial %s: %w", addr, err)
	}
	c := &rawConn{
		conn:     nc,
		br:       bufio.NewReaderSize(nc, rawReadBufSize),
		bw:       bufio.NewWriterSize(nc, rawWriteBufSize),
		version:  version,
		done:     make(chan struct{}),
		stopPing: make(chan struct{}),
		pingDone: make(chan struct{}),
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: version,
		Connect: packets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			Clean:            true,
			Keepalive:        uint16(rawKeepalive / time.Second),
			ClientIdentifier: clientID,
		},
	}
	if version == 5 {
		pk.Properties.ReceiveMaximum = receiveMax
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		nc.Close()
		return nil, 0, fmt.Errorf("encode CONNECT for %s: %w", clientID, err)
	}
	if _, err := nc.Write(buf.Bytes()); err != nil {
		nc.Close()
		return nil, 0, fmt.Errorf("send CONNECT to %s: %w", addr, err)
	}
	hdr, body, err := c.readPacket()
	if err != nil {
		nc.Close()
		return nil, 0, fmt.Errorf("read CONNACK from %s: %w", addr, err)
	}
	if hdr>>4 != ptConnack {
		nc.Close()
		return nil, 0, fmt.Errorf("read CONNACK from %s: got packet type %d", addr, hdr>>4)
	}
	ack := packets.Packet{ProtocolVersion: version, FixedHeader: packets.FixedHeader{Type: packets.Connack, Remaining: len(body)}}
	if err := ack.ConnackDecode(body); err != nil {
		nc.Close()
		return nil, 0, fmt.Errorf("decode CONNACK from %s: %w", addr, err)
	}
	if ack.ReasonCode != 0 {
		nc.Close()
		return nil, 0, fmt.Errorf("connect %s as %s: refused with code %#x", addr, clientID, ack.ReasonCode)
	}
	_ = nc.SetDeadline(time.Time{})
	serverMax := uint16(65535)
	if version == 5 && ack.Properties.ReceiveMaximum > 0 {
		serverMax = ack.Properties.ReceiveMaximum
	}
	return c, serverMax, nil
}

// subscribe sends SUBSCRIBE and waits for its SUBACK; it must run before the read loop.
func (c *rawConn) subscribe(ctx context.Context, topic string, qos byte) error {
	if dl, ok := ctx.Deadline(); ok {
		_ = c.conn.SetDeadline(dl)
		defer c.conn.SetDeadline(time.Time{})
	}
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		ProtocolVersion: c.version,
		PacketID:        1,
		Filters:         packets.Subscriptions{{Filter: topic, Qos: qos}},
	}
	var buf bytes.Buffer
	if err := pk.SubscribeEncode(&buf); err != nil {
		return fmt.Errorf("encode SUBSCRIBE %s: %w", topic, err)
	}
	if _, err := c.conn.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("send SUBSCRIBE %s: %w", topic, err)
	}
	// Nothing but the SUBACK can arrive first: the client has no other subscription.
	// Still, skip a PINGRESP or similar rather than fail on it; bounded by the deadline.
	for i := 0; i < 16; i++ {
		hdr, body, err := c.readPacket()
		if err != nil {
			return fmt.Errorf("read SUBACK for %s: %w", topic, err)
		}
		if hdr>>4 != ptSuback {
			continue
		}
		ack := packets.Packet{ProtocolVersion: c.version, FixedHeader: packets.FixedHeader{Type: packets.Suback, Remaining: len(body)}}
		if err := ack.SubackDecode(body); err != nil {
			return fmt.Errorf("decode SUBACK for %s: %w", topic, err)
		}
		if len(ack.ReasonCodes) != 1 || ack.ReasonCodes[0] >= 0x80 {
			return fmt.Errorf("subscribe %s: refused with codes %x", topic, ack.ReasonCodes)
		}
		if ack.ReasonCodes[0] != qos {
			return fmt.Errorf("subscribe %s: granted QoS %d, asked %d", topic, ack.ReasonCodes[0], qos)
		}
		return nil
	}
	return fmt.Errorf("subscribe %s: no SUBACK among the first 16 packets", topic)
}

// readPacket reads one packet; body aliases c.rbuf and is valid until the next call.
func (c *rawConn) readPacket() (hdr byte, body []byte, err error) {
	hdr, n, err := readFrameHeader(c.br)
	if err != nil {
		return 0, nil, err
	}
	if cap(c.rbuf) < n {
		c.rbuf = make([]byte, n, n+n/2)
	}
	body = c.rbuf[:n]
	if _, err := io.ReadFull(c.br, body); err != nil {
		return 0, nil, fmt.Errorf("read %d-byte packet body: %w", n, err)
	}
	return hdr, body, nil
}

// readFrameHeader reads a fixed header: the type/flags byte and the remaining length.
func readFrameHeader(r io.ByteReader) (hdr byte, n int, err error) {
	hdr, err = r.ReadByte()
	if err != nil {
		return 0, 0, err
	}
	n, _, err = packets.DecodeLength(r)
	if err != nil {
		return 0, 0, fmt.Errorf("decode remaining length: %w", err)
	}
	if n > rawMaxPacket {
		return 0, 0, fmt.Errorf("%w: %d bytes", errPacketTooLarge, n)
	}
	return hdr, n, nil
}

// parsePublish extracts the packet id and payload of a PUBLISH body (fixed header
// already read). It never panics; payload aliases body.
func parsePublish(hdr byte, body []byte, version byte) (id uint16, payload []byte, err error) {
	qos := (hdr >> 1) & 3
	if qos == 3 {
		return 0, nil, fmt.Errorf("%w: PUBLISH with QoS 3", errMalformed)
	}
	if len(body) < 2 {
		return 0, nil, fmt.Errorf("%w: PUBLISH shorter than its topic length", errMalformed)
	}
	off := 2 + (int(body[0])<<8 | int(body[1]))
	if qos > 0 {
		if len(body) < off+2 {
			return 0, nil, fmt.Errorf("%w: PUBLISH without packet id", errMalformed)
		}
		id = uint16(body[off])<<8 | uint16(body[off+1])
		off += 2
	}
	if version == 5 {
		plen, used, err := decodeVarint(body[min(off, len(body)):])
		if err != nil {
			return 0, nil, fmt.Errorf("%w: PUBLISH property length: %v", errMalformed, err)
		}
		off += used + plen
	}
	if off > len(body) {
		return 0, nil, fmt.Errorf("%w: PUBLISH header longer than packet", errMalformed)
	}
	return id, body[off:], nil
}

// decodeVarint decodes an MQTT Variable Byte Integer from the start of b.
func decodeVarint(b []byte) (value, used int, err error) {
	for i := 0; i < 4; i++ {
		if i >= len(b) {
			return 0, 0, io.ErrUnexpectedEOF
		}
		value |= int(b[i]&0x7f) << (7 * i)
		if b[i]&0x80 == 0 {
			return value, i + 1, nil
		}
	}
	return 0, 0, packets.ErrMalformedVariableByteInteger // [MQTT-1.5.5-1] at most 4 bytes
}

// ackID reads the packet id of a PUBACK/PUBREC/PUBREL/PUBCOMP and the v5 reason code
// (0 when absent).
func ackID(body []byte) (id uint16, reason byte, err error) {
	if len(body) < 2 {
		return 0, 0, fmt.Errorf("%w: ack without packet id", errMalformed)
	}
	id = uint16(body[0])<<8 | uint16(body[1])
	if len(body) > 2 {
		reason = body[2]
	}
	return id, reason, nil
}

// appendAck appends a 4-byte PUBACK/PUBREC/PUBREL/PUBCOMP (reason omitted = success,
// valid for both 3.1.1 and 5).
func appendAck(b []byte, ptype byte, id uint16) []byte {
	first := ptype << 4
	if ptype == ptPubrel {
		first |= 0x02 // [MQTT-3.6.1-1]
	}
	return append(b, first, 2, byte(id>>8), byte(id))
}

// appendPublishHeader appends the fixed and variable header of a PUBLISH whose payload
// of payloadLen bytes the caller writes next.
func appendPublishHeader(b []byte, version, qos byte, topic string, id uint16, payloadLen int) []byte {
	remaining := 2 + len(topic) + payloadLen
	if qos > 0 {
		remaining += 2
	}
	if version == 5 {
		remaining++ // property length 0
	}
	b = append(b, ptPublish<<4|qos<<1)
	for {
		eb := byte(remaining % 128)
		remaining /= 128
		if remaining > 0 {
			eb |= 0x80
		}
		b = append(b, eb)
		if remaining == 0 {
			break
		}
	}
	b = append(b, byte(len(topic)>>8), byte(len(topic)))
	b = append(b, topic...)
	if qos > 0 {
		b = append(b, byte(id>>8), byte(id))
	}
	if version == 5 {
		b = append(b, 0)
	}
	return b
}

// startPinger sends PINGREQ every keepalive/2 so an idle subscriber is not dropped
// during long runs.
func (c *rawConn) startPinger() {
	c.pinging = true
	go func() {
		defer close(c.pingDone)
		t := time.NewTicker(rawKeepalive / 2)
		defer t.Stop()
		for {
			select {
			case <-c.stopPing:
				return
			case <-t.C:
				c.wmu.Lock()
				_, err := c.bw.Write([]byte{0xC0, 0})
				if err == nil {
					err = c.bw.Flush()
				}
				c.wmu.Unlock()
				if err != nil {
					return
				}
			}
		}
	}()
}

// fail records why the read loop stopped (unless the client is closing).
func (c *rawConn) fail(err error) {
	if c.closing.Load() {
		return
	}
	c.errMu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.errMu.Unlock()
}

// readErr returns why the read loop stopped, or a generic error.
func (c *rawConn) readErr() error {
	c.errMu.Lock()
	defer c.errMu.Unlock()
	if c.err != nil {
		return c.err
	}
	return errors.New("connection closed")
}

// close sends DISCONNECT, closes the socket and waits for the goroutines.
func (c *rawConn) close(readLoopStarted bool) error {
	c.closing.Store(true)
	c.wmu.Lock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, err := c.bw.Write([]byte{ptDisconnect << 4, 0})
	if err == nil {
		err = c.bw.Flush()
	}
	c.wmu.Unlock()
	cerr := c.conn.Close()
	if c.pinging {
		close(c.stopPing)
		<-c.pingDone
	}
	if readLoopStarted {
		<-c.done
	}
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("send DISCONNECT: %w", err)
	}
	if cerr != nil {
		return fmt.Errorf("close connection: %w", cerr)
	}
	return nil
}

// rawPublisher publishes to one topic with a window of unacknowledged messages.
type rawPublisher struct {
	*rawConn
	topic      string
	qos        byte
	flushEvery int
	slots      chan struct{} // one token per unacknowledged QoS 1/2 message
	nextID     uint16
	unflushed  int
	hdr        []byte // scratch for the PUBLISH header
	nacks      atomic.Uint64
}

func (e *rawEngine) DialPublisher(ctx context.Context, addr, clientID, topic string) (publisher, error) {
	c, serverMax, err := dialRaw(ctx, addr, e.opts.Version, clientID, e.opts.ReceiveMax)
	if err != nil {
		return nil, err
	}
	window := e.opts.Inflight
	if window > int(serverMax) {
		window = int(serverMax) // [MQTT-3.3.4-7] never exceed the broker's Receive Maximum
	}
	if window < 1 {
		window = 1
	}
	p := &rawPublisher{
		rawConn:    c,
		topic:      topic,
		qos:        e.opts.QoS,
		flushEvery: max(e.opts.FlushEvery, 1),
		slots:      make(chan struct{}, window),
	}
	c.startPinger()
	go p.readLoop()
	return p, nil
}

func (p *rawPublisher) Publish(ctx context.Context, payload []byte, fill func([]byte)) error {
	if p.qos > 0 {
		select {
		case p.slots <- struct{}{}:
		default:
			// Window full: everything buffered must reach the broker before waiting
			// for its acks.
			if err := p.flush(); err != nil {
				return err
			}
			select {
			case p.slots <- struct{}{}:
			case <-ctx.Done():
				return ctx.Err()
			case <-p.done:
				return p.readErr()
			}
		}
		p.nextID++
		if p.nextID == 0 {
			p.nextID = 1
		}
	}
	fill(payload)
	p.hdr = appendPublishHeader(p.hdr[:0], p.version, p.qos, p.topic, p.nextID, len(payload))
	p.wmu.Lock()
	defer p.wmu.Unlock()
	if _, err := p.bw.Write(p.hdr); err != nil {
		return fmt.Errorf("write PUBLISH: %w", err)
	}
	if _, err := p.bw.Write(payload); err != nil {
		return fmt.Errorf("write PUBLISH: %w", err)
	}
	p.unflushed++
	if p.unflushed >= p.flushEvery {
		p.unflushed = 0
		if err := p.bw.Flush(); err != nil {
			return fmt.Errorf("write PUBLISH: %w", err)
		}
	}
	return nil
}

func (p *rawPublisher) Flush() error { return p.flush() }

func (p *rawPublisher) flush() error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	p.unflushed = 0
	if err := p.bw.Flush(); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	return nil
}

func (p *rawPublisher) Drain(ctx context.Context) error {
	if err := p.flush(); err != nil {
		return err
	}
	if p.qos == 0 {
		return nil
	}
	// Taking every slot means every message sent so far was acknowledged.
	for i := 0; i < cap(p.slots); i++ {
		select {
		case p.slots <- struct{}{}:
		case <-ctx.Done():
			return fmt.Errorf("wait for %d acks: %w", len(p.slots), ctx.Err())
		case <-p.done:
			return p.readErr()
		}
	}
	for i := 0; i < cap(p.slots); i++ {
		<-p.slots
	}
	return nil
}

func (p *rawPublisher) Close() error { return p.close(true) }

// release frees one window slot for an acknowledged message.
func (p *rawPublisher) release() error {
	select {
	case <-p.slots:
		return nil
	default:
		return fmt.Errorf("%w: acknowledgement with no message in flight", errMalformed)
	}
}

func (p *rawPublisher) readLoop() {
	defer close(p.done)
	for {
		hdr, body, err := p.readPacket()
		if err != nil {
			p.fail(err)
			return
		}
		switch hdr >> 4 {
		case ptPuback, ptPubcomp:
			_, reason, err := ackID(body)
			if err == nil {
				if reason >= 0x80 {
					p.nacks.Add(1)
				}
				err = p.release()
			}
			if err != nil {
				p.fail(err)
				return
			}
		case ptPubrec:
			id, reason, err := ackID(body)
			if err != nil {
				p.fail(err)
				return
			}
			if reason >= 0x80 { // the exchange ends here [MQTT-4.3.3]
				p.nacks.Add(1)
				if err := p.release(); err != nil {
					p.fail(err)
					return
				}
				continue
			}
			p.wmu.Lock()
			_, err = p.bw.Write(appendAck(nil, ptPubrel, id))
			if err == nil {
				err = p.bw.Flush()
			}
			p.wmu.Unlock()
			if err != nil {
				p.fail(fmt.Errorf("send PUBREL: %w", err))
				return
			}
		case ptDisconnect:
			p.fail(fmt.Errorf("broker sent DISCONNECT %x", body))
			return
		}
	}
}

// rawSubscriber receives one topic.
type rawSubscriber struct {
	*rawConn
	onMessage func([]byte)
	onError   func(error)
	acks      []byte // pending acknowledgements, written before the next blocking read
}

func (e *rawEngine) DialSubscriber(ctx context.Context, addr, clientID, topic string, onMessage func([]byte), onError func(error)) (subscriber, error) {
	c, _, err := dialRaw(ctx, addr, e.opts.Version, clientID, e.opts.ReceiveMax)
	if err != nil {
		return nil, err
	}
	if err := c.subscribe(ctx, topic, e.opts.QoS); err != nil {
		c.conn.Close()
		return nil, err
	}
	s := &rawSubscriber{rawConn: c, onMessage: onMessage, onError: onError}
	c.startPinger()
	go s.readLoop()
	return s, nil
}

func (s *rawSubscriber) Close() error { return s.close(true) }

func (s *rawSubscriber) readLoop() {
	defer close(s.done)
	for {
		if len(s.acks) > 0 && s.br.Buffered() == 0 {
			s.wmu.Lock()
			_, err := s.bw.Write(s.acks)
			if err == nil {
				err = s.bw.Flush()
			}
			s.wmu.Unlock()
			s.acks = s.acks[:0]
			if err != nil {
				s.stop(fmt.Errorf("send acks: %w", err))
				return
			}
		}
		hdr, body, err := s.readPacket()
		if err != nil {
			s.stop(err)
			return
		}
		switch hdr >> 4 {
		case ptPublish:
			id, payload, err := parsePublish(hdr, body, s.version)
			if err != nil {
				s.stop(err)
				return
			}
			s.onMessage(payload)
			switch (hdr >> 1) & 3 {
			case 1:
				s.acks = appendAck(s.acks, ptPuback, id)
			case 2:
				s.acks = appendAck(s.acks, ptPubrec, id)
			}
		case ptPubrel:
			id, _, err := ackID(body)
			if err != nil {
				s.stop(err)
				return
			}
			s.acks = appendAck(s.acks, ptPubcomp, id)
		case ptDisconnect:
			s.stop(fmt.Errorf("broker sent DISCONNECT %x", body))
			return
		}
	}
}

// stop reports a read-loop failure to the run unless the client is closing.
func (s *rawSubscriber) stop(err error) {
	if s.closing.Load() {
		return
	}
	s.fail(err)
	if s.onError != nil {
		s.onError(err)
	}
}
