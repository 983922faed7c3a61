// Package cluster turns mendmq nodes into one broker: membership
// (memberlist), the node-to-node data plane, the replicated session and
// retained tables (dotted version vectors), the routing index derived from
// them, and client-id registration through a per-client leader.
//
// The package never imports the broker: it calls back through Broker,
// which the broker implements (DESIGN §1). The algorithms live in I/O-free
// sub-packages (dvv, replica, routes, rendezvous); this package is the
// thin driver that moves their inputs and outputs over the network.
//
// # Delivery guarantee across nodes
//
// A QoS 1/2 publish is acknowledged to its publisher only after every
// remote node with a matching subscription has accepted it into its local
// delivery (the call returns after the receiving node handed it to its
// subscribers' sessions). If a node with matching subscribers is known but
// unreachable, the publish is refused (v5: PUBACK 0x83, v3: disconnect
// without ack) rather than acknowledged and lost, and it is sent to no
// node, so the publisher's retry does not duplicate it. (A target that
// fails during the forward — timeout, connection loss — is only noticed
// after the others got their copy; the retry then duplicates there.)
// A node that is not alive counts as unreachable whatever the reason —
// failed, stopped (a graceful stop is a leave to memberlist) or not known
// (yet): it still holds its persistent sessions and comes back with them.
// Its routes go away only with its session records: deleted by the node
// itself when an operator makes it leave for good (Leave), or by Forget
// and reconnect_timeout (MemberRemove). A shared subscription group whose
// members are all on nodes that are not alive is unreachable too. QoS 0
// publishes are queued to peers without waiting and may be dropped
// (counted) when a peer's queue is full or the peer is down.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mendmq/mendmq/cluster/dataplane"
	"github.com/mendmq/mendmq/cluster/membership"
	"github.com/mendmq/mendmq/cluster/rendezvous"
	"github.com/mendmq/mendmq/cluster/replica"
	"github.com/mendmq/mendmq/cluster/routes"
)

// Replicated tables.
const (
	tableSessions = "sub" // client id -> routes.SessionRecord
	tableRetained = "ret" // topic -> retained message (broker encoding)
)

// Broker is what the cluster needs from the MQTT front. Methods are called
// from the cluster's goroutines, concurrently unless stated.
type Broker interface {
	// DeliverForwarded hands a publish forwarded by another node to local
	// subscribers. It returns once the message is in the subscribers'
	// sessions.
	DeliverForwarded(d Delivery) error
	// ApplyRetained sets (value != nil) or deletes the local retained
	// message of topic. Calls are serialized, in the order of changes.
	ApplyRetained(topic string, value []byte)
	// TakeoverSession disconnects the local session of clientID, taken
	// over by newNode. With handoff (the new connection keeps its
	// session) it returns the session exported and keeps catching the
	// session's messages until FinishTakeover; without, it discards the
	// session and returns nil. It returns nil if there is no session or
	// it is not persistent.
	TakeoverSession(clientID, newNode string, handoff bool) ([]byte, error)
	// FinishTakeover is newNode's signal that every node routes the
	// session's messages to it: return the messages caught since the
	// export and pass later stragglers on with Node.AppendSession.
	FinishTakeover(clientID, newNode string) ([]byte, error)
	// AppendSession adds messages caught by the old node of a session
	// taken over by this node (encoded by that node's FinishTakeover or
	// straggler shipping). An error makes the sender retry.
	AppendSession(clientID string, msgs []byte) error
	// LocalSession reports whether clientID has a session on this node
	// (a session being handed off does not count).
	LocalSession(clientID string) bool
}

// Delivery is a publish forwarded by another node.
type Delivery struct {
	// From is the forwarding node.
	From string
	// Msg is the broker's encoding of the publish.
	Msg []byte
	// Groups are the shared subscriptions ("$share/g/f") this node must
	// serve.
	Groups []string
	// ID identifies the publish among those From forwarded (see
	// Node.Forward); with From it is unique for the node's lifetime.
	ID uint64
}

// Takeover is the outcome of a registration.
type Takeover struct {
	// From is the node the session was taken from, "" if none.
	From string
	// Session is the exported session, nil if none moved.
	Session []byte
}

// Errors.
var (
	// ErrUnreachable: a node with matching subscribers is not reachable.
	ErrUnreachable = errors.New("cluster: node with subscribers unreachable")
	// ErrNotRunning: the node is stopped.
	ErrNotRunning = errors.New("cluster: not running")
	// ErrLeft: the node left the cluster (Leave) and runs alone until it
	// is restarted.
	ErrLeft = errors.New("cluster: this node left the cluster; restart it to join again")
)

