// Package cluster turns mendmq nodes into one broker. A Node assembles
// the parts, each a package with one job:
//
//   - membership: who is in the cluster (hashicorp/memberlist, with
//     admission, reconnect and a member table);
//   - dataplane: authenticated node-to-node connections carrying frames
//     and calls; each part registers its own message types on a Mux;
//   - members: the node's view of every member — membership state and
//     data-plane link, as timestamped events — that the other parts read;
//   - replication: the replicated tables (replica, dvv), broadcast and
//     anti-entropy, conflicts decided through a merge.Merger outside the
//     lock;
//   - sessions: the session table (client id -> node and subscriptions)
//     and the routing index derived from it (routes);
//   - retained: the retained-message table and its merge contract;
//   - router: forwarding publishes to the nodes with subscribers;
//   - registry: client-id registration and session takeover.
//
// The package never imports the broker nor the merge policies: it calls
// back through Broker, which the broker implements, and decides conflicts
// through the merge.Merger the broker passes in Config (DESIGN §1).
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mendmq/mendmq/cluster/dataplane"
	"github.com/mendmq/mendmq/cluster/durable"
	"github.com/mendmq/mendmq/cluster/faults"
	"github.com/mendmq/mendmq/cluster/hlc"
	"github.com/mendmq/mendmq/cluster/members"
	"github.com/mendmq/mendmq/cluster/membership"
	"github.com/mendmq/mendmq/cluster/netsplit"
	"github.com/mendmq/mendmq/cluster/outbox"
	"github.com/mendmq/mendmq/cluster/pmap"
	"github.com/mendmq/mendmq/cluster/registry"
	"github.com/mendmq/mendmq/cluster/replica"
	"github.com/mendmq/mendmq/cluster/replication"
	"github.com/mendmq/mendmq/cluster/retained"
	"github.com/mendmq/mendmq/cluster/router"
	"github.com/mendmq/mendmq/cluster/routes"
	"github.com/mendmq/mendmq/cluster/sessions"
)

// Broker is what the cluster needs from the MQTT front. Methods are called
// from the cluster's goroutines, concurrently unless stated.
type Broker interface {
	// DeliverForwarded hands a publish forwarded by another node to local
	// subscribers. It returns once the message is in the subscribers'
	// sessions.
	DeliverForwarded(d Delivery) error
	// ApplyRetained sets (m != nil) or deletes the local retained message
	// of topic. Calls are serialized, in the order of changes.
	ApplyRetained(topic string, m *RetainedMessage)
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
	// straggler shipping), or queued in a duplicate of the session that
	// lost to it (DropDuplicate). An error makes the sender retry.
	AppendSession(clientID string, msgs []byte) error
	// LocalSession reports whether clientID has a session on this node
	// (a session being handed off does not count).
	LocalSession(clientID string) bool
	// DropDuplicate disconnects (v5 reason 0x8E) and discards the local
	// session of clientID, which lost to winner's (sessions.Resolver:
	// the later CONNECT); a persistent session's queued messages go to
	// winner's node with Node.AppendSession. It may block.
	DropDuplicate(clientID string, winner routes.SessionRecord)
	// KickSession disconnects the client of the local session of
	// clientID (v5 reason 0x98, administrative action) for an operator;
	// it reports whether a live connection was closed.
	KickSession(clientID string) (bool, error)
}

// The parts' types, as the broker sees them.
type (
	// Delivery is a publish forwarded by another node.
	Delivery = router.Delivery
	// Takeover is the outcome of a registration.
	Takeover = registry.Takeover
	// RetainedMessage is a retained message as the cluster replicates it.
	RetainedMessage = retained.Message
)

// Errors.
var (
	// ErrUnreachable: a node with matching subscribers is not reachable.
	ErrUnreachable = router.ErrUnreachable
	// ErrHoldFull: ForwardHold could not hold a publish for an
	// unreachable node, its queue is full (cluster.netsplit_queue_*).
	ErrHoldFull = outbox.ErrFull
	// ErrNotRunning: the node is stopped.
	ErrNotRunning = errors.New("cluster: not running")
	// ErrLeft: the node left the cluster (Leave) and runs alone until it
	// is restarted.
	ErrLeft = errors.New("cluster: this node left the cluster; restart it to join again")
)

// protoVersion is announced in membership metadata; a node with another
// version is refused at join. Version 3: retained values carry the
// cluster's metadata header (retained.Encode). Version 4: session records
// and registration claims carry the CONNECT's hybrid logical clock stamp.
const protoVersion = 4

