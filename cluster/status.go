package cluster

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mendmq/mendmq/cluster/dataplane"
	"github.com/mendmq/mendmq/cluster/membership"
	"github.com/mendmq/mendmq/cluster/retained"
	"github.com/mendmq/mendmq/cluster/router"
	"github.com/mendmq/mendmq/cluster/sessions"
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
	// Held is how many publishes wait in the outbox for this member
	// (held while it was unreachable).
	Held      int    `json:"held"`
	LastError string `json:"last_error,omitempty"`
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
	// Netsplit is the node's netsplit state.
	Netsplit NetsplitStatus `json:"netsplit"`
	// DebugCut names the members whose links this node's debug partition
	// switch cuts (admin.debug; DebugCut).
	DebugCut []string `json:"debug_cut,omitempty"`
}

// Status returns the node's view of the cluster.
func (n *Node) Status() Status {
	rs := n.router.Stats()
	st := Status{Node: n.name, Subscriptions: n.sessions.Index().NodeCounts(), Forwarded: rs.Forwarded.Load(), Received: rs.Received.Load(),
		ReplicationLagMS: n.repl.LastLag().Milliseconds(), Sessions: n.repl.Len(sessions.Table), Retained: n.retained.Len(),
		Netsplit: n.Netsplit(), DebugCut: n.cuts.Members()}
	if n.ml == nil {
		return st
	}
	for _, m := range n.view.Members() {
		ms := MemberStatus{Name: m.Name, State: m.State.String(), GossipAddr: m.GossipAddr, DataAddr: m.DataAddr, Self: m.Self}
		if ps, ok := n.dp.PeerStats(m.Name); ok {
			ms.Reachable = ps.State == dataplane.Connected
			ms.FramesSent, ms.BytesSent, ms.FramesReceived, ms.BytesReceived = ps.FramesSent, ps.BytesSent, ps.FramesReceived, ps.BytesReceived
			ms.QueueFrames, ms.Dropped, ms.LastError = ps.QueueFrames, ps.Dropped, ps.LastError
		}
		if ob := n.router.Outbox(); ob != nil {
			ms.Held, _ = ob.Len(m.Name)
		}
		if pt := n.router.PeerTraffic(m.Name); pt != nil {
			ms.Forwarded, ms.ForwardedBytes, ms.Received = pt.Forwarded.Load(), pt.ForwardedBytes.Load(), pt.Received.Load()
		}
		st.Members = append(st.Members, ms)
	}
	return st
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
	descMerges    = prometheus.NewDesc("mendmq_cluster_conflicts_total", "Conflicting replicated entries (retained messages set on both sides of a split) resolved through the merge policy, and resolutions retried because the policy left them undecided.", []string{"what"}, nil)
	descSplit     = prometheus.NewDesc("mendmq_cluster_netsplit", "1 while this node is in a netsplit (a member of its view is unreachable).", nil, nil)
	descGated     = prometheus.NewDesc("mendmq_cluster_netsplit_gated", "1 while this node gates CONNECT/PUBLISH/SUBSCRIBE/UNSUBSCRIBE (cluster.allow_*_during_netsplit): split in mode any, or split without a majority in mode majority.", nil, nil)
	descUnreach   = prometheus.NewDesc("mendmq_cluster_unreachable_members", "Members this node finds unreachable now (netsplit detector).", nil, nil)
	descHeldQ     = prometheus.NewDesc("mendmq_cluster_held_messages", "QoS 1/2 publishes and wills held for an unreachable node, delivered once it is back (cluster.netsplit_queue_*).", []string{"peer"}, nil)
	descHeld      = prometheus.NewDesc("mendmq_cluster_held_total", "Publishes held for unreachable nodes (held), delivered to them after (drained), and deliveries received twice and dropped (duplicates).", []string{"what"}, nil)
	descSplits    = prometheus.NewDesc("mendmq_cluster_netsplits_total", "Netsplits this node entered.", nil, nil)
	descMapOps    = prometheus.NewDesc("mendmq_map_operations_total", "Partitioned-map operations this node handled as a partition owner (ops), answered retry while a partition migrated or a merge ran (retries), and refused by maps.<name>.min_cluster_size (refused).", []string{"what"}, nil)
	descMapParts  = prometheus.NewDesc("mendmq_map_partition_events_total", "Partition copies pulled from another member (migrations), backups promoted to owner (promotions), partitions recreated because no member held a copy (recreated), and backup writes that failed (backup_failures).", []string{"what"}, nil)
	descMapMerge  = prometheus.NewDesc("mendmq_map_merge_entries_total", "Map entries through a netsplit heal merge. Smaller side: sent and accepted (sent), given up after the merge timeout (failed). Bigger side: verdicts of the merge policy (replaced, deleted, kept, parked).", []string{"outcome"}, nil)
	descMapMerges = prometheus.NewDesc("mendmq_map_merges_total", "Times this node merged its map entries into the bigger side of a healed netsplit.", nil, nil)
	descMapStore  = prometheus.NewDesc("mendmq_map_store_total", "Map entries written to the MapStore (stored), writes that failed (failures), and entries loaded at start (loaded).", []string{"what"}, nil)
	descMapRoles  = prometheus.NewDesc("mendmq_map_partitions", "Map partitions this node owns, backs up, and waits for a copy of (migrating).", []string{"role"}, nil)
	descMapEnts   = prometheus.NewDesc("mendmq_map_entries", "Entries of each map on this node: in partitions it owns (owned), and backup copies (backup).", []string{"map", "copy"}, nil)
	descMapDirty  = prometheus.NewDesc("mendmq_map_store_dirty_entries", "Map entries this node owns that wait for its MapStore (write-behind, a failed write-through retried, a partition promoted from a backup).", nil, nil)
	descMapBytes  = prometheus.NewDesc("mendmq_map_bytes", "Key and value bytes of each map's entries in partitions this node owns.", []string{"map"}, nil)
	descBadGossip = prometheus.NewDesc("mendmq_cluster_gossip_bad_packets_total", "Gossip packets and streams refused as unreadable (wrong secret key, malformed, unknown type): an outsider or a misconfigured node reaches the gossip port.", nil, nil)
)

