// Package members is a node's view of its cluster's members: the one
// place that knows, for every member, its membership state (from gossip:
// package membership) and whether this node's data-plane link to it is up
// (package dataplane), each with the time it last changed and the last
// time the member was heard from.
//
// Both sources report to the View as timestamped Events; the View records
// them and passes each one on, in order, to its watchers (replication
// starts anti-entropy with a member that joined, the netsplit detector
// decides whether the node is split). Everything else reads the View:
// the router asks whether a member can take a message, replication and
// registration which members are alive.
//
// Two sources are needed because neither sees everything: memberlist's
// indirect probes keep a member alive while this node's own link to it is
// cut (A↔B broken, both reach C), and only memberlist knows members this
// node never connected to.
package members

import (
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/mendmq/mendmq/cluster/membership"
)

// Link is the state of this node's data-plane connection to a member.
type Link uint8

const (
	// LinkUnknown: no connection attempt has finished yet (a member just
	// learned about, or this node itself).
	LinkUnknown Link = iota
	// LinkUp: the outbound connection is authenticated.
	LinkUp
	// LinkDown: the connection was lost or a dial failed.
	LinkDown
)

// String returns "unknown", "up" or "down".
func (l Link) String() string {
	switch l {
	case LinkUnknown:
		return "unknown"
	case LinkUp:
		return "up"
	case LinkDown:
		return "down"
	}
	return fmt.Sprintf("link(%d)", uint8(l))
}

// Kind is what an Event reports.
type Kind uint8

const (
	// Joined: the member became Alive (new, restarted, back from Dead).
	Joined Kind = iota + 1
	// Updated: an alive member changed its metadata or moved between
	// Alive and Suspect.
	Updated
	// Gone: the member failed (State Dead) or left (State Left).
	Gone
	// Removed: a Dead or Left member was forgotten (Forget, reconnect
	// timeout).
	Removed
	// LinkUp and LinkDown: the data-plane link to the member changed.
	LinkChanged
)

