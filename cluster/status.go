package cluster

import (
	"context"
	"errors"
	"maps"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mendmq/mendmq/cluster/dataplane"
	"github.com/mendmq/mendmq/cluster/membership"
	"github.com/mendmq/mendmq/cluster/routes"
)

// MemberStatus is one member as this node sees it (admin API, ctl).
type MemberStatus struct {
	Name       string `json:"name"`
	State      string `json:"state"`
	GossipAddr string `json:"gossip_addr"`
	DataAddr   string `json:"data_addr"`
	// Reachable: the data-plane connection to it is up (false for self).
	Reachable bool `json:"reachable"`
	Self      bool `json:"self,omitempty"`
	// Per-peer data-plane traffic.
	FramesSent     uint64 `json:"frames_sent"`
	BytesSent      uint64 `json:"bytes_sent"`
	FramesReceived uint64 `json:"frames_received"`
	BytesReceived  uint64 `json:"bytes_received"`
	QueueFrames    int    `json:"queue_frames"`
	Dropped        uint64 `json:"dropped"`
	// Publishes forwarded to and received from this peer.
	Forwarded      uint64 `json:"forwarded"`
	ForwardedBytes uint64 `json:"forwarded_bytes"`
	Received       uint64 `json:"received"`
	LastError      string `json:"last_error,omitempty"`
}

// Status is a snapshot of the node's view of the cluster.
type Status struct {
	Node     string         `json:"node"`
	Members  []MemberStatus `json:"members"`
	Sessions int            `json:"sessions"`
	Retained int            `json:"retained"`
	// Subscriptions per node, from the routing index.
	Subscriptions map[string]int `json:"subscriptions"`
	Forwarded     uint64         `json:"forwarded"`
	Received      uint64         `json:"received"`
	// ReplicationLagMS is the lag of the last broadcast replication delta
	// that changed a value here: from its write on its node to its
	// application here, in milliseconds (mendmq_cluster_replication_lag_seconds
	// has the distribution).
	ReplicationLagMS int64 `json:"replication_lag_ms"`
}

// Status returns the node's view of the cluster.
func (n *Node) Status() Status {
	st := Status{Node: n.name, Subscriptions: n.index.NodeCounts(), Forwarded: n.stats.forwarded.Load(), Received: n.stats.received.Load(),
		ReplicationLagMS: n.lastLag.Load()}
	n.mu.Lock()
	st.Sessions = n.store.Len(tableSessions)
	st.Retained = n.store.Len(tableRetained)
	n.mu.Unlock()
	if n.ml == nil {
		return st
	}
	for _, m := range n.ml.Members() {
		ms := MemberStatus{Name: m.Name, State: m.State.String(), GossipAddr: m.GossipAddr, DataAddr: m.Meta.DataAddr, Self: m.Name == n.name}
		if ps, ok := n.dp.PeerStats(m.Name); ok {
			ms.Reachable = ps.State == dataplane.Connected
			ms.FramesSent, ms.BytesSent, ms.FramesReceived, ms.BytesReceived = ps.FramesSent, ps.BytesSent, ps.FramesReceived, ps.BytesReceived
			ms.QueueFrames, ms.Dropped, ms.LastError = ps.QueueFrames, ps.Dropped, ps.LastError
		}
		if v, ok := n.traffic.Load(m.Name); ok {
			pt := v.(*peerTraffic)
			ms.Forwarded, ms.ForwardedBytes, ms.Received = pt.forwarded.Load(), pt.forwardedBytes.Load(), pt.received.Load()
		}
		st.Members = append(st.Members, ms)
	}
	return st
}

// Join contacts seeds (gossip host:port) and returns how many answered.
// A node that left (Leave) cannot join again before a restart (ErrLeft).
func (n *Node) Join(seeds []string) (int, error) {
	if n.ml == nil || !n.running.Load() {
		return 0, ErrNotRunning
	}
	if n.leaving.Load() {
		return 0, ErrLeft
	}
	return n.ml.Join(seeds)
}

