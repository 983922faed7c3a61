package membership

import (
	"fmt"
	"io"
	"time"

	"github.com/hashicorp/memberlist"
)

// delegates implements memberlist's delegate interfaces for a Membership.
// Its methods run on memberlist's goroutines, the event, alive and
// conflict ones while memberlist holds its node lock: they only touch
// Membership state under m.mu and never call into memberlist.
type delegates struct{ m *Membership }

var (
	_ memberlist.Delegate         = (*delegates)(nil)
	_ memberlist.EventDelegate    = (*delegates)(nil)
	_ memberlist.AliveDelegate    = (*delegates)(nil)
	_ memberlist.MergeDelegate    = (*delegates)(nil)
	_ memberlist.ConflictDelegate = (*delegates)(nil)
	_ memberlist.PingDelegate     = (*delegates)(nil)
)

// NodeMeta implements memberlist.Delegate.
func (d *delegates) NodeMeta(limit int) []byte {
	d.m.mu.Lock()
	meta := d.m.meta
	w := wireMeta{cluster: d.m.cfg.ClusterName, NodeMeta: meta}
	if d.m.left {
		w.flags |= flagLeaving
	}
	d.m.mu.Unlock()
	b := encodeWireMeta(w)
	if len(b) > limit {
		// UpdateMeta and Validate keep this from happening; never let
		// memberlist panic over it.
		w.App = nil
		b = encodeWireMeta(w)
	}
	return b
}

// NotifyMsg implements memberlist.Delegate. The only user message is
// a leaving member's direct leave notice (see Leave); anything else is
// counted as refused input and dropped.
func (d *delegates) NotifyMsg(b []byte) {
	m := d.m
	name, err := decodeLeavingNotice(b)
	if err != nil {
		m.log.Debug("dropped user message", "err", err)
		return
	}
	m.mu.Lock()
	m.table.leaving(name)
	m.mu.Unlock()
}

// GetBroadcasts implements memberlist.Delegate; nothing is piggybacked.
func (d *delegates) GetBroadcasts(overhead, limit int) [][]byte { return nil }

// LocalState implements memberlist.Delegate: in a join's state exchange,
// the members this node holds Dead or suspects (see failed.go); nothing
// otherwise.
func (d *delegates) LocalState(join bool) []byte {
	if !join {
		return nil
	}
	m := d.m
	m.mu.Lock()
	fs := m.table.failed(time.Now(), m.cfg.Unreachable)
	left := m.left
	m.mu.Unlock()
	if left {
		return nil
	}
	return encodeFailed(m.cfg.ClusterName, fs)
}

// MergeRemoteState implements memberlist.Delegate: the members the peer
// of a join holds Dead or suspects that this node does not know become
// Dead here.
func (d *delegates) MergeRemoteState(buf []byte, join bool) {
	if !join || len(buf) == 0 {
		return
	}
	m := d.m
	fs, err := decodeFailed(buf)
	if err != nil {
		m.bridge.bad("failed-member list of a join: "+err.Error(), true)
		return
	}
	now := time.Now()
	m.mu.Lock()
	if m.afterLeave() {
		m.mu.Unlock()
		return
	}
	var evs []event
	for _, f := range fs {
		if f.cluster != m.cfg.ClusterName {
			continue // NotifyMerge refuses such a peer
		}
		evs = append(evs, m.table.learnFailed(f.m, now.Add(-f.age))...)
	}
	m.mu.Unlock()
	for _, ev := range evs {
		m.log.Warn("member failed (learned at a join)", "member", ev.m.Name, "addr", ev.m.GossipAddr)
	}
	m.emit(evs)
}

// toMember converts a memberlist node; leaving is its meta's leave flag.
func toMember(n *memberlist.Node) (mem Member, leaving bool) {
	mem = Member{Name: n.Name, GossipAddr: n.Address()}
	if w, err := decodeMeta(n.Meta); err == nil {
		mem.Meta = w.NodeMeta
		leaving = w.flags&flagLeaving != 0
	}
	return mem, leaving
}

// afterLeave reports whether memberlist's news comes after this node
// started to leave, and is to be ignored: Leave sets the final view
// (see there). Call with m.mu held.
func (m *Membership) afterLeave() bool { return m.left }

// NotifyJoin implements memberlist.EventDelegate.
func (d *delegates) NotifyJoin(n *memberlist.Node) {
	m := d.m
	mem, leaving := toMember(n)
	m.mu.Lock()
	if m.afterLeave() {
		m.mu.Unlock()
		return
	}
	evs := m.table.alive(mem, leaving, time.Now())
	m.mu.Unlock()
	if n.Name != m.cfg.NodeName {
		m.log.Info("member joined", "member", n.Name, "addr", mem.GossipAddr)
	}
	m.emit(evs)
}

// NotifyUpdate implements memberlist.EventDelegate.
func (d *delegates) NotifyUpdate(n *memberlist.Node) {
	m := d.m
	mem, leaving := toMember(n)
	m.mu.Lock()
	if m.afterLeave() {
		m.mu.Unlock()
		return
	}
	evs := m.table.alive(mem, leaving, time.Now())
	m.mu.Unlock()
	m.emit(evs)
}

