package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/mendmq/mendmq/cluster/membership"
)

// Join contacts seeds (gossip host:port) and returns how many answered.
// A node that left (Leave) cannot join again before a restart (ErrLeft).
func (n *Node) Join(seeds []string) (int, error) {
	if n.ml == nil || !n.running.Load() {
		return 0, ErrNotRunning
	}
	if n.leaving.Load() {
		return 0, ErrLeft
	}
	return n.ml.Join(seeds)
}

// Withdrawal reports the deletion of one node's session records from the
// replicated table (Leave, Forget).
type Withdrawal struct {
	// Node is the node whose sessions no longer belong to the cluster.
	Node string `json:"node"`
	// Sessions is how many session records were deleted.
	Sessions int `json:"sessions"`
	// Unconfirmed lists the alive peers that did not confirm the
	// deletions in time. After Forget anti-entropy repairs them; after
	// Leave only their peers can (this node left), so a peer that none
	// reached keeps refusing QoS 1/2 publishes for those sessions until
	// the node is forgotten there.
	Unconfirmed []string `json:"unconfirmed,omitempty"`
	// Warnings are other steps that did not complete (a leave notice not
	// broadcast in time: peers see the node fail instead).
	Warnings []string `json:"warnings,omitempty"`
}

// Leave takes this node out of the cluster for good (an operator's
// `mendmq ctl cluster leave`; a shutdown is Stop). Its sessions stop
// being the cluster's: their records are deleted from the replicated
// table first, and Leave waits up to timeout until every alive peer has
// applied that, so peers neither route to this node nor refuse publishes
// for its sessions afterwards. Then it leaves the membership (peers see
// it Left), stops gossip and detaches from its peers: it drops them from
// its member view and data plane, forgets the session records of their
// clients, forwards nothing to them and refuses what they still send.
// The node keeps serving its own clients as a single, standalone node
// until it is restarted; Join fails with ErrLeft. timeout bounds the
// wait for peers; the leave broadcasts take up to leaveBroadcastTimeout
// each, as in Stop. The error is nil unless the node did not leave
// (ErrNotRunning, ErrLeft); steps that did not complete are in the
// Withdrawal.
func (n *Node) Leave(timeout time.Duration) (Withdrawal, error) {
	if n.ml == nil || !n.running.Load() {
		return Withdrawal{}, ErrNotRunning
	}
	n.leaveMu.Lock()
	defer n.leaveMu.Unlock()
	if n.leaving.Load() {
		return Withdrawal{}, ErrLeft
	}
	peers := n.view.AlivePeers()
	// From here on nothing this node writes reaches a peer but the
	// deletions below: a session record written meanwhile (a client of
	// this node subscribing) would give peers a route to a node that
	// left, which they would refuse publishes for.
	n.leaving.Store(true)
	n.maps.Leaving() // its partitions go to the members' backups
	n.view.Detach()
	ctx, cancel := context.WithTimeout(n.ctx, timeout)
	defer cancel()
	ds, k := n.sessions.Withdraw(func(node string) bool { return node == n.name })
	w := Withdrawal{Node: n.name, Sessions: k, Unconfirmed: n.repl.ReplicateSync(ctx, peers, ds)}
	if err := n.ml.Leave(leaveBroadcastTimeout); err != nil {
		w.Warnings = append(w.Warnings, err.Error())
	}
	if err := n.ml.Shutdown(); err != nil {
		w.Warnings = append(w.Warnings, err.Error())
	}
	n.detach()
	n.log.Info("left the cluster; serving alone until restarted", "sessions_withdrawn", k, "peers", len(peers), "unconfirmed", w.Unconfirmed)
	return w, nil
}

// detach cuts a node that left off its former peers.
func (n *Node) detach() {
	n.left.Store(true)
	n.view.Isolate(time.Now())
	for _, p := range n.dp.Stats().Peers {
		n.dp.RemovePeer(p.Name)
	}
	// Their clients' records would route this node's publishes to nodes
	// it no longer talks to; the deltas go nowhere (the view holds this
	// node alone now).
	_, _ = n.sessions.Withdraw(func(node string) bool { return node != n.name })
	n.registry.ForgetOthers()
}

// CallForget asks a peer to forget a member too (member name -> empty).
const CallForget uint8 = 18

// Forget drops a failed or stopped member for good, on the operator's
// word that it will not come back (`mendmq ctl cluster forget`): this
// node and every alive peer it reaches no longer list or re-join it (so
// none of them stays in a netsplit for it), and its session records are
// deleted from the replicated table, waiting up to timeout until every
// alive peer has applied that. Then no node routes to it, so QoS 1/2
// publishes matching its former sessions are accepted again. A peer that
// could not forget it (unreachable, or still seeing it alive) is named in
// the Warnings; forget it there too.
func (n *Node) Forget(name string, timeout time.Duration) (Withdrawal, error) {
	if n.ml == nil || !n.running.Load() {
		return Withdrawal{}, ErrNotRunning
	}
	if name == n.name {
		return Withdrawal{}, errors.New("cluster: a node cannot forget itself; use leave")
	}
	if n.leaving.Load() {
		return Withdrawal{}, ErrLeft
	}
	// Held until the records are deleted, so that the MemberRemove event
	// Forget causes finds nothing left to delete (and to not wait for).
	n.withdrawMu.Lock()
	if err := n.ml.Forget(name); err != nil {
		n.withdrawMu.Unlock()
		return Withdrawal{}, err
	}
	ds, k := n.sessions.Withdraw(func(node string) bool { return node == name })
	n.withdrawMu.Unlock()
	ctx, cancel := context.WithTimeout(n.ctx, timeout)
	defer cancel()
	peers := n.view.AlivePeers()
	w := Withdrawal{Node: name, Sessions: k, Unconfirmed: n.repl.ReplicateSync(ctx, peers, ds)}
	for _, p := range peers {
		if _, err := n.dp.Call(ctx, p, CallForget, []byte(name)); err != nil {
			w.Warnings = append(w.Warnings, fmt.Sprintf("%s did not forget %s: %v", p, name, err))
		}
	}
	n.log.Info("forgot member and deleted its session records", "peer", name, "sessions", k,
		"unconfirmed", w.Unconfirmed, "warnings", w.Warnings)
	return w, nil
}

// handleForget forgets a member another node's operator forgot. A
// member this node no longer knows is forgotten already.
func (n *Node) handleForget(from string, payload []byte) ([]byte, error) {
	name := string(payload)
	if n.ml == nil {
		return nil, ErrNotRunning
	}
	if name == n.name {
		return nil, errors.New("cluster: asked to forget this node")
	}
	if err := n.ml.Forget(name); err != nil && !errors.Is(err, membership.ErrUnknownMember) {
		return nil, err
	}
	n.log.Info("forgot member on a peer's word", "peer", name, "from", from)
	return nil, nil
}