// String names the kind.
func (k Kind) String() string {
	switch k {
	case Joined:
		return "joined"
	case Updated:
		return "updated"
	case Gone:
		return "gone"
	case Removed:
		return "removed"
	case LinkChanged:
		return "link"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Event is one fact about a member, with the time it was observed.
type Event struct {
	Kind   Kind
	Member string
	At     time.Time
	// State is the membership state (Joined, Updated, Gone).
	State membership.State
	// GossipAddr and DataAddr are the member's addresses (Joined,
	// Updated; empty keeps the known ones).
	GossipAddr, DataAddr string
	// Link is the new link state (LinkChanged); Err why it went down.
	Link Link
	Err  error
}

// Member is a snapshot of one member.
type Member struct {
	Name       string
	GossipAddr string
	DataAddr   string
	Self       bool
	// State is the membership state, StateSince when it last changed.
	State      membership.State
	StateSince time.Time
	// Link is the data-plane link state, LinkSince when it last changed,
	// LinkErr why it last went down.
	Link      Link
	LinkSince time.Time
	LinkErr   string
	// LastContact is the last time the member was known to be reachable:
	// a membership event saying it is alive (not suspect) or the link
	// coming up or staying up. Zero if never.
	LastContact time.Time
}

// Routable reports whether a message may be sent to the member: it is
// Alive or Suspect. (Whether the link is up is the data plane's business:
// a QoS 1/2 call to a member whose link is down fails and is refused.)
func (m Member) Routable() bool {
	return m.State == membership.Alive || m.State == membership.Suspect
}

// Watcher is told about every Event the View applied, with the member as
// it is after the event. Watchers run one at a time, in event order, on
// the goroutine that called Apply; they must be quick and must not call
// Apply (they may read the View).
type Watcher func(ev Event, m Member)

// View is the member table. It is safe for concurrent use.
type View struct {
	self string

	mu       sync.RWMutex
	members  map[string]*Member
	detached bool

	// notifyMu serializes watcher calls in event order.
	notifyMu sync.Mutex
	watchers []Watcher
}

// New returns a view holding only self, Alive since now.
func New(self string, now time.Time) *View {
	return &View{self: self, members: map[string]*Member{
		self: {Name: self, Self: true, State: membership.Alive, StateSince: now, LastContact: now},
	}}
}

// Self is this node's name.
func (v *View) Self() string { return v.self }

// Watch adds a watcher. Add watchers before events flow.
func (v *View) Watch(w Watcher) {
	v.notifyMu.Lock()
	v.watchers = append(v.watchers, w)
	v.notifyMu.Unlock()
}

// Apply records ev and passes it to the watchers. Events about other
// members after Detach are ignored. An event for a member not known yet
// creates it (a link event can come before the membership event that
// introduces the member; such a member is Dead until memberlist says
// otherwise).
func (v *View) Apply(ev Event) {
	v.notifyMu.Lock()
	defer v.notifyMu.Unlock()
	v.mu.Lock()
	if v.detached && ev.Member != v.self {
		v.mu.Unlock()
		return
	}
	m := v.members[ev.Member]
	if ev.Kind == Removed {
		if m == nil || ev.Member == v.self {
			v.mu.Unlock()
			return
		}
		snap := *m
		delete(v.members, ev.Member)
		v.mu.Unlock()
		v.notify(ev, snap)
		return
	}
	if m == nil {
		m = &Member{Name: ev.Member, Self: ev.Member == v.self, State: membership.Dead, StateSince: ev.At}
		v.members[ev.Member] = m
	}
	switch ev.Kind {
	case Joined, Updated, Gone:
		if m.State != ev.State {
			m.State, m.StateSince = ev.State, ev.At
		}
		if ev.GossipAddr != "" {
			m.GossipAddr = ev.GossipAddr
		}
		if ev.DataAddr != "" {
			m.DataAddr = ev.DataAddr
		}
		if m.State == membership.Alive {
			// Suspect is routable but no contact: it is memberlist
			// saying its probes failed, the start of the window of
			// uncertainty rather than a sign of life.
			m.LastContact = later(m.LastContact, ev.At)
		}
	case LinkChanged:
		if m.Link != ev.Link {
			m.Link, m.LinkSince = ev.Link, ev.At
		}
		if ev.Link == LinkUp {
			m.LastContact = later(m.LastContact, ev.At)
			m.LinkErr = ""
		} else if ev.Err != nil {
			m.LinkErr = ev.Err.Error()
		}
	}
	snap := *m
	v.mu.Unlock()
	v.notify(ev, snap)
}

func (v *View) notify(ev Event, m Member) {
	for _, w := range v.watchers {
		w(ev, m)
	}
}

// Contact records that member was heard from at t (a successful probe or
// frame), without an event: it only moves LastContact forward.
func (v *View) Contact(member string, t time.Time) {
	v.mu.Lock()
	if m := v.members[member]; m != nil {
		m.LastContact = later(m.LastContact, t)
	}
	v.mu.Unlock()
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// Detach stops following the cluster, for good (this node is leaving it):
// events about other members are ignored from now on and Alive is this
// node alone. The other members stay listed, and routable, until Isolate.
func (v *View) Detach() {
	v.mu.Lock()
	v.detached = true
	v.mu.Unlock()
}

// Isolate drops every other member (this node left the cluster): none is
// routable any more, and this node's state becomes Left. It implies
// Detach. Watchers are not told.
func (v *View) Isolate(now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.detached = true
	self := v.members[v.self]
	self.State, self.StateSince = membership.Left, now
	v.members = map[string]*Member{v.self: self}
}

// Detached reports whether Detach (or Isolate) was called.
func (v *View) Detached() bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.detached
}

// Member returns the member named name.
func (v *View) Member(name string) (Member, bool) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	m, ok := v.members[name]
	if !ok {
		return Member{}, false
	}
	return *m, true
}

// State returns the membership state of name.
func (v *View) State(name string) (membership.State, bool) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	m, ok := v.members[name]
	if !ok {
		return 0, false
	}
	return m.State, true
}

// Routable reports whether name is a member that can take a message (see
// Member.Routable). After Isolate none is.
func (v *View) Routable(name string) bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	m, ok := v.members[name]
	return ok && m.Routable()
}

// Members returns every member, sorted by name.
func (v *View) Members() []Member {
	v.mu.RLock()
	out := make([]Member, 0, len(v.members))
	for _, m := range v.members {
		out = append(out, *m)
	}
	v.mu.RUnlock()
	slices.SortFunc(out, func(a, b Member) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return out
}

// Alive returns the names of the routable members, this node included,
// sorted. After Detach that is this node alone.
func (v *View) Alive() []string {
	v.mu.RLock()
	out := make([]string, 0, len(v.members))
	if v.detached {
		out = append(out, v.self)
	} else {
		for name, m := range v.members {
			if m.Routable() || name == v.self {
				out = append(out, name)
			}
		}
	}
	v.mu.RUnlock()
	slices.Sort(out)
	return out
}

// AlivePeers returns Alive without this node.
func (v *View) AlivePeers() []string {
	return slices.DeleteFunc(v.Alive(), func(s string) bool { return s == v.self })
}
