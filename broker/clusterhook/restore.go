package clusterhook

import (
	"hash/fnv"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/mendmq/mendmq/broker/mochix"
)

// Sessions restored from storage.
//
// A node that restarts with storage.path restores its persistent sessions
// before it has the cluster's session table. One of them may have moved
// on while the node was down (its client reconnected on another node,
// which took the session over, or started a new one because this node was
// gone), or this node may have stopped in the middle of handing it off.
// Announcing the restored copy then would take the session's routes from
// the node where its client lives. So the restored sessions are announced
// only once the node has the table (Cluster.Synced), and a session the
// table places on another node is superseded: its copy here is dropped
// from memory and storage like a duplicate that lost at a netsplit's heal
// (heal.go): the messages it still had queued were acknowledged to their
// publishers, so they go to the session the client has now, if its
// CONNECT resumed a session (clean start 0) and it subscribes to them;
// otherwise they are counted as dropped (reason session_superseded).

// restoreWait bounds the wait for the session table: a node that cannot
// exchange tables with any peer by then announces what it restored.
const restoreWait = 30 * time.Second

// syncRestored starts the reconciliation of the sessions mochi restored
// from storage, if any.
func (s *SessionHook) syncRestored() {
	restored := mochix.Clients(s.sh.srv)
	c := s.sh.cluster()
	if c == nil || len(restored) == 0 {
		return
	}
	s.restoring.Store(true)
	s.sh.wg.Add(1)
	go s.reconcileRestored(c, restored)
}

// reconcileRestored announces or drops the restored sessions.
func (s *SessionHook) reconcileRestored(c Cluster, restored map[string]*mqtt.Client) {
	defer s.sh.wg.Done()
	defer s.restoring.Store(false)
	t := time.NewTimer(restoreWait)
	defer t.Stop()
	select {
	case <-c.Synced():
	case <-t.C:
		s.sh.log.Warn("no session table from the cluster yet; announcing restored sessions", "sessions", len(restored), "waited", restoreWait)
	case <-s.sh.done:
		return
	}
	superseded := 0
	for id, rc := range restored {
		mu := s.restoreLock(id)
		mu.Lock() // no CONNECT of id is between its checks and its import
		rec, ok := c.SessionRecord(id)
		cl, local := mochix.Client(s.sh.srv, id)
		if !ok || rec.Node == c.Name() || !local || cl != rc || !cl.Closed() {
			mu.Unlock()
			// Ours, unknown to the cluster, or gone or replaced
			// meanwhile (its client connected here, which registered
			// it with the cluster and took over whatever it had).
			s.markDirty(id)
			continue
		}
		shipped, dropped, first := s.dropDuplicate(cl, rec)
		mu.Unlock()
		if !first {
			continue // replication dropped it meanwhile
		}
		superseded++
		s.sh.log.Warn("restored session lives on another node now; local copy dropped",
			"client", id, "node", rec.Node, "queued_messages_shipped", shipped, "queued_messages_dropped", dropped)
	}
	if superseded > 0 {
		s.sh.log.Info("restored sessions reconciled with the cluster", "restored", len(restored), "superseded", superseded)
	}
}

// restoreLock is the lock of client id's stripe (see
// SessionHook.restoreMu).
func (s *SessionHook) restoreLock(id string) *sync.Mutex {
	f := fnv.New32a()
	_, _ = f.Write([]byte(id))
	return &s.restoreMu[f.Sum32()%uint32(len(s.restoreMu))]
}