// Withdrawal reports the deletion of one node's session records from the
// replicated table (Leave, Forget).
type Withdrawal struct {
	// Node is the node whose sessions no longer belong to the cluster.
	Node string `json:"node"`
	// Sessions is how many session records were deleted.
	Sessions int `json:"sessions"`
	// Unconfirmed lists the alive peers that did not confirm the
	// deletions in time. After Forget anti-entropy repairs them; after
	// Leave only their peers can (this node left), so a peer that none
	// reached keeps refusing QoS 1/2 publishes for those sessions until
	// the node is forgotten there.
	Unconfirmed []string `json:"unconfirmed,omitempty"`
	// Warnings are other steps that did not complete (a leave notice not
	// broadcast in time: peers see the node fail instead).
	Warnings []string `json:"warnings,omitempty"`
}

// Leave takes this node out of the cluster for good (an operator's
// `mendmq ctl cluster leave`; a shutdown is Stop). Its sessions stop
// being the cluster's: their records are deleted from the replicated
// table first, and Leave waits up to timeout until every alive peer has
// applied that, so peers neither route to this node nor refuse publishes
// for its sessions afterwards. Then it leaves the membership (peers see
// it Left), stops gossip and detaches from its peers: it drops them from
// its member view and data plane, forgets the session records of their
// clients, forwards nothing to them and refuses what they still send.
// The node keeps serving its own clients as a single, standalone node
// until it is restarted; Join fails with ErrLeft. timeout bounds the
// wait for peers; the leave broadcasts take up to leaveBroadcastTimeout
// each, as in Stop. The error is nil unless the node did not leave
// (ErrNotRunning, ErrLeft); steps that did not complete are in the
// Withdrawal.
func (n *Node) Leave(timeout time.Duration) (Withdrawal, error) {
	if n.ml == nil || !n.running.Load() {
		return Withdrawal{}, ErrNotRunning
	}
	n.leaveMu.Lock()
	defer n.leaveMu.Unlock()
	if n.leaving.Load() {
		return Withdrawal{}, ErrLeft
	}
	peers := n.alivePeers()
	// From here on nothing this node writes reaches a peer but the
	// deletions below: a session record written meanwhile (a client of
	// this node subscribing) would give peers a route to a node that
	// left, which they would refuse publishes for.
	n.leaving.Store(true)
	ctx, cancel := context.WithTimeout(n.ctx, timeout)
	defer cancel()
	ds, k := n.deleteSessions(func(rec routes.SessionRecord) bool { return rec.Node == n.name })
	w := Withdrawal{Node: n.name, Sessions: k, Unconfirmed: n.replicateSync(ctx, peers, ds)}
	if err := n.ml.Leave(leaveBroadcastTimeout); err != nil {
		w.Warnings = append(w.Warnings, err.Error())
	}
	if err := n.ml.Shutdown(); err != nil {
		w.Warnings = append(w.Warnings, err.Error())
	}
	n.detach()
	n.log.Info("left the cluster; serving alone until restarted", "sessions_withdrawn", k, "peers", len(peers), "unconfirmed", w.Unconfirmed)
	return w, nil
}

// detach cuts a node that left off its former peers.
func (n *Node) detach() {
	n.left.Store(true)
	n.memMu.Lock()
	n.members = map[string]membership.State{n.name: membership.Left}
	n.memMu.Unlock()
	for _, p := range n.dp.Stats().Peers {
		n.dp.RemovePeer(p.Name)
	}
	// Their clients' records would route this node's publishes to nodes
	// it no longer talks to; the deltas go nowhere (aliveMembers is this
	// node alone now).
	_, _ = n.deleteSessions(func(rec routes.SessionRecord) bool { return rec.Node != n.name })
	n.regMu.Lock()
	maps.DeleteFunc(n.registry, func(_, node string) bool { return node != n.name })
	n.regMu.Unlock()
}

