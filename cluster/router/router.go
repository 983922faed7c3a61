// Package router sends publishes to the other nodes whose sessions
// subscribe to them, as the routing index (derived from the replicated
// session table) says, and hands the publishes other nodes send to the
// local broker (DESIGN §2: one frame per remote node with a match; the
// receiving node delivers to its local subscribers only).
//
// # Delivery guarantee across nodes
//
// A QoS 1/2 publish is acknowledged to its publisher only after every
// remote node with a matching subscription has accepted it into its local
// delivery (the call returns after the receiving node handed it to its
// subscribers' sessions). If a node with matching subscribers is known but
// not routable (see members.Member.Routable), the publish is refused
// (ErrUnreachable) rather than acknowledged and lost, and it is sent to no
// node, so the publisher's retry does not duplicate it. (A target that
// fails during the forward — timeout, connection loss — is only noticed
// after the others got their copy; the retry then duplicates there.) A
// node that is not alive counts as unreachable whatever the reason —
// failed, stopped (a graceful stop is a leave to memberlist) or not known
// (yet): it still holds its persistent sessions and comes back with them.
// Its routes go away only with its session records. A shared subscription
// group whose members are all on nodes that are not routable is
// unreachable too. QoS 0 publishes are queued to peers without waiting and
// may be dropped (counted) when a peer's queue is full or the peer is down.
package router

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/mendmq/mendmq/cluster/dataplane"
	"github.com/mendmq/mendmq/cluster/outbox"
	"github.com/mendmq/mendmq/cluster/routes"
)

// Data-plane messages of routing (cluster protocol).
const (
	// FrameForward: a forward payload, a QoS 0 publish.
	FrameForward uint8 = 2
	// CallForward: a forward payload -> empty, a QoS 1/2 publish, acked
	// once injected.
	CallForward uint8 = 10
	// CallHeld: held forward payloads (count, then each with its
	// length) -> empty, once all are injected: what the outbox held for
	// this node while it was unreachable.
	CallHeld uint8 = 17
)

// ErrUnreachable: a node with matching subscribers is not reachable.
var ErrUnreachable = errors.New("cluster: node with subscribers unreachable")

// Delivery is a publish forwarded by another node.
type Delivery struct {
	// From is the forwarding node.
	From string
	// Msg is the broker's encoding of the publish.
	Msg []byte
	// Groups are the shared subscriptions ("$share/g/f") this node must
	// serve.
	Groups []string
	// ID identifies the publish among those From forwarded (see
	// Router.Forward); with From it is unique for the node's lifetime.
	ID uint64
}

// Broker delivers what peers forward.
type Broker interface {
	// DeliverForwarded hands a publish forwarded by another node to local
	// subscribers. It returns once the message is in the subscribers'
	// sessions.
	DeliverForwarded(d Delivery) error
}

// Members says which members can take a message.
type Members interface {
	Routable(name string) bool
}

// Transport is what routing needs from the data plane.
type Transport interface {
	Send(peer string, typ uint8, payload []byte) error
	Call(ctx context.Context, peer string, typ uint8, payload []byte) ([]byte, error)
}

// Router routes one node's publishes.
type Router struct {
	self    string
	index   *routes.Index
	members Members
	tr      Transport
	broker  Broker
	running atomic.Bool

	matchPool sync.Pool
	stats     Stats
	seen      dedup
	// outbox holds publishes for unreachable nodes (ForwardHold); nil:
	// nothing is held.
	outbox *outbox.Outbox
	drain  chan struct{}
	// traffic holds the publishes exchanged with each peer (name ->
	// *PeerTraffic).
	traffic sync.Map
}

// Stats are routing counters.
type Stats struct {
	Forwarded, ForwardedBytes      atomic.Uint64
	DropQueueFull, DropUnreachable atomic.Uint64
	RefusedUnreachable, Received   atomic.Uint64
	BadMessages                    atomic.Uint64
	// Held counts publishes held for unreachable nodes, Drained those
	// delivered after, Duplicates deliveries dropped as seen before.
	Held, Drained, Duplicates atomic.Uint64
}

// PeerTraffic counts the publishes exchanged with one peer.
type PeerTraffic struct {
	Forwarded, ForwardedBytes, Received atomic.Uint64
}

