// Package clusterhook connects the mochi MQTT server to the cluster: it
// is the mochi hook that feeds the replicated session and retained tables
// from local events and forwards publishes to the nodes with subscribers,
// and it is the cluster's Broker, injecting what peers forward and
// applying what replication resolves.
//
// Loop prevention: everything the cluster injects is published by an
// inline client of this package's injector pool, and the hook ignores
// publishes and retains from inline clients, so nothing is forwarded back
// or twice.
package clusterhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/metrics"
	"github.com/mendmq/mendmq/cluster"
	"github.com/mendmq/mendmq/cluster/routes"
)

// Cluster is what the hook needs from the cluster node.
type Cluster interface {
	// Name is this node's id.
	Name() string
	// Forward sends a publish to every other node with a matching
	// subscription (one node per shared group, skipping groups with a
	// local member). For qos > 0 it returns only once every target has
	// accepted the message, or an error. id numbers the publish among
	// this node's (cluster.Delivery.ID).
	Forward(ctx context.Context, topic string, qos byte, id uint64, encode func() ([]byte, error)) error
	// PutSession / DeleteSession write the client's record in the
	// replicated session table.
	PutSession(clientID string, rec routes.SessionRecord)
	DeleteSession(clientID string)
	// PutRetained / DeleteRetained write the replicated retained table.
	PutRetained(topic string, m cluster.RetainedMessage, now time.Time)
	DeleteRetained(topic string, now time.Time)
	// ReapplyRetained makes the broker's retained message of topic the
	// cluster's resolved one again (through ApplyRetained, serialized
	// with replication).
	ReapplyRetained(topic string)
	// PutSessionSync writes the record and waits until every alive peer
	// applied it.
	PutSessionSync(ctx context.Context, clientID string, rec routes.SessionRecord) error
	// Register claims clientID for this node with the client's leader,
	// taking the session over from wherever it lives.
	Register(ctx context.Context, clientID string, clean bool) (cluster.Takeover, error)
	// FinishTakeover tells the node a session came from that every node
	// routes it here now, and returns what that node caught meanwhile.
	FinishTakeover(ctx context.Context, from, clientID string) ([]byte, error)
	// AppendSession sends messages caught for a moved session to its
	// new node.
	AppendSession(ctx context.Context, node, clientID string, msgs []byte) error
	// Synced is closed once the node has the cluster's tables after
	// starting; SessionNode reads the session table.
	Synced() <-chan struct{}
	SessionNode(clientID string) (string, bool)
}

// Options configures the hook.
type Options struct {
	Server  *mqtt.Server
	Metrics *metrics.MQTT
	Log     *slog.Logger
	// ForwardTimeout bounds the wait for peers to accept a QoS1/2
	// publish (the publisher's ack waits that long at most).
	ForwardTimeout time.Duration
	// RegisterTimeout bounds a CONNECT's registration with the leader.
	RegisterTimeout time.Duration
	// Authenticate checks CONNECT credentials. mochi calls OnConnect
	// before authentication, and registration takes sessions over across
	// the cluster, so an unauthenticated CONNECT must not get that far.
	Authenticate func(cl *mqtt.Client, pk packets.Packet) bool
	// Store, if set, is the node's storage hook (store.go). It must be
	// added to the server before this hook, so that it has written a
	// message mochi queued before this hook takes the message back.
	Store Store
}