// Forget drops a failed or stopped member for good, on the operator's
// word that it will not come back (`mendmq ctl cluster forget`): this
// node no longer lists or re-joins it, and deletes its session records
// from the replicated table, waiting up to timeout until every alive
// peer has applied that. Then no node routes to it, so QoS 1/2
// publishes matching its former sessions are accepted again. Other nodes
// keep listing the member as failed until their own reconnect_timeout.
func (n *Node) Forget(name string, timeout time.Duration) (Withdrawal, error) {
	if n.ml == nil || !n.running.Load() {
		return Withdrawal{}, ErrNotRunning
	}
	if name == n.name {
		return Withdrawal{}, errors.New("cluster: a node cannot forget itself; use leave")
	}
	if n.leaving.Load() {
		return Withdrawal{}, ErrLeft
	}
	// Held until the records are deleted, so that the MemberRemove event
	// Forget causes finds nothing left to delete (and to not wait for).
	n.withdrawMu.Lock()
	if err := n.ml.Forget(name); err != nil {
		n.withdrawMu.Unlock()
		return Withdrawal{}, err
	}
	ds, k := n.deleteSessions(func(rec routes.SessionRecord) bool { return rec.Node == name })
	n.withdrawMu.Unlock()
	ctx, cancel := context.WithTimeout(n.ctx, timeout)
	defer cancel()
	w := Withdrawal{Node: name, Sessions: k, Unconfirmed: n.replicateSync(ctx, n.alivePeers(), ds)}
	n.log.Info("forgot member and deleted its session records", "peer", name, "sessions", k, "unconfirmed", w.Unconfirmed)
	return w, nil
}

var (
	descMembers   = prometheus.NewDesc("mendmq_cluster_members", "Cluster members by state, as seen by this node.", []string{"state"}, nil)
	descPeerBytes = prometheus.NewDesc("mendmq_cluster_peer_bytes_total", "Data-plane bytes per peer and direction.", []string{"peer", "direction"}, nil)
	descPeerFr    = prometheus.NewDesc("mendmq_cluster_peer_frames_total", "Data-plane frames per peer and direction.", []string{"peer", "direction"}, nil)
	descPeerQueue = prometheus.NewDesc("mendmq_cluster_peer_queue_frames", "Frames waiting in the send queue to a peer (replication/forwarding lag).", []string{"peer"}, nil)
	descPeerMsgs  = prometheus.NewDesc("mendmq_cluster_peer_messages_total", "Publishes forwarded to (out) and received from (in) each peer.", []string{"peer", "direction"}, nil)
	descPeerFwdB  = prometheus.NewDesc("mendmq_cluster_peer_forwarded_bytes_total", "Bytes of publishes forwarded to each peer.", []string{"peer"}, nil)
	descPeerUp    = prometheus.NewDesc("mendmq_cluster_peer_reachable", "1 if the data-plane connection to the peer is up.", []string{"peer"}, nil)
	descFwd       = prometheus.NewDesc("mendmq_cluster_forwarded_messages_total", "Publishes forwarded to other nodes (one per target node).", nil, nil)
	descFwdBytes  = prometheus.NewDesc("mendmq_cluster_forwarded_bytes_total", "Bytes of publishes forwarded to other nodes.", nil, nil)
	descRecv      = prometheus.NewDesc("mendmq_cluster_received_messages_total", "Publishes received from other nodes.", nil, nil)
	descDrops     = prometheus.NewDesc("mendmq_cluster_forward_dropped_total", "QoS0 forwards dropped, by reason.", []string{"reason"}, nil)
	descRefused   = prometheus.NewDesc("mendmq_cluster_forward_refused_total", "QoS1/2 publishes refused because a node with subscribers could not accept them.", nil, nil)
	descKeys      = prometheus.NewDesc("mendmq_cluster_replicated_keys", "Live keys in the replicated tables.", []string{"table"}, nil)
	descDeltas    = prometheus.NewDesc("mendmq_cluster_replication_deltas_total", "Replication deltas sent and applied.", []string{"direction"}, nil)
	descAE        = prometheus.NewDesc("mendmq_cluster_anti_entropy_total", "Anti-entropy rounds, failures and repaired entries.", []string{"what"}, nil)
	descReg       = prometheus.NewDesc("mendmq_cluster_registrations_total", "Client registrations and cross-node session takeovers.", []string{"what"}, nil)
	descBad       = prometheus.NewDesc("mendmq_cluster_bad_messages_total", "Malformed or unknown messages from peers, and data-plane connections refused.", []string{"what"}, nil)
	descBadGossip = prometheus.NewDesc("mendmq_cluster_gossip_bad_packets_total", "Gossip packets and streams refused as unreadable (wrong secret key, malformed, unknown type): an outsider or a misconfigured node reaches the gossip port.", nil, nil)
)

