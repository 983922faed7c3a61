// Package sessions is the cluster's replicated session table ("sub"):
// for every client id, the node that holds its session and the session's
// subscriptions (routes.SessionRecord). The routing index is derived from
// it; client registration reads it to find a session's node.
//
// A record is written by the node that holds the session, deleted by it
// when the session ends, and withdrawn for a node that leaves or is
// forgotten. Concurrent records of one client id (it connected on both
// sides of a netsplit) resolve by Resolver — the later CONNECT by hybrid
// logical clock, ties to the larger node name — and the node whose session
// lost drops it (Broker.DropDuplicate), handing what it had queued to the
// winner.
package sessions

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/mendmq/mendmq/cluster/hlc"
	"github.com/mendmq/mendmq/cluster/replica"
	"github.com/mendmq/mendmq/cluster/replication"
	"github.com/mendmq/mendmq/cluster/routes"
)

// Table is the replicated table's name.
const Table = "sub"

// Broker is what the table needs from the MQTT front.
type Broker interface {
	// LocalSession reports whether clientID has a session on this node.
	LocalSession(clientID string) bool
	// DropDuplicate disconnects (v5 reason 0x8E session taken over) and
	// discards the local session of clientID: the table resolved to
	// winner, another node's session of the id (a duplicate registered
	// across a netsplit, or a registration this node missed). A
	// persistent session's queued messages go to winner, to be added to
	// the surviving session. Called from its own goroutine; it may block.
	DropDuplicate(clientID string, winner routes.SessionRecord)
}

// Options are the table's collaborators; every field is optional.
type Options struct {
	// Clock stamps nothing here but observes the CONNECT stamp of every
	// record a peer writes, so that this node's next CONNECT orders after
	// it (package hlc). Nil: a clock of its own on time.Now.
	Clock *hlc.Clock
	// Deleted is told (under the replication lock) about every client id
	// whose record went away.
	Deleted func(clientID string)
	// Changed is told (under the replication lock) about every record a
	// peer's write made current.
	Changed func(clientID string, rec routes.SessionRecord)
}

// Sessions is the table's driver. Create it with New before the
// Replicator runs.
type Sessions struct {
	self   string
	repl   *replication.Replicator
	index  *routes.Index
	broker Broker
	log    *slog.Logger
	opts   Options

	wg sync.WaitGroup
}

// New returns the session table of node self over repl. repl must resolve
// the table with Resolver (replication.Config.Resolvers).
func New(self string, repl *replication.Replicator, broker Broker, opts Options, log *slog.Logger) *Sessions {
	if opts.Clock == nil {
		opts.Clock = hlc.New(nil)
	}
	s := &Sessions{self: self, repl: repl, index: routes.NewIndex(), broker: broker, opts: opts, log: log}
	repl.Watch(Table, s.changed)
	return s
}

// Index is the routing index derived from the table.
func (s *Sessions) Index() *routes.Index { return s.index }

// changed keeps the index current; it runs under the replication lock.
func (s *Sessions) changed(c replica.Change, remote bool) {
	if !c.New.Live() {
		s.index.Delete(c.Key)
		if s.opts.Deleted != nil {
			s.opts.Deleted(c.Key)
		}
		return
	}
	rec, err := routes.DecodeRecord(c.New.Value)
	if err != nil {
		s.log.Error("undecodable session record", "client", c.Key, "error", err)
		s.index.Delete(c.Key)
		return
	}
	s.index.Set(c.Key, rec)
	if !remote {
		return
	}
	s.opts.Clock.Observe(rec.Connect)
	if s.opts.Changed != nil {
		s.opts.Changed(c.Key, rec)
	}
	if rec.Node != s.self && s.broker.LocalSession(c.Key) {
		// Another node holds this client now: a registration this node
		// missed, or the winner of two sessions registered on both sides
		// of a netsplit (Resolver). Drop the local duplicate.
		s.log.Info("session of this client id on another node wins; dropping the local one",
			"client", c.Key, "winner", rec.Node, "winner_connect", rec.Connect)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.broker.DropDuplicate(c.Key, rec)
		}()
	}
}

// Wait waits for the duplicate sessions being dropped.
func (s *Sessions) Wait() { s.wg.Wait() }

// Put writes clientID's record.
func (s *Sessions) Put(clientID string, rec routes.SessionRecord) {
	b, err := rec.MarshalBinary()
	if err != nil {
		s.log.Error("encode session record", "client", clientID, "error", err)
		return
	}
	if err := s.repl.Put(Table, clientID, b, s.opts.Clock.Wall()); err != nil {
		s.log.Error("write session record", "client", clientID, "error", err)
	}
}

// PutSync writes clientID's record and waits until every alive peer has
// applied it, so that no peer routes the client's messages to its
// previous node after this returns (a session that moved here).
func (s *Sessions) PutSync(ctx context.Context, clientID string, rec routes.SessionRecord) error {
	b, err := rec.MarshalBinary()
	if err != nil {
		return fmt.Errorf("encode session record of %s: %w", clientID, err)
	}
	return s.repl.PutSync(ctx, Table, clientID, b)
}

// Delete deletes clientID's record.
func (s *Sessions) Delete(clientID string) {
	if err := s.repl.Delete(Table, clientID, s.opts.Clock.Wall()); err != nil {
		s.log.Error("delete session record", "client", clientID, "error", err)
	}
}

// Node returns the node the table places clientID's session on.
func (s *Sessions) Node(clientID string) (string, bool) {
	rec, ok := s.index.Session(clientID)
	return rec.Node, ok
}

// Owner returns the node of clientID's session and its CONNECT stamp
// (registry.SessionNodes).
func (s *Sessions) Owner(clientID string) (string, hlc.Timestamp, bool) {
	rec, ok := s.index.Session(clientID)
	return rec.Node, rec.Connect, ok
}

// Record returns clientID's current record.
func (s *Sessions) Record(clientID string) (routes.SessionRecord, bool) {
	return s.index.Session(clientID)
}

// Withdraw deletes the records of every session the table places on a
// node match accepts, in one critical section, and returns the deltas to
// replicate (not yet sent) and how many it deleted.
func (s *Sessions) Withdraw(match func(node string) bool) ([]replica.Delta, int) {
	return s.repl.DeleteWhere(Table, func(_ string, v []byte) bool {
		rec, err := routes.DecodeRecord(v)
		return err == nil && match(rec.Node)
	})
}

// ReconcileOwn deletes the records naming this node that have no session
// here (left over from before a crash or restart).
func (s *Sessions) ReconcileOwn() {
	var own []string
	s.repl.Range(Table, func(key string, v []byte) bool {
		if rec, err := routes.DecodeRecord(v); err == nil && rec.Node == s.self {
			own = append(own, key)
		}
		return true
	})
	for _, id := range own {
		if !s.broker.LocalSession(id) {
			s.Delete(id)
		}
	}
}

// Run reconciles this node's own records once the first anti-entropy
// interval is over (the node has its peers' view), then every minute,
// until ctx ends.
func (s *Sessions) Run(ctx context.Context, first time.Duration) {
	t := time.NewTimer(first)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.ReconcileOwn()
			t.Reset(time.Minute)
		}
	}
}
