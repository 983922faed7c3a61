// Package clusterhook connects the mochi MQTT server to the cluster, with
// one mochi hook per concern, sharing one small struct of state:
//
//   - SessionHook: registration of a connecting client with the cluster
//     (taking its session over from another node), the replicated session
//     table, sessions restored from storage, takeover of a local session
//     by another node.
//   - HandoffHook: the driver of a session handoff (broker/handoff): the
//     old node's shadow of a taken-over session and the new node's
//     de-duplication of what arrives by two paths; at a netsplit's heal,
//     the messages of a duplicate session that lost, added to the one
//     that won (heal.go).
//   - RoutingHook: forwarding local publishes to the nodes with
//     subscribers, delivering what peers forward.
//   - RetainedHook: replicating retained messages, applying the cluster's.
//   - WillHook: wills (numbered and forwarded) and the cluster's $SYS
//     topics.
//
// Hooks.List returns them in the order to add them to the server, and
// Hooks.Broker is the cluster.Broker the node calls back, dispatching to
// the hooks.
//
// Loop prevention: everything the cluster injects is published by an
// inline client of the injector pool, and the hooks ignore publishes,
// retains and wills of inline clients, so nothing is forwarded back or
// twice.
package clusterhook

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/handoff"
	"github.com/mendmq/mendmq/broker/metrics"
	"github.com/mendmq/mendmq/broker/mochix"
	"github.com/mendmq/mendmq/broker/refuse"
	"github.com/mendmq/mendmq/broker/reserved"
	"github.com/mendmq/mendmq/cluster"
	"github.com/mendmq/mendmq/cluster/routes"
)

// Cluster is what the hooks need from the cluster node.
type Cluster interface {
	// Name is this node's id.
	Name() string
	// Forward sends a publish to every other node with a matching
	// subscription (one node per shared group, skipping groups with a
	// local member). For qos > 0 it returns only once every target has
	// accepted the message, or an error. id numbers the publish among
	// this node's (cluster.Delivery.ID).
	Forward(ctx context.Context, topic string, qos byte, id uint64, encode func() ([]byte, error)) error
	// ForwardHold is Forward that holds the publish for unreachable
	// target nodes until they are back (used while split, and for wills);
	// it fails (cluster.ErrHoldFull) only if the publish cannot be held.
	ForwardHold(ctx context.Context, topic string, qos byte, id uint64, encode func() ([]byte, error)) error
	// Split reports whether a member is unreachable (netsplit).
	Split() bool
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
	// ReadRetained counts a read of topic's retained message (hits and
	// last access time for the $retained merge policy); it must be cheap.
	ReadRetained(topic string, now time.Time)
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
	// starting; SessionNode and SessionRecord read the session table.
	Synced() <-chan struct{}
	SessionNode(clientID string) (string, bool)
	SessionRecord(clientID string) (routes.SessionRecord, bool)
}

// Queuer adds a message to a session the way mochi queues a delivery,
// following the session to its new client if a reconnect took it over
// meanwhile. broker/quirks' Hook implements it.
type Queuer interface {
	Queue(cl *mqtt.Client, pk packets.Packet) error
}

// Options configures the hooks.
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
	// added to the server before these hooks, so that it has written a
	// message mochi queued before the handoff takes the message back.
	Store Store
	// Refuse answers a refused CONNECT or PUBLISH (required).
	Refuse *refuse.Refuser
	// Queue adds handed-over messages to sessions (required).
	Queue Queuer
}

// shared is the state the hooks share.
type shared struct {
	opts Options
	srv  *mqtt.Server
	log  *slog.Logger
	hcfg handoff.Config

	node   atomic.Pointer[clusterRef]
	nextID atomic.Uint64 // numbers this node's publishes (cluster.Delivery.ID)
	// serving is set once the MQTT server serves (RoutingHook.OnStarted).
	serving atomic.Bool

	injectors sync.Pool // *mqtt.Client, inline
	nextInj   atomic.Uint64

	// Stopping: done is closed and ctx cancelled (stop); the hooks'
	// goroutines are counted in wg. sysMu orders a $SYS tick before the
	// stop (will.go).
	done     chan struct{}
	ctx      context.Context
	cancel   context.CancelFunc
	stopOnce sync.Once
	wg       sync.WaitGroup
	sysMu    sync.RWMutex
}

type clusterRef struct{ c Cluster }

// injectorPrefix starts the client ids of the injector pool: inline
// clients through which forwarded publishes enter mochi.
const injectorPrefix = reserved.InjectorPrefix

