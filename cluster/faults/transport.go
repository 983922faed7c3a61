package faults

import (
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Transport wraps inner so that memberlist's traffic obeys the switch.
// With nothing cut it only forwards: one atomic load per packet or dial
// and one channel hop per inbound packet or stream.
func (s *Switch) Transport(inner memberlist.NodeAwareTransport) memberlist.NodeAwareTransport {
	t := &transport{
		s:       s,
		inner:   inner,
		packets: make(chan *memberlist.Packet),
		streams: make(chan net.Conn),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	t.wg.Add(2)
	go t.forwardPackets()
	go t.forwardStreams()
	return t
}

type transport struct {
	s       *Switch
	inner   memberlist.NodeAwareTransport
	packets chan *memberlist.Packet
	streams chan net.Conn

	// stop is closed when Shutdown starts: from then on the forwarders
	// drop what they read instead of waiting for memberlist (which no
	// longer reads), so the inner transport's listeners, blocked on an
	// unbuffered send, can finish. done is closed once the inner
	// transport is shut down: the forwarders return.
	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{}
	wg       sync.WaitGroup
}

var _ memberlist.NodeAwareTransport = (*transport)(nil)

func (t *transport) forwardPackets() {
	defer t.wg.Done()
	in := t.inner.PacketCh()
	for {
		select {
		case p := <-in:
			if t.s.blockedFrom(p.From) {
				continue
			}
			select {
			case t.packets <- p:
			case <-t.stop: // shutting down: drop it
			}
		case <-t.done:
			return
		}
	}
}

// forwardStreams refuses every inbound stream while any member is cut: a
// stream does not say who opened it (it comes from an ephemeral port and
// may be encrypted), and a cut member's TCP probe or push-pull must not
// get through. Members that are not cut keep gossiping over UDP; their
// periodic push-pull fails until the heal.
func (t *transport) forwardStreams() {
	defer t.wg.Done()
	in := t.inner.StreamCh()
	for {
		select {
		case c := <-in:
			if t.s.Active() {
				_ = c.Close()
				continue
			}
			select {
			case t.streams <- c:
			case <-t.stop: // shutting down
				_ = c.Close()
			}
		case <-t.done:
			return
		}
	}
}

// FinalAdvertiseAddr implements memberlist.Transport.
func (t *transport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	return t.inner.FinalAdvertiseAddr(ip, port)
}

// WriteTo implements memberlist.Transport.
func (t *transport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

// WriteToAddress implements memberlist.NodeAwareTransport: a packet to a
// cut member is dropped silently, as a network would.
func (t *transport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	if t.s.blocked(a.Name, a.Addr) {
		return time.Now(), nil
	}
	return t.inner.WriteToAddress(b, a)
}

// PacketCh implements memberlist.Transport.
func (t *transport) PacketCh() <-chan *memberlist.Packet { return t.packets }

// DialTimeout implements memberlist.Transport.
func (t *transport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

// DialAddressTimeout implements memberlist.NodeAwareTransport.
func (t *transport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	if t.s.blocked(a.Name, a.Addr) {
		name := a.Name
		if name == "" {
			name = a.Addr
		}
		return nil, fmt.Errorf("dial %s: %w: %s", a.Addr, ErrCut, name)
	}
	return t.inner.DialAddressTimeout(a, timeout)
}

// StreamCh implements memberlist.Transport.
func (t *transport) StreamCh() <-chan net.Conn { return t.streams }

// Shutdown implements memberlist.Transport.
func (t *transport) Shutdown() error {
	var err error
	t.stopOnce.Do(func() {
		close(t.stop)
		err = t.inner.Shutdown()
		close(t.done)
		t.wg.Wait()
	})
	return err
}
