package membership

import "fmt"

// State is a member's liveness as seen by this node.
type State uint8

const (
	// Alive: the member answers probes (or was just learned about).
	Alive State = iota
	// Suspect: this node's own last probe of the member failed and it is
	// not yet declared dead. memberlist keeps suspicion internal, so this
	// is this node's view only: it is set when a local probe fails and
	// cleared by the next successful direct probe or any other event
	// about the member. Suspicions raised by other members are not seen.
	Suspect
	// Dead: the member failed (stopped answering, or cut off) and was not
	// heard from since. It is re-joined every ReconnectInterval until
	// ReconnectTimeout or Forget.
	Dead
	// Left: the member left gracefully (Leave). It is not re-joined.
	Left
)

// String returns "alive", "suspect", "dead" or "left".
func (s State) String() string {
	switch s {
	case Alive:
		return "alive"
	case Suspect:
		return "suspect"
	case Dead:
		return "dead"
	case Left:
		return "left"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// Member is a snapshot of one cluster member. The local node is a member
// too (always Alive while running).
type Member struct {
	Name       string
	GossipAddr string // "ip:port" of its memberlist transport
	Meta       NodeMeta
	State      State
}

// EventHandler receives membership changes. It is implemented by the
// consumer (package cluster). Events are delivered one at a time, in the
// order memberlist produced them, from a single goroutine owned by the
// Membership; a handler may block briefly (events queue up behind it,
// see Config.EventQueueLen) and may call Membership methods. The Member
// passed is a copy the handler may keep.
type EventHandler interface {
	// MemberJoin: a member became Alive — new, restarted, or back from
	// Dead or Left. Also delivered for the local node at Start.
	MemberJoin(Member)
	// MemberUpdate: an alive member changed its NodeMeta, or moved
	// between Alive and Suspect (m.State tells which).
	MemberUpdate(Member)
	// MemberLeave: a member failed (m.State == Dead) or left gracefully
	// (m.State == Left). It stays in Members until MemberRemove.
	MemberLeave(Member)
	// MemberRemove: a Dead or Left member was dropped from Members, by
	// Forget or after ReconnectTimeout. It is no longer re-joined.
	MemberRemove(Member)
}

// HandlerBase implements EventHandler with no-ops; embed it to handle
// only some events.
type HandlerBase struct{}

// MemberJoin implements EventHandler.
func (HandlerBase) MemberJoin(Member) {}

// MemberUpdate implements EventHandler.
func (HandlerBase) MemberUpdate(Member) {}

// MemberLeave implements EventHandler.
func (HandlerBase) MemberLeave(Member) {}

// MemberRemove implements EventHandler.
func (HandlerBase) MemberRemove(Member) {}

var _ EventHandler = HandlerBase{}

// Stats are membership counters and gauges, for metrics. Counters only
// grow for the life of the Membership.
type Stats struct {
	// Members by state, the local node included (gauges).
	Alive, Suspect, Dead, Left int

	// Joins counts members becoming Alive (the local node included),
	// Failures members declared Dead, Leaves members that left gracefully.
	Joins, Failures, Leaves uint64

	// ReconnectAttempts counts join attempts to failed members and
	// Reconnects those that brought the member back. SeedJoinAttempts
	// counts re-joins of Config.Seeds while alone.
	ReconnectAttempts, Reconnects, SeedJoinAttempts uint64

	// RefusedJoins counts members refused: another cluster name, a node
	// name already used at another address, or Config.Admit. NameConflicts
	// counts the name conflicts among them.
	RefusedJoins, NameConflicts uint64

	// EventsDropped counts events not delivered because the handler fell
	// Config.EventQueueLen behind.
	EventsDropped uint64

	// BadInput counts gossip packets and streams refused as unreadable:
	// not decryptable with Config.SecretKey, malformed, truncated or of
	// an unknown type (an outsider, a port scan, a node with another
	// key). Only the first, then one summary per minute, is logged.
	BadInput uint64
}
