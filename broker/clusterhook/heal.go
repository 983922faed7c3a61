package clusterhook

import (
	"context"
	"errors"
	"fmt"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/handoff"
	"github.com/mendmq/mendmq/broker/metrics"
	"github.com/mendmq/mendmq/broker/mochix"
	"github.com/mendmq/mendmq/cluster/routes"
)

// Duplicate sessions at a netsplit's heal.
//
// A client id can be registered on both sides of a netsplit (with
// cluster.allow_register_during_netsplit, or where the id's leader is on
// the client's side), so at the heal two nodes hold a session of it. The
// session table keeps one, the same on every node (sessions.Resolver: the
// later CONNECT by hybrid logical clock, ties to the larger node name), and
// the node of the other drops it (DropDuplicate): its client, if
// connected, gets DISCONNECT 0x8E (v3: the connection closes).
//
// What the losing session had queued was acknowledged to its publishers,
// so for a persistent session it is not dropped — unless the winning
// CONNECT asked for a clean start (routes.SessionRecord.CleanStart), which
// discards any earlier session as a takeover would have: the losing node ships the
// queued PUBLISH packets, each with its origin node and publish id, to the
// winner's node with the handoff's AppendSession call (session.Heal set),
// retried until handoff.Config.Lifetime. The winner's node queues those
// that
//
//   - a QoS 1/2 subscription of the winning session matches (at the
//     lower of the two QoS, with the winning session's subscription
//     identifiers): only what that session would have received counts;
//     subscriptions of the losing session are not added to the winning
//     one, which is what its client set up after its CONNECT (it was told
//     by CONNACK whether a session was present);
//   - the winning session has not got already: not in its queue, not
//     delivered to it directly since its CONNECT (a session registered
//     while its node was split notes what it gets by origin and publish
//     id until a while after the heal, trackHeal; a message forwarded to
//     it after the shipment is withdrawn), not in an earlier shipment.
//
// Messages without an origin id (restored from storage before a restart)
// cannot be matched and are queued. QoS 2 exchanges the losing client had
// begun (PUBREL awaited) were delivered to it once and do not move; a
// clean session's queue ends with it, as MQTT has it. Everything is logged
// and counted (mendmq_session_heal_messages_total{outcome}); messages
// that cannot be delivered are also counted as dropped (session_superseded).

// DropDuplicate implements cluster.Broker: the local session of clientID
// lost to winner's (see the top of this file).
func (s *SessionHook) DropDuplicate(clientID string, winner routes.SessionRecord) {
	srv := s.sh.srv
	cl, ok := mochix.Client(srv, clientID)
	if !ok || s.ho.handingOff(clientID, cl) || cl.IsTakenOver() {
		return // gone, moving, or a new connection took it over here
	}
	// From here on the record belongs to winner: this node's late events
	// about the session must not rewrite or delete it. A connection of
	// the id set up here meanwhile clears the mark (OnSessionEstablished)
	// and registers itself.
	s.dirtyMu.Lock()
	if cur, ok := mochix.Client(srv, clientID); !ok || cur != cl {
		s.dirtyMu.Unlock()
		return
	}
	s.moved[clientID] = struct{}{}
	s.dirtyMu.Unlock()
	s.sh.log.Info("duplicate session dropped: the session of this client id on another node connected later",
		"client", clientID, "winner", winner.Node, "winner_connect", winner.Connect, "connected", !cl.Closed())
	_ = srv.DisconnectClient(cl, packets.ErrSessionTakenOver)
	cl.Stop(packets.ErrSessionTakenOver)
	time.AfterFunc(s.sh.hcfg.Grace(), func() { s.forgetMoved(clientID, cl) })
	s.dropDuplicate(cl, winner)
}