// Describe implements prometheus.Collector.
func (n *Node) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descMembers, descPeerBytes, descPeerFr, descPeerQueue, descPeerUp, descFwd, descFwdBytes,
		descRecv, descDrops, descRefused, descKeys, descDeltas, descAE, descReg, descBad, descBadGossip, descPeerMsgs, descPeerFwdB, descMerges,
		descSplit, descGated, descUnreach, descSplits, descHeldQ, descHeld,
		descMapOps, descMapParts, descMapMerge, descMapMerges, descMapStore, descMapRoles, descMapEnts, descMapBytes, descMapDirty} {
		ch <- d
	}
	n.repl.Lag().Describe(ch)
	n.split.uncertainty.Describe(ch)
	n.split.duration.Describe(ch)
	n.split.convergence.Describe(ch)
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
	n.router.Traffic(func(peer string, pt *router.PeerTraffic) {
		c(descPeerMsgs, pt.Forwarded.Load(), peer, "out")
		c(descPeerMsgs, pt.Received.Load(), peer, "in")
		c(descPeerFwdB, pt.ForwardedBytes.Load(), peer)
	})
	n.repl.Lag().Collect(ch)
	n.split.uncertainty.Collect(ch)
	n.split.duration.Collect(ch)
	n.split.convergence.Collect(ch)
	ns := n.Netsplit()
	g(descSplit, b2f(ns.Split))
	g(descGated, b2f(ns.Gated))
	g(descUnreach, float64(len(ns.Unreachable)))
	c(descSplits, ns.Splits)
	if ob := n.router.Outbox(); ob != nil {
		for _, p := range ob.Peers() {
			k, _ := ob.Len(p)
			g(descHeldQ, float64(k), p)
		}
	}
	rs, ps := n.router.Stats(), n.repl.Stats()
	c(descHeld, rs.Held.Load(), "held")
	c(descHeld, rs.Drained.Load(), "drained")
	c(descHeld, rs.Duplicates.Load(), "duplicates")
	c(descFwd, rs.Forwarded.Load())
	c(descFwdBytes, rs.ForwardedBytes.Load())
	c(descRecv, rs.Received.Load())
	c(descDrops, rs.DropQueueFull.Load(), "peer_queue_full")
	c(descDrops, rs.DropUnreachable.Load(), "peer_unreachable")
	c(descRefused, rs.RefusedUnreachable.Load())
	g(descKeys, float64(n.repl.Len(sessions.Table)), sessions.Table)
	g(descKeys, float64(n.retained.Len()), retained.Table)
	c(descDeltas, ps.DeltasSent.Load(), "sent")
	c(descDeltas, ps.DeltasApplied.Load(), "applied")
	c(descAE, ps.AERounds.Load(), "rounds")
	c(descAE, ps.AEFailures.Load(), "failures")
	c(descAE, ps.AERepaired.Load(), "repaired_entries")
	c(descMerges, ps.Merges.Load(), "resolved")
	c(descMerges, ps.MergeRetries.Load(), "retried")
	var mapBad uint64
	if n.maps != nil {
		mapBad = n.collectMaps(c, g)
	}
	regs, takeovers, regBad := n.registry.Counts()
	c(descReg, regs, "registrations")
	c(descReg, takeovers, "takeovers")
	c(descBad, ps.BadMessages.Load()+rs.BadMessages.Load()+regBad+mapBad+n.mux.Unknown(), "bad_messages")
	c(descBad, ds.HandshakeFailures, "handshake_failures")
	c(descBad, ds.ProtocolErrors, "protocol_errors")
	c(descBad, ds.RefusedConns, "refused_connections")
}

