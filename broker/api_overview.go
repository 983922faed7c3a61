package broker

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/mendmq/mendmq/broker/admin"
	"github.com/mendmq/mendmq/cluster"
	"github.com/mendmq/mendmq/plugins"
)

// Overview is GET /api/v1/overview: everything the status page shows,
// in one request. Counters are totals since start; the page derives rates
// from two polls.
type Overview struct {
	Node          string    `json:"node"`
	Version       string    `json:"version"`
	Time          time.Time `json:"time"`
	UptimeSeconds int64     `json:"uptime_seconds"`
	Ready         bool      `json:"ready"`
	ReadyReason   string    `json:"ready_reason,omitempty"`

	MQTT MQTTOverview `json:"mqtt"`
	// Cluster is this node's view of the cluster; nil without clustering.
	Cluster *cluster.Status `json:"cluster"`
	// Policies are the merge policies with their call and failure counts.
	Policies []PolicyOverview `json:"policies"`
	// Conflicts is the number of parked conflicts (listed by
	// GET /api/v1/policies/conflicts).
	Conflicts int `json:"conflicts"`

	// Netsplit is the netsplit state (nil without clustering). The status
	// page shows a banner while it is active.
	Netsplit *NetsplitOverview `json:"netsplit"`
	// Maps summarizes the partitioned maps, one row per map (nil without
	// clustering); the page renders them as a table.
	Maps []MapRow `json:"maps"`
}

// NetsplitOverview is the netsplit state as the status page shows it.
type NetsplitOverview struct {
	// Active: a member is unreachable (the banner shows).
	Active bool `json:"active"`
	// Gated: this node refuses what cluster.allow_*_during_netsplit
	// do not allow.
	Gated bool   `json:"gated"`
	Mode  string `json:"mode"`
	// Unreachable names the unreachable members, Since when the split
	// began, WindowMS the longest window of uncertainty among them (last
	// sign of life to detection).
	Unreachable []string  `json:"unreachable,omitempty"`
	Since       time.Time `json:"since,omitzero"`
	WindowMS    int64     `json:"window_ms"`
	// Held is how many publishes wait for unreachable members.
	Held int `json:"held"`
	// LastHeal is the last split that ended.
	LastHeal *HealOverview `json:"last_heal,omitempty"`
	// Splits counts the splits since the node started.
	Splits uint64 `json:"splits"`
}

// HealOverview is the end of a split.
type HealOverview struct {
	At            time.Time `json:"at"`
	DurationMS    int64     `json:"duration_ms"`
	ConvergenceMS *int64    `json:"convergence_ms,omitempty"` // nil while converging
}

func netsplitOverview(st cluster.Status) *NetsplitOverview {
	ns := st.Netsplit
	o := &NetsplitOverview{Active: ns.Split, Gated: ns.Gated, Mode: ns.Mode, Since: ns.Since, Splits: ns.Splits}
	for _, u := range ns.Unreachable {
		o.Unreachable = append(o.Unreachable, u.Name)
		o.WindowMS = max(o.WindowMS, u.Uncertainty().Milliseconds())
	}
	for _, m := range st.Members {
		o.Held += m.Held
	}
	if h := ns.LastHeal; h != nil {
		o.LastHeal = &HealOverview{At: h.At, DurationMS: h.Duration.Milliseconds()}
		if !h.Converged.IsZero() {
			ms := h.Convergence.Milliseconds()
			o.LastHeal.ConvergenceMS = &ms
		}
	}
	return o
}

// MapRow is one map on the status page.
type MapRow struct {
	Map     string `json:"map"`
	Entries int64  `json:"entries"`
	Bytes   int64  `json:"bytes"`
	// PerMember is "member:entries" for each member.
	PerMember string `json:"per_member"`
	// Migrating counts partitions waiting for a copy, cluster-wide.
	Migrating int `json:"migrating_partitions"`
	// StoreDirty is "member:entries" waiting for each member's MapStore
	// (all maps).
	StoreDirty string `json:"store_dirty_per_member"`
}

