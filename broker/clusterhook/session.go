package clusterhook

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/metrics"
	"github.com/mendmq/mendmq/broker/mochix"
	"github.com/mendmq/mendmq/cluster/hlc"
	"github.com/mendmq/mendmq/cluster/routes"
)

// SessionHook registers connecting clients with the cluster, keeps the
// replicated session table in step with mochi's sessions, reconciles
// sessions restored from storage (restore.go) and gives a local session
// up when another node takes it over.
//
// The replicated session record of a client is recomputed from mochi's
// current state whenever something about the client changes, by one
// goroutine that drains a dirty set. Reading the state after the fact,
// instead of trusting the order of hook calls, makes takeovers and
// disconnect/unsubscribe interleavings come out right.
type SessionHook struct {
	mqtt.HookBase
	sh *shared
	ho *HandoffHook

	dirtyMu sync.Mutex
	dirty   map[string]struct{}
	moved   map[string]struct{} // sessions taken over by another node
	kick    chan struct{}
	// connects holds the CONNECT stamp of each session (its
	// registration's, see connectOf), by client id.
	connects map[string]connectStamp

	// Restored sessions being reconciled (restore.go): OnConnect and
	// the reconciliation of a session exclude each other meanwhile, per
	// client id (restoreLock), so a reconnect storm is not serialized.
	restoring atomic.Bool
	restoreMu [64]sync.Mutex
	serving   atomic.Bool // OnStarted

	// superseded holds the clients supersede is dropping (for a grace
	// period), so that a copy found stale twice is counted once.
	superseded sync.Map
	// dropWillAtEnd holds the clients taken over, session kept, before
	// their connection here ended: a delayed will mochi queues as it
	// ends is dropped in OnDisconnect (TakeoverSession).
	dropWillAtEnd sync.Map
}

var _ mqtt.Hook = (*SessionHook)(nil)

func newSessionHook(sh *shared, ho *HandoffHook) *SessionHook {
	s := &SessionHook{sh: sh, ho: ho, dirty: map[string]struct{}{}, moved: map[string]struct{}{},
		connects: map[string]connectStamp{}, kick: make(chan struct{}, 1)}
	sh.wg.Add(1)
	go s.syncLoop()
	return s
}

// ID names the hook.
func (s *SessionHook) ID() string { return "mendmq-cluster-session" }

// Provides declares the handled hook methods.
func (s *SessionHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnSubscribed, mqtt.OnUnsubscribed,
		mqtt.OnClientExpired, mqtt.OnStarted, mqtt.OnStopped:
		return true
	}
	return false
}

// OnStarted notes that mochi serves clients: sessions it restored from
// storage are all loaded.
func (s *SessionHook) OnStarted() { s.serving.Store(true) }

// OnStopped ends the session-sync loop (and the other hooks' goroutines).
func (s *SessionHook) OnStopped() { s.sh.stop() }

// --- registration -------------------------------------------------------

// OnConnect registers the client id with its leader before mochi sets up
// the session, so that any other session of the id in the cluster is
// taken over and its state lands here first [MQTT-3.1.4-3]. A client
// whose registration fails is refused (v5 CONNACK 0x88, v3 rc 3).
func (s *SessionHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	c := s.sh.cluster()
	if c == nil {
		return nil
	}
	if s.sh.opts.Authenticate != nil && !s.sh.opts.Authenticate(cl, pk) {
		return nil // mochi authenticates next and refuses it
	}
	if s.restoring.Load() {
		mu := s.restoreLock(cl.ID)
		mu.Lock()
		defer mu.Unlock()
	}
	// A shadow of an earlier session of this id (handed off from here)
	// must be gone before a new one is set up under the same id.
	s.ho.endShadowNow(cl.ID)
	ctx, cancel := context.WithTimeout(context.Background(), s.sh.opts.RegisterTimeout)
	defer cancel()
	tk, err := c.Register(ctx, cl.ID, pk.Connect.Clean)
	if err != nil {
		s.sh.log.Warn("client registration failed; refusing CONNECT", "client", cl.ID, "error", err)
		s.sh.opts.Metrics.Refused("registration_failed")
		return s.sh.opts.Refuse.Connect(cl, packets.ErrServerUnavailable)
	}
	s.setConnect(cl, tk.At)
	if c.Split() {
		// Registered during a netsplit: another session of the id may
		// live on the other side, and lose to this one at the heal
		// (heal.go). Note what this one gets meanwhile.
		s.ho.trackHeal(cl.ID)
	}
	if len(tk.Session) == 0 || pk.Connect.Clean {
		return nil
	}
	sess, err := decodeSession(tk.Session)
	if err == nil {
		s.ho.startIncoming(cl.ID, sess.Inflight)
		err = importSession(s.sh.srv, cl.ID, sess)
	}
	if err != nil {
		// The session cannot be used; the client gets a new one
		// (session present = false tells it so).
		s.sh.log.Error("import moved session", "client", cl.ID, "error", err)
		return nil
	}
	moved, ok := mochix.Client(s.sh.srv, cl.ID)
	if !ok {
		return nil
	}
	s.sh.storeSession(moved)
	// Route the session's messages here on every node before the client
	// is acknowledged: a publish acked after the CONNACK must not go to
	// the node it came from, which no longer has the subscriptions.
	if err := c.PutSessionSync(ctx, cl.ID, record(c.Name(), moved, tk.At)); err != nil {
		s.sh.log.Warn("moved session's routes not confirmed by every node", "client", cl.ID, "error", err)
	}
	// Then collect what the old node caught for the session meanwhile.
	rest, err := c.FinishTakeover(ctx, tk.From, cl.ID)
	if err == nil && len(rest) > 0 {
		var caught session
		if caught, err = decodeSession(rest); err == nil {
			err = s.ho.appendMsgs(cl.ID, caught.Inflight)
		}
	}
	if err != nil {
		// The old node ships what it caught with AppendSession.
		s.sh.log.Warn("finish session takeover", "client", cl.ID, "from", tk.From, "error", err)
	}
	return nil
}

