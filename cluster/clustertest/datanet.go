package clustertest

import (
	"context"
	"fmt"
	"net"
	"sync"
)

// DataNetwork is the data-plane view of one node of a Network: it
// satisfies dataplane.Network (Listen and Dial on real TCP, 127.0.0.1
// only). Dials across a cut link fail with ErrLinkCut; connections it
// dialed are closed when their link is cut, so the peer side reads EOF.
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

// ownedListener releases its address from the Network when closed.
type ownedListener struct {
	net.Listener
	net  *Network
	addr string
	once sync.Once
}

func (l *ownedListener) Close() error {
	l.once.Do(func() { l.net.unregister(l.addr) })
	return l.Listener.Close()
}