// Describe implements prometheus.Collector.
func (n *Node) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descMembers, descPeerBytes, descPeerFr, descPeerQueue, descPeerUp, descFwd, descFwdBytes,
		descRecv, descDrops, descRefused, descKeys, descDeltas, descAE, descReg, descBad, descBadGossip, descPeerMsgs, descPeerFwdB} {
		ch <- d
	}
	n.lag.Describe(ch)
}

// Collect implements prometheus.Collector.
func (n *Node) Collect(ch chan<- prometheus.Metric) {
	c := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	g := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	if n.ml != nil {
		ms := n.ml.Stats()
		for _, s := range []struct {
			st membership.State
			v  int
		}{{membership.Alive, ms.Alive}, {membership.Suspect, ms.Suspect}, {membership.Dead, ms.Dead}, {membership.Left, ms.Left}} {
			g(descMembers, float64(s.v), s.st.String())
		}
		c(descBadGossip, ms.BadInput)
	}
	ds := n.dp.Stats()
	for _, p := range ds.Peers {
		c(descPeerBytes, p.BytesSent, p.Name, "out")
		c(descPeerBytes, p.BytesReceived, p.Name, "in")
		c(descPeerFr, p.FramesSent, p.Name, "out")
		c(descPeerFr, p.FramesReceived, p.Name, "in")
		g(descPeerQueue, float64(p.QueueFrames), p.Name)
		up := 0.0
		if p.State == dataplane.Connected {
			up = 1
		}
		g(descPeerUp, up, p.Name)
	}
	n.traffic.Range(func(k, v any) bool {
		pt := v.(*peerTraffic)
		c(descPeerMsgs, pt.forwarded.Load(), k.(string), "out")
		c(descPeerMsgs, pt.received.Load(), k.(string), "in")
		c(descPeerFwdB, pt.forwardedBytes.Load(), k.(string))
		return true
	})
	n.lag.Collect(ch)
	s := &n.stats
	c(descFwd, s.forwarded.Load())
	c(descFwdBytes, s.forwardedBytes.Load())
	c(descRecv, s.received.Load())
	c(descDrops, s.dropQueueFull.Load(), "peer_queue_full")
	c(descDrops, s.dropUnreachable.Load(), "peer_unreachable")
	c(descRefused, s.refusedUnreachable.Load())
	n.mu.Lock()
	sess, ret := n.store.Len(tableSessions), n.store.Len(tableRetained)
	n.mu.Unlock()
	g(descKeys, float64(sess), tableSessions)
	g(descKeys, float64(ret), tableRetained)
	c(descDeltas, s.deltasSent.Load(), "sent")
	c(descDeltas, s.deltasApplied.Load(), "applied")
	c(descAE, s.aeRounds.Load(), "rounds")
	c(descAE, s.aeFailures.Load(), "failures")
	c(descAE, s.aeRepaired.Load(), "repaired_entries")
	c(descReg, s.registrations.Load(), "registrations")
	c(descReg, s.takeovers.Load(), "takeovers")
	c(descBad, s.badFrames.Load(), "bad_messages")
	c(descBad, ds.HandshakeFailures, "handshake_failures")
	c(descBad, ds.ProtocolErrors, "protocol_errors")
	c(descBad, ds.RefusedConns, "refused_connections")
}
