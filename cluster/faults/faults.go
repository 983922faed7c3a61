// Package faults holds the debug partition switch: it makes this node
// drop its cluster traffic to and from named members, so a developer can
// split a local cluster on command (`mendmq ctl debug partition n3`),
// write on both sides and watch the merge policies decide at the heal.
// The admin API exposes it only with admin.debug: true.
//
// The switch sits in two places. For memberlist it wraps the gossip
// transport: packets and dials to a cut member are dropped, packets from
// it (recognised by their source address: memberlist sends from its
// bound socket) are dropped, and while any member is cut every inbound
// gossip stream is refused, because a TCP stream does not say who opened
// it and a cut member's TCP fallback probe must not get through. For
// the data plane it answers dataplane.Config.Refuse, which names the
// peer at every dial and in every inbound handshake.
//
// A cut made on one node is one-sided by construction but blocks both
// directions at that node. Cutting a node from every other member
// isolates it: both sides declare the other dead and the cluster splits
// for real. Cutting some members only breaks those links; memberlist's
// indirect probes may then keep everyone alive while the data plane
// (and so the netsplit detector) sees the broken links.
package faults

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
)

// ErrCut is wrapped by the errors of dials and handshakes the switch
// refuses.
var ErrCut = errors.New("link cut by the debug partition switch")

// Addrs are a member's cluster addresses, as the members view knows
// them.
type Addrs struct {
	Gossip string // memberlist "ip:port"
	Data   string // data plane "host:port"
}

// Resolver names the addresses of a member; ok is false for a name that
// is not a member.
type Resolver func(name string) (a Addrs, ok bool)

// Switch records which members are cut. The zero value is not usable;
// create it with New. All methods are safe for concurrent use.
type Switch struct {
	self    string
	resolve Resolver

	on atomic.Bool // any member cut: the fast path reads only this

	mu     sync.RWMutex
	cut    map[string]Addrs // name -> addresses at the time of the cut
	gossip map[netip.AddrPort]string
	hooks  []func(peer string)
}

// New returns a switch for the node named self with nothing cut.
// resolve maps member names to addresses when a member is cut.
func New(self string, resolve Resolver) *Switch {
	return &Switch{self: self, resolve: resolve, cut: map[string]Addrs{}, gossip: map[netip.AddrPort]string{}}
}

// OnChange registers fn, called with each member whose links were cut
// or healed, after the change (the data plane resets that peer's
// connections). Register before the switch is used.
func (s *Switch) OnChange(fn func(peer string)) {
	s.mu.Lock()
	s.hooks = append(s.hooks, fn)
	s.mu.Unlock()
}

// Cut cuts this node's links to and from the named members. Every name
// must be a current member other than this node; on an error nothing is
// changed. Cutting a member already cut does nothing.
func (s *Switch) Cut(names ...string) error {
	if len(names) == 0 {
		return errors.New("faults: cut: name at least one member")
	}
	resolved := make(map[string]Addrs, len(names))
	for _, n := range names {
		if n == s.self {
			return fmt.Errorf("faults: cut %q: that is this node", n)
		}
		a, ok := s.resolve(n)
		if !ok {
			return fmt.Errorf("faults: cut %q: not a member of this node's cluster", n)
		}
		resolved[n] = a
	}
	var changed []string
	s.mu.Lock()
	for n, a := range resolved {
		if _, dup := s.cut[n]; dup {
			continue
		}
		s.cut[n] = a
		if ap, err := netip.ParseAddrPort(a.Gossip); err == nil {
			s.gossip[canon(ap)] = n
		}
		changed = append(changed, n)
	}
	s.on.Store(len(s.cut) > 0)
	hooks := s.hooks
	s.mu.Unlock()
	s.notify(hooks, changed)
	return nil
}

// Heal restores the links to the named members, or to every cut member
// when no name is given. It returns the members healed; names that were
// not cut are ignored.
func (s *Switch) Heal(names ...string) []string {
	s.mu.Lock()
	if len(names) == 0 {
		for n := range s.cut {
			names = append(names, n)
		}
	}
	var healed []string
	for _, n := range names {
		a, ok := s.cut[n]
		if !ok {
			continue
		}
		delete(s.cut, n)
		if ap, err := netip.ParseAddrPort(a.Gossip); err == nil {
			delete(s.gossip, canon(ap))
		}
		healed = append(healed, n)
	}
	s.on.Store(len(s.cut) > 0)
	hooks := s.hooks
	s.mu.Unlock()
	slices.Sort(healed)
	s.notify(hooks, healed)
	return healed
}

// Members returns the cut members, sorted.
func (s *Switch) Members() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]string, 0, len(s.cut))
	for n := range s.cut {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// Active reports whether any member is cut.
func (s *Switch) Active() bool { return s.on.Load() }

// Refuse implements dataplane.Config.Refuse: a cut member's links are
// refused.
func (s *Switch) Refuse(peer string) error {
	if !s.on.Load() {
		return nil
	}
	s.mu.RLock()
	_, cut := s.cut[peer]
	s.mu.RUnlock()
	if cut {
		return fmt.Errorf("%w: %s", ErrCut, peer)
	}
	return nil
}

// blockedName reports whether traffic to the member name (or, when the
// name is unknown, the gossip address addr) is cut.
func (s *Switch) blocked(name, addr string) bool {
	if !s.on.Load() {
		return false
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if _, cut := s.cut[name]; cut && name != "" {
		return true
	}
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		_, cut := s.gossip[canon(ap)]
		return cut
	}
	return false
}

// blockedFrom reports whether a packet from the source address from
// comes from a cut member.
func (s *Switch) blockedFrom(from net.Addr) bool {
	if !s.on.Load() || from == nil {
		return false
	}
	var ap netip.AddrPort
	switch a := from.(type) {
	case *net.UDPAddr:
		ap = a.AddrPort()
	case *net.TCPAddr:
		ap = a.AddrPort()
	default:
		p, err := netip.ParseAddrPort(from.String())
		if err != nil {
			return false
		}
		ap = p
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, cut := s.gossip[canon(ap)]
	return cut
}

func (s *Switch) notify(hooks []func(string), peers []string) {
	for _, p := range peers {
		for _, fn := range hooks {
			fn(p)
		}
	}
}

// canon unmaps IPv4-in-IPv6 addresses so a packet's source compares
// equal to the advertised address.
func canon(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