// Hook is the mochi hook and the cluster's Broker.
type Hook struct {
	mqtt.HookBase
	opts Options
	srv  *mqtt.Server
	log  *slog.Logger

	node atomic.Pointer[clusterRef]

	injectors sync.Pool // *mqtt.Client, inline

	dirtyMu sync.Mutex
	dirty   map[string]struct{}
	moved   map[string]struct{} // sessions taken over by another node
	kick    chan struct{}
	done    chan struct{}
	wg      sync.WaitGroup
	nextInj atomic.Uint64

	// Sessions being handed off to another node (see handoff.go).
	shadowMu  sync.Mutex
	shadows   map[string]*shadow
	nShadows  atomic.Int32
	incoming  map[string]*incoming
	nIncoming atomic.Int32
	nextID    atomic.Uint64 // numbers this node's publishes
	// The deadline of QoS 1/2 forwards (forwardContext).
	fwdDeadline atomic.Pointer[forwardDeadline]
	// Messages taken back before mochi wrote them (handoff.go withdraw).
	wdMu       sync.Mutex
	withdrawn  map[*mqtt.Client][]packets.Packet
	nWithdrawn atomic.Int32
	// Restored sessions being reconciled (restore.go): OnConnect and
	// the reconciliation of a session exclude each other meanwhile, per
	// client id (restoreLock), so a reconnect storm is not serialized.
	restoring atomic.Bool
	restoreMu [64]sync.Mutex
	serving   atomic.Bool // OnStarted
	// sysMu orders $SYS ticks before OnStopped (sys.go).
	sysMu sync.RWMutex
	// The ids of wills, by origin client (will.go).
	willMu sync.Mutex
	wills  map[string][]*willNote
	nWills atomic.Int32
}

type clusterRef struct{ c Cluster }

// injectorPrefix starts the client ids of the injector pool: inline
// clients through which forwarded publishes enter mochi.
const injectorPrefix = "$cluster-injector-"

var (
	_ mqtt.Hook      = (*Hook)(nil)
	_ cluster.Broker = (*Hook)(nil)
)

// New returns the hook. Call SetCluster before the server starts serving.
func New(opts Options) *Hook {
	if opts.ForwardTimeout == 0 {
		opts.ForwardTimeout = 5 * time.Second
	}
	if opts.RegisterTimeout == 0 {
		opts.RegisterTimeout = 5 * time.Second
	}
	h := &Hook{opts: opts, srv: opts.Server, log: opts.Log, dirty: map[string]struct{}{}, moved: map[string]struct{}{},
		kick: make(chan struct{}, 1), done: make(chan struct{}),
		shadows: map[string]*shadow{}, incoming: map[string]*incoming{},
		withdrawn: map[*mqtt.Client][]packets.Packet{}, wills: map[string][]*willNote{}}
	h.injectors.New = func() any {
		id := fmt.Sprintf("%s%d", injectorPrefix, h.nextInj.Add(1))
		cl := h.srv.NewClient(nil, "cluster", id, true)
		cl.Properties.ProtocolVersion = 5
		return cl
	}
	h.wg.Add(1)
	go h.syncLoop()
	return h
}

// SetCluster attaches the cluster node.
func (h *Hook) SetCluster(c Cluster) { h.node.Store(&clusterRef{c: c}) }

func (h *Hook) cluster() Cluster {
	if r := h.node.Load(); r != nil {
		return r.c
	}
	return nil
}

// ID names the hook.
func (h *Hook) ID() string { return "mendmq-cluster" }

// Provides declares the handled hook methods.
func (h *Hook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnConnect, mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnSubscribed, mqtt.OnUnsubscribed,
		mqtt.OnClientExpired, mqtt.OnPublish, mqtt.OnWill, mqtt.OnWillSent, mqtt.OnRetainMessage, mqtt.OnSelectSubscribers,
		mqtt.OnStarted, mqtt.OnStopped, mqtt.OnSysInfoTick, mqtt.OnQosPublish, mqtt.OnPacketEncode,
	}, []byte{b})
}

// OnStopped ends the session-sync loop.
func (h *Hook) OnStopped() {
	// A $SYS tick under way finishes first: mochi closes the storage
	// hooks next, and the tick's retained publishes write to them.
	h.sysMu.Lock()
	select {
	case <-h.done:
	default:
		close(h.done)
	}
	h.sysMu.Unlock()
	h.wg.Wait()
}

// --- registration -------------------------------------------------------