// dropDuplicate drops cl, a stopped session that lost to winner's, and
// ships its queue there (unless it is a clean session, or the winning
// CONNECT asked for a clean start). It reports how many queued messages
// it shipped and how many it discarded, and false if another path
// dropped cl first (firstSupersede).
func (s *SessionHook) dropDuplicate(cl *mqtt.Client, winner routes.SessionRecord) (shipped, lost int, first bool) {
	if !s.firstSupersede(cl) {
		return 0, 0, false
	}
	// A clean session's queue ends with it; a clean start discards it.
	ship := !mochix.Ephemeral(cl) && !winner.CleanStart
	var msgs []inflightMsg
	s.dropLocalKeeping(cl, func(queue []packets.Packet) {
		for _, pk := range queue {
			if pk.FixedHeader.Type != packets.Publish {
				continue
			}
			m, err := s.ho.portable(pk)
			if err != nil || !ship {
				lost++
				continue
			}
			msgs = append(msgs, m)
		}
	})
	if lost > 0 {
		s.sh.opts.Metrics.DroppedN(metrics.ReasonSuperseded, lost)
		s.sh.log.Warn("queued messages of a dropped duplicate session discarded", "client", cl.ID,
			"messages", lost, "clean_session", mochix.Ephemeral(cl), "winner_clean_start", winner.CleanStart)
	}
	if len(msgs) > 0 {
		s.shipHeal(cl.ID, winner.Node, msgs)
	}
	return len(msgs), lost, true
}

// portable turns a queued PUBLISH into its portable form, keyed by its
// origin and publish id when known.
func (h *HandoffHook) portable(pk packets.Packet) (inflightMsg, error) {
	m := inflightMsg{Type: packets.Publish, PacketID: pk.PacketID, Created: pk.Created, Expiry: pk.Expiry}
	k, topic, ok := h.keyOf(pk)
	if ok {
		m.From, m.ID = k.From, k.ID
	}
	if pk.TopicName == "" {
		pk.TopicName = topic // an alias of the connection replaced it
	}
	b, err := EncodePublish(pk)
	m.Publish = b
	return m, err
}

// shipHeal sends the queued messages of a dropped duplicate of clientID
// to winner's node, following the session if it moves on, until they are
// taken, the session ends, or handoff.Config.Lifetime passes.
func (s *SessionHook) shipHeal(clientID, winner string, msgs []inflightMsg) {
	c := s.sh.cluster()
	blob, err := encodeSession(session{Heal: true, Inflight: msgs})
	if c == nil {
		err = errNoCluster
	}
	if err != nil {
		s.healFailed(clientID, winner, len(msgs), err)
		return
	}
	s.sh.wg.Add(1)
	go func() {
		defer s.sh.wg.Done()
		ctx, cancel := context.WithTimeout(s.sh.ctx, s.sh.hcfg.Lifetime())
		defer cancel()
		node := winner
		retry := time.NewTimer(0)
		defer retry.Stop()
		<-retry.C
		for {
			err := c.AppendSession(ctx, node, clientID, blob)
			if err == nil {
				s.sh.opts.Metrics.Healed(metrics.HealShipped, len(msgs))
				s.sh.log.Info("queued messages of a dropped duplicate session shipped to the session that won",
					"client", clientID, "node", node, "messages", len(msgs))
				return
			}
			retry.Reset(handoff.RetryInterval)
			select {
			case <-ctx.Done():
				s.healFailed(clientID, node, len(msgs), errors.Join(err, ctx.Err()))
				return
			case <-retry.C:
			}
			n, ok := c.SessionNode(clientID)
			if !ok {
				s.healFailed(clientID, node, len(msgs), errors.New("the session that won has ended"))
				return
			}
			node = n
		}
	}()
}

// healFailed counts messages of a dropped duplicate that did not reach the
// session that won.
func (s *SessionHook) healFailed(clientID, node string, n int, err error) {
	s.sh.opts.Metrics.Healed(metrics.HealShipFailed, n)
	s.sh.opts.Metrics.DroppedN(metrics.ReasonSuperseded, n)
	s.sh.log.Error("queued messages of a dropped duplicate session could not be shipped to the session that won; dropped",
		"client", clientID, "node", node, "messages", n, "error", err)
}

// --- the winner's node --------------------------------------------------

// healWindow is how long after a netsplit ends a session registered
// during it keeps noting what it gets: past the losing node's last
// shipment (handoff.Config.Lifetime after it learned of the winner).
func (h *HandoffHook) healWindow() time.Duration { return 2 * h.sh.hcfg.Lifetime() }

// trackHeal notes, until healWindow after the netsplit this node is in
// ends, which messages client id's session gets (by origin and publish
// id), so that a duplicate's shipment does not deliver them again.
func (h *HandoffHook) trackHeal(id string) *incomingRun {
	now := time.Now()
	h.mu.Lock()
	run := h.heals[id]
	if run == nil {
		run = &incomingRun{in: handoff.NewIncoming(h.sh.hcfg, now, nil)}
		h.heals[id] = run
		h.nHeals.Add(1)
	}
	start := !h.healSweeping
	h.healSweeping = true
	h.mu.Unlock()
	run.mu.Lock()
	run.in.Extend(now.Add(h.healWindow()))
	run.mu.Unlock()
	if start {
		h.sh.wg.Add(1)
		go h.sweepHeals()
	}
	return run
}

