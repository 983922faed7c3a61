package clustertest

import (
	"fmt"
	"io"
	"log"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Transport is a memberlist transport for one node of a Network: a
// memberlist.NetTransport bound to 127.0.0.1 on a free port whose
// outgoing packets and dials obey the Network's links. Pass it as
// memberlist's Config.Transport (membership.Config.Transport).
type Transport struct {
	net   *Network
	node  string
	inner *memberlist.NetTransport
	addr  string

	wg       sync.WaitGroup // delayed packets in flight
	mu       sync.Mutex
	shutdown bool
}

var _ memberlist.NodeAwareTransport = (*Transport)(nil)

// Transport starts a memberlist transport for node on 127.0.0.1 with a
// kernel-chosen port. memberlist shuts it down (Memberlist.Shutdown);
// the address is released from the Network then.
func (n *Network) Transport(node string) (*Transport, error) {
	var (
		inner *memberlist.NetTransport
		err   error
	)
	// Port 0 picks a free TCP port; the UDP socket on the same port can
	// still be taken by someone else, so retry a few times (as memberlist
	// itself does).
	for range 10 {
		inner, err = memberlist.NewNetTransport(&memberlist.NetTransportConfig{
			BindAddrs: []string{"127.0.0.1"},
			BindPort:  0,
			Logger:    log.New(io.Discard, "", 0),
		})
		if err == nil || !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("clustertest: start transport for %s: %w", node, err)
	}
	addr := net.JoinHostPort("127.0.0.1", fmt.Sprint(inner.GetAutoBindPort()))
	n.register(node, addr)
	return &Transport{net: n, node: node, inner: inner, addr: addr}, nil
}

// Addr returns the gossip address ("127.0.0.1:port") of the transport.
func (t *Transport) Addr() string { return t.addr }

// FinalAdvertiseAddr implements memberlist.Transport.
func (t *Transport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	return t.inner.FinalAdvertiseAddr(ip, port)
}

// WriteTo implements memberlist.Transport.
func (t *Transport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

// WriteToAddress implements memberlist.NodeAwareTransport. A packet across
// a cut link, or one the fault RNG drops, is discarded silently, as a
// network would.
func (t *Transport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	now := time.Now()
	if _, blocked := t.net.packetRoute(t.node, a.Addr); blocked {
		return now, nil
	}
	drop, delay := t.net.packetFate()
	if drop {
		return now, nil
	}
	if delay == 0 {
		return t.inner.WriteToAddress(b, a)
	}
	t.mu.Lock()
	if t.shutdown {
		t.mu.Unlock()
		return now, nil
	}
	t.wg.Add(1)
	t.mu.Unlock()
	buf := append([]byte(nil), b...)
	time.AfterFunc(delay, func() {
		defer t.wg.Done()
		// The link may have been cut while the packet was in flight.
		if _, blocked := t.net.packetRoute(t.node, a.Addr); !blocked {
			_, _ = t.inner.WriteToAddress(buf, a)
		}
	})
	return now, nil
}

// PacketCh implements memberlist.Transport.
func (t *Transport) PacketCh() <-chan *memberlist.Packet { return t.inner.PacketCh() }

// DialTimeout implements memberlist.Transport.
func (t *Transport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

// DialAddressTimeout implements memberlist.NodeAwareTransport. Dials
// across a cut fail at once with ErrLinkCut; the stream is closed if its
// link is cut later.
func (t *Transport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	peer, blocked := t.net.route(t.node, a.Addr)
	if blocked {
		return nil, cutError(t.node, peer)
	}
	c, err := t.inner.DialAddressTimeout(a, timeout)
	if err != nil || peer == "" {
		return c, err
	}
	return t.net.track(c, t.node, peer), nil
}

// StreamCh implements memberlist.Transport.
func (t *Transport) StreamCh() <-chan net.Conn { return t.inner.StreamCh() }

// Shutdown implements memberlist.Transport: it closes the sockets, waits
// for delayed packets and releases the address.
func (t *Transport) Shutdown() error {
	t.mu.Lock()
	t.shutdown = true
	t.mu.Unlock()
	t.wg.Wait()
	err := t.inner.Shutdown()
	t.net.unregister(t.addr)
	return err
}