// Node is this process's member of the cluster.
type Node struct {
	cfg     Config
	name    string
	log     *slog.Logger // with the node attribute
	baseLog *slog.Logger // for membership and dataplane, which add it themselves
	broker  Broker

	ml  *membership.Membership
	dp  *dataplane.Plane
	mux *dataplane.Mux

	view     *members.View
	repl     *replication.Replicator
	sessions *sessions.Sessions
	retained *retained.Retained
	router   *router.Router
	registry *registry.Registry
	split    *splitDriver
	maps     *pmap.Maps
	disk     *durable.DB // cluster storage (StoragePath), nil without
	// clock stamps CONNECTs (registry) and observes peers' stamps
	// (sessions); see package hlc.
	clock *hlc.Clock
	// cuts is the debug partition switch (admin.debug): it sits in the
	// gossip transport and the data plane, and forwards while nothing is
	// cut.
	cuts *faults.Switch

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

	// ctx ends at Stop, so calls a background goroutine is waiting on
	// (anti-entropy behind a slow peer) do not hold up the shutdown.
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	running  atomic.Bool
	stopOnce sync.Once
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
	n := &Node{cfg: cfg, name: name, log: log.With("node", name), baseLog: log, broker: broker,
		mux: dataplane.NewMux(), view: members.New(name, time.Now()), clock: hlc.New(cfg.Clock)}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.mux.Guard = n.guard
	n.mux.OnLink = n.linkChanged

	dc := dataplane.DefaultConfig()
	dc.NodeName, dc.ClusterName, dc.BindAddr = name, cfg.Name, cfg.DataAddress
	dc.SecretKey = []byte(cfg.SecretKey)
	dc.QueueFrames, dc.QueueBytes = cfg.DataQueueFrames, cfg.DataQueueBytes
	dc.KeepaliveInterval, dc.IdleTimeout = cfg.DataKeepaliveInterval, cfg.DataIdleTimeout
	dc.ReconnectMin, dc.ReconnectMax = cfg.DataReconnectMin, cfg.DataReconnectMax
	var err error
	if cfg.DataTLS.Enabled() {
		if dc.TLS, err = cfg.DataTLS.Load(); err != nil {
			return nil, err
		}
	}
	dc.Logger = log // the data plane adds the node attribute
	if cfg.DataNetwork != nil {
		dc.Network = cfg.DataNetwork
	}
	n.cuts = faults.New(name, n.memberAddrs)
	dc.Refuse = n.cuts.Refuse
	if n.dp, err = dataplane.New(dc, n.mux); err != nil {
		return nil, fmt.Errorf("create data plane: %w", err)
	}
	n.cuts.OnChange(n.dp.Reset)

	merger := cfg.Merger
	if merger == nil {
		merger = latestUpdate{}
	}
	reads := retained.NewReads(name)
	n.repl, err = replication.New(replication.Config{
		Node: name, AntiEntropyInterval: cfg.AntiEntropyInterval, TombstoneGrace: cfg.TombstoneGrace,
		Merger: merger, Merged: []replication.Merged{retained.Merged(n.log, reads)}, Logger: n.log,
		Resolvers: map[string]replica.Resolver{sessions.Table: sessions.Resolver},
	}, n.dp, n.view, n.mux)
	if err != nil {
		return nil, err
	}
	n.registry, err = registry.New(registry.Config{Node: name, RegisterTimeout: cfg.RegisterTimeout, Clock: n.clock, Logger: n.log},
		broker, reach{n}, n.dp, nil, n.mux)
	if err != nil {
		return nil, err
	}
	n.sessions = sessions.New(name, n.repl, broker, sessions.Options{
		Clock:   n.clock,
		Deleted: n.registry.Forget,
		Changed: func(id string, rec routes.SessionRecord) { n.registry.Observe(id, rec.Node, rec.Connect) },
	}, n.log)
	n.registry.SetSessions(n.sessions)
	n.retained = retained.New(n.repl, broker, reads, n.log)
	oc := outbox.Config{MaxMessages: cfg.NetsplitQueueMessages, MaxBytes: cfg.NetsplitQueueBytes}
	if cfg.StoragePath != "" {
		if n.disk, err = durable.Open(cfg.StoragePath, 2*time.Second); err != nil {
			return nil, err
		}
		oc.Store = n.disk.Outbox()
	}
	ob, err := outbox.New(oc)
	if err != nil {
		n.closeDisk()
		return nil, err
	}
	if held := ob.Peers(); len(held) > 0 {
		n.log.Info("publishes held for unreachable nodes restored", "peers", held)
	}
	if n.router, err = router.New(name, n.sessions.Index(), reach{n}, n.dp, broker, ob, n.mux); err != nil {
		n.closeDisk()
		return nil, err
	}
	mc := pmap.Config{Node: name, PartitionCount: cfg.MapPartitionCount, MaxBackups: max(cfg.MapMaxBackups, 1),
		MergeBatchSize: cfg.MapMergeBatchSize, Map: cfg.MapConfig, Merger: merger, Logger: n.log}
	if n.disk != nil {
		mc.Store = mapStore{n.disk.MapStore()}
	}
	n.maps, err = pmap.New(mc, n.dp, n.view, n.mux)
	if err != nil {
		n.closeDisk()
		return nil, err
	}
	if err := n.mux.HandleCallFunc(CallForget, false, n.handleForget); err != nil {
		n.closeDisk()
		return nil, err
	}
	if err := n.mux.HandleCallFunc(CallKick, false, n.handleKick); err != nil {
		n.closeDisk()
		return nil, err
	}
	mode, _ := netsplit.ParseMode(cfg.NetsplitMode) // validated
	n.split = newSplitDriver(name, netsplit.Config{Mode: mode, LinkGrace: cfg.NetsplitLinkGrace})
	n.view.Watch(n.observeSplit)
	// A new or returning member gets, and gives, everything at once, on
	// a link redialed at once (a healed network is used without waiting
	// for the data plane's backoff).
	n.view.Watch(func(ev members.Event, m members.Member) {
		if (ev.Kind == members.LinkChanged && ev.Link == members.LinkUp) || ev.Kind == members.Joined {
			n.router.Kick() // held publishes go out as soon as the member is back
		}
		if ev.Kind != members.LinkChanged {
			n.maps.MembersChanged()
		}
		if ev.Kind == members.Joined && !m.Self {
			n.dp.Redial(m.Name)
			n.wg.Add(1)
			go func() {
				defer n.wg.Done()
				_, _, _ = n.repl.AntiEntropy(n.ctx, m.Name)
			}()
		}
	})
	return n, nil
}

