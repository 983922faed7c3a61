package clusterhook

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/handoff"
	"github.com/mendmq/mendmq/broker/metrics"
	"github.com/mendmq/mendmq/broker/mochix"
)

// HandoffHook drives the handoff of sessions between nodes (the logic and
// its phases are package broker/handoff's): on the old node a shadow per
// taken-over session catches what mochi queues for it and hands it to the
// new node (this file); on the new node it keeps each message from
// reaching the session twice (handoff_incoming.go). The driver does the
// mochi calls and the data-plane calls the state machines ask for; each
// machine's calls are serialized by its run's mutex, and each shadow has
// one goroutine that carries out its Ready and keeps its timer.
type HandoffHook struct {
	mqtt.HookBase
	sh *shared
	// keyOf identifies a publish: its stamp, or the note of a will
	// (WillHook).
	keyOf func(packets.Packet) (handoff.Key, string, bool)
	// dropped removes a session whose handoff ended (SessionHook).
	dropped func(*mqtt.Client)

	mu        sync.Mutex
	shadows   map[string]*shadowRun
	nShadows  atomic.Int32 // len(shadows), for the fast path
	incoming  map[string]*incomingRun
	nIncoming atomic.Int32
	// Sessions registered during a netsplit note what they get until
	// after the heal (heal.go); healSweeping: sweepHeals runs.
	heals        map[string]*incomingRun
	nHeals       atomic.Int32
	healSweeping bool

	// Messages taken back before mochi wrote them (withdraw).
	wdMu       sync.Mutex
	withdrawn  map[*mqtt.Client][]packets.Packet
	nWithdrawn atomic.Int32
}

// shadowRun is one shadow: the taken-over client, its state machine
// (under mu) and its goroutine's wake-up and end.
type shadowRun struct {
	id      string
	cl      *mqtt.Client
	newNode string

	mu   sync.Mutex
	m    *handoff.Shadow[inflightMsg]
	kick chan struct{}
	done chan struct{} // closed when the shadow is gone
}

var _ mqtt.Hook = (*HandoffHook)(nil)

func newHandoffHook(sh *shared, keyOf func(packets.Packet) (handoff.Key, string, bool)) *HandoffHook {
	return &HandoffHook{sh: sh, keyOf: keyOf, shadows: map[string]*shadowRun{}, incoming: map[string]*incomingRun{},
		heals: map[string]*incomingRun{}, withdrawn: map[*mqtt.Client][]packets.Packet{}}
}

// ID names the hook.
func (h *HandoffHook) ID() string { return "mendmq-cluster-handoff" }

// Provides declares the handled hook methods. mochi asks at every event,
// so the per-message events reach this hook only while a handoff is
// under way or a session registered during a netsplit is tracked
// (OnQosPublish) or a message was withdrawn (OnPacketEncode,
// OnDisconnect): the hot path does not pay for it otherwise.
func (h *HandoffHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnStopped:
		return true
	case mqtt.OnQosPublish:
		return h.nShadows.Load() > 0 || h.nIncoming.Load() > 0 || h.nHeals.Load() > 0
	case mqtt.OnPacketEncode, mqtt.OnDisconnect:
		return h.nWithdrawn.Load() > 0
	}
	return false
}

// OnStopped ends the shadows (their messages are discarded and counted).
func (h *HandoffHook) OnStopped() { h.sh.stop() }

// OnQosPublish catches a message mochi queued for a session being handed
// off from here, or notes (or withdraws) one queued for a session being
// handed over to here or registered during a netsplit (heal.go).
func (h *HandoffHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, resends int) {
	if pk.FixedHeader.Type != packets.Publish {
		return
	}
	if run := h.shadowFor(cl.ID); run != nil && run.cl == cl {
		h.catch(run, pk)
		return
	}
	withdrawn := false
	if in := h.incomingFor(cl.ID); in != nil {
		withdrawn = h.direct(in, cl, pk)
	}
	if in := h.healFor(cl.ID); in != nil && !withdrawn {
		h.direct(in, cl, pk)
	}
}