// TakeoverSession implements cluster.Broker: disconnect the local session
// of clientID (v5 reason 0x8E session taken over) and, with handoff, export
// it and keep catching its messages (HandoffHook); without, discard it.
// A delayed will of the client held here is dropped.
func (s *SessionHook) TakeoverSession(clientID, newNode string, handoff bool) ([]byte, error) {
	srv := s.sh.srv
	cl, ok := mochix.Client(srv, clientID)
	if ok && handoff && cl.Properties.Will.WillDelayInterval > 0 && !cl.Closed() {
		// The connection here has not ended yet (the client reconnected
		// on newNode before this node noticed the old one drop): its
		// will, delayed, is not to be sent at all [MQTT-3.1.4-3]. Clear
		// it before the connection ends, and drop once it has ended what
		// mochi may have queued meanwhile (OnDisconnect comes after
		// mochi's sendLWT).
		mochix.DropWill(cl)
		s.dropWillAtEnd.Store(cl, struct{}{})
		time.AfterFunc(s.sh.hcfg.Grace(), func() { s.dropWillAtEnd.Delete(cl) })
	}
	// The client connected again, on newNode: a will it left here with a
	// delay is not to be published [MQTT-3.1.3-9] (mochi drops it only
	// for a reconnect on this node).
	if mochix.CancelDelayedWill(srv, clientID) {
		s.sh.log.Info("delayed will dropped: its client reconnected on another node", "client", clientID, "new_node", newNode)
	}
	if !ok {
		return nil, nil
	}
	if s.ho.handingOff(clientID, cl) {
		return nil, nil // already handed off
	}
	s.sh.log.Info("session taken over by another node", "client", clientID, "new_node", newNode)
	// From here on the record belongs to newNode: this node's late
	// events about the old session must not rewrite or delete it.
	s.dirtyMu.Lock()
	s.moved[clientID] = struct{}{}
	s.dirtyMu.Unlock()
	_ = srv.DisconnectClient(cl, packets.ErrSessionTakenOver)
	cl.Stop(packets.ErrSessionTakenOver)
	if handoff && !mochix.Ephemeral(cl) {
		return s.ho.startShadow(cl, newNode)
	}
	// The session ends here without touching the replicated record,
	// which newNode rewrites: the client started a clean session there,
	// or this copy is a duplicate of the one newNode holds (replication
	// told this node so, e.g. after a restart).
	s.supersede(cl)
	// mochi reports the old connection's end shortly after; then the
	// mark has done its job.
	time.AfterFunc(s.sh.hcfg.Grace(), func() { s.forgetMoved(clientID, cl) })
	return nil, nil
}

// handedOff drops a session whose handoff ended (HandoffHook): the old
// session's events are long flushed.
func (s *SessionHook) handedOff(cl *mqtt.Client) {
	s.dropLocal(cl)
	s.forgetMoved(cl.ID, cl)
}

