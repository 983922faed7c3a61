package cluster

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mendmq/mendmq/cluster/members"
	"github.com/mendmq/mendmq/cluster/membership"
	"github.com/mendmq/mendmq/cluster/netsplit"
)

// The netsplit driver: it feeds the detector (package netsplit) with the
// members view's events and, every splitTick, with the data plane's last
// signs of life and the time, and acts on its transitions: the gate flag
// the broker reads, logs, metrics, and the heal's convergence.

// splitTick is how often graces are re-evaluated.
const splitTick = 100 * time.Millisecond

// NetsplitStatus is the node's netsplit state for operators.
type NetsplitStatus struct {
	netsplit.Status
	// LastHeal is the last split that ended, if any.
	LastHeal *Heal `json:"last_heal,omitempty"`
	// Splits counts the splits since the node started.
	Splits uint64 `json:"splits"`
}

// Heal describes the end of a split.
type Heal struct {
	// At is when the last unreachable member came back.
	At time.Time `json:"at"`
	// Duration is how long the split lasted.
	Duration time.Duration `json:"duration_ns"`
	// Converged is when the tables were identical with every reachable
	// peer and no conflict was left to merge (zero while converging).
	Converged time.Time `json:"converged,omitzero"`
	// Convergence is Converged - At.
	Convergence time.Duration `json:"convergence_ns"`
}

type splitDriver struct {
	mu       sync.Mutex
	d        *netsplit.Detector
	lastHeal *Heal
	splits   uint64

	split, gated atomic.Bool
	// unreach is the set of members found unreachable (copied on each
	// change, read per routed publish).
	unreach atomic.Pointer[map[string]bool]
	// onChange, if set, is told when split or gated changes.
	onChange atomic.Pointer[func(split, gated bool)]

	uncertainty *prometheus.HistogramVec
	duration    prometheus.Histogram
	convergence prometheus.Histogram
}

func newSplitDriver(self string, cfg netsplit.Config) *splitDriver {
	return &splitDriver{
		d: netsplit.New(self, cfg, time.Now()),
		uncertainty: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mendmq_cluster_netsplit_uncertainty_seconds",
			Help:    "Window of uncertainty of each member found unreachable: from the last sign of life (data-plane bytes, membership) to the detection, by reason (dead, link down, no link).",
			Buckets: []float64{.1, .25, .5, .75, 1, 1.5, 2, 3, 5, 10, 30},
		}, []string{"reason"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mendmq_cluster_netsplit_duration_seconds",
			Help:    "How long each netsplit lasted, from the first member found unreachable to the last one back (or removed).",
			Buckets: []float64{1, 2, 5, 10, 30, 60, 300, 900, 3600},
		}),
		convergence: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mendmq_cluster_netsplit_heal_convergence_seconds",
			Help:    "Time from the end of a netsplit until the replicated tables were identical with every peer and every conflict merged.",
			Buckets: []float64{.05, .1, .25, .5, 1, 2, 3, 5, 10, 30, 60},
		}),
	}
}

// setUnreachable records that member name is (or is no longer)
// unreachable. Called from splitTransitions, which is serialized by
// its callers' order only, so the set is updated under mu.
func (s *splitDriver) setUnreachable(name string, down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := map[string]bool{}
	if cur := s.unreach.Load(); cur != nil {
		for k := range *cur {
			next[k] = true
		}
	}
	if down {
		next[name] = true
	} else {
		delete(next, name)
	}
	s.unreach.Store(&next)
}

// unreachable reports whether the detector found member name
// unreachable.
func (s *splitDriver) unreachable(name string) bool {
	if s == nil {
		return false
	}
	cur := s.unreach.Load()
	return cur != nil && (*cur)[name]
}

// reach is the members view as routing and registration must see it: a
// member the netsplit detector found unreachable (its data-plane link
// down past the grace, while memberlist may still call it alive) is not
// routed to, so a publish for it is held (ForwardHold) or refused at
// once instead of after a call's timeout, and it does not lead
// registrations, so a client may register on this side of a split when
// allow_register_during_netsplit lets it.
type reach struct{ n *Node }

// Routable implements router.Members.
func (r reach) Routable(name string) bool {
	return r.n.view.Routable(name) && !r.n.split.unreachable(name)
}

// Reachable implements registry.Members.
func (r reach) Reachable(name string) bool { return !r.n.split.unreachable(name) }

// Alive implements registry.Members: the alive members this node can
// reach.
func (r reach) Alive() []string {
	return slices.DeleteFunc(r.n.view.Alive(), r.n.split.unreachable)
}

// State implements registry.Members.
func (r reach) State(name string) (membership.State, bool) { return r.n.view.State(name) }

// observe feeds a members-view event (a watcher: serialized, quick).
func (n *Node) observeSplit(ev members.Event, m members.Member) {
	s := n.split
	s.mu.Lock()
	s.d.Observe(ev, m)
	trs := s.d.Ready()
	s.mu.Unlock()
	n.splitTransitions(trs)
}

