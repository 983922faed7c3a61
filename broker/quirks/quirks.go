// Package quirks works around defects of the mochi MQTT server that a hook
// can avoid, each documented with its cause, so they can be dropped when
// mochi fixes them.
package quirks

import (
	"bytes"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/mochix"
)

// Hook applies the workarounds. Create it with New.
//
// Send-quota deadlock (mochi v2.7.9): after every packet from a client
// with messages in flight and a positive send quota, mochi calls
// Inflight.NextImmediate, which takes the inflight read lock and then calls
// GetAll, which takes it again. A publisher goroutine asking for the write
// lock (Inflight.Set) between the two freezes that client's read loop, the
// publisher and mochi's event loop for good (the same class of bug as
// upstream mochi-mqtt/server#488). The quota is only set for MQTT 5
// clients that send Receive Maximum, and mochi only takes that path while
// it is positive, so the hook sets it to zero once the session is set up.
// Cost: the broker does not hold back QoS 1/2 deliveries beyond the
// client's Receive Maximum (mqtt.max_inflight still bounds what is stored
// per client). Clients that announce a small Receive Maximum may see more
// in flight than they asked for.
//
// Publish before CONNACK, twice after it (mochi v2.7.9): a connecting
// client is listed (Clients.Add) and subscribed before its CONNACK is
// written, so a publish matching its subscriptions in between is written
// first and the client fails the connection ("unexpected packet"); and
// after a CONNACK with session present mochi resends the session's queue,
// which also holds the QoS 1/2 publishes just queued for the client's
// write loop, so those went out twice. The hook holds every PUBLISH but
// mochi's resends (DUP set) until the session is established (at most
// connackWait), and then withholds the ones the resend already wrote.
// (The resend itself cannot be held back: a failed write ends it.) It
// tells those apart from the resends of the session's older messages
// (no copy follows; their ids are free for reuse once acknowledged) by
// OnQosPublish, which mochi calls before queuing a copy: a held copy may
// reach the encoder only after the client acknowledged the resend.
//
// Messages lost at a session takeover (mochi v2.7.9): when a client
// resumes its session, mochi marks the old client taken over, clones its
// queue into the new one, clears the old queue, and only then lists the
// new client in place of the old. A QoS 1/2 message queued for the old
// client after the clone (publishers still find the old client listed)
// was lost. The hook collects those messages (OnQosDropped of the clear,
// OnQosPublish for a taken-over client) and queues the ones the clone did
// not carry over to the client that holds the session once its session
// is established. That client may be taken over in turn while the hook
// queues them (a reconnect right after the CONNACK): the messages it
// queued after that takeover's clone are collected again, as those of a
// taken-over client. Queue is the same path for messages other parts of
// the broker add to a session (broker/clusterhook's handed-over ones).
type Hook struct {
	mqtt.HookBase
	srv   *mqtt.Server
	store Store

	gateMu sync.Mutex
	gates  map[*mqtt.Client]*gate
	nGates atomic.Int32

	resentMu sync.Mutex
	resent   map[*mqtt.Client]map[uint16]*pending
	nResent  atomic.Int32 // clients in resent (fast path)

	orphanMu sync.Mutex
	orphans  map[string][]orphan
	settled  map[string]*settled // client id -> its session's established client
}

// gate holds publishes to a connecting client from OnSessionEstablish
// until its session is established.
type gate struct {
	open chan struct{} // closed when the session is established
}

// pending is a QoS 1/2 publish to a connecting client that mochi queued
// for the client's write loop, resent after the CONNACK, or both.
type pending struct {
	pk     packets.Packet
	queued bool // a write-loop copy follows (OnQosPublish)
	resent bool // mochi's resend wrote it
}

// settled is the client holding a session, with the queue it had when
// its session was established (the takeover's clone, nothing acked yet).
type settled struct {
	cl     *mqtt.Client
	cloned map[uint16]packets.Packet

	// adopted holds the orphans queued here so far, by the client they
	// were queued for and their id there: one message can be reported
	// twice (queued, and dropped by the clear), the second time after
	// the first was adopted (a publisher paused between mochi's Set and
	// OnQosPublish).
	mu      sync.Mutex
	adopted map[orphanKey]packets.Packet
}