// forgetMoved drops the mark that clientID's session moved to another
// node, set when cl was taken over (the set would otherwise grow with
// every session that leaves), unless an event of cl is still to be
// flushed or the id is in use here again.
func (s *SessionHook) forgetMoved(clientID string, cl *mqtt.Client) {
	s.dirtyMu.Lock()
	defer s.dirtyMu.Unlock()
	if _, pending := s.dirty[clientID]; pending {
		return // the flush skips it; a later takeover or return resets the mark
	}
	if cur, ok := mochix.Client(s.sh.srv, clientID); !ok || cur == cl {
		delete(s.moved, clientID)
	}
}

// supersede drops cl, a copy of a session that lives on another node,
// and counts its queued messages as dropped. Replication
// (TakeoverSession) and the reconciliation of restored sessions can both
// find the same stale copy at once; only the first drops and counts it.
func (s *SessionHook) supersede(cl *mqtt.Client) (queued int, first bool) {
	if !s.firstSupersede(cl) {
		return 0, false
	}
	queued = mochix.QueueLen(cl)
	s.dropLocal(cl)
	if queued > 0 {
		s.sh.opts.Metrics.DroppedN(metrics.ReasonSuperseded, queued)
	}
	return queued, true
}

// firstSupersede reports whether this is the first of the paths that
// found cl stale to drop it (for a grace period).
func (s *SessionHook) firstSupersede(cl *mqtt.Client) bool {
	if _, dup := s.superseded.LoadOrStore(cl, struct{}{}); dup {
		return false
	}
	time.AfterFunc(s.sh.hcfg.Grace(), func() { s.superseded.Delete(cl) })
	return true
}

// dropLocal removes a stopped client's session from this node (its
// subscriptions, queue and listing) without touching the replicated
// record, which the session's new node rewrites.
func (s *SessionHook) dropLocal(cl *mqtt.Client) { s.dropLocalKeeping(cl, nil) }

// dropLocalKeeping is dropLocal that hands keep the session's queue once
// nothing more can be queued for it (it is unsubscribed) and before the
// queue is cleared; it returns how many entries the clear took.
func (s *SessionHook) dropLocalKeeping(cl *mqtt.Client, keep func([]packets.Packet)) int {
	filters := mochix.Unsubscribe(s.sh.srv, cl)
	if keep != nil {
		keep(mochix.Queued(cl))
	}
	ids := mochix.ClearQueue(cl)
	s.sh.unstoreSession(cl, filters, ids)
	mochix.Unlist(s.sh.srv, cl)
	s.forgetConnect(cl)
	return len(ids)
}

// LocalSession reports whether clientID has a session on this node
// (cluster.Broker); a session being handed off does not count.
func (s *SessionHook) LocalSession(clientID string) bool {
	cl, ok := mochix.Client(s.sh.srv, clientID)
	return ok && !s.ho.handingOff(clientID, cl)
}

// KickSession disconnects the client of the local session of clientID
// (DISCONNECT 0x98 administrative action to an MQTT 5 client) for an
// operator, as the admin API does for a client of this node; the session
// stays, as a kick does not end it. It reports whether a live connection
// was closed.
func (s *SessionHook) KickSession(clientID string) (bool, error) {
	cl, ok := mochix.Client(s.sh.srv, clientID)
	if !ok || s.ho.handingOff(clientID, cl) || cl.Closed() {
		return false, nil
	}
	s.sh.log.Info("client kicked through another node's admin API", "client", clientID)
	_ = s.sh.srv.DisconnectClient(cl, packets.ErrAdministrativeAction)
	cl.Stop(packets.ErrAdministrativeAction)
	return true, nil
}

// --- session table ------------------------------------------------------