// NotifyLeave implements memberlist.EventDelegate. memberlist calls it
// for failures and graceful leaves alike and the Node it passes does not
// say which; the leave flag a leaving node announces first (see Leave)
// does.
func (d *delegates) NotifyLeave(n *memberlist.Node) {
	m := d.m
	mem, _ := toMember(n)
	m.mu.Lock()
	if m.afterLeave() {
		m.mu.Unlock()
		return
	}
	evs := m.table.gone(mem, time.Now())
	m.mu.Unlock()
	for _, ev := range evs {
		if ev.m.State == Left {
			m.log.Info("member left", "member", ev.m.Name)
		} else {
			m.log.Warn("member failed", "member", ev.m.Name, "addr", ev.m.GossipAddr)
		}
	}
	m.emit(evs)
}

// NotifyAlive implements memberlist.AliveDelegate: admission of every
// member memberlist hears about.
func (d *delegates) NotifyAlive(n *memberlist.Node) error {
	m := d.m
	if n.Name == m.cfg.NodeName {
		return nil
	}
	w, err := decodeMeta(n.Meta)
	if err != nil {
		m.refused(n.Name, "unreadable metadata: "+err.Error(), false)
		return err
	}
	if w.cluster != m.cfg.ClusterName {
		err := fmt.Errorf("%w: %s at %s is in cluster %q, this node in %q", ErrClusterMismatch, n.Name, n.Address(), w.cluster, m.cfg.ClusterName)
		m.refused(n.Name, err.Error(), false)
		return err
	}
	if m.cfg.Admit != nil {
		mem := Member{Name: n.Name, GossipAddr: n.Address(), Meta: w.NodeMeta}
		if err := m.cfg.Admit(mem); err != nil {
			m.refused(n.Name, "not admitted: "+err.Error(), false)
			return err
		}
	}
	return nil
}

// NotifyMerge implements memberlist.MergeDelegate: it vets the member
// list of a node this one joins or that joins this one, refusing the
// whole merge if it belongs to another cluster or lists this node's name
// alive at another address. Members it lists as Left that this node
// thinks Dead are marked Left (they are not re-joined).
func (d *delegates) NotifyMerge(peers []*memberlist.Node) error {
	m := d.m
	m.mu.Lock()
	left := m.left
	m.mu.Unlock()
	if left {
		return ErrLeft
	}
	self := ""
	if p := m.localAddr.Load(); p != nil {
		self = *p
	}
	for _, n := range peers {
		w, err := decodeMeta(n.Meta)
		if err == nil && w.cluster != m.cfg.ClusterName {
			err := fmt.Errorf("%w: %s at %s is in cluster %q, this node in %q (check cluster.name and cluster.seeds)",
				ErrClusterMismatch, n.Name, n.Address(), w.cluster, m.cfg.ClusterName)
			m.refused(n.Name, err.Error(), false)
			m.mu.Lock()
			if m.mismatch == nil {
				m.mismatch = err
			}
			m.mu.Unlock()
			return err
		}
		if n.Name == m.cfg.NodeName && self != "" && n.Address() != self &&
			(n.State == memberlist.StateAlive || n.State == memberlist.StateSuspect) {
			err := fmt.Errorf("%w: %q is alive at %s, this node is at %s (give each node a unique node.name)",
				ErrNameConflict, n.Name, n.Address(), self)
			m.refused(n.Name, err.Error(), true)
			m.mu.Lock()
			if m.conflict == nil {
				m.conflict = err
			}
			m.mu.Unlock()
			return err
		}
	}
	now := time.Now()
	for _, n := range peers {
		if n.State == memberlist.StateLeft {
			m.mu.Lock()
			evs := m.table.left(n.Name, now)
			m.mu.Unlock()
			m.emit(evs)
		}
	}
	return nil
}

// NotifyConflict implements memberlist.ConflictDelegate: memberlist
// refused an alive message for a known name at another address.
func (d *delegates) NotifyConflict(existing, other *memberlist.Node) {
	m := d.m
	err := fmt.Errorf("%w: %q is known at %s, refused at %s", ErrNameConflict, existing.Name, existing.Address(), other.Address())
	m.refused(other.Name, err.Error(), true)
	if existing.Name == m.cfg.NodeName {
		m.mu.Lock()
		if m.conflict == nil {
			m.conflict = err
		}
		m.mu.Unlock()
	}
}

// AckPayload implements memberlist.PingDelegate.
func (d *delegates) AckPayload() []byte { return nil }

// NotifyPingComplete implements memberlist.PingDelegate: a direct probe
// succeeded, so local suspicion of that member ends.
func (d *delegates) NotifyPingComplete(other *memberlist.Node, rtt time.Duration, payload []byte) {
	m := d.m
	m.mu.Lock()
	evs := m.table.suspect(other.Name, false, time.Now())
	m.mu.Unlock()
	m.emit(evs)
}

// localSuspect is called when memberlist logs that a local probe failed.
func (d *delegates) localSuspect(name string) {
	m := d.m
	m.mu.Lock()
	evs := m.table.suspect(name, true, time.Now())
	m.mu.Unlock()
	if len(evs) > 0 {
		m.log.Warn("member suspected", "member", name)
	}
	m.emit(evs)
}

var _ io.Writer = (*logBridge)(nil)