// OnConnect registers the client id with its leader before mochi sets up
// the session, so that any other session of the id in the cluster is
// taken over and its state lands here first [MQTT-3.1.4-3].
func (h *Hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	c := h.cluster()
	if c == nil {
		return nil
	}
	if h.opts.Authenticate != nil && !h.opts.Authenticate(cl, pk) {
		return nil // mochi authenticates next and refuses it
	}
	if h.restoring.Load() {
		mu := h.restoreLock(cl.ID)
		mu.Lock()
		defer mu.Unlock()
	}
	// A shadow of an earlier session of this id (handed off from here)
	// must be gone before a new one is set up under the same id.
	h.endShadowNow(cl.ID)
	ctx, cancel := context.WithTimeout(context.Background(), h.opts.RegisterTimeout)
	defer cancel()
	tk, err := c.Register(ctx, cl.ID, pk.Connect.Clean)
	if err != nil {
		h.log.Warn("client registration failed; refusing CONNECT", "client", cl.ID, "error", err)
		h.opts.Metrics.Refused("registration_failed")
		// An OnConnect error only drops the socket: send the CONNACK
		// first (v5 0x88 server unavailable, v3 rc 3), as mochi does
		// for its own client limit.
		_ = h.srv.SendConnack(cl, packets.ErrServerUnavailable, false, nil)
		return packets.ErrServerUnavailable
	}
	if len(tk.Session) == 0 || pk.Connect.Clean {
		return nil
	}
	s, err := decodeSession(tk.Session)
	if err == nil {
		h.startIncoming(cl.ID, s.Inflight)
		err = importSession(h.srv, cl.ID, s)
	}
	if err != nil {
		// The session cannot be used; the client gets a new one
		// (session present = false tells it so).
		h.log.Error("import moved session", "client", cl.ID, "error", err)
		return nil
	}
	moved, ok := h.srv.Clients.Get(cl.ID)
	if !ok {
		return nil
	}
	h.storeSession(moved)
	// Route the session's messages here on every node before the client
	// is acknowledged: a publish acked after the CONNACK must not go to
	// the node it came from, which no longer has the subscriptions.
	if err := c.PutSessionSync(ctx, cl.ID, record(c.Name(), moved)); err != nil {
		h.log.Warn("moved session's routes not confirmed by every node", "client", cl.ID, "error", err)
	}
	// Then collect what the old node caught for the session meanwhile.
	rest, err := c.FinishTakeover(ctx, tk.From, cl.ID)
	if err == nil && len(rest) > 0 {
		var caught session
		if caught, err = decodeSession(rest); err == nil {
			err = h.appendInflight(cl.ID, caught.Inflight)
		}
	}
	if err != nil {
		// The old node ships what it caught with AppendSession.
		h.log.Warn("finish session takeover", "client", cl.ID, "from", tk.From, "error", err)
	}
	return nil
}

// TakeoverSession implements cluster.Broker: disconnect the local session
// of clientID (v5 reason 0x8E session taken over) and, with handoff, export
// it and keep catching its messages (handoff.go); without, discard it.
func (h *Hook) TakeoverSession(clientID, newNode string, handoff bool) ([]byte, error) {
	cl, ok := h.srv.Clients.Get(clientID)
	if !ok {
		return nil, nil
	}
	if sh := h.shadowFor(clientID); sh != nil && sh.cl == cl {
		return nil, nil // already handed off
	}
	h.log.Info("session taken over by another node", "client", clientID, "new_node", newNode)
	// From here on the record belongs to newNode: this node's late
	// events about the old session must not rewrite or delete it.
	h.dirtyMu.Lock()
	h.moved[clientID] = struct{}{}
	h.dirtyMu.Unlock()
	_ = h.srv.DisconnectClient(cl, packets.ErrSessionTakenOver)
	cl.Stop(packets.ErrSessionTakenOver)
	if handoff && !isEphemeral(cl) {
		return h.startShadow(cl, newNode)
	}
	// The session ends here without touching the replicated record,
	// which newNode rewrites: the client started a clean session there,
	// or this copy is a duplicate of the one newNode holds (replication
	// told this node so, e.g. after a restart).
	if n := cl.State.Inflight.Len(); n > 0 {
		h.opts.Metrics.DroppedN(metrics.ReasonSuperseded, n)
	}
	h.dropLocal(cl)
	// mochi reports the old connection's end shortly after; then the
	// mark has done its job.
	time.AfterFunc(graceFactor*h.opts.ForwardTimeout, func() { h.forgetMoved(clientID, cl) })
	return nil, nil
}