// orphan is a message queued for a taken-over client.
type orphan struct {
	from *mqtt.Client
	pk   packets.Packet
}

type orphanKey struct {
	from *mqtt.Client
	id   uint16
}

// connackWait bounds how long a publish to a connecting client waits
// for its session to be established; after that it is written anyway
// (the connection is probably failing).
const connackWait = 2 * time.Second

// maxOrphans bounds the messages collected per taken-over session.
const maxOrphans = 1 << 14

var _ mqtt.Hook = (*Hook)(nil)

// Store is told about messages the hook queues outside mochi's own
// delivery, so that a storage hook persists them as it persists mochi's.
// mochi's storage hooks implement it.
type Store interface {
	OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, resends int)
}

// New returns the hook for srv; store may be nil (no storage).
func New(srv *mqtt.Server, store Store) *Hook {
	return &Hook{srv: srv, store: store, gates: map[*mqtt.Client]*gate{}, orphans: map[string][]orphan{},
		settled: map[string]*settled{}, resent: map[*mqtt.Client]map[uint16]*pending{}}
}

// ID names the hook.
func (h *Hook) ID() string { return "mendmq-quirks" }

// Provides declares the handled hook methods.
func (h *Hook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnSessionEstablish, mqtt.OnSessionEstablished, mqtt.OnPacketEncode,
		mqtt.OnDisconnect, mqtt.OnQosDropped, mqtt.OnQosPublish, mqtt.OnPacketRead,
	}, []byte{b})
}

// OnSessionEstablish runs before mochi lists the connecting client: from
// here until its session is established, publishes to it wait.
//
// It also drops what the hook still tracks for closed clients: mochi
// calls no hook when the CONNACK or the resend fails (a takeover closed
// the connection meanwhile), and such entries would keep those clients
// in memory and the fast paths off.
func (h *Hook) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	h.gateMu.Lock()
	for c, g := range h.gates {
		if c.Closed() {
			close(g.open) // (a closed client writes nothing)
			delete(h.gates, c)
			h.nGates.Add(-1)
		}
	}
	if _, ok := h.gates[cl]; !ok {
		h.gates[cl] = &gate{open: make(chan struct{})}
		h.nGates.Add(1)
	}
	h.gateMu.Unlock()
	if h.nResent.Load() > 0 {
		h.resentMu.Lock()
		for c := range h.resent {
			if c.Closed() {
				h.forgetResent(c, -1)
			}
		}
		h.resentMu.Unlock()
	}
}

// dropGate releases what waits for cl (session established or failed).
func (h *Hook) dropGate(cl *mqtt.Client) {
	if h.nGates.Load() == 0 {
		return
	}
	h.gateMu.Lock()
	if g, ok := h.gates[cl]; ok {
		close(g.open)
		delete(h.gates, cl)
		h.nGates.Add(-1)
	}
	h.gateMu.Unlock()
}

// gated reports whether publishes to cl wait for its session.
func (h *Hook) gated(cl *mqtt.Client) bool {
	if h.nGates.Load() == 0 {
		return false
	}
	h.gateMu.Lock()
	_, ok := h.gates[cl]
	h.gateMu.Unlock()
	return ok
}

func samePublish(a, b packets.Packet) bool {
	return a.TopicName == b.TopicName && bytes.Equal(a.Payload, b.Payload)
}