// Name is this node's name.
func (n *Node) Name() string { return n.name }

// Members is the node's view of the cluster's members.
func (n *Node) Members() *members.View { return n.view }

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
	mc.WrapTransport = n.cuts.Transport
	mc.Unreachable = n.split.unreachable
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
	n.router.SetRunning(true)
	if err := ml.Start(); err != nil {
		n.running.Store(false)
		n.router.SetRunning(false)
		_ = n.dp.Close()
		return fmt.Errorf("join cluster: %w", err)
	}
	// An unspecified data host (":7947") is only known once memberlist
	// picked the advertised address. The view learns its own addresses
	// now rather than from the event queue: Status reports them at once.
	if self, ok := ml.Member(n.name); ok {
		n.memberEvent(members.Joined, self)
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
		n.repl.MarkSynced()
	}
	n.wg.Add(6)
	go func() {
		defer n.wg.Done()
		n.flushReads(n.ctx)
	}()
	go func() {
		defer n.wg.Done()
		n.maps.Run(n.ctx, n.Split)
	}()
	go func() {
		defer n.wg.Done()
		n.repl.Run(n.ctx)
	}()
	go func() {
		defer n.wg.Done()
		n.router.Run(n.ctx)
	}()
	go func() {
		defer n.wg.Done()
		n.splitLoop(n.ctx)
	}()
	go func() {
		defer n.wg.Done()
		// After the first anti-entropy exchanges, records that name this
		// node but have no session here (left over from before a crash
		// or restart) are removed; then every minute.
		n.sessions.Run(n.ctx, 2*n.cfg.AntiEntropyInterval)
	}()
	return nil
}

// flushReads publishes this node's counts of retained-message reads
// once per anti-entropy interval while the node is in a netsplit, and
// once after it (see retained.Reads), until ctx ends.
func (n *Node) flushReads(ctx context.Context) {
	tick := time.NewTicker(n.cfg.AntiEntropyInterval)
	defer tick.Stop()
	wasSplit := false
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			split := n.Split()
			if err := n.retained.FlushReads(split || wasSplit, now); err != nil {
				n.log.Warn("retained read counts not replicated", "error", err)
			}
			wasSplit = split
		}
	}
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
// and until then peers refuse QoS 1/2 publishes for them (see package
// router). To take a node out for good, Leave first.
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
			n.maps.Leaving()
			if lerr := n.ml.Leave(leaveBroadcastTimeout); lerr != nil {
				// Not a failed shutdown: the peers are shutting down
				// too (a whole cluster stopped at once), or cut off.
				// They see this node fail instead of leave.
				n.log.Warn("leave notice not confirmed by the peers; they will see this node fail rather than leave", "error", lerr)
			}
		}
		n.leaveMu.Unlock()
		n.cancel()
		n.wg.Wait()
		n.maps.Wait()
		n.sessions.Wait()
		n.running.Store(false)
		n.router.SetRunning(false)
		err = errors.Join(err, n.ml.Shutdown(), n.dp.Close(), n.closeDisk())
	})
	return err
}