// forgetMoved drops the mark that clientID's session moved to another
// node, set when cl was taken over (the set would otherwise grow with
// every session that leaves), unless an event of cl is still to be
// flushed or the id is in use here again.
func (h *Hook) forgetMoved(clientID string, cl *mqtt.Client) {
	h.dirtyMu.Lock()
	defer h.dirtyMu.Unlock()
	if _, pending := h.dirty[clientID]; pending {
		return // the flush skips it; a later takeover or return resets the mark
	}
	if cur, ok := h.srv.Clients.Get(clientID); !ok || cur == cl {
		delete(h.moved, clientID)
	}
}

// dropLocal removes a stopped client's session from this node (its
// subscriptions, queue and listing) without touching the replicated
// record, which the session's new node rewrites.
func (h *Hook) dropLocal(cl *mqtt.Client) {
	var filters []string
	for filter := range cl.State.Subscriptions.GetAll() {
		if h.srv.Topics.Unsubscribe(filter, cl.ID) {
			atomic.AddInt64(&h.srv.Info.Subscriptions, -1)
		}
		cl.State.Subscriptions.Delete(filter)
		filters = append(filters, filter)
	}
	var ids []uint16
	for _, pk := range cl.State.Inflight.GetAll(false) {
		ids = append(ids, pk.PacketID)
	}
	cl.ClearInflights()
	h.unstoreSession(cl, filters, ids)
	if cur, ok := h.srv.Clients.Get(cl.ID); ok && cur == cl {
		h.srv.Clients.Delete(cl.ID)
	}
}

// --- session table ------------------------------------------------------

// The replicated session record of a client is recomputed from mochi's
// current state whenever something about the client changes, by one
// goroutine that drains a dirty set. Reading the state after the fact,
// instead of trusting the order of hook calls, makes takeovers and
// disconnect/unsubscribe interleavings come out right.