// Node is this process's member of the cluster.
type Node struct {
	cfg     Config
	name    string
	log     *slog.Logger // with the node attribute
	baseLog *slog.Logger // for membership and dataplane, which add it themselves
	broker  Broker

	ml *membership.Membership
	dp *dataplane.Plane

	mu    sync.Mutex // serializes store, index updates and retained application
	store *replica.Store
	index *routes.Index

	memMu   sync.RWMutex
	members map[string]membership.State

	// leaveMu serializes Leave with the graceful leave of Stop.
	leaveMu sync.Mutex
	// leaving is set when Leave starts: from then on the node replicates
	// nothing to peers (its table writes stay local), answers no
	// anti-entropy and registers its clients itself.
	leaving atomic.Bool
	// left is set once Leave has detached the node from its peers: it
	// routes to none and refuses what they still send.
	left atomic.Bool
	// withdrawMu orders Forget's deletion of a member's session records
	// before the MemberRemove event that Forget causes, so that Forget
	// (which waits for peers to apply them) is the one that does it.
	withdrawMu sync.Mutex

	regMu    sync.Mutex
	registry map[string]string // client id -> node, for ids this node leads
	claimMu  [64]sync.Mutex    // per-client-id serialization of claims

	matchPool sync.Pool

	stats counters
	// traffic holds the publishes exchanged with each peer (name ->
	// *peerTraffic); lag the replication lag of applied deltas.
	traffic sync.Map
	lag     *prometheus.HistogramVec
	lastLag atomic.Int64 // milliseconds, of the last broadcast delta that changed a value
	stop    chan struct{}
	// synced is closed once the tables were exchanged with a peer after
	// Start, or at Start without seeds (Synced).
	synced   chan struct{}
	syncOnce sync.Once
	// ctx ends at Stop, so calls a background goroutine is waiting on
	// (anti-entropy behind a slow peer) do not hold up the shutdown.
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	running  atomic.Bool
	stopOnce sync.Once
}

type counters struct {
	forwarded, forwardedBytes        atomic.Uint64 // also per peer: Node.traffic
	dropQueueFull, dropUnreachable   atomic.Uint64
	refusedUnreachable               atomic.Uint64
	received                         atomic.Uint64
	deltasSent, deltasApplied        atomic.Uint64
	aeRounds, aeRepaired, aeFailures atomic.Uint64
	registrations, takeovers         atomic.Uint64
	badFrames                        atomic.Uint64
}

// New builds a node named name (node.name) for broker. Nothing touches
// the network before Start.
func New(name string, cfg Config, broker Broker) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	rc := replica.DefaultConfig()
	rc.Node = name
	rc.TombstoneGrace = cfg.TombstoneGrace
	if cfg.RetainedResolver != nil {
		rc.Resolvers = map[string]replica.Resolver{tableRetained: cfg.RetainedResolver}
	}
	store, err := replica.New(rc)
	if err != nil {
		return nil, fmt.Errorf("create replica store: %w", err)
	}
	// A first clock reading: a store without one defers writing back
	// resolved conflicts (its dots could repeat an earlier incarnation's).
	store.GC(time.Now())
	n := &Node{
		cfg: cfg, name: name, log: log.With("node", name), baseLog: log, broker: broker, store: store, index: routes.NewIndex(),
		members: map[string]membership.State{}, registry: map[string]string{}, stop: make(chan struct{}),
		synced: make(chan struct{}),
	}
	n.matchPool.New = func() any { return new(routes.Result) }
	n.lag = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "mendmq_cluster_replication_lag_seconds",
		Help:    "Time from a replicated write on its node to its application here, per path (broadcast delta or anti-entropy repair); across hosts it includes their clock offset.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
	}, []string{"path"})
	n.ctx, n.cancel = context.WithCancel(context.Background())

	dc := dataplane.DefaultConfig()
	dc.NodeName, dc.ClusterName, dc.BindAddr = name, cfg.Name, cfg.DataAddress
	dc.SecretKey = []byte(cfg.SecretKey)
	dc.QueueFrames, dc.QueueBytes = cfg.DataQueueFrames, cfg.DataQueueBytes
	if cfg.DataTLS.Enabled() {
		if dc.TLS, err = cfg.DataTLS.Load(); err != nil {
			return nil, err
		}
	}
	dc.Logger = log // the data plane adds the node attribute
	if cfg.DataNetwork != nil {
		dc.Network = cfg.DataNetwork
		l := dataplane.LoopbackConfig()
		dc.KeepaliveInterval, dc.IdleTimeout, dc.ReconnectMin, dc.ReconnectMax = l.KeepaliveInterval, l.IdleTimeout, l.ReconnectMin, l.ReconnectMax
	}
	if n.dp, err = dataplane.New(dc, (*dpHandler)(n)); err != nil {
		return nil, fmt.Errorf("create data plane: %w", err)
	}
	return n, nil
}

// Name is this node's name.
func (n *Node) Name() string { return n.name }

// Start binds the data plane and joins the cluster.
func (n *Node) Start() error {
	if err := n.dp.Start(); err != nil {
		return fmt.Errorf("cluster.data_address: %w", err)
	}
	mc := membership.DefaultConfig()
	mc.NodeName, mc.ClusterName, mc.BindAddr, mc.AdvertiseAddr = n.name, n.cfg.Name, n.cfg.GossipAddress, n.cfg.GossipAdvertiseAddress
	mc.Seeds, mc.SecretKey = n.cfg.Seeds, []byte(n.cfg.SecretKey)
	mc.ProbeInterval, mc.ProbeTimeout, mc.SuspicionMult = n.cfg.ProbeInterval, n.cfg.ProbeTimeout, n.cfg.SuspicionMult
	mc.GossipInterval, mc.PushPullInterval = n.cfg.GossipInterval, n.cfg.PushPullInterval
	mc.ReconnectInterval, mc.ReconnectTimeout = n.cfg.ReconnectInterval, n.cfg.ReconnectTimeout
	mc.Transport, mc.Logger = n.cfg.Transport, n.baseLog
	mc.Meta = membership.NodeMeta{DataAddr: n.dataAdvertise(""), Proto: protoVersion}
	mc.Admit = func(m membership.Member) error {
		if m.Meta.Proto != protoVersion {
			return fmt.Errorf("cluster protocol %d, this node speaks %d", m.Meta.Proto, protoVersion)
		}
		return nil
	}
	ml, err := membership.New(mc, (*memberHandler)(n))
	if err != nil {
		_ = n.dp.Close()
		return err
	}
	n.ml = ml
	n.running.Store(true)
	if err := ml.Start(); err != nil {
		n.running.Store(false)
		_ = n.dp.Close()
		return fmt.Errorf("join cluster: %w", err)
	}
	// An unspecified data host (":7947") is only known once memberlist
	// picked the advertised address.
	if self, ok := ml.Member(n.name); ok {
		if addr := n.dataAdvertise(self.GossipAddr); addr != mc.Meta.DataAddr {
			if err := ml.UpdateMeta(membership.NodeMeta{DataAddr: addr, Proto: protoVersion}); err != nil {
				n.log.Warn("update data address in metadata", "error", err)
			}
		}
	}
	if len(n.cfg.Seeds) == 0 {
		// A node without seeds starts a cluster; one with seeds has the
		// tables after its first exchange with a member that joined,
		// even if the seeds answer only later.
		n.markSynced()
	}
	n.wg.Add(1)
	go n.background()
	return nil
}