func (s *SessionHook) markDirty(id string) {
	if strings.HasPrefix(id, injectorPrefix) || id == mqtt.InlineClientId {
		return
	}
	s.dirtyMu.Lock()
	s.dirty[id] = struct{}{}
	s.dirtyMu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func (s *SessionHook) syncLoop() {
	defer s.sh.wg.Done()
	for {
		select {
		case <-s.sh.done:
			s.flushDirty()
			return
		case <-s.kick:
			s.flushDirty()
		}
	}
}

func (s *SessionHook) flushDirty() {
	s.dirtyMu.Lock()
	ids := s.dirty
	s.dirty = map[string]struct{}{}
	moved := make(map[string]bool, len(s.moved))
	for id := range ids {
		if _, ok := s.moved[id]; ok {
			moved[id] = true
		}
	}
	s.dirtyMu.Unlock()
	c := s.sh.cluster()
	if c == nil {
		return
	}
	for id := range ids {
		if moved[id] {
			continue
		}
		cl, ok := mochix.Client(s.sh.srv, id)
		if !ok || (cl.Closed() && mochix.Ephemeral(cl)) || cl.IsTakenOver() {
			if ok && cl.IsTakenOver() {
				continue // the new session's own events rewrite the record
			}
			if ok {
				s.forgetConnect(cl)
			}
			c.DeleteSession(id)
			continue
		}
		c.PutSession(id, record(c.Name(), cl, s.connectOf(c, cl)))
	}
}

// OnSessionEstablished records the session.
func (s *SessionHook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	s.dirtyMu.Lock()
	delete(s.moved, cl.ID) // the client is back on this node
	s.dirtyMu.Unlock()
	s.markDirty(cl.ID)
}

// OnDisconnect updates or removes the record.
func (s *SessionHook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if !s.serving.Load() && cl.Net.Conn == nil && errors.Is(err, packets.ErrServerShuttingDown) {
		// mochi restoring a session from storage: SyncSessions
		// announces it once the node has the session table, where it
		// may have moved meanwhile (restore.go).
		return
	}
	if _, ok := s.dropWillAtEnd.LoadAndDelete(cl); ok && mochix.CancelDelayedWill(s.sh.srv, cl.ID) {
		s.sh.log.Info("delayed will dropped: its client reconnected on another node before its connection here ended", "client", cl.ID)
	}
	s.markDirty(cl.ID)
}

// OnSubscribed updates the record.
func (s *SessionHook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	s.markDirty(cl.ID)
}

// OnUnsubscribed updates the record.
func (s *SessionHook) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) { s.markDirty(cl.ID) }

// OnClientExpired removes the record of an expired persistent session.
func (s *SessionHook) OnClientExpired(cl *mqtt.Client) { s.markDirty(cl.ID) }

// record describes a client's session for the replicated "sub" table;
// at is its CONNECT's stamp.
func record(node string, cl *mqtt.Client, at hlc.Timestamp) routes.SessionRecord {
	rec := routes.SessionRecord{Node: node, Clean: mochix.Ephemeral(cl), CleanStart: cl.Properties.Clean, Connect: at}
	if !rec.Clean {
		rec.ExpiryInterval = cl.Properties.Props.SessionExpiryInterval
		if cl.Properties.ProtocolVersion < 5 {
			rec.ExpiryInterval = 0xFFFFFFFF // v3 persistent sessions never expire by protocol
		}
	}
	for _, sub := range mochix.Subscriptions(cl) {
		rec.Subs = append(rec.Subs, routes.Subscription{
			Filter:            sub.Filter,
			QoS:               sub.Qos,
			NoLocal:           sub.NoLocal,
			RetainAsPublished: sub.RetainAsPublished,
			RetainHandling:    sub.RetainHandling,
			Identifier:        sub.Identifier,
		})
	}
	return rec
}

// connectStamp is the CONNECT stamp of the session of client cl.
type connectStamp struct {
	cl *mqtt.Client
	at hlc.Timestamp
}

// setConnect notes the stamp of cl's registration, before mochi sets its
// session up: every record of that session carries it.
func (s *SessionHook) setConnect(cl *mqtt.Client, at hlc.Timestamp) {
	s.dirtyMu.Lock()
	s.connects[cl.ID] = connectStamp{cl: cl, at: at}
	s.dirtyMu.Unlock()
}

// connectOf returns the CONNECT stamp of cl's session. A session this
// node did not register (restored from storage after a restart, or
// imported) keeps the stamp the table has for it here, if any: its
// CONNECT is that old.
func (s *SessionHook) connectOf(c Cluster, cl *mqtt.Client) hlc.Timestamp {
	s.dirtyMu.Lock()
	e, ok := s.connects[cl.ID]
	s.dirtyMu.Unlock()
	if ok && e.cl == cl {
		return e.at
	}
	// Else, if ok, e is the stamp of a newer connection of the id that
	// mochi has not set up yet; cl is the session it replaces.
	var at hlc.Timestamp
	if rec, found := c.SessionRecord(cl.ID); found && rec.Node == c.Name() {
		at = rec.Connect
	}
	if !ok {
		s.setConnect(cl, at)
	}
	return at
}

// forgetConnect drops cl's stamp once its session is gone here (and a
// stamp of a connection that closed before it was listed).
func (s *SessionHook) forgetConnect(cl *mqtt.Client) {
	s.dirtyMu.Lock()
	if e, ok := s.connects[cl.ID]; ok && (e.cl == cl || e.cl.Closed()) {
		delete(s.connects, cl.ID)
	}
	s.dirtyMu.Unlock()
}