func (h *Hook) markDirty(id string) {
	if strings.HasPrefix(id, injectorPrefix) || id == mqtt.InlineClientId {
		return
	}
	h.dirtyMu.Lock()
	h.dirty[id] = struct{}{}
	h.dirtyMu.Unlock()
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

func (h *Hook) syncLoop() {
	defer h.wg.Done()
	for {
		select {
		case <-h.done:
			h.flushDirty()
			return
		case <-h.kick:
			h.flushDirty()
		}
	}
}

func (h *Hook) flushDirty() {
	h.dirtyMu.Lock()
	ids := h.dirty
	h.dirty = map[string]struct{}{}
	moved := make(map[string]bool, len(h.moved))
	for id := range ids {
		if _, ok := h.moved[id]; ok {
			moved[id] = true
		}
	}
	h.dirtyMu.Unlock()
	c := h.cluster()
	if c == nil {
		return
	}
	for id := range ids {
		if moved[id] {
			continue
		}
		cl, ok := h.srv.Clients.Get(id)
		if !ok || (cl.Closed() && isEphemeral(cl)) || cl.IsTakenOver() {
			if ok && cl.IsTakenOver() {
				continue // the new session's own events rewrite the record
			}
			c.DeleteSession(id)
			continue
		}
		c.PutSession(id, record(c.Name(), cl))
	}
}

// SyncSessions re-announces the sessions restored from storage after a
// restart, once the node has the cluster's session table (restore.go).
func (h *Hook) SyncSessions() {
	restored := h.srv.Clients.GetAll()
	c := h.cluster()
	if c == nil || len(restored) == 0 {
		return
	}
	h.restoring.Store(true)
	h.wg.Add(1)
	go h.reconcileRestored(c, restored)
}

// LocalSession reports whether clientID has a session on this node
// (cluster.Broker).
func (h *Hook) LocalSession(clientID string) bool {
	cl, ok := h.srv.Clients.Get(clientID)
	if ok {
		if sh := h.shadowFor(clientID); sh != nil && sh.cl == cl {
			return false
		}
	}
	return ok
}

// OnQosPublish catches the messages mochi queues for a session being
// handed off (handoff.go).
func (h *Hook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, resends int) {
	if pk.FixedHeader.Type != packets.Publish {
		return
	}
	if sh := h.shadowFor(cl.ID); sh != nil && sh.cl == cl {
		h.catch(sh, pk)
	} else if in := h.incomingFor(cl.ID); in != nil {
		h.seen(in, cl, pk)
	}
}

// OnPacketEncode keeps a withdrawn message from being written (a session
// handoff delivered it by the other path first): an invalid packet type
// makes mochi skip the write.
func (h *Hook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if h.withheld(cl, pk) {
		pk.FixedHeader.Type = packets.Reserved
	}
	return pk
}

// OnSessionEstablished records the session.
func (h *Hook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	h.dirtyMu.Lock()
	delete(h.moved, cl.ID) // the client is back on this node
	h.dirtyMu.Unlock()
	h.markDirty(cl.ID)
}

// OnDisconnect updates or removes the record.
func (h *Hook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	h.forgetWithdrawn(cl)
	if !h.serving.Load() && cl.Net.Conn == nil && errors.Is(err, packets.ErrServerShuttingDown) {
		// mochi restoring a session from storage: SyncSessions
		// announces it once the node has the session table, where it
		// may have moved meanwhile (restore.go).
		return
	}
	h.markDirty(cl.ID)
}

// OnStarted notes that mochi serves clients: sessions it restored from
// storage are all loaded.
func (h *Hook) OnStarted() { h.serving.Store(true) }

// OnSubscribed updates the record.
func (h *Hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) { h.markDirty(cl.ID) }

// OnUnsubscribed updates the record.
func (h *Hook) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) { h.markDirty(cl.ID) }

// OnClientExpired removes the record of an expired persistent session.
func (h *Hook) OnClientExpired(cl *mqtt.Client) { h.markDirty(cl.ID) }

// --- publish routing ----------------------------------------------------

// OnPublish forwards a client's publish to the other nodes. QoS 1/2
// publishes are acknowledged to the client only after every target node
// accepted them; if one did not, the publish is refused: v5 gets an error
// reason code, v3 (which has none) is disconnected without an ack so it
// resends after reconnecting.
func (h *Hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	c := h.cluster()
	if c == nil || cl.Net.Inline || strings.HasPrefix(pk.TopicName, "$SYS") {
		return pk, nil
	}
	qos := pk.FixedHeader.Qos
	// QoS 0 forwards are queued without waiting: no deadline on that
	// path, which is the hottest one.
	ctx := context.Background()
	if qos > 0 {
		ctx = h.forwardContext()
	}
	id := h.nextID.Add(1)
	// The id rides in the packet to mochi's local deliveries, which
	// follow on this goroutine (handoff.go stamp).
	stamp(&pk, c.Name(), id)
	enc := publishEncoders.Get().(*publishEncoder)
	enc.pk = pk
	err := c.Forward(ctx, pk.TopicName, qos, id, enc.encode)
	enc.pk = packets.Packet{}
	publishEncoders.Put(enc)
	if err == nil {
		return pk, nil
	}
	if qos == 0 {
		h.log.Debug("qos0 forward incomplete", "topic", pk.TopicName, "error", err)
		return pk, nil // counted by the cluster; QoS0 is at most once
	}
	h.log.Warn("forward failed; publish refused", "client", cl.ID, "topic", pk.TopicName, "error", err)
	if cl.Properties.ProtocolVersion == 5 {
		// mochi answers a hook error with a PUBACK even for QoS 2, so the
		// ack is written here: PUBACK or PUBREC with reason 0x83.
		ackType := packets.Puback
		if qos == 2 {
			ackType = packets.Pubrec
		}
		code := packets.ErrImplementationSpecificError
		_ = cl.WritePacket(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: ackType},
			PacketID:    pk.PacketID,
			ReasonCode:  code.Code,
			Properties:  packets.Properties{ReasonString: code.Reason},
		})
		return pk, packets.ErrRejectPacket
	}
	_ = h.srv.DisconnectClient(cl, packets.ErrServerUnavailable)
	return pk, packets.ErrRejectPacket
}