// New returns the router of node self and registers its messages on mux.
// ob, if not nil, holds publishes for unreachable nodes (ForwardHold); Run
// drains it. It forwards nothing until SetRunning(true).
func New(self string, index *routes.Index, members Members, tr Transport, broker Broker, ob *outbox.Outbox, mux *dataplane.Mux) (*Router, error) {
	r := &Router{self: self, index: index, members: members, tr: tr, broker: broker, outbox: ob, drain: make(chan struct{}, 1)}
	r.matchPool.New = func() any { return new(routes.Result) }
	if mux != nil {
		err := errors.Join(
			mux.HandleFrameFunc(FrameForward, func(from string, p []byte) { _ = r.deliver(from, p) }),
			// Forwarded QoS 1/2 publishes run on the data-plane
			// connection's reader, as QoS 0 ones do: the injection never
			// waits for the sending node, and handing each one to a call
			// worker goroutine cost the receiving node more than decoding
			// it.
			mux.HandleCallFunc(CallForward, true, func(from string, p []byte) ([]byte, error) { return nil, r.deliverOnce(from, p, true) }),
			mux.HandleCallFunc(CallHeld, false, r.handleHeld),
		)
		if err != nil {
			return nil, err
		}
	}
	return r, nil
}

// SetRunning starts or stops forwarding.
func (r *Router) SetRunning(on bool) { r.running.Store(on) }

// Stats returns the counters.
func (r *Router) Stats() *Stats { return &r.stats }

// Traffic calls fn for each peer publishes were exchanged with.
func (r *Router) Traffic(fn func(peer string, t *PeerTraffic)) {
	r.traffic.Range(func(k, v any) bool {
		fn(k.(string), v.(*PeerTraffic))
		return true
	})
}

// PeerTraffic returns the counters of peer (nil if none yet).
func (r *Router) PeerTraffic(peer string) *PeerTraffic {
	if v, ok := r.traffic.Load(peer); ok {
		return v.(*PeerTraffic)
	}
	return nil
}

func (r *Router) peerTraffic(peer string) *PeerTraffic {
	if v, ok := r.traffic.Load(peer); ok {
		return v.(*PeerTraffic)
	}
	v, _ := r.traffic.LoadOrStore(peer, new(PeerTraffic))
	return v.(*PeerTraffic)
}

// target is a node a publish goes to, with the shared subscriptions it
// was picked to serve.
type target struct {
	node   string
	groups []string
}

// Forward sends a publish to the other nodes with matching subscribers;
// see the package documentation for the guarantee. encode is called only
// when some node needs the message. id is passed on to the receivers
// (Delivery.ID): the broker numbers its publishes so that one can be
// recognized when it reaches a session by two paths (a session handoff),
// or twice (a held message redelivered).
func (r *Router) Forward(ctx context.Context, topic string, qos byte, id uint64, encode func() ([]byte, error)) error {
	return r.forward(ctx, topic, qos, id, encode, false)
}

// ForwardHold is Forward for a publish that must not wait for unreachable
// nodes: a QoS 1/2 publish accepted during a netsplit
// (allow_publish_during_netsplit), a will. Routable targets get it now;
// the others (not routable, or failing the call) get it from the outbox
// once they are back, in order, once. It fails only if the outbox cannot
// hold it (outbox.ErrFull): then nothing was held, though routable
// targets may have it. QoS 0 publishes to unreachable nodes are dropped
// as with Forward.
func (r *Router) ForwardHold(ctx context.Context, topic string, qos byte, id uint64, encode func() ([]byte, error)) error {
	return r.forward(ctx, topic, qos, id, encode, r.outbox != nil)
}