// dataAdvertise is the data-plane address peers dial.
func (n *Node) dataAdvertise(gossipAddr string) string {
	if n.cfg.DataAdvertiseAddress != "" {
		return n.cfg.DataAdvertiseAddress
	}
	addr := n.dp.Addr().String()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		if gh, _, err := net.SplitHostPort(gossipAddr); err == nil && gh != "" {
			return net.JoinHostPort(gh, port)
		}
		if h, _, err := net.SplitHostPort(n.cfg.GossipAdvertiseAddress); err == nil && h != "" {
			return net.JoinHostPort(h, port)
		}
	}
	return addr
}

// Stop leaves the cluster gracefully (peers see Left, not a failure) and
// closes the data plane. The node's session records stay in the
// replicated table: it is expected back with its persistent sessions,
// and until then peers refuse QoS 1/2 publishes for them (see the
// package documentation). To take a node out for good, Leave first.
func (n *Node) Stop() error {
	var err error
	n.stopOnce.Do(func() {
		if !n.running.Load() {
			return
		}
		n.leaveMu.Lock()
		if !n.leaving.Load() { // else Leave did it
			// Let the last replication deltas (sessions closed by the
			// shutdown) reach peers before the connections close.
			n.flushQueues(time.Second)
			err = n.ml.Leave(leaveBroadcastTimeout)
		}
		n.leaveMu.Unlock()
		close(n.stop)
		n.cancel()
		n.wg.Wait()
		n.running.Store(false)
		err = errors.Join(err, n.ml.Shutdown(), n.dp.Close())
	})
	return err
}

// leaveBroadcastTimeout bounds each of the broadcasts of a leave (see
// membership.Leave).
const leaveBroadcastTimeout = 2 * time.Second