// closeDisk closes the cluster's storage file, if any.
func (n *Node) closeDisk() error {
	if n.disk == nil {
		return nil
	}
	err := n.disk.Close()
	n.disk = nil
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

// guard runs before every data-plane handler (after Config.Receive). A
// node that left answers
// nothing (a refused QoS 1/2 publish makes its publisher resend). While
// it leaves it still takes publishes for its clients, but gives no
// anti-entropy answer: its table is becoming its own.
func (n *Node) guard(from string, typ uint8, call bool) error {
	if f := n.cfg.Receive; f != nil {
		if err := f(from, typ, call); err != nil {
			return err
		}
	}
	if n.left.Load() || (call && typ == replication.CallDigest && n.leaving.Load()) {
		if !call {
			n.log.Debug("frame from a former peer dropped: this node left the cluster", "peer", from, "type", typ)
		}
		return ErrLeft
	}
	return nil
}

// linkChanged feeds the data plane's link events to the members view.
func (n *Node) linkChanged(peer string, up bool, err error) {
	link := members.LinkDown
	if up {
		link = members.LinkUp
	}
	n.view.Apply(members.Event{Kind: members.LinkChanged, Member: peer, At: time.Now(), Link: link, Err: err})
}

// --- membership ---------------------------------------------------------

// memberHandler feeds membership events to the members view and keeps the
// data plane's peers current.
type memberHandler Node

func (h *memberHandler) node() *Node { return (*Node)(h) }

// ignored reports whether an event about member name comes after this
// node started to leave (Leave): it has no peers any more.
func (n *Node) ignored(name string) bool { return name != n.name && n.leaving.Load() }

func (n *Node) memberEvent(kind members.Kind, m membership.Member) {
	n.view.Apply(members.Event{Kind: kind, Member: m.Name, At: time.Now(), State: m.State,
		GossipAddr: m.GossipAddr, DataAddr: m.Meta.DataAddr})
}

func (h *memberHandler) MemberJoin(m membership.Member) {
	n := h.node()
	if n.ignored(m.Name) {
		return
	}
	if m.Name != n.name {
		if err := n.dp.SetPeer(m.Name, m.Meta.DataAddr); err != nil {
			n.log.Warn("data-plane peer", "peer", m.Name, "addr", m.Meta.DataAddr, "error", err)
		} else {
			n.log.Info("member joined", "peer", m.Name, "data", m.Meta.DataAddr)
		}
	}
	n.memberEvent(members.Joined, m)
}

func (h *memberHandler) MemberUpdate(m membership.Member) {
	n := h.node()
	if n.ignored(m.Name) {
		return
	}
	if m.Name != n.name && m.Meta.DataAddr != "" {
		_ = n.dp.SetPeer(m.Name, m.Meta.DataAddr)
	}
	n.memberEvent(members.Updated, m)
}

func (h *memberHandler) MemberLeave(m membership.Member) {
	n := h.node()
	if n.ignored(m.Name) {
		return
	}
	n.memberEvent(members.Gone, m)
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
	if n.ignored(m.Name) {
		return
	}
	n.memberEvent(members.Removed, m)
	n.dp.RemovePeer(m.Name)
	n.log.Info("member forgotten", "peer", m.Name)
	if k, err := n.router.DropHeld(m.Name); k > 0 || err != nil {
		n.log.Warn("publishes held for a member removed for good are dropped", "peer", m.Name, "messages", k, "error", err)
	}
	// Its sessions will never come back (forgotten, or gone for longer
	// than reconnect_timeout): delete their records so that routes stop
	// pointing at it. Every node that removes the member does so, since
	// a node that joined after it failed never removes it; deleting is
	// idempotent (after Forget here, or a peer's deletes, nothing is
	// left to delete).
	n.withdrawMu.Lock()
	ds, k := n.sessions.Withdraw(func(node string) bool { return node == m.Name })
	n.withdrawMu.Unlock()
	if k > 0 {
		n.log.Info("deleted the session records of a forgotten member", "peer", m.Name, "sessions", k)
	}
	n.repl.Broadcast(ds)
}

// mapStore is the maps' MapStore in the cluster's storage file.
type mapStore struct{ kv *durable.KV }

func (s mapStore) Write(ops []pmap.StoreOp) error {
	pairs := make([]durable.KVPair, len(ops))
	for i, op := range ops {
		pairs[i] = durable.KVPair{Key: op.Key, Value: op.Value}
	}
	return s.kv.Write(pairs)
}

func (s mapStore) ForEach(fn func(key, value []byte) error) error { return s.kv.ForEach(fn) }

func (s mapStore) Get(key []byte) ([]byte, error) { return s.kv.Get(key) }