func newShared(opts Options) *shared {
	if opts.ForwardTimeout == 0 {
		opts.ForwardTimeout = 5 * time.Second
	}
	if opts.RegisterTimeout == 0 {
		opts.RegisterTimeout = 5 * time.Second
	}
	s := &shared{opts: opts, srv: opts.Server, log: opts.Log, done: make(chan struct{}),
		hcfg: handoff.Config{RegisterTimeout: opts.RegisterTimeout, ForwardTimeout: opts.ForwardTimeout}}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	// Publish ids start at the time in nanoseconds, so that a restarted
	// node's ids are above those it used before: receivers remember
	// recent ids per origin to drop duplicates (cluster/router), and a
	// held publish of the previous run may still arrive after a restart.
	// (A node forwards far fewer than 1e9 publishes a second.)
	s.nextID.Store(uint64(time.Now().UnixNano()))
	s.injectors.New = func() any {
		return mochix.Inline(s.srv, fmt.Sprintf("%s%d", injectorPrefix, s.nextInj.Add(1)))
	}
	return s
}

func (s *shared) cluster() Cluster {
	if r := s.node.Load(); r != nil {
		return r.c
	}
	return nil
}

// stop ends the hooks' goroutines and waits for them; a $SYS tick under
// way finishes first (mochi stops the storage hooks next, and the tick's
// retained publishes write to them). Idempotent.
func (s *shared) stop() {
	s.stopOnce.Do(func() {
		s.sysMu.Lock()
		close(s.done)
		s.cancel()
		s.sysMu.Unlock()
	})
	s.wg.Wait()
}

// Hooks is the cluster's hooks and the cluster.Broker that dispatches to
// them.
type Hooks struct {
	sh       *shared
	Session  *SessionHook
	Handoff  *HandoffHook
	Routing  *RoutingHook
	Retained *RetainedHook
	Wills    *WillHook
}

var _ cluster.Broker = facade{}

// New returns the hooks. Add them to the server in the order List
// returns, after the storage hook; call SetCluster before the server
// starts serving. It panics without Options.Refuse or Options.Queue.
func New(opts Options) *Hooks {
	if opts.Refuse == nil || opts.Queue == nil {
		panic("clusterhook: Options.Refuse and Options.Queue are required")
	}
	sh := newShared(opts)
	h := &Hooks{sh: sh}
	h.Wills = newWillHook(sh)
	h.Handoff = newHandoffHook(sh, h.Wills.keyOf)
	h.Session = newSessionHook(sh, h.Handoff)
	h.Handoff.dropped = h.Session.handedOff
	h.Routing = &RoutingHook{sh: sh}
	h.Retained = &RetainedHook{sh: sh}
	return h
}

// SetCluster attaches the cluster node.
func (h *Hooks) SetCluster(c Cluster) { h.sh.node.Store(&clusterRef{c: c}) }

// List returns the hooks in the order to add them to the server: the
// session hook first (a CONNECT is registered before anything else of
// the client happens), the handoff hook before routing (a message queued
// for a session being handed off is caught before the publish's other
// hooks finish), then routing, retained, wills and $SYS. A netsplit gate
// goes before all of them.
func (h *Hooks) List() []mqtt.Hook {
	return []mqtt.Hook{h.Session, h.Handoff, h.Routing, h.Retained, h.Wills}
}

// SyncSessions re-announces the sessions restored from storage after a
// restart, once the node has the cluster's session table (restore.go).
// Call it once the server serves.
func (h *Hooks) SyncSessions() { h.Session.syncRestored() }

// Broker returns the value to pass to cluster.New.
func (h *Hooks) Broker() cluster.Broker { return facade{h} }

// facade is the cluster's Broker: each call goes to the hook of its
// concern.
type facade struct{ h *Hooks }

func (f facade) DeliverForwarded(d cluster.Delivery) error { return f.h.Routing.DeliverForwarded(d) }
func (f facade) ApplyRetained(topic string, m *cluster.RetainedMessage) {
	f.h.Retained.ApplyRetained(topic, m)
}
func (f facade) TakeoverSession(clientID, newNode string, handoff bool) ([]byte, error) {
	return f.h.Session.TakeoverSession(clientID, newNode, handoff)
}
func (f facade) FinishTakeover(clientID, newNode string) ([]byte, error) {
	return f.h.Handoff.FinishTakeover(clientID, newNode)
}
func (f facade) AppendSession(clientID string, msgs []byte) error {
	return f.h.Handoff.AppendSession(clientID, msgs)
}
func (f facade) LocalSession(clientID string) bool { return f.h.Session.LocalSession(clientID) }
func (f facade) DropDuplicate(clientID string, winner routes.SessionRecord) {
	f.h.Session.DropDuplicate(clientID, winner)
}
func (f facade) KickSession(clientID string) (bool, error) { return f.h.Session.KickSession(clientID) }
