package cluster

import (
	"context"
	"time"

	"github.com/mendmq/mendmq/cluster/durable"
	"github.com/mendmq/mendmq/cluster/pmap"
	"github.com/mendmq/mendmq/cluster/routes"
)

// What the broker calls: the parts' operations, behind one Node.

// PutSession writes clientID's session record.
func (n *Node) PutSession(clientID string, rec routes.SessionRecord) { n.sessions.Put(clientID, rec) }

// PutSessionSync writes clientID's session record and waits until every
// alive peer has applied it, so that no peer routes the client's messages
// to its previous node after this returns. Used when a session moved here
// (takeover), before the client gets its CONNACK.
func (n *Node) PutSessionSync(ctx context.Context, clientID string, rec routes.SessionRecord) error {
	return n.sessions.PutSync(ctx, clientID, rec)
}

// DeleteSession deletes clientID's session record.
func (n *Node) DeleteSession(clientID string) { n.sessions.Delete(clientID) }

// SessionNode returns the node the replicated session table places
// clientID's session on.
func (n *Node) SessionNode(clientID string) (string, bool) { return n.sessions.Node(clientID) }

// SessionRecord returns clientID's record in the replicated session
// table: its node, subscriptions and CONNECT stamp.
func (n *Node) SessionRecord(clientID string) (routes.SessionRecord, bool) {
	return n.sessions.Record(clientID)
}

// Synced is closed once this node has the cluster's tables: after its
// first exchange with a peer since Start, or at Start if it has no
// seeds. A restarted node's restored sessions are checked against the
// session table only then (a session may have moved meanwhile).
func (n *Node) Synced() <-chan struct{} { return n.repl.Synced() }

// Durable is the cluster's storage file (cluster.storage_path, the
// broker's storage.path + ".cluster"); nil without one.
func (n *Node) Durable() *durable.DB { return n.disk }

// PutRetained sets the retained message of topic.
func (n *Node) PutRetained(topic string, m RetainedMessage, now time.Time) {
	if err := n.retained.Put(topic, m, now); err != nil {
		n.log.Error("replicate retained message", "topic", topic, "error", err)
	}
}

// DeleteRetained deletes the retained message of topic.
func (n *Node) DeleteRetained(topic string, now time.Time) {
	if err := n.retained.Delete(topic, now); err != nil {
		n.log.Error("replicate retained delete", "topic", topic, "error", err)
	}
}

// Retained returns the resolved retained message of topic.
func (n *Node) Retained(topic string) (RetainedMessage, bool) { return n.retained.Get(topic) }

// ReadRetained counts a read of topic's retained message (a subscriber
// got it on SUBSCRIBE): the hits and last access time a $retained merge
// policy sees. Cheap: atomic counters, no lock of the replicated tables.
func (n *Node) ReadRetained(topic string, now time.Time) { n.retained.Hit(topic, now) }

// RetainedReads returns the reads of topic's resolved retained message,
// summed over the nodes whose counts this node has, and the time of the
// last one (zero: none); ok is false without a message. Other nodes'
// reads arrive only while the cluster is split (see retained.Reads).
func (n *Node) RetainedReads(topic string) (hits int64, last time.Time, ok bool) {
	return n.retained.Reads(topic)
}

// Tables returns a fingerprint of each replicated table (sessions "sub",
// retained messages "ret", retained read counts "hits"): nodes whose
// fingerprints are equal hold the same versions of every entry. pending
// counts the conflicts that wait for the merge policy here.
func (n *Node) Tables() (fingerprints map[string]uint64, pending int) {
	return n.repl.Fingerprints(), n.repl.Pending()
}

// ReapplyRetained re-applies the resolved retained message of topic to
// the broker, serialized with replication.
func (n *Node) ReapplyRetained(topic string) { n.retained.Reapply(topic) }

// Forward sends a publish to the other nodes with matching subscribers
// (see package router for the guarantee). encode is called only when some
// node needs the message; id numbers the publish among this node's
// (Delivery.ID).
func (n *Node) Forward(ctx context.Context, topic string, qos byte, id uint64, encode func() ([]byte, error)) error {
	return n.router.Forward(ctx, topic, qos, id, encode)
}

// ForwardHold is Forward for a publish that must not wait for unreachable
// nodes (allow_publish_during_netsplit, wills): the routable ones get it
// now, the others once they are back (held in order, delivered once). It
// fails only if the node cannot hold it (cluster.netsplit_queue_*): then
// nothing was held, though routable nodes may have it.
func (n *Node) ForwardHold(ctx context.Context, topic string, qos byte, id uint64, encode func() ([]byte, error)) error {
	return n.router.ForwardHold(ctx, topic, qos, id, encode)
}

// Register claims clientID for this node with the client id's leader,
// which takes the session over from the node that holds it (clean: the
// new connection discards it). The moved session, if any, comes back
// with the node it came from; once every node routes the session here
// (PutSessionSync), call FinishTakeover with that node. Takeover.At is the
// CONNECT's stamp for the new session record (routes.SessionRecord.Connect).
func (n *Node) Register(ctx context.Context, clientID string, clean bool) (Takeover, error) {
	if !n.running.Load() {
		return Takeover{}, ErrNotRunning
	}
	return n.registry.Register(ctx, clientID, clean)
}

// FinishTakeover tells from, the node a session was taken from (see
// Register), that every node now routes clientID's messages here, and
// returns the messages it caught for the session in the meantime.
func (n *Node) FinishTakeover(ctx context.Context, from, clientID string) ([]byte, error) {
	return n.registry.FinishTakeover(ctx, from, clientID)
}

// AppendSession sends messages for clientID, whose session moved to
// node, to that node (Broker.AppendSession there).
func (n *Node) AppendSession(ctx context.Context, node, clientID string, msgs []byte) error {
	return n.registry.AppendSession(ctx, node, clientID, msgs)
}

// Maps is the node's part of the partitioned maps (Get, Put, Delete from
// any node; see package pmap).
func (n *Node) Maps() *pmap.Maps { return n.maps }