// shadowFor returns the live shadow of client id, or nil.
func (h *HandoffHook) shadowFor(id string) *shadowRun {
	if h.nShadows.Load() == 0 {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.shadows[id]
}

// handingOff reports whether cl, listed under id, is a shadow.
func (h *HandoffHook) handingOff(id string, cl *mqtt.Client) bool {
	run := h.shadowFor(id)
	return run != nil && run.cl == cl
}

// startShadow makes the taken-over cl a shadow and exports its session:
// the messages it had queued go into the export, everything queued from
// now on is caught.
func (h *HandoffHook) startShadow(cl *mqtt.Client, newNode string) ([]byte, error) {
	run := &shadowRun{id: cl.ID, cl: cl, newNode: newNode, kick: make(chan struct{}, 1), done: make(chan struct{}),
		m: handoff.NewShadow[inflightMsg](h.sh.hcfg, time.Now())}
	// Every queued message is taken exactly once, by the export or by a
	// catch: both take it out of the queue under run.mu, which a catch
	// waits for from the moment the shadow is listed.
	run.mu.Lock()
	h.mu.Lock()
	if old := h.shadows[cl.ID]; old != nil {
		h.mu.Unlock()
		run.mu.Unlock()
		return nil, fmt.Errorf("session %s is already being handed off to %s", cl.ID, old.newNode)
	}
	h.shadows[cl.ID] = run
	h.nShadows.Add(1)
	h.mu.Unlock()
	s, err := exportSession(cl, h.keyOf)
	var blob []byte
	if err == nil {
		h.takeExported(cl, s)
		blob, err = encodeSession(s)
	}
	if err != nil {
		run.m.Stop("export failed")
	}
	run.mu.Unlock()
	h.sh.wg.Add(1)
	go h.runShadow(run)
	return blob, err
}

// takeExported takes exactly what was exported out of cl's queue: a
// message queued since the snapshot (its catch waits for run.mu) is the
// catch's.
func (h *HandoffHook) takeExported(cl *mqtt.Client, s session) {
	for _, m := range s.Inflight {
		mochix.Dequeue(h.sh.srv, cl, m.PacketID)
		h.sh.unstoreQueued(cl, m.PacketID)
	}
}

// catch takes a message mochi queued for a shadow.
func (h *HandoffHook) catch(run *shadowRun, pk packets.Packet) {
	k, topic, _ := h.keyOf(pk)
	// mochi may have replaced the topic by an alias of the connection
	// that is gone; the original publish still names it.
	if pk.TopicName == "" {
		pk.TopicName = topic
	}
	run.mu.Lock()
	if !mochix.Dequeue(h.sh.srv, run.cl, pk.PacketID) {
		run.mu.Unlock()
		return // exported with the snapshot
	}
	h.sh.unstoreQueued(run.cl, pk.PacketID)
	b, err := EncodePublish(pk)
	if err == nil && !run.m.Catch(time.Now(), inflightMsg{Type: packets.Publish, Created: pk.Created,
		Expiry: pk.Expiry, Publish: b, From: k.From, ID: k.ID}) {
		// Queued as the shadow ends, before dropLocal unsubscribed it.
		err = errShadowEnded
	}
	run.mu.Unlock()
	if err != nil {
		h.sh.opts.Metrics.Dropped(metrics.ReasonHandoff)
		h.sh.log.Error("message for a moved session dropped", "client", run.id, "error", err)
		return
	}
	kick(run.kick)
}

// pass adds a message handed over to a session that is itself being
// handed off from here to what its shadow hands on; false if the shadow
// ended.
func (h *HandoffHook) pass(run *shadowRun, m inflightMsg) bool {
	run.mu.Lock()
	ok := run.m.Catch(time.Now(), m)
	run.mu.Unlock()
	kick(run.kick)
	return ok
}

// FinishTakeover implements cluster.Broker: newNode routes the session
// now; hand over what the shadow caught and ship stragglers from now on.
func (h *HandoffHook) FinishTakeover(clientID, newNode string) ([]byte, error) {
	run := h.shadowFor(clientID)
	if run == nil || run.newNode != newNode {
		return nil, nil // nothing was caught, or the shadow already ended
	}
	run.mu.Lock()
	msgs := run.m.Finish(time.Now())
	run.mu.Unlock()
	kick(run.kick) // the timer changed
	if len(msgs) == 0 {
		return nil, nil
	}
	return encodeSession(session{Inflight: msgs})
}

// endShadowNow ends id's shadow before a new connection of the same id
// is set up on this node, shipping what it caught first.
func (h *HandoffHook) endShadowNow(id string) {
	run := h.shadowFor(id)
	if run == nil {
		return
	}
	run.mu.Lock()
	run.m.ClientBack(time.Now())
	run.mu.Unlock()
	kick(run.kick)
	t := time.NewTimer(2 * h.sh.opts.ForwardTimeout)
	defer t.Stop()
	select {
	case <-run.done:
	case <-t.C:
		h.sh.log.Warn("previous handoff of the session did not end in time", "client", id)
	}
}

// runShadow carries out what the shadow's state machine asks, until it
// ends.
func (h *HandoffHook) runShadow(run *shadowRun) {
	defer h.sh.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		run.mu.Lock()
		run.m.Tick(time.Now())
		r := run.m.Ready()
		next := run.m.Next()
		run.mu.Unlock()

		if r.TimedOut {
			h.sh.log.Warn("moved session's new node did not finish the takeover; shipping what was caught",
				"client", run.id, "new_node", run.newNode)
		}
		if r.Discarded > 0 {
			h.sh.opts.Metrics.DroppedN(metrics.ReasonHandoff, r.Discarded)
			h.sh.log.Error("messages for a moved session could not be handed to its new node; discarded",
				"client", run.id, "new_node", run.newNode, "messages", r.Discarded, "error", r.Err)
		}
		if r.Ended {
			h.endShadow(run, r)
			return
		}
		if len(r.Ship) > 0 {
			err := h.ship(run, r.Ship, r.ShipBy)
			run.mu.Lock()
			run.m.Shipped(time.Now(), err)
			run.mu.Unlock()
			continue
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = time.Until(next)
		}
		timer.Reset(wait)
		select {
		case <-run.kick:
		case <-timer.C:
		case <-h.sh.done:
			run.mu.Lock()
			run.m.Stop("node stopping")
			run.mu.Unlock()
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

var (
	// errNoCluster: the hooks have no cluster to ship through.
	errNoCluster = errors.New("clusterhook: no cluster")
	// errShadowEnded: a message was queued for a shadow that has ended.
	errShadowEnded = errors.New("clusterhook: the session's handoff has ended")
)

// ship sends msgs to the shadow's new node (AppendSession), giving up at
// by (or when the node stops).
func (h *HandoffHook) ship(run *shadowRun, msgs []inflightMsg, by time.Time) error {
	c := h.sh.cluster()
	if c == nil {
		return errNoCluster
	}
	blob, err := encodeSession(session{Inflight: msgs})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithDeadline(h.sh.ctx, by)
	defer cancel()
	return c.AppendSession(ctx, run.newNode, run.id, blob)
}

// endShadow drops the shadow's session and the shadow.
func (h *HandoffHook) endShadow(run *shadowRun, r handoff.Ready[inflightMsg]) {
	h.dropped(run.cl)
	h.mu.Lock()
	if h.shadows[run.id] == run {
		delete(h.shadows, run.id)
		h.nShadows.Add(-1)
	}
	h.mu.Unlock()
	close(run.done)
	h.sh.log.Debug("session handoff ended", "client", run.id, "new_node", run.newNode, "reason", r.Reason,
		"shipped", r.TotalShipped, "discarded", r.TotalDiscarded)
}

// kick wakes a goroutine waiting on c, without blocking.
func kick(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}