// OnPacketEncode holds a PUBLISH to a connecting client and withholds
// one that mochi's resend wrote already (see Hook). A packet it
// withholds gets an invalid type, which makes WritePacket skip it.
func (h *Hook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type != packets.Publish {
		return pk
	}
	if h.nGates.Load() > 0 {
		h.gateMu.Lock()
		g, ok := h.gates[cl]
		h.gateMu.Unlock()
		if ok {
			if pk.FixedHeader.Dup {
				// mochi's resend after the CONNACK: written now.
				h.note(cl, pk, true, true)
				return pk
			}
			t := time.NewTimer(connackWait)
			select {
			case <-g.open:
			case <-t.C:
				// Never established (mochi calls no hook for some
				// failed connects): stop tracking it.
				h.dropGate(cl)
			}
			t.Stop()
		}
	}
	if pk.FixedHeader.Qos > 0 && !pk.FixedHeader.Dup && h.wasResent(cl, pk) {
		mochix.Withhold(cl, &pk) // a write-loop copy: its write error is ignored
	}
	return pk
}

// note records a publish to connecting client cl that mochi resent at
// connect (resent) or queued for its write loop (!resent); the two
// arrive in either order. Unless create, it only completes a record.
func (h *Hook) note(cl *mqtt.Client, pk packets.Packet, resent, create bool) {
	h.resentMu.Lock()
	defer h.resentMu.Unlock()
	p, ok := h.resent[cl][pk.PacketID]
	if !ok || !samePublish(p.pk, pk) {
		if !create {
			return
		}
		m := h.resent[cl]
		if m == nil {
			m = map[uint16]*pending{}
			h.resent[cl] = m
			h.nResent.Add(1)
		}
		p = &pending{pk: pk}
		m[pk.PacketID] = p
	}
	if resent {
		p.resent = true
	} else {
		p.queued = true
	}
}

// wasResent reports (once) whether the write-loop copy pk went out
// already as a resend.
func (h *Hook) wasResent(cl *mqtt.Client, pk packets.Packet) bool {
	if h.nResent.Load() == 0 {
		return false
	}
	h.resentMu.Lock()
	defer h.resentMu.Unlock()
	if p, ok := h.resent[cl][pk.PacketID]; ok && samePublish(p.pk, pk) {
		h.forgetResent(cl, int(pk.PacketID))
		return p.resent
	}
	return false
}

// forgetResent drops one resent entry (all of cl's if id < 0); resentMu
// is held.
func (h *Hook) forgetResent(cl *mqtt.Client, id int) {
	m, ok := h.resent[cl]
	if !ok {
		return
	}
	if id >= 0 {
		delete(m, uint16(id))
	}
	if id < 0 || len(m) == 0 {
		delete(h.resent, cl)
		h.nResent.Add(-1)
	}
}

// OnPacketRead forgets a resent publish that no write-loop copy follows
// once the client acknowledged it (its packet id may then be reused).
// One that a copy follows is forgotten when the copy is withheld: the
// client may acknowledge the resend before the copy is encoded.
func (h *Hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if t := pk.FixedHeader.Type; (t == packets.Puback || t == packets.Pubrec) && h.nResent.Load() > 0 {
		h.resentMu.Lock()
		if p, ok := h.resent[cl][pk.PacketID]; ok && !p.queued {
			h.forgetResent(cl, int(pk.PacketID))
		}
		h.resentMu.Unlock()
	}
	return pk, nil
}

// OnDisconnect ends the tracking of the client.
func (h *Hook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	h.dropGate(cl)
	if h.nResent.Load() > 0 {
		h.resentMu.Lock()
		h.forgetResent(cl, -1)
		h.resentMu.Unlock()
	}
	h.orphanMu.Lock()
	if st := h.settled[cl.ID]; st != nil && st.cl == cl {
		delete(h.settled, cl.ID)
	}
	h.orphanMu.Unlock()
}

// OnQosDropped collects the messages mochi drops from a session that a
// reconnect took over.
func (h *Hook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if cl.IsTakenOver() && pk.FixedHeader.Type == packets.Publish {
		h.orphan(cl, pk)
	}
}

// OnQosPublish collects the messages queued for a client already taken
// over, and notes those queued for a connecting client's write loop.
func (h *Hook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, resends int) {
	if pk.FixedHeader.Type != packets.Publish {
		return
	}
	if cl.IsTakenOver() {
		h.orphan(cl, pk)
	} else if !pk.FixedHeader.Dup {
		// Also once the session is established, if noted as resent: the
		// publisher may have paused between mochi's Set, which the
		// resend saw, and here.
		if g := h.gated(cl); g || h.nResent.Load() > 0 {
			h.note(cl, pk, false, g)
		}
	}
}

