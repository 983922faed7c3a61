package plugins

import "github.com/prometheus/client_golang/prometheus"

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
			Help: "Entries run through a merge policy (including those it failed on).",
		}, []string{"policy"}),
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
