package plugins

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the registry's Prometheus collectors. They are not registered
// anywhere: the broker registers Registry.Collectors() on its own registry.
type metrics struct {
	merges    *prometheus.CounterVec
	conflicts *prometheus.CounterVec
	rejected  *prometheus.CounterVec
	discarded *prometheus.CounterVec
	reloads   *prometheus.CounterVec
	parked    prometheus.GaugeFunc
}

func newMetrics(parked func() float64) *metrics {
	return &metrics{
		merges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mendmq_policy_merges_total",
			Help: "Entries run through a merge policy, by map and verdict (keep_existing, take_merging, put, delete, or fail: the policy failed and the merging entry was parked or, with the store full, left to the caller).",
		}, []string{"policy", "map", "verdict"}),
		conflicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mendmq_policy_conflicts_total",
			Help: "Merges a policy failed on (trap, timeout, garbage, refused, unavailable) whose merging entry was parked.",
		}, []string{"policy", "reason"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mendmq_policy_conflicts_rejected_total",
			Help: "Failed merges that could not be parked because the conflict store was full; the caller kept the entry.",
		}, []string{"policy"}),
		discarded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mendmq_policy_instances_discarded_total",
			Help: "Policy instances thrown away after a trap, timeout or malformed answer.",
		}, []string{"policy"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mendmq_policy_reloads_total",
			Help: "Policy configuration applications (start, config change, module change, manual reload) by result.",
		}, []string{"result"}),
		parked: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "mendmq_policy_conflicts_parked",
			Help: "Conflicts currently parked for an operator.",
		}, parked),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.merges, m.conflicts, m.rejected, m.discarded, m.reloads, m.parked}
}

// Verdict label values of mendmq_policy_merges_total: the ABI's verdict
// names, and verdictFail for entries the policy failed on.
const verdictFail = "fail"

// verdictLabels indexes the label value of each outcome: the ABI verdicts
// 0-3, then verdictFail.
var verdictLabels = [...]string{"keep_existing", "take_merging", "put", "delete", verdictFail}

const failSlot = len(verdictLabels) - 1

// verdictCounts tallies merged entries per verdictLabels slot.
type verdictCounts [len(verdictLabels)]int

// mergeCounters are one policy's mendmq_policy_merges_total series, resolved
// once per (map, verdict) so a merge costs a sync.Map load and an atomic add
// rather than a label-hashing lookup in the vector.
type mergeCounters struct {
	vec    *prometheus.CounterVec
	policy string
	byMap  sync.Map // map name -> *mapCounters
	// last is the map merged last: a heal merges one map at a time, so
	// most lookups end here.
	last atomic.Pointer[mapCounters]
}

type mapCounters struct {
	name string
	c    [len(verdictLabels)]prometheus.Counter
}

func newMergeCounters(vec *prometheus.CounterVec, policy string) *mergeCounters {
	return &mergeCounters{vec: vec, policy: policy}
}

// forMap returns the counters of mapName, creating them on first use.
// Label cardinality is bounded by the maps that exist, which configuration
// and the cluster's map set bound.
func (m *mergeCounters) forMap(mapName string) *[len(verdictLabels)]prometheus.Counter {
	if l := m.last.Load(); l != nil && l.name == mapName {
		return &l.c
	}
	c, ok := m.byMap.Load(mapName)
	if !ok {
		mc := &mapCounters{name: mapName}
		for i, v := range verdictLabels {
			mc.c[i] = m.vec.WithLabelValues(m.policy, mapName, v)
		}
		c, _ = m.byMap.LoadOrStore(mapName, mc)
	}
	mc := c.(*mapCounters)
	m.last.Store(mc)
	return &mc.c
}

// slot is the verdictLabels index of a merge's outcome.
func slot(r *Result) int {
	if r.ConflictID != 0 || r.Unmerged || int(r.Verdict) >= failSlot {
		return failSlot
	}
	return int(r.Verdict)
}