// orphan keeps pk, queued for the taken-over client old, for the client
// that holds the session now, or queues it there if that one is set up.
func (h *Hook) orphan(old *mqtt.Client, pk packets.Packet) {
	h.orphanMu.Lock()
	if st := h.settled[old.ID]; st != nil && st.cl != old {
		if now, ok := mochix.Client(h.srv, old.ID); ok && now == st.cl {
			h.orphanMu.Unlock()
			h.adopt(st, []orphan{{from: old, pk: pk}})
			return
		}
	}
	if len(h.orphans[old.ID]) < maxOrphans {
		h.orphans[old.ID] = append(h.orphans[old.ID], orphan{from: old, pk: pk})
	}
	h.orphanMu.Unlock()
}

// OnSessionEstablished runs after mochi set the client's quotas,
// inherited any previous session, sent the CONNACK and resent the
// session's queue, before the client's first packet is read.
func (h *Hook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	mochix.DisableSendQuota(cl)
	h.dropGate(cl)
	st := &settled{cl: cl, cloned: map[uint16]packets.Packet{}, adopted: map[orphanKey]packets.Packet{}}
	for _, p := range mochix.Queued(cl) {
		if p.FixedHeader.Type == packets.Publish {
			st.cloned[p.PacketID] = p
		}
	}
	h.orphanMu.Lock()
	if cl.IsTakenOver() {
		// Another connection took the session over before this one got
		// here: that one holds it and collects the orphans (this
		// client's own included), so leave them and settled to it.
		h.orphanMu.Unlock()
		return
	}
	orphans := h.orphans[cl.ID]
	delete(h.orphans, cl.ID)
	h.settled[cl.ID] = st
	h.orphanMu.Unlock()
	h.adopt(st, orphans)
}

// adopt queues orphans to the settled client, skipping those the
// takeover's clone carried over and those adopted already (a message
// queued for the old client between its clone and its clear is reported
// twice: queued, then dropped).
func (h *Hook) adopt(st *settled, orphans []orphan) {
	cl := st.cl
	for _, or := range orphans {
		o := or.pk
		if c, ok := st.cloned[o.PacketID]; ok && c.Created == o.Created && samePublish(c, o) {
			continue // carried over by the clone
		}
		k := orphanKey{from: or.from, id: o.PacketID}
		st.mu.Lock()
		d, seen := st.adopted[k]
		seen = seen && d.Created == o.Created && samePublish(d, o)
		if !seen {
			st.adopted[k] = o
		}
		st.mu.Unlock()
		if seen {
			continue
		}
		if err := h.Queue(cl, o); err != nil {
			h.srv.Log.Warn("message queued during a session takeover dropped", "client", cl.ID, "error", err)
		}
	}
}

// Queue queues pk, a QoS 1/2 PUBLISH, for cl's session the way mochi
// queues a delivery: under a free packet id of cl, into its queue and the
// storage hook, and written out if cl is connected (before its CONNACK the
// hook holds the write, see Hook). If a reconnect took cl's session over
// (mochi cloned its queue already), pk follows the session to the client
// that holds it, like a message mochi itself queued for the taken-over
// client. The only error is packet ids exhausted (pk is dropped).
func (h *Hook) Queue(cl *mqtt.Client, pk packets.Packet) error {
	pk.FixedHeader.Dup = false
	q, err := mochix.Enqueue(h.srv, cl, pk)
	switch {
	case errors.Is(err, mochix.ErrTakenOver):
		h.orphan(cl, q)
		return nil
	case errors.Is(err, mochix.ErrCleared):
		return nil // mochi's clear reported it (OnQosDropped): an orphan already
	case err != nil:
		return err
	}
	if h.store != nil {
		h.store.OnQosPublish(cl, q, q.Created, 0)
	}
	_ = cl.WritePacket(q)
	return nil
}