// publishEncoder is Forward's encode callback for one publish. A closure
// over OnPublish's packet, passed through the Cluster interface, moved the
// whole packet (800 bytes) to the heap for every publish, forwarded or
// not; pooled encoders keep their callback.
type publishEncoder struct {
	pk     packets.Packet
	encode func() ([]byte, error)
}

var publishEncoders = sync.Pool{New: func() any {
	e := &publishEncoder{}
	e.encode = func() ([]byte, error) { return EncodePublish(e.pk) }
	return e
}}

// forwardDeadline is a context shared by the QoS 1/2 publishes of a
// short window (forwardWindow of ForwardTimeout): a context with its own
// timer per publish cost more than the rest of a publish that matches
// no other node.
type forwardDeadline struct {
	ctx      context.Context
	deadline time.Time
	cancel   context.CancelFunc // its timer releases it at the deadline
}

// forwardWindow divides ForwardTimeout: a publish waits for peers at
// least ForwardTimeout less this fraction of it.
const forwardWindow = 50

// forwardContext returns a context that ends between ForwardTimeout
// less 1/forwardWindow of it and ForwardTimeout from now.
func (h *Hook) forwardContext() context.Context {
	now := time.Now()
	least := h.opts.ForwardTimeout - h.opts.ForwardTimeout/forwardWindow
	if fd := h.fwdDeadline.Load(); fd != nil && fd.deadline.Sub(now) >= least {
		return fd.ctx
	}
	d := now.Add(h.opts.ForwardTimeout)
	ctx, cancel := context.WithDeadline(context.Background(), d)
	// Concurrent publishes may each make one; the last one stored wins
	// and the others serve only the publishes that made them.
	h.fwdDeadline.Store(&forwardDeadline{ctx: ctx, deadline: d, cancel: cancel})
	return ctx
}

// OnWillSent forwards a will message to the other nodes [MQTT-3.1.2-8].
func (h *Hook) OnWillSent(cl *mqtt.Client, pk packets.Packet) {
	c := h.cluster()
	if c == nil || cl.Net.Inline {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), h.opts.ForwardTimeout)
	defer cancel()
	// The id OnWill gave it, which the handoff paths know its local
	// deliveries by (will.go).
	k, _, ok := h.willKey(pk)
	id := k.id
	if !ok {
		id = h.nextID.Add(1)
	}
	if err := c.Forward(ctx, pk.TopicName, pk.FixedHeader.Qos, id, func() ([]byte, error) { return EncodePublish(pk) }); err != nil {
		h.log.Warn("forward will", "client", cl.ID, "topic", pk.TopicName, "error", err)
	}
}

