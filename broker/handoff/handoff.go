// Package handoff is the logic of moving a persistent MQTT session from
// its old node to a new one while publishes keep arriving: the old node's
// shadow of the session (Shadow) and the new node's de-duplication
// (Incoming).
//
// Like cluster/replica it is a pure state machine in the style of etcd's
// raft.RawNode: no I/O, no goroutines, no clock (time is an argument), no
// mochi. Inputs are method calls; outputs are read back (Shadow.Ready,
// return values) and carried out by a thin driver (broker/clusterhook),
// which also serializes the calls on one value.
//
// # The handoff
//
// A takeover moves a session from node A to node N. A's export is a
// snapshot: until every node routes the session's messages to N,
// publishes keep arriving at A (forwarded by nodes that still route to A,
// or published by A's own clients), and A must not drop them. So A keeps
// the taken-over client as a shadow: disconnected, still subscribed, and
// every QoS 1/2 message queued for it is caught.
//
//  1. Pending: from the export until N's FinishTakeover, which N sends
//     once every node routes to it. What was caught is the answer, and N
//     adds it to the session before the client's CONNACK.
//  2. Forwarding: for a grace period after that, stragglers (a forward
//     that left a node before it applied the new route) are shipped to N
//     (AppendSession), in order, one batch at a time, retried until the
//     batch's deadline, then discarded and counted.
//  3. Ended: A drops its copy of the session.
//
// A message can reach the session by two paths: N got it directly (a node
// that already routed to N, or N's own client) and A caught it too. Every
// publish carries a Key unique in the cluster (its origin node and the id
// it got there; a will gets one before it is published), A hands every
// message over with its key, and N's Incoming remembers for the handoff's
// lifetime which keys the session got directly and which were handed
// over, so each message reaches the session once, whichever path comes
// first. Without it, N would deliver such a QoS 2 message twice.
//
// QoS 0 messages are not queued for a disconnected session, so the shadow
// does not see them either: at most once.
package handoff

import "time"

// Key identifies a publish: its origin node and the id it got there (the
// zero Key: unknown, e.g. a message restored from storage).
type Key struct {
	From string
	ID   uint64
}

// Known reports whether k identifies a publish.
func (k Key) Known() bool { return k.From != "" && k.ID != 0 }

// Config is the timing of a handoff, from the cluster's timeouts.
type Config struct {
	// RegisterTimeout bounds a CONNECT's registration (the new node's
	// side, up to its FinishTakeover).
	RegisterTimeout time.Duration
	// ForwardTimeout bounds one data-plane call.
	ForwardTimeout time.Duration
}

// GraceFactor times the forward timeout is the forwarding phase.
const GraceFactor = 2

// RetryInterval separates a failed shipment from its retry.
const RetryInterval = 100 * time.Millisecond

// MaxTracked bounds each of Incoming's two key sets; beyond it duplicates
// are possible (Incoming.Overflowed).
const MaxTracked = 1 << 17

// Pending is the longest pending phase: without the new node's
// FinishTakeover by then (it failed, or its CONNECT did) the shadow ships
// what it caught anyway.
func (c Config) Pending() time.Duration { return c.RegisterTimeout + c.ForwardTimeout }

// Grace is the forwarding phase.
func (c Config) Grace() time.Duration { return GraceFactor * c.ForwardTimeout }

// Lifetime bounds a whole handoff as the new node sees it: the old node's
// pending and grace periods and its last shipment are surely over by
// then. Incoming keys, and the ids of wills, are kept that long.
func (c Config) Lifetime() time.Duration {
	return c.RegisterTimeout + (GraceFactor+2)*c.ForwardTimeout
}