func (n *Node) flushQueues(max time.Duration) {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) {
		busy := false
		for _, p := range n.dp.Stats().Peers {
			if p.QueueFrames > 0 && p.State == dataplane.Connected {
				busy = true
			}
		}
		if !busy {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// --- membership ---------------------------------------------------------

type memberHandler Node

func (h *memberHandler) node() *Node { return (*Node)(h) }

// detached reports whether an event about member name comes after this
// node started to leave (Leave): it has no peers any more.
func (n *Node) detached(name string) bool { return name != n.name && n.leaving.Load() }

func (h *memberHandler) MemberJoin(m membership.Member) {
	n := h.node()
	if n.detached(m.Name) {
		return
	}
	n.setState(m.Name, m.State)
	if m.Name == n.name {
		return
	}
	if err := n.dp.SetPeer(m.Name, m.Meta.DataAddr); err != nil {
		n.log.Warn("data-plane peer", "peer", m.Name, "addr", m.Meta.DataAddr, "error", err)
		return
	}
	n.log.Info("member joined", "peer", m.Name, "data", m.Meta.DataAddr)
	// A new or returning member gets, and gives, everything at once.
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.antiEntropy(m.Name)
	}()
}

func (h *memberHandler) MemberUpdate(m membership.Member) {
	n := h.node()
	if n.detached(m.Name) {
		return
	}
	n.setState(m.Name, m.State)
	if m.Name != n.name && m.Meta.DataAddr != "" {
		_ = n.dp.SetPeer(m.Name, m.Meta.DataAddr)
	}
}

func (h *memberHandler) MemberLeave(m membership.Member) {
	n := h.node()
	if n.detached(m.Name) {
		return
	}
	n.setState(m.Name, m.State)
	n.log.Info("member gone", "peer", m.Name, "state", m.State)
	if m.State == membership.Left {
		// Nothing is sent to a node that left (its routes refuse, it
		// gets no deltas): stop dialing it. A restart re-adds it
		// (MemberJoin).
		n.dp.RemovePeer(m.Name)
	}
}

func (h *memberHandler) MemberRemove(m membership.Member) {
	n := h.node()
	if n.detached(m.Name) {
		return
	}
	n.memMu.Lock()
	delete(n.members, m.Name)
	n.memMu.Unlock()
	n.dp.RemovePeer(m.Name)
	n.log.Info("member forgotten", "peer", m.Name)
	// Its sessions will never come back (forgotten, or gone for longer
	// than reconnect_timeout): delete their records so that routes stop
	// pointing at it. Every node that removes the member does so, since
	// a node that joined after it failed never removes it; deleting is
	// idempotent (after Forget here, or a peer's deletes, nothing is
	// left to delete).
	n.withdrawMu.Lock()
	ds, k := n.deleteSessions(func(rec routes.SessionRecord) bool { return rec.Node == m.Name })
	n.withdrawMu.Unlock()
	if k > 0 {
		n.log.Info("deleted the session records of a forgotten member", "peer", m.Name, "sessions", k)
	}
	n.broadcast(ds)
}

func (n *Node) setState(name string, s membership.State) {
	n.memMu.Lock()
	n.members[name] = s
	n.memMu.Unlock()
}

func (n *Node) state(name string) (membership.State, bool) {
	n.memMu.RLock()
	s, ok := n.members[name]
	n.memMu.RUnlock()
	return s, ok
}

// aliveMembers returns the names of alive (and suspect) members, sorted,
// this node included. Once Leave has started, that is this node alone.
func (n *Node) aliveMembers() []string {
	if n.leaving.Load() {
		return []string{n.name}
	}
	n.memMu.RLock()
	out := make([]string, 0, len(n.members))
	for name, s := range n.members {
		if s == membership.Alive || s == membership.Suspect {
			out = append(out, name)
		}
	}
	n.memMu.RUnlock()
	if !slices.Contains(out, n.name) {
		out = append(out, n.name)
	}
	slices.Sort(out)
	return out
}

// --- replication --------------------------------------------------------

// PutSession writes clientID's session record.
func (n *Node) PutSession(clientID string, rec routes.SessionRecord) {
	b, err := rec.MarshalBinary()
	if err != nil {
		n.log.Error("encode session record", "client", clientID, "error", err)
		return
	}
	n.write(tableSessions, clientID, b, false)
}

// PutSessionSync writes clientID's session record and waits until every
// alive peer has applied it, so that no peer routes the client's messages
// to its previous node after this returns. Used when a session moved here
// (takeover), before the client gets its CONNACK.
func (n *Node) PutSessionSync(ctx context.Context, clientID string, rec routes.SessionRecord) error {
	b, err := rec.MarshalBinary()
	if err != nil {
		return fmt.Errorf("encode session record of %s: %w", clientID, err)
	}
	n.mu.Lock()
	up, err := n.store.Put(tableSessions, clientID, b, time.Now())
	if err == nil {
		n.applyLocked(up.Change, false)
	}
	n.mu.Unlock()
	if err != nil {
		return fmt.Errorf("write session record of %s: %w", clientID, err)
	}
	payload := replica.AppendDeltas(nil, up.Out...)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, m := range n.aliveMembers() {
		if m == n.name {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := n.dp.Call(ctx, m, callApply, payload); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("replicate session of %s to %s: %w", clientID, m, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// DeleteSession deletes clientID's session record.
func (n *Node) DeleteSession(clientID string) { n.write(tableSessions, clientID, nil, true) }

// PutRetained writes the retained message of topic.
func (n *Node) PutRetained(topic string, value []byte, now time.Time) {
	n.writeAt(tableRetained, topic, value, false, now)
}

// DeleteRetained deletes the retained message of topic.
func (n *Node) DeleteRetained(topic string, now time.Time) {
	n.writeAt(tableRetained, topic, nil, true, now)
}

// Retained returns the resolved retained value of topic.
func (n *Node) Retained(topic string) ([]byte, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	s, ok := n.store.Get(tableRetained, topic)
	if !ok || !s.Live() {
		return nil, false
	}
	return s.Value, true
}

// ReapplyRetained re-applies the resolved retained value of topic to the
// broker, serialized with replication.
func (n *Node) ReapplyRetained(topic string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	s, ok := n.store.Get(tableRetained, topic)
	if ok && s.Live() {
		n.broker.ApplyRetained(topic, s.Value)
	} else {
		n.broker.ApplyRetained(topic, nil)
	}
}

func (n *Node) write(table, key string, value []byte, deleted bool) {
	n.writeAt(table, key, value, deleted, time.Now())
}

func (n *Node) writeAt(table, key string, value []byte, deleted bool, now time.Time) {
	n.mu.Lock()
	var up replica.Update
	var err error
	if deleted {
		up, err = n.store.Delete(table, key, now)
	} else {
		up, err = n.store.Put(table, key, value, now)
	}
	if err == nil {
		n.applyLocked(up.Change, false)
	}
	n.mu.Unlock()
	if err != nil {
		n.log.Error("replicated write", "table", table, "key", key, "error", err)
		return
	}
	n.broadcast(up.Out)
}

// applyLocked updates derived state for a change of a resolved value.
// remote is true for changes that came from a peer (a local session
// write needs no takeover check).
func (n *Node) applyLocked(c replica.Change, remote bool) {
	switch c.Table {
	case tableSessions:
		if !c.Changed() {
			return
		}
		if !c.New.Live() {
			n.index.Delete(c.Key)
			n.forgetRegistration(c.Key, "")
			return
		}
		rec, err := routes.DecodeRecord(c.New.Value)
		if err != nil {
			n.log.Error("undecodable session record", "client", c.Key, "error", err)
			n.index.Delete(c.Key)
			return
		}
		n.index.Set(c.Key, rec)
		if remote && rec.Node != n.name && n.broker.LocalSession(c.Key) {
			// Another node holds this client now (a registration this
			// node missed, e.g. across a netsplit): the newest record
			// wins, so drop the local duplicate.
			n.wg.Add(1)
			go func() {
				defer n.wg.Done()
				if _, err := n.broker.TakeoverSession(c.Key, rec.Node, false); err != nil {
					n.log.Warn("drop duplicate session", "client", c.Key, "error", err)
				}
			}()
		}
	case tableRetained:
		// Local writes are applied too: mochi retains a client's message
		// before the hook writes it here, and replication may have
		// applied a concurrent value to mochi in between; without this
		// the node kept that value while its table (and every other
		// node) resolved the local one.
		if !c.Changed() {
			return
		}
		if c.New.Live() {
			n.broker.ApplyRetained(c.Key, c.New.Value)
		} else {
			n.broker.ApplyRetained(c.Key, nil)
		}
	}
}

// applyDeltas merges deltas from a peer.
func (n *Node) applyDeltas(ds []replica.Delta, path string) {
	var out []replica.Delta
	now := time.Now().UnixMilli()
	lag := n.lag.WithLabelValues(path)
	n.mu.Lock()
	for _, d := range ds {
		up := n.store.Apply(d)
		n.applyLocked(up.Change, true)
		out = append(out, up.Out...)
		if up.Change.Changed() {
			// The writer's clock at the write (raised past what it
			// overwrote, so an upper bound of its age).
			ms := max(now-up.Change.New.TS, 0)
			lag.Observe(float64(ms) / 1e3)
			if path == pathBroadcast {
				n.lastLag.Store(ms)
			}
		}
	}
	n.mu.Unlock()
	n.stats.deltasApplied.Add(uint64(len(ds)))
	n.broadcast(out)
}

// Paths by which replication deltas arrive (the lag histogram's label).
const (
	pathBroadcast   = "broadcast"
	pathAntiEntropy = "anti_entropy"
)

// broadcast sends deltas to every other live member. A peer that misses
// them (queue full, down) is repaired by anti-entropy.
func (n *Node) broadcast(ds []replica.Delta) {
	if len(ds) == 0 || !n.running.Load() {
		return
	}
	payload := replica.AppendDeltas(nil, ds...)
	for _, m := range n.aliveMembers() {
		if m == n.name {
			continue
		}
		if err := n.dp.Send(m, frameDeltas, payload); err == nil {
			n.stats.deltasSent.Add(uint64(len(ds)))
		}
	}
}

// antiEntropy compares digests with peer and exchanges what differs in
// both directions.
func (n *Node) antiEntropy(peer string) {
	n.mu.Lock()
	d := n.store.Digest()
	n.mu.Unlock()
	req, err := d.AppendBinary(nil)
	if err != nil {
		n.log.Error("encode digest", "error", err)
		return
	}
	ctx, cancel := context.WithTimeout(n.ctx, 10*time.Second)
	defer cancel()
	n.stats.aeRounds.Add(1)
	resp, err := n.dp.Call(ctx, peer, callDigest, req)
	if err != nil {
		n.stats.aeFailures.Add(1)
		n.log.Debug("anti-entropy", "peer", peer, "error", err)
		return
	}
	sets, theirs, err := decodeRepair(resp)
	if err != nil {
		n.stats.badFrames.Add(1)
		n.log.Warn("anti-entropy answer", "peer", peer, "error", err)
		return
	}
	n.applyDeltas(theirs, pathAntiEntropy)
	n.stats.aeRepaired.Add(uint64(len(theirs)))
	n.markSynced()
	n.mu.Lock()
	var mine []replica.Delta
	for _, s := range sets {
		mine = append(mine, n.store.EntriesIn(s.Table, s.Buckets)...)
	}
	n.mu.Unlock()
	if len(mine) > 0 {
		// Large repairs go in chunks that fit a frame.
		for len(mine) > 0 {
			k := min(len(mine), 2048)
			if err := n.dp.SendWait(ctx, peer, frameDeltas, replica.AppendDeltas(nil, mine[:k]...)); err != nil {
				n.stats.aeFailures.Add(1)
				return
			}
			mine = mine[k:]
		}
	}
}

func (n *Node) markSynced() { n.syncOnce.Do(func() { close(n.synced) }) }

// Synced is closed once this node has the cluster's tables: after its
// first exchange with a peer since Start, or at Start if it has no
// seeds. A restarted node's restored sessions are checked against the
// session table only then (a session may have moved meanwhile).
func (n *Node) Synced() <-chan struct{} { return n.synced }

// SessionNode returns the node the replicated session table places
// clientID's session on.
func (n *Node) SessionNode(clientID string) (string, bool) {
	rec, ok := n.index.Session(clientID)
	return rec.Node, ok
}

// answerDigest is the responder's half of anti-entropy.
func (n *Node) answerDigest(req []byte) ([]byte, error) {
	remote, err := replica.DecodeDigest(req)
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	sets, err := n.store.Digest().Diff(remote)
	if err != nil {
		return nil, err
	}
	var mine []replica.Delta
	for _, s := range sets {
		mine = append(mine, n.store.EntriesIn(s.Table, s.Buckets)...)
	}
	return appendRepair(nil, sets, mine), nil
}

// background runs periodic anti-entropy, tombstone GC and reconciliation.
func (n *Node) background() {
	defer n.wg.Done()
	ae := time.NewTicker(n.cfg.AntiEntropyInterval)
	defer ae.Stop()
	gc := time.NewTicker(time.Minute)
	defer gc.Stop()
	reconciled := false
	for {
		select {
		case <-n.stop:
			return
		case <-ae.C:
			peers := slices.DeleteFunc(n.aliveMembers(), func(s string) bool { return s == n.name })
			if len(peers) > 0 {
				n.antiEntropy(peers[rand.IntN(len(peers))])
			}
			if !reconciled {
				// After the first sync, records that name this node but
				// have no session here (left over from before a crash or
				// restart) are removed.
				n.reconcileOwn()
				reconciled = true
			}
		case now := <-gc.C:
			n.mu.Lock()
			n.store.GC(now)
			n.mu.Unlock()
			n.reconcileOwn()
		}
	}
}

// reconcileOwn deletes session records naming this node without a local
// session.
func (n *Node) reconcileOwn() {
	var stale []string
	n.mu.Lock()
	n.store.Range(tableSessions, func(key string, v replica.Sibling) bool {
		if rec, err := routes.DecodeRecord(v.Value); err == nil && rec.Node == n.name {
			stale = append(stale, key)
		}
		return true
	})
	n.mu.Unlock()
	for _, id := range stale {
		if !n.broker.LocalSession(id) {
			n.DeleteSession(id)
		}
	}
}

// alivePeers returns aliveMembers without this node.
func (n *Node) alivePeers() []string {
	return slices.DeleteFunc(n.aliveMembers(), func(s string) bool { return s == n.name })
}

// deleteSessions deletes the session records that match, in one critical
// section (two callers never both delete a record), and returns the
// deltas to replicate and how many records it deleted.
func (n *Node) deleteSessions(match func(routes.SessionRecord) bool) ([]replica.Delta, int) {
	var ids []string
	now := time.Now()
	n.mu.Lock()
	defer n.mu.Unlock()
	n.store.Range(tableSessions, func(key string, v replica.Sibling) bool {
		if rec, err := routes.DecodeRecord(v.Value); err == nil && match(rec) {
			ids = append(ids, key)
		}
		return true
	})
	var out []replica.Delta
	for _, id := range ids {
		up, err := n.store.Delete(tableSessions, id, now)
		if err != nil {
			n.log.Error("delete session record", "client", id, "error", err)
			continue
		}
		n.applyLocked(up.Change, false)
		out = append(out, up.Out...)
	}
	return out, len(ids)
}

// replicateSync sends deltas to peers and waits until each has applied
// them or ctx ends. It returns the peers that did not confirm, sorted;
// anti-entropy repairs them later (from this node or from a peer that
// has the deltas).
func (n *Node) replicateSync(ctx context.Context, peers []string, ds []replica.Delta) []string {
	if len(ds) == 0 || len(peers) == 0 {
		return nil
	}
	var chunks [][]byte
	for len(ds) > 0 {
		k := min(len(ds), 2048) // fits a frame, as anti-entropy's chunks
		chunks = append(chunks, replica.AppendDeltas(nil, ds[:k]...))
		ds = ds[k:]
	}
	var (
		wg          sync.WaitGroup
		mu          sync.Mutex
		unconfirmed []string
	)
	for _, p := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, c := range chunks {
				if _, err := n.dp.Call(ctx, p, callApply, c); err != nil {
					n.log.Warn("peer did not confirm replicated deletions", "peer", p, "error", err)
					mu.Lock()
					unconfirmed = append(unconfirmed, p)
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	slices.Sort(unconfirmed)
	return unconfirmed
}

// --- routing ------------------------------------------------------------

// Forward sends a publish to the other nodes with matching subscribers;
// see the package documentation for the guarantee. encode is called only
// when some node needs the message. id is passed on to the receivers
// (Delivery.ID): the broker numbers its publishes so that one can be
// recognized when it reaches a session by two paths (a session handoff).
func (n *Node) Forward(ctx context.Context, topic string, qos byte, id uint64, encode func() ([]byte, error)) error {
	if !n.running.Load() {
		return nil
	}
	res := n.matchPool.Get().(*routes.Result)
	defer n.matchPool.Put(res)
	n.index.MatchInto(topic, res)
	if len(res.Nodes) == 0 && len(res.Shared) == 0 {
		return nil
	}
	// The targets, in a slice that stays on the stack for a few nodes:
	// a map per publish was a measurable part of a forwarding node's CPU.
	var buf [4]forwardTarget
	targets := buf[:0]
	add := func(node, group string) {
		i := 0
		for i < len(targets) && targets[i].node != node {
			i++
		}
		if i == len(targets) {
			targets = append(targets, forwardTarget{node: node})
		}
		if group != "" {
			targets[i].groups = append(targets[i].groups, group)
		}
	}
	for _, nd := range res.Nodes {
		if nd != n.name {
			add(nd, "")
		}
	}
	// Shared groups none of whose members is on an alive node: the
	// group's sessions wait on nodes that are down.
	var unservable []string
	for _, sm := range res.Shared {
		if slices.Contains(sm.Nodes, n.name) { // prefer_local
			continue // served by the local broker
		}
		switch pick := n.pickShared(sm.Nodes); pick {
		case "":
			unservable = append(unservable, "$share/"+sm.Group+"/"+sm.Filter)
		case n.name:
		default:
			add(pick, "$share/"+sm.Group+"/"+sm.Filter)
		}
	}
	if len(unservable) > 0 {
		if qos > 0 {
			n.stats.refusedUnreachable.Add(1)
			return fmt.Errorf("%w: no alive node has members of %v", ErrUnreachable, unservable)
		}
		n.stats.dropUnreachable.Add(uint64(len(unservable)))
	}
	if len(targets) == 0 {
		return nil
	}
	msg, err := encode()
	if err != nil {
		return err
	}
	if qos == 0 {
		for _, t := range targets {
			if n.route(t.node) == routeDown {
				n.stats.dropUnreachable.Add(1)
				continue
			}
			if err := n.dp.Send(t.node, frameForward, appendForward(nil, t.groups, id, msg)); err != nil {
				n.stats.dropQueueFull.Add(1)
				continue
			}
			n.countForward(t.node, len(msg))
		}
		return nil
	}
	// Every target is checked before any is sent to: a refused publish
	// must reach nobody, or the publisher's retry duplicates it on the
	// nodes that did get it (for QoS 2 too).
	var errs []error
	for _, t := range targets {
		if n.route(t.node) == routeDown {
			errs = append(errs, fmt.Errorf("%w: %s", ErrUnreachable, t.node))
		}
	}
	if len(errs) > 0 {
		n.stats.refusedUnreachable.Add(1)
		return errors.Join(errs...)
	}
	switch len(targets) {
	case 1:
		// The common case: no goroutine, lock or error slice per publish.
		if err := n.forwardCall(ctx, targets[0], id, msg); err != nil {
			n.stats.refusedUnreachable.Add(1)
			return err
		}
		return nil
	}
	return n.forwardAll(ctx, targets, id, msg)
}

// forwardAll sends a QoS 1/2 publish to several targets at once and
// waits for all of them.
func (n *Node) forwardAll(ctx context.Context, targets []forwardTarget, id uint64, msg []byte) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for _, t := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := n.forwardCall(ctx, t, id, msg); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		n.stats.refusedUnreachable.Add(1)
	}
	return errors.Join(errs...)
}

// forwardTarget is a node a publish goes to, with the shared
// subscriptions it was picked to serve.
type forwardTarget struct {
	node   string
	groups []string
}

// forwardCall sends a QoS 1/2 publish to one target and waits until it
// accepted it.
func (n *Node) forwardCall(ctx context.Context, t forwardTarget, id uint64, msg []byte) error {
	if _, err := n.dp.Call(ctx, t.node, callForward, appendForward(nil, t.groups, id, msg)); err != nil {
		return fmt.Errorf("forward to %s: %w", t.node, err)
	}
	n.countForward(t.node, len(msg))
	return nil
}

// peerTraffic counts the publishes exchanged with one peer.
type peerTraffic struct {
	forwarded, forwardedBytes, received atomic.Uint64
}

func (n *Node) peerTraffic(peer string) *peerTraffic {
	if v, ok := n.traffic.Load(peer); ok {
		return v.(*peerTraffic)
	}
	v, _ := n.traffic.LoadOrStore(peer, new(peerTraffic))
	return v.(*peerTraffic)
}

func (n *Node) countForward(peer string, size int) {
	n.stats.forwarded.Add(1)
	n.stats.forwardedBytes.Add(uint64(size))
	pt := n.peerTraffic(peer)
	pt.forwarded.Add(1)
	pt.forwardedBytes.Add(uint64(size))
}

// Route states of a target node of the routing index.
const (
	routeOK   = iota // alive or suspect: send
	routeDown        // anything else: unreachable
)

// route classifies a target of the routing index. Only an alive (or
// suspect) member can take a message. A member that failed or stopped
// (a graceful stop is a leave to memberlist) holds its persistent
// sessions and comes back with them, so its routes are not stale: a
// message for them that it cannot take now must not be acknowledged. A
// node not known at all is one whose records arrived before the news of
// it (a join racing replication) or one forgotten here while its records
// are being deleted; neither may swallow a message either. The routes of
// a node that is gone for good disappear with its records (Leave,
// Forget, reconnect_timeout). After this node left, it has no peers.
func (n *Node) route(t string) int {
	if n.left.Load() {
		return routeDown
	}
	if s, known := n.state(t); known && (s == membership.Alive || s == membership.Suspect) {
		return routeOK
	}
	return routeDown
}

// pickShared picks the node that serves one shared group: a random alive
// one among those with members.
func (n *Node) pickShared(nodes []string) string {
	alive := make([]string, 0, len(nodes))
	for _, nd := range nodes {
		if s, ok := n.state(nd); ok && (s == membership.Alive || s == membership.Suspect) {
			alive = append(alive, nd)
		}
	}
	if len(alive) == 0 {
		return ""
	}
	return alive[rand.IntN(len(alive))]
}

// --- registration -------------------------------------------------------

// Register claims clientID for this node with the client id's leader,
// which takes the session over from the node that holds it (see
// Broker.TakeoverSession; clean: the new connection discards it). The
// moved session, if any, comes back with the node it came from; once
// every node routes the session here (PutSessionSync), call
// FinishTakeover with that node.
func (n *Node) Register(ctx context.Context, clientID string, clean bool) (Takeover, error) {
	if !n.running.Load() {
		return Takeover{}, ErrNotRunning
	}
	n.stats.registrations.Add(1)
	c := claim{ClientID: clientID, Node: n.name, Clean: clean}
	leader := rendezvous.Pick(clientID, n.aliveMembers())
	if leader == n.name {
		return n.lead(ctx, c)
	}
	b, err := n.dp.Call(ctx, leader, callRegister, c.append(nil))
	if err != nil {
		return Takeover{}, err
	}
	return decodeTakeover(b)
}

// lead handles a claim as the client id's leader: it remembers the new
// owner and takes the session over from the previous one.
func (n *Node) lead(ctx context.Context, c claim) (Takeover, error) {
	mu := &n.claimMu[fnvIndex(c.ClientID, len(n.claimMu))]
	mu.Lock()
	defer mu.Unlock()
	n.regMu.Lock()
	owner, ok := n.registry[c.ClientID]
	n.registry[c.ClientID] = c.Node
	n.regMu.Unlock()
	if !ok {
		if rec, found := n.index.Session(c.ClientID); found {
			owner = rec.Node
		}
	}
	if owner == "" || owner == c.Node {
		return Takeover{}, nil
	}
	if s, known := n.state(owner); !known || s == membership.Dead || s == membership.Left {
		n.log.Info("previous session's node is gone; session not moved", "client", c.ClientID, "node", owner)
		return Takeover{}, nil
	}
	n.stats.takeovers.Add(1)
	tk := claim{ClientID: c.ClientID, Node: c.Node, Clean: c.Clean}
	var blob []byte
	var err error
	if owner == n.name {
		blob, err = n.broker.TakeoverSession(c.ClientID, c.Node, !c.Clean)
	} else {
		blob, err = n.dp.Call(ctx, owner, callTakeover, tk.append(nil))
	}
	if err != nil {
		return Takeover{}, err
	}
	return Takeover{From: owner, Session: blob}, nil
}

// FinishTakeover tells from, the node a session was taken from (see
// Register), that every node now routes clientID's messages here, and
// returns the messages it caught for the session in the meantime.
func (n *Node) FinishTakeover(ctx context.Context, from, clientID string) ([]byte, error) {
	if from == n.name {
		return n.broker.FinishTakeover(clientID, n.name)
	}
	return n.dp.Call(ctx, from, callHandoff, claim{ClientID: clientID, Node: n.name}.append(nil))
}

// AppendSession sends messages for clientID, whose session moved to
// node, to that node (Broker.AppendSession there).
func (n *Node) AppendSession(ctx context.Context, node, clientID string, msgs []byte) error {
	if node == n.name {
		return n.broker.AppendSession(clientID, msgs)
	}
	_, err := n.dp.Call(ctx, node, callAppend, appendSessionMsgs(nil, clientID, msgs))
	return err
}

// forgetRegistration drops the leader's entry for a deleted session.
func (n *Node) forgetRegistration(clientID, node string) {
	n.regMu.Lock()
	if cur, ok := n.registry[clientID]; ok && (node == "" || cur == node) {
		delete(n.registry, clientID)
	}
	n.regMu.Unlock()
}

func fnvIndex(s string, n int) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(s))
	return int(h.Sum32() % uint32(n))
}

// --- data plane handler -------------------------------------------------

type dpHandler Node

func (h *dpHandler) HandleFrame(from string, typ uint8, payload []byte) {
	n := (*Node)(h)
	if n.left.Load() {
		// A former peer's frame in flight when this node left: its
		// deltas are not this node's business any more, and a QoS 0
		// publish may be dropped.
		n.log.Debug("frame from a former peer dropped: this node left the cluster", "peer", from, "type", typ)
		return
	}
	switch typ {
	case frameDeltas:
		ds, err := replica.DecodeDeltas(payload)
		if err != nil {
			n.stats.badFrames.Add(1)
			n.log.Warn("bad deltas frame", "peer", from, "error", err)
			return
		}
		n.applyDeltas(ds, pathBroadcast)
	case frameForward:
		if err := n.deliver(from, payload); err != nil {
			n.log.Warn("deliver forwarded qos0", "peer", from, "error", err)
		}
	default:
		n.stats.badFrames.Add(1)
		n.log.Warn("unknown frame type", "peer", from, "type", typ)
	}
}

// InlineCall runs forwarded QoS 1/2 publishes on the data-plane
// connection's reader (dataplane.InlineCaller), as QoS 0 ones are: the
// injection never waits for the sending node, and handing each one to a
// call worker goroutine cost the receiving node more than decoding it.
func (h *dpHandler) InlineCall(typ uint8) bool { return typ == callForward }

func (h *dpHandler) HandleCall(from string, typ uint8, payload []byte) ([]byte, error) {
	n := (*Node)(h)
	if n.left.Load() || (typ == callDigest && n.leaving.Load()) {
		// A node that left answers nothing (a refused QoS 1/2 publish
		// makes its publisher resend). While it leaves it still takes
		// publishes for its clients, but gives no anti-entropy answer:
		// its table is becoming its own.
		return nil, ErrLeft
	}
	switch typ {
	case callForward:
		return nil, n.deliver(from, payload)
	case callDigest:
		return n.answerDigest(payload)
	case callApply:
		ds, err := replica.DecodeDeltas(payload)
		if err != nil {
			n.stats.badFrames.Add(1)
			return nil, err
		}
		n.applyDeltas(ds, pathBroadcast)
		return nil, nil
	case callRegister:
		c, err := decodeClaim(payload)
		if err != nil {
			n.stats.badFrames.Add(1)
			return nil, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), n.cfg.RegisterTimeout)
		defer cancel()
		tk, err := n.lead(ctx, c)
		if err != nil {
			return nil, err
		}
		return appendTakeover(nil, tk), nil
	case callTakeover:
		c, err := decodeClaim(payload)
		if err != nil {
			n.stats.badFrames.Add(1)
			return nil, err
		}
		return n.broker.TakeoverSession(c.ClientID, c.Node, !c.Clean)
	case callHandoff:
		c, err := decodeClaim(payload)
		if err != nil {
			n.stats.badFrames.Add(1)
			return nil, err
		}
		return n.broker.FinishTakeover(c.ClientID, c.Node)
	case callAppend:
		id, msgs, err := decodeSessionMsgs(payload)
		if err != nil {
			n.stats.badFrames.Add(1)
			return nil, err
		}
		return nil, n.broker.AppendSession(id, msgs)
	}
	n.stats.badFrames.Add(1)
	return nil, fmt.Errorf("cluster: unknown call type %d", typ)
}

func (n *Node) deliver(from string, payload []byte) error {
	groups, id, msg, err := decodeForward(payload)
	if err != nil {
		n.stats.badFrames.Add(1)
		return err
	}
	n.stats.received.Add(1)
	n.peerTraffic(from).received.Add(1)
	return n.broker.DeliverForwarded(Delivery{From: from, Msg: msg, Groups: groups, ID: id})
}
