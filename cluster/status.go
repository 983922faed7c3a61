package cluster

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mendmq/mendmq/cluster/dataplane"
	"github.com/mendmq/mendmq/cluster/membership"
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
}

// Status returns the node's view of the cluster.
func (n *Node) Status() Status {
	st := Status{Node: n.name, Subscriptions: n.index.NodeCounts(), Forwarded: n.stats.forwarded.Load(), Received: n.stats.received.Load()}
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
		st.Members = append(st.Members, ms)
	}
	return st
}

// Join contacts seeds (gossip host:port) and returns how many answered.
func (n *Node) Join(seeds []string) (int, error) {
	if n.ml == nil {
		return 0, ErrNotRunning
	}
	return n.ml.Join(seeds)
}

// Leave leaves the cluster gracefully: peers see this node as left, stop
// routing to it and stop re-joining it. The node keeps serving its local
// clients as a single node.
func (n *Node) Leave(timeout time.Duration) error {
	if n.ml == nil {
		return ErrNotRunning
	}
	return n.ml.Leave(timeout)
}

// Forget drops a failed member for good: it is no longer re-joined and its
// sessions' records are deleted.
func (n *Node) Forget(name string) error {
	if n.ml == nil {
		return ErrNotRunning
	}
	if name == n.name {
		return errors.New("cluster: a node cannot forget itself; use leave")
	}
	return n.ml.Forget(name)
}

var (
	descMembers   = prometheus.NewDesc("mendmq_cluster_members", "Cluster members by state, as seen by this node.", []string{"state"}, nil)
	descPeerBytes = prometheus.NewDesc("mendmq_cluster_peer_bytes_total", "Data-plane bytes per peer and direction.", []string{"peer", "direction"}, nil)
	descPeerFr    = prometheus.NewDesc("mendmq_cluster_peer_frames_total", "Data-plane frames per peer and direction.", []string{"peer", "direction"}, nil)
	descPeerQueue = prometheus.NewDesc("mendmq_cluster_peer_queue_frames", "Frames waiting in the send queue to a peer (replication/forwarding lag).", []string{"peer"}, nil)
	descPeerUp    = prometheus.NewDesc("mendmq_cluster_peer_reachable", "1 if the data-plane connection to the peer is up.", []string{"peer"}, nil)
	descFwd       = prometheus.NewDesc("mendmq_cluster_forwarded_messages_total", "Publishes forwarded to other nodes (one per target node).", nil, nil)
	descFwdBytes  = prometheus.NewDesc("mendmq_cluster_forwarded_bytes_total", "Bytes of publishes forwarded to other nodes.", nil, nil)
	descRecv      = prometheus.NewDesc("mendmq_cluster_received_messages_total", "Publishes received from other nodes.", nil, nil)
	descDrops     = prometheus.NewDesc("mendmq_cluster_forward_dropped_total", "QoS0 forwards dropped, by reason.", []string{"reason"}, nil)
	descRefused   = prometheus.NewDesc("mendmq_cluster_forward_refused_total", "QoS1/2 publishes refused because a node with subscribers could not accept them.", nil, nil)
	descStale     = prometheus.NewDesc("mendmq_cluster_stale_routes_total", "Routes skipped because their node left or was forgotten.", nil, nil)
	descKeys      = prometheus.NewDesc("mendmq_cluster_replicated_keys", "Live keys in the replicated tables.", []string{"table"}, nil)
	descDeltas    = prometheus.NewDesc("mendmq_cluster_replication_deltas_total", "Replication deltas sent and applied.", []string{"direction"}, nil)
	descAE        = prometheus.NewDesc("mendmq_cluster_anti_entropy_total", "Anti-entropy rounds, failures and repaired entries.", []string{"what"}, nil)
	descReg       = prometheus.NewDesc("mendmq_cluster_registrations_total", "Client registrations and cross-node session takeovers.", []string{"what"}, nil)
	descBad       = prometheus.NewDesc("mendmq_cluster_bad_messages_total", "Malformed or unknown messages from peers, and data-plane connections refused.", []string{"what"}, nil)
)

// Describe implements prometheus.Collector.
func (n *Node) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descMembers, descPeerBytes, descPeerFr, descPeerQueue, descPeerUp, descFwd, descFwdBytes,
		descRecv, descDrops, descRefused, descStale, descKeys, descDeltas, descAE, descReg, descBad} {
		ch <- d
	}
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
	s := &n.stats
	c(descFwd, s.forwarded.Load())
	c(descFwdBytes, s.forwardedBytes.Load())
	c(descRecv, s.received.Load())
	c(descDrops, s.dropQueueFull.Load(), "peer_queue_full")
	c(descDrops, s.dropUnreachable.Load(), "peer_unreachable")
	c(descRefused, s.refusedUnreachable.Load())
	c(descStale, s.staleRoutes.Load())
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