func (r *Router) forward(ctx context.Context, topic string, qos byte, id uint64, encode func() ([]byte, error), hold bool) error {
	if !r.running.Load() {
		return nil
	}
	res := r.matchPool.Get().(*routes.Result)
	defer r.matchPool.Put(res)
	r.index.MatchInto(topic, res)
	if len(res.Nodes) == 0 && len(res.Shared) == 0 {
		return nil
	}
	// The targets, in a slice that stays on the stack for a few nodes:
	// a map per publish was a measurable part of a forwarding node's CPU.
	var buf [4]target
	targets := buf[:0]
	add := func(node, group string) {
		i := 0
		for i < len(targets) && targets[i].node != node {
			i++
		}
		if i == len(targets) {
			targets = append(targets, target{node: node})
		}
		if group != "" {
			targets[i].groups = append(targets[i].groups, group)
		}
	}
	for _, nd := range res.Nodes {
		if nd != r.self {
			add(nd, "")
		}
	}
	// Shared groups none of whose members is on a routable node: the
	// group's sessions wait on nodes that are down.
	var unservable []string
	for _, sm := range res.Shared {
		if slices.Contains(sm.Nodes, r.self) { // prefer_local
			continue // served by the local broker
		}
		switch pick := r.pickShared(sm.Nodes); pick {
		case "":
			if hold && qos > 0 {
				// Held for the group's first node (the same one for
				// every publish, so the group keeps its order).
				add(slices.Min(sm.Nodes), "$share/"+sm.Group+"/"+sm.Filter)
				continue
			}
			unservable = append(unservable, "$share/"+sm.Group+"/"+sm.Filter)
		case r.self:
		default:
			add(pick, "$share/"+sm.Group+"/"+sm.Filter)
		}
	}
	if len(unservable) > 0 {
		if qos > 0 {
			r.stats.RefusedUnreachable.Add(1)
			return fmt.Errorf("%w: no alive node has members of %v", ErrUnreachable, unservable)
		}
		r.stats.DropUnreachable.Add(uint64(len(unservable)))
	}
	if len(targets) == 0 {
		return nil
	}
	msg, err := encode()
	if err != nil {
		return err
	}
	if qos == 0 {
		for _, t := range targets {
			if !r.members.Routable(t.node) {
				r.stats.DropUnreachable.Add(1)
				continue
			}
			if err := r.tr.Send(t.node, FrameForward, appendForward(nil, t.groups, id, msg)); err != nil {
				r.stats.DropQueueFull.Add(1)
				continue
			}
			r.countForward(t.node, len(msg))
		}
		return nil
	}
	if hold {
		return r.forwardHold(ctx, targets, id, msg)
	}
	// Every target is checked before any is sent to: a refused publish
	// must reach nobody, or the publisher's retry duplicates it on the
	// nodes that did get it (for QoS 2 too).
	var errs []error
	for _, t := range targets {
		if !r.members.Routable(t.node) {
			errs = append(errs, fmt.Errorf("%w: %s", ErrUnreachable, t.node))
		}
	}
	if len(errs) > 0 {
		r.stats.RefusedUnreachable.Add(1)
		return errors.Join(errs...)
	}
	if len(targets) == 1 {
		// The common case: no goroutine, lock or error slice per publish.
		if err := r.call(ctx, targets[0], id, msg); err != nil {
			r.stats.RefusedUnreachable.Add(1)
			return err
		}
		return nil
	}
	return r.callAll(ctx, targets, id, msg)
}

// callAll sends a QoS 1/2 publish to several targets at once and waits
// for all of them.
func (r *Router) callAll(ctx context.Context, targets []target, id uint64, msg []byte) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for _, t := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.call(ctx, t, id, msg); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		r.stats.RefusedUnreachable.Add(1)
	}
	return errors.Join(errs...)
}

// call sends a QoS 1/2 publish to one target and waits until it accepted
// it.
func (r *Router) call(ctx context.Context, t target, id uint64, msg []byte) error {
	if _, err := r.tr.Call(ctx, t.node, CallForward, appendForward(nil, t.groups, id, msg)); err != nil {
		return fmt.Errorf("forward to %s: %w", t.node, err)
	}
	r.countForward(t.node, len(msg))
	return nil
}

func (r *Router) countForward(peer string, size int) {
	r.stats.Forwarded.Add(1)
	r.stats.ForwardedBytes.Add(uint64(size))
	pt := r.peerTraffic(peer)
	pt.Forwarded.Add(1)
	pt.ForwardedBytes.Add(uint64(size))
}

// pickShared picks the node that serves one shared group: a random
// routable one among those with members.
func (r *Router) pickShared(nodes []string) string {
	alive := make([]string, 0, len(nodes))
	for _, nd := range nodes {
		if r.members.Routable(nd) {
			alive = append(alive, nd)
		}
	}
	if len(alive) == 0 {
		return ""
	}
	return alive[rand.IntN(len(alive))]
}

// deliver hands a forwarded publish to the broker.
func (r *Router) deliver(from string, payload []byte) error {
	return r.deliverOnce(from, payload, false)
}

// deliverOnce hands a forwarded publish to the broker; with dedup, unless
// (from, id) was delivered before (a QoS 1/2 forward, a held message).
func (r *Router) deliverOnce(from string, payload []byte, dedup bool) error {
	groups, id, msg, err := decodeForward(payload)
	if err != nil {
		r.stats.BadMessages.Add(1)
		return err
	}
	if dedup && id != 0 && !r.seen.first(from, id) {
		r.stats.Duplicates.Add(1)
		return nil
	}
	if err := r.broker.DeliverForwarded(Delivery{From: from, Msg: msg, Groups: groups, ID: id}); err != nil {
		if dedup && id != 0 {
			// Not delivered: the sender's retry (a held message drained
			// again) must not be dropped as a duplicate.
			r.seen.unsee(from, id)
		}
		return err
	}
	r.stats.Received.Add(1)
	r.peerTraffic(from).Received.Add(1)
	return nil
}
