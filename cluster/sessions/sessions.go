// Package sessions is the cluster's replicated session table ("sub"):
// for every client id, the node that holds its session and the session's
// subscriptions (routes.SessionRecord). The routing index is derived from
// it; client registration reads it to find a session's node.
//
// A record is written by the node that holds the session, deleted by it
// when the session ends, and withdrawn for a node that leaves or is
// forgotten. Concurrent records of one client id (it connected on both
// sides of a netsplit) resolve to the latest (replica.LatestWins); the
// node whose session lost drops it.
package sessions

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

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
	// TakeoverSession disconnects and discards the local session of
	// clientID, which newNode holds (handoff false).
	TakeoverSession(clientID, newNode string, handoff bool) ([]byte, error)
}

// Sessions is the table's driver. Create it with New before the
// Replicator runs.
type Sessions struct {
	self   string
	repl   *replication.Replicator
	index  *routes.Index
	broker Broker
	log    *slog.Logger

	// deleted is told about every client id whose record went away.
	deleted func(clientID string)
	wg      sync.WaitGroup
}

// New returns the session table of node self over repl. deleted, if not
// nil, is called (under the replication lock) for every record deleted.
func New(self string, repl *replication.Replicator, broker Broker, deleted func(clientID string), log *slog.Logger) *Sessions {
	s := &Sessions{self: self, repl: repl, index: routes.NewIndex(), broker: broker, deleted: deleted, log: log}
	repl.Watch(Table, s.changed)
	return s
}

// Index is the routing index derived from the table.
func (s *Sessions) Index() *routes.Index { return s.index }

// changed keeps the index current; it runs under the replication lock.
func (s *Sessions) changed(c replica.Change, remote bool) {
	if !c.New.Live() {
		s.index.Delete(c.Key)
		if s.deleted != nil {
			s.deleted(c.Key)
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
	if remote && rec.Node != s.self && s.broker.LocalSession(c.Key) {
		// Another node holds this client now (a registration this node
		// missed, e.g. across a netsplit): the newest record wins, so
		// drop the local duplicate.
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if _, err := s.broker.TakeoverSession(c.Key, rec.Node, false); err != nil {
				s.log.Warn("drop duplicate session", "client", c.Key, "error", err)
			}
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
	if err := s.repl.Put(Table, clientID, b, time.Now()); err != nil {
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
	if err := s.repl.Delete(Table, clientID, time.Now()); err != nil {
		s.log.Error("delete session record", "client", clientID, "error", err)
	}
}

// Node returns the node the table places clientID's session on.
func (s *Sessions) Node(clientID string) (string, bool) {
	rec, ok := s.index.Session(clientID)
	return rec.Node, ok
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