// collectMaps sends the partitioned maps' metrics; it returns their bad
// messages, counted with the node's.
func (n *Node) collectMaps(c func(*prometheus.Desc, uint64, ...string), g func(*prometheus.Desc, float64, ...string)) uint64 {
	st := n.maps.Stats()
	c(descMapOps, st.Ops.Load(), "ops")
	c(descMapOps, st.Retries.Load(), "retries")
	c(descMapOps, st.Refused.Load(), "refused")
	c(descMapParts, st.Migrations.Load(), "migrations")
	c(descMapParts, st.Promotions.Load(), "promotions")
	c(descMapParts, st.Recreated.Load(), "recreated")
	c(descMapParts, st.BackupFailures.Load(), "backup_failures")
	c(descMapMerge, st.MergedIn.Load(), "sent")
	c(descMapMerge, st.MergeFailures.Load(), "failed")
	c(descMapMerge, st.MergeReplaced.Load(), "replaced")
	c(descMapMerge, st.MergeDeleted.Load(), "deleted")
	c(descMapMerge, st.MergeKept.Load(), "kept")
	c(descMapMerge, st.MergeParked.Load(), "parked")
	c(descMapMerges, st.Merges.Load())
	c(descMapStore, st.Stored.Load(), "stored")
	c(descMapStore, st.StoreFailures.Load(), "failures")
	c(descMapStore, st.Loaded.Load(), "loaded")
	// Counts kept per partition as entries change: a scrape does not
	// walk the entries (about 16 µs whatever their number,
	// BenchmarkStoreStats).
	ls := n.maps.LocalStats()
	g(descMapRoles, float64(ls.Owned), "owned")
	g(descMapRoles, float64(ls.Backups), "backup")
	g(descMapRoles, float64(ls.Migrating), "migrating")
	g(descMapDirty, float64(ls.StoreDirty))
	for name, ms := range ls.Maps {
		g(descMapEnts, float64(ms.Entries), name, "owned")
		g(descMapEnts, float64(ms.BackupCopies), name, "backup")
		g(descMapBytes, float64(ms.Bytes), name)
	}
	return st.BadMessages.Load()
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