// healFor returns client id's heal tracking, or nil.
func (h *HandoffHook) healFor(id string) *incomingRun {
	if h.nHeals.Load() == 0 {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.heals[id]
}

// healSweep is how often the heal trackings are extended (while split)
// or dropped (expired).
const healSweep = time.Second

// sweepHeals keeps the heal trackings for as long as the node is split,
// and drops each healWindow later; it ends when none is left.
func (h *HandoffHook) sweepHeals() {
	defer h.sh.wg.Done()
	t := time.NewTicker(healSweep)
	defer t.Stop()
	for {
		select {
		case <-h.sh.done:
			return
		case now := <-t.C:
			split := false
			if c := h.sh.cluster(); c != nil {
				split = c.Split()
			}
			h.mu.Lock()
			for id, run := range h.heals {
				run.mu.Lock()
				if split {
					run.in.Extend(now.Add(h.healWindow()))
				}
				expired := run.in.Expired(now)
				run.mu.Unlock()
				if expired {
					delete(h.heals, id)
					h.nHeals.Add(-1)
				}
			}
			done := len(h.heals) == 0
			if done {
				h.healSweeping = false
			}
			h.mu.Unlock()
			if done {
				return
			}
		}
	}
}

// appendHealed queues for clientID's session the messages of a duplicate
// that lost to it (see the top of this file).
func (h *HandoffHook) appendHealed(clientID string, msgs []inflightMsg) error {
	cl, ok := mochix.Client(h.sh.srv, clientID)
	if !ok {
		return fmt.Errorf("%w: %s", errNoSession, clientID)
	}
	run := h.trackHeal(clientID) // a retried shipment is skipped
	subs := mochix.Subscriptions(cl)
	queued := map[handoff.Key]bool{}
	for _, pk := range mochix.Queued(cl) {
		if k, _, ok := h.keyOf(pk); ok {
			queued[k] = true
		}
	}
	var appended, dups, unsubscribed int
	defer func() {
		m := h.sh.opts.Metrics
		m.Healed(metrics.HealAppended, appended)
		m.Healed(metrics.HealDuplicate, dups)
		m.Healed(metrics.HealNotSubscribed, unsubscribed)
		m.DroppedN(metrics.ReasonSuperseded, unsubscribed)
		h.sh.log.Info("messages of a dropped duplicate session added to the session that won", "client", clientID,
			"appended", appended, "already_delivered", dups, "not_subscribed", unsubscribed)
	}()
	for i, m := range msgs {
		if m.Type != packets.Publish {
			continue
		}
		pk, err := DecodePublish(m.Publish)
		if err != nil {
			return fmt.Errorf("message %d for %s: %w", i, clientID, err)
		}
		qos, ids := grant(subs, pk.TopicName)
		if qos == 0 {
			unsubscribed++
			continue
		}
		k := msgKey(m)
		if k.Known() {
			run.mu.Lock()
			deliver := !queued[k] && run.in.Handed(k)
			full := run.in.Overflowed()
			run.mu.Unlock()
			if full {
				h.sh.log.Warn("too many messages around a netsplit to track; duplicates possible", "client", clientID)
			}
			if !deliver {
				dups++
				continue
			}
		}
		pk.FixedHeader.Qos = min(pk.FixedHeader.Qos, qos)
		pk.Properties.SubscriptionIdentifier = ids
		if err := h.queuePublish(clientID, m, &pk); err != nil {
			run.mu.Lock()
			run.in.Unhand(k) // the retry brings it again
			run.mu.Unlock()
			return fmt.Errorf("append message %d for %s: %w", i, clientID, err)
		}
		appended++
	}
	return nil
}

// grant returns the highest QoS of the subscriptions of subs that match
// topic (0 if none does) and their subscription identifiers.
func grant(subs []packets.Subscription, topic string) (qos byte, ids []int) {
	matched := false
	for _, sub := range subs {
		if !routes.Matches(sub.Filter, topic) {
			continue
		}
		matched = true
		qos = max(qos, sub.Qos)
		if sub.Identifier > 0 {
			ids = append(ids, sub.Identifier)
		}
	}
	if !matched {
		return 0, nil
	}
	return qos, ids
}