func (b *Broker) mapRows(ctx context.Context) []MapRow {
	all := b.mapsOverview(ctx)
	rows := []MapRow{}
	migrating := 0
	for _, st := range all.Members {
		migrating += st.Migrating
	}
	for _, name := range all.Maps {
		r := MapRow{Map: name, Migrating: migrating}
		members := slices.Sorted(maps.Keys(all.Members))
		for _, m := range members {
			ms := all.Members[m].Maps[name]
			r.Entries += ms.Entries
			r.Bytes += ms.Bytes
			r.PerMember += fmt.Sprintf("%s:%d ", m, ms.Entries)
		}
		r.PerMember = strings.TrimSpace(r.PerMember)
		for _, m := range members {
			r.StoreDirty += fmt.Sprintf("%s:%d ", m, all.Members[m].StoreDirty)
		}
		r.StoreDirty = strings.TrimSpace(r.StoreDirty)
		rows = append(rows, r)
	}
	return rows
}

// MQTTOverview holds the node's MQTT counters and gauges.
type MQTTOverview struct {
	ClientsConnected int64   `json:"clients_connected"`
	Sessions         int64   `json:"sessions"`
	Subscriptions    int64   `json:"subscriptions"`
	Retained         int64   `json:"retained"`
	MessagesIn       float64 `json:"messages_in"`
	MessagesOut      float64 `json:"messages_out"`
	BytesIn          float64 `json:"bytes_in"`
	BytesOut         float64 `json:"bytes_out"`
	Dropped          float64 `json:"dropped"`
}

// PolicyOverview is a policy with its counters
// (mendmq_policy_merges_total, mendmq_policy_conflicts_total).
type PolicyOverview struct {
	plugins.PolicyInfo
	Calls    float64 `json:"calls"`
	Failures float64 `json:"failures"`
}

func (b *Broker) overview() Overview {
	info := b.server.Info.Clone()
	o := Overview{
		Node: b.cfg.Node.Name, Version: Version, Time: time.Now().UTC(),
		UptimeSeconds: time.Now().Unix() - info.Started,
		MQTT: MQTTOverview{
			ClientsConnected: info.ClientsConnected,
			Sessions:         int64(len(b.localClients())),
			Subscriptions:    info.Subscriptions,
			Retained:         info.Retained,
		},
		Conflicts: len(b.policies.Conflicts()),
	}
	if err := b.Ready(); err != nil {
		o.ReadyReason = err.Error()
	} else {
		o.Ready = true
	}
	if b.node != nil {
		st := b.node.Status()
		o.Cluster = &st
		o.Netsplit = netsplitOverview(st)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		o.Maps = b.mapRows(ctx)
		cancel()
	}
	calls, failures := map[string]float64{}, map[string]float64{}
	if fams, err := b.registry.Gather(); err == nil {
		for _, f := range fams {
			for _, m := range f.GetMetric() {
				v := m.GetCounter().GetValue()
				switch f.GetName() {
				case "mendmq_messages_total":
					if label(m, "direction") == "in" {
						o.MQTT.MessagesIn += v
					} else {
						o.MQTT.MessagesOut += v
					}
				case "mendmq_bytes_total":
					if label(m, "direction") == "in" {
						o.MQTT.BytesIn += v
					} else {
						o.MQTT.BytesOut += v
					}
				case "mendmq_messages_dropped_total":
					o.MQTT.Dropped += v
				case "mendmq_policy_merges_total":
					calls[label(m, "policy")] += v
				case "mendmq_policy_conflicts_total":
					failures[label(m, "policy")] += v
				}
			}
		}
	}
	for _, p := range b.policies.List() {
		o.Policies = append(o.Policies, PolicyOverview{PolicyInfo: p, Calls: calls[p.Name], Failures: failures[p.Name]})
	}
	return o
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func (b *Broker) apiOverview(w http.ResponseWriter, r *http.Request) {
	if _, ok := admin.Query(w, r); !ok {
		return
	}
	admin.WriteJSON(w, http.StatusOK, b.overview())
}
