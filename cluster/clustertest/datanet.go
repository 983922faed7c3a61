package clustertest

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// DataNetwork is the data-plane view of one node of a Network: it
// satisfies dataplane.Network (Listen and Dial on real TCP, 127.0.0.1
// only). Dials across a cut link fail with ErrLinkCut; connections are
// ended at both ends when their link is cut (unless Config.Silent): the
// dialing end is closed and the accepting end reads EOF at once, so what
// was written but not yet read is lost.
type DataNetwork struct {
	net  *Network
	node string
}

// DataNetwork returns the data-plane network of node.
func (n *Network) DataNetwork(node string) *DataNetwork {
	return &DataNetwork{net: n, node: node}
}

// Listen listens on addr, which must be on 127.0.0.1 (port 0 picks a
// free port), and records the bound address as owned by the node.
func (d *DataNetwork) Listen(addr string) (net.Listener, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("clustertest: listen %q for %s: %w", addr, d.node, err)
	}
	if host != "127.0.0.1" {
		return nil, fmt.Errorf("clustertest: listen %q for %s: only 127.0.0.1 is allowed", addr, d.node)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("clustertest: listen %q for %s: %w", addr, d.node, err)
	}
	bound := ln.Addr().String()
	d.net.register(d.node, bound)
	return &ownedListener{Listener: ln, net: d.net, addr: bound}, nil
}

// Dial connects to addr unless the link to its owner is cut.
func (d *DataNetwork) Dial(ctx context.Context, addr string) (net.Conn, error) {
	peer, blocked := d.net.route(d.node, addr)
	if blocked {
		return nil, cutError(d.node, peer)
	}
	var dialer net.Dialer
	c, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil || peer == "" {
		return c, err
	}
	return d.net.track(c, d.node, peer), nil
}

// ownedListener releases its address from the Network when closed, and
// registers the streams it accepts, so that a cut ends both ends.
type ownedListener struct {
	net.Listener
	net  *Network
	addr string
	once sync.Once
}

// Accept accepts a stream and registers its accepting end.
func (l *ownedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	a := &acceptedConn{Conn: c, net: l.net, key: c.RemoteAddr().String()}
	l.net.mu.Lock()
	l.net.accepted[a.key] = a
	l.net.mu.Unlock()
	return a, nil
}

// acceptedConn is the accepting end of a stream. Once its link is cut
// (the dialing end closed by the Network) it reads EOF, even if bytes the
// dialer wrote before the cut are still buffered: they are lost, as on a
// network that went away. It unregisters itself when closed.
type acceptedConn struct {
	net.Conn
	net  *Network
	key  string
	cut  atomic.Bool
	once sync.Once
}

func (c *acceptedConn) Read(b []byte) (int, error) {
	if c.cut.Load() {
		return 0, io.EOF
	}
	k, err := c.Conn.Read(b)
	if c.cut.Load() {
		return 0, io.EOF
	}
	return k, err
}

func (c *acceptedConn) Close() error {
	c.once.Do(func() {
		c.net.mu.Lock()
		if c.net.accepted[c.key] == c {
			delete(c.net.accepted, c.key)
		}
		c.net.mu.Unlock()
	})
	return c.Conn.Close()
}

func (l *ownedListener) Close() error {
	l.once.Do(func() { l.net.unregister(l.addr) })
	return l.Listener.Close()
}