// DeliverForwarded implements cluster.Broker: publish a message that
// another node forwarded to this node's subscribers, limited to the
// shared subscriptions ("$share/g/f") this node was chosen to serve.
func (h *Hook) DeliverForwarded(d cluster.Delivery) error {
	from := d.From
	pk, err := DecodePublish(d.Msg)
	if err != nil {
		return fmt.Errorf("deliver message from %s: %w", from, err)
	}
	inj := h.injectors.Get().(*mqtt.Client)
	stamp(&pk, d.From, d.ID)
	// The shared groups this node serves ride in the packet's filter
	// list, which a PUBLISH does not use, to OnSelectSubscribers.
	pk.Filters = nil
	for _, g := range d.Groups {
		pk.Filters = append(pk.Filters, packets.Subscription{Filter: g})
	}
	// Inline publishes are not tracked as inflight, but mochi validates
	// that a QoS>0 PUBLISH carries an id.
	pk.PacketID = 0
	if pk.FixedHeader.Qos > 0 {
		pk.PacketID = 1 // and a QoS0 one must not [MQTT-2.2.1-2]
	}
	err = h.srv.InjectPacket(inj, pk)
	h.injectors.Put(inj)
	if err != nil {
		return fmt.Errorf("inject message from %s: %w", from, err)
	}
	if pk.FixedHeader.Retain {
		// mochi retained the injected copy; the replicated table decides
		// what this node retains, so restore its answer.
		if c := h.cluster(); c != nil {
			c.ReapplyRetained(pk.TopicName)
		}
	}
	return nil
}

// OnSelectSubscribers limits an injected message's shared-subscription
// deliveries to the groups this node was chosen for; the publishing node
// picked one node per group.
func (h *Hook) OnSelectSubscribers(subs *mqtt.Subscribers, pk packets.Packet) *mqtt.Subscribers {
	if !strings.HasPrefix(pk.Origin, injectorPrefix) {
		return subs
	}
	for filter := range subs.Shared {
		if !slices.ContainsFunc(pk.Filters, func(g packets.Subscription) bool { return g.Filter == filter }) {
			delete(subs.Shared, filter)
		}
	}
	return subs
}

// --- retained -----------------------------------------------------------

// OnRetainMessage replicates a retained message set or cleared by a local
// client (or will).
func (h *Hook) OnRetainMessage(cl *mqtt.Client, pk packets.Packet, r int64) {
	c := h.cluster()
	if c == nil || cl.Net.Inline {
		return
	}
	now := time.Now()
	if len(pk.Payload) == 0 {
		c.DeleteRetained(pk.TopicName, now)
		return
	}
	m, err := retainedMessage(pk, now)
	if err != nil {
		h.log.Error("encode retained", "topic", pk.TopicName, "error", err)
		return
	}
	c.PutRetained(pk.TopicName, m, now)
}

// retainedMessage is pk as the cluster replicates it: the v5 PUBLISH, its
// creation time and, with a message expiry interval, when it expires.
func retainedMessage(pk packets.Packet, now time.Time) (cluster.RetainedMessage, error) {
	b, err := EncodePublish(pk)
	if err != nil {
		return cluster.RetainedMessage{}, err
	}
	m := cluster.RetainedMessage{Publish: b, Created: now}
	if pk.Created != 0 {
		m.Created = time.Unix(pk.Created, 0)
	}
	if exp := pk.Properties.MessageExpiryInterval; exp > 0 {
		m.Expires = m.Created.Add(time.Duration(exp) * time.Second)
	}
	return m, nil
}

// ApplyRetained implements cluster.Broker: the resolved retained message
// of topic changed (nil: deleted). The cluster serializes calls.
func (h *Hook) ApplyRetained(topic string, m *cluster.RetainedMessage) {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true}, TopicName: topic}
	if m != nil {
		var err error
		if pk, err = DecodePublish(m.Publish); err != nil {
			h.log.Error("replicated retained message unreadable; keeping the local one", "topic", topic, "error", err)
			return
		}
		pk.Created = m.Created.Unix()
		pk.FixedHeader.Retain = true
		if exp := int64(pk.Properties.MessageExpiryInterval); exp > 0 {
			if m := h.srv.Options.Capabilities.MaximumMessageExpiryInterval; m > 0 && exp > m {
				exp = m
			}
			pk.Expiry = pk.Created + exp
			if pk.Expiry <= time.Now().Unix() {
				pk.Payload = nil // already expired: delete
			}
		}
	}
	h.srv.Topics.RetainMessage(pk)
	atomic.StoreInt64(&h.srv.Info.Retained, int64(h.srv.Topics.Retained.Len()))
}
