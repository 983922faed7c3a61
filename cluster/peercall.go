package cluster

import (
	"context"
	"errors"
	"fmt"

	"github.com/mendmq/mendmq/cluster/dataplane"
)

// Calls of the broker. Some operator questions are about state only the
// broker holds — a session as mochi keeps it, the merges a policy parked —
// and must be answered by the node that holds it. The cluster does not
// know what these calls mean: the broker registers its handlers with
// HandleCall and asks with Call, on message types of its own range, so
// the cluster's parts keep theirs (1..63) and neither side lists the
// other's messages.
const (
	// FirstBrokerCall is the first message type left to the broker.
	FirstBrokerCall uint8 = 64
	// LastBrokerCall is the last one.
	LastBrokerCall uint8 = 95
)

// ErrPeerUnreachable: the node asked cannot be reached now — it is not an
// alive member, the netsplit detector found it unreachable, or it did not
// answer before the call's deadline.
var ErrPeerUnreachable = errors.New("cluster: node unreachable")

// ErrUnknownMember: no member of this node's view has that name.
var ErrUnknownMember = errors.New("cluster: no such member")

// HandleCall registers f to answer the calls of type typ that other nodes
// send with Call. typ must lie in [FirstBrokerCall, LastBrokerCall], and
// registration must happen before Start. f runs on a data-plane worker,
// concurrently with other calls; it may block (its caller's deadline
// bounds the wait, not f), and an error it returns reaches the caller as
// a *dataplane.RemoteError.
func (n *Node) HandleCall(typ uint8, f func(from string, payload []byte) ([]byte, error)) error {
	if typ < FirstBrokerCall || typ > LastBrokerCall {
		return fmt.Errorf("cluster: register call type %d: the broker's calls are %d..%d", typ, FirstBrokerCall, LastBrokerCall)
	}
	if n.running.Load() {
		return fmt.Errorf("cluster: register call type %d: the node is running; register before Start", typ)
	}
	return n.mux.HandleCallFunc(typ, false, f)
}

// Call sends a call of type typ (registered with HandleCall on node) and
// returns its answer. It fails at once with ErrPeerUnreachable when node
// is not an alive member this node can reach (dead, left, or cut off in a
// netsplit), and with ErrPeerUnreachable too when node does not answer
// before ctx ends (the data plane's call timeout applies without a
// deadline); ErrUnknownMember when no member has that name. The caller
// answers for itself: node must not be this node.
func (n *Node) Call(ctx context.Context, node string, typ uint8, payload []byte) ([]byte, error) {
	if typ < FirstBrokerCall || typ > LastBrokerCall {
		return nil, fmt.Errorf("cluster: call type %d: the broker's calls are %d..%d", typ, FirstBrokerCall, LastBrokerCall)
	}
	if node == n.name {
		return nil, fmt.Errorf("cluster: call type %d: %s is this node", typ, node)
	}
	if !n.running.Load() || n.left.Load() {
		return nil, ErrNotRunning
	}
	st, ok := n.view.State(node)
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownMember, node)
	}
	if !n.view.Routable(node) {
		return nil, fmt.Errorf("%w: %s is %s", ErrPeerUnreachable, node, st)
	}
	if n.split.unreachable(node) {
		return nil, fmt.Errorf("%w: %s is cut off from this node (netsplit)", ErrPeerUnreachable, node)
	}
	b, err := n.dp.Call(ctx, node, typ, payload)
	var re *dataplane.RemoteError
	switch {
	case err == nil:
		return b, nil
	case errors.As(err, &re):
		return nil, err
	case errors.Is(err, context.DeadlineExceeded):
		return nil, fmt.Errorf("%w: %s did not answer in time: %w", ErrPeerUnreachable, node, err)
	case ctx.Err() != nil:
		return nil, err // the caller gave up
	default:
		// The link went away under the call (closed, queue refused).
		return nil, fmt.Errorf("%w: %s: %w", ErrPeerUnreachable, node, err)
	}
}

// PeerState is a member as an operator's cluster-wide question sees it.
type PeerState struct {
	Name string
	// State is "alive", "suspect", "dead" or "left".
	State string
	// Reachable: Call may reach it now (alive or suspect, and not found
	// unreachable by the netsplit detector).
	Reachable bool
}

// Peers returns the other members of this node's view, sorted by name,
// with whether Call may reach each one now. Members that left the
// cluster gracefully are included (State "left", not reachable): the
// caller decides whether they count.
func (n *Node) Peers() []PeerState {
	var out []PeerState
	for _, m := range n.view.Members() {
		if m.Self {
			continue
		}
		out = append(out, PeerState{Name: m.Name, State: m.State.String(),
			Reachable: m.Routable() && !n.split.unreachable(m.Name)})
	}
	return out
}