// splitLoop ticks the detector until ctx ends.
func (n *Node) splitLoop(ctx context.Context) {
	t := time.NewTicker(splitTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s := n.split
			peers := n.view.Members()
			s.mu.Lock()
			for _, m := range peers {
				if !m.Self {
					if t := n.dp.LastReceived(m.Name); !t.IsZero() {
						s.d.Contact(m.Name, t)
					}
				}
			}
			s.d.Tick(now)
			trs := s.d.Ready()
			s.mu.Unlock()
			n.splitTransitions(trs)
		}
	}
}

// splitTransitions acts on the detector's transitions.
func (n *Node) splitTransitions(trs []netsplit.Transition) {
	if len(trs) == 0 {
		return
	}
	s := n.split
	for _, tr := range trs {
		switch tr.Kind {
		case netsplit.Entered:
			s.mu.Lock()
			s.splits++
			s.mu.Unlock()
		case netsplit.Detected:
			u := tr.Member
			s.setUnreachable(u.Name, true)
			s.uncertainty.WithLabelValues(u.Reason).Observe(u.Uncertainty().Seconds())
			n.log.Warn("netsplit: member unreachable", "peer", u.Name, "reason", u.Reason,
				"last_contact", u.LastContact, "uncertainty", u.Uncertainty().Round(time.Millisecond))
		case netsplit.Recovered:
			s.setUnreachable(tr.Member.Name, false)
			n.router.Kick() // what was held for it goes out now
			n.log.Info("netsplit: member reachable again", "peer", tr.Member.Name)
		case netsplit.Healed:
			s.duration.Observe(tr.Duration.Seconds())
			h := &Heal{At: tr.At, Duration: tr.Duration}
			s.mu.Lock()
			s.lastHeal = h
			s.mu.Unlock()
			n.wg.Add(1)
			go func() {
				defer n.wg.Done()
				n.converge(h)
			}()
		}
	}
	s.mu.Lock()
	split, gated := s.d.Split(), s.d.Gated()
	st := s.d.Status()
	s.mu.Unlock()
	wasSplit, wasGated := s.split.Swap(split), s.gated.Swap(gated)
	if split && !wasSplit {
		n.log.Warn("netsplit: entered", "mode", st.Mode, "gated", gated, "unreachable", len(st.Unreachable), "agreed", st.Agreed)
	}
	if split != wasSplit || gated != wasGated {
		if f := s.onChange.Load(); f != nil {
			(*f)(split, gated)
		}
	}
}

// converge runs anti-entropy with every reachable peer after a heal until
// a round repairs nothing and no conflict waits, and records the time.
func (n *Node) converge(h *Heal) {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if n.split.split.Load() {
			return // split again; the next heal measures
		}
		quiet := n.repl.Pending() == 0
		for _, p := range n.view.AlivePeers() {
			got, sent, err := n.repl.AntiEntropy(n.ctx, p)
			if err != nil || got+sent > 0 {
				quiet = false
			}
		}
		if n.ctx.Err() != nil {
			return
		}
		if quiet {
			now := time.Now()
			n.split.mu.Lock()
			h.Converged, h.Convergence = now, now.Sub(h.At)
			n.split.mu.Unlock()
			n.split.convergence.Observe(h.Convergence.Seconds())
			n.log.Info("netsplit healed", "split_lasted", h.Duration.Round(time.Millisecond),
				"convergence", h.Convergence.Round(time.Millisecond))
			return
		}
		select {
		case <-n.ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
	n.log.Warn("netsplit healed, but the tables did not converge within a minute")
}

// Netsplit returns the node's netsplit state.
func (n *Node) Netsplit() NetsplitStatus {
	s := n.split
	s.mu.Lock()
	defer s.mu.Unlock()
	st := NetsplitStatus{Status: s.d.Status(), Splits: s.splits}
	if s.lastHeal != nil {
		h := *s.lastHeal
		st.LastHeal = &h
	}
	return st
}

// Split reports whether the node is in a netsplit (a member is
// unreachable). It is cheap: a gate reads it per operation.
func (n *Node) Split() bool { return n.split.split.Load() }

// Gated reports whether the node gates what the allow_*_during_netsplit
// switches guard: it is split (netsplit_mode any) or split without a
// majority (majority). Cheap.
func (n *Node) Gated() bool { return n.split.gated.Load() }

// OnNetsplitChange sets a function told whenever Split or Gated changes
// (from the cluster's goroutines; it must be quick).
func (n *Node) OnNetsplitChange(f func(split, gated bool)) { n.split.onChange.Store(&f) }

// SetNetsplitMode changes cluster.netsplit_mode at run time.
func (n *Node) SetNetsplitMode(m netsplit.Mode) {
	s := n.split
	s.mu.Lock()
	s.d.SetMode(m)
	s.d.Tick(time.Now())
	trs := s.d.Ready()
	s.mu.Unlock()
	n.splitTransitions(trs)
	// The mode alone may change gating without a transition.
	s.mu.Lock()
	gated := s.d.Gated()
	s.mu.Unlock()
	if s.gated.Swap(gated) != gated {
		if f := s.onChange.Load(); f != nil {
			(*f)(s.split.Load(), gated)
		}
	}
}
