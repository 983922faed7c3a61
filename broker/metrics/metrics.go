// Package metrics exports the MQTT front's Prometheus metrics: a mochi hook
// counts messages by direction and QoS and drops by reason; a collector
// reads mochi's own atomic counters (connections, bytes, subscriptions,
// retained) at scrape time so the publish path pays nothing for them.
package metrics

import (
	"bytes"
	"errors"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"
	"github.com/prometheus/client_golang/prometheus"
)

// Drop reasons used as the "reason" label of mendmq_messages_dropped_total.
const (
	ReasonQueueFull     = "client_queue_full"  // QoS0 beyond mqtt.max_queued_messages
	ReasonInflightLimit = "inflight_expired"   // QoS1/2 inflight dropped (expired or over limit)
	ReasonNotAuthorized = "not_authorized"     // ACL denied a publish
	ReasonReservedTopic = "reserved_topic"     // a client published to a '$' topic (broker/reserved)
	ReasonPacketTooBig  = "packet_too_large"   // over mqtt.max_packet_size
	ReasonNetsplit      = "netsplit"           // refused while split (cluster gating)
	ReasonPeerQueueFull = "peer_queue_full"    // cross-node queue full (QoS0 only)
	ReasonNoRoute       = "no_matching_client" // published with no subscriber anywhere
	ReasonHandoff       = "handoff_failed"     // caught for a moved session, its new node unreachable
	ReasonSuperseded    = "session_superseded" // queued in a session replaced on another node and not moved there (clean start there, clean session, no matching subscription, ship failed)
)

// MQTT holds the counters; one per node (tests run several nodes in one
// process, so nothing is registered globally).
type MQTT struct {
	mqtt.HookBase

	info *system.Info

	in      [3]atomic.Uint64 // PUBLISH received by QoS
	out     [3]atomic.Uint64 // PUBLISH sent by QoS
	dropped *prometheus.CounterVec
	refused *prometheus.CounterVec
	healed  *prometheus.CounterVec
}

// Outcomes of the queued messages of a session dropped because another
// node's session of the client id won (a duplicate at a netsplit's heal, a
// restarted node's stale copy): the "outcome" label of
// mendmq_session_heal_messages_total.
const (
	HealShipped       = "shipped"        // sent by the losing node to the winner's
	HealShipFailed    = "ship_failed"    // the winner's node never took them (also dropped, session_superseded)
	HealAppended      = "appended"       // queued for the winning session
	HealDuplicate     = "duplicate"      // the winning session had it already (same origin and publish id)
	HealNotSubscribed = "not_subscribed" // no QoS 1/2 subscription of the winning session matches (also dropped)
)

var _ mqtt.Hook = (*MQTT)(nil)

// New returns the hook; Register it and add it to the mochi server.
func New(info *system.Info) *MQTT {
	return &MQTT{
		info: info,
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mendmq_messages_dropped_total",
			Help: "Messages dropped by the broker, by reason.",
		}, []string{"reason"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mendmq_connections_refused_total",
			Help: "Connections refused before CONNACK success, by reason.",
		}, []string{"reason"}),
		healed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mendmq_session_heal_messages_total",
			Help: "Queued messages of a session dropped because another node's session of the client id won (a duplicate at a netsplit's heal, a restarted node's stale copy), by outcome: shipped and ship_failed on the losing node; appended, duplicate and not_subscribed on the winning one.",
		}, []string{"outcome"}),
	}
}

// ID names the hook.
func (m *MQTT) ID() string { return "mendmq-metrics" }

// Provides declares the handled hook methods.
func (m *MQTT) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnPacketRead, mqtt.OnPacketSent, mqtt.OnPublishDropped, mqtt.OnQosDropped, mqtt.OnDisconnect}, []byte{b})
}

// OnDisconnect counts a packet over mqtt.max_packet_size: mochi refuses it
// while reading the fixed header and ends the connection with
// ErrPacketTooLarge, without any other hook seeing the packet.
func (m *MQTT) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if errors.Is(err, packets.ErrPacketTooLarge) {
		m.dropped.WithLabelValues(ReasonPacketTooBig).Inc()
	}
}

// OnPacketRead counts inbound PUBLISH packets by QoS.
func (m *MQTT) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type == packets.Publish && pk.FixedHeader.Qos < 3 {
		m.in[pk.FixedHeader.Qos].Add(1)
	}
	return pk, nil
}

// OnPacketSent counts outbound PUBLISH packets by QoS.
func (m *MQTT) OnPacketSent(cl *mqtt.Client, pk packets.Packet, b []byte) {
	if pk.FixedHeader.Type == packets.Publish && pk.FixedHeader.Qos < 3 {
		m.out[pk.FixedHeader.Qos].Add(1)
	}
}

// OnPublishDropped counts messages dropped because a client's queue was full.
func (m *MQTT) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	m.dropped.WithLabelValues(ReasonQueueFull).Inc()
}

// OnQosDropped counts inflight messages dropped. mochi v2.7.9 also calls
// it when nothing is lost: for the messages of a session that a reconnect
// resumes (moved to the new client after the old one is marked taken
// over), and a second time, with only a packet id, for every expired
// message (server.go clearExpiredInflights after ClearExpiredInflights).
func (m *MQTT) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if cl.IsTakenOver() || pk.FixedHeader.Type == 0 {
		return
	}
	m.dropped.WithLabelValues(ReasonInflightLimit).Inc()
}

// Dropped counts a message dropped for reason (one of the Reason constants).
func (m *MQTT) Dropped(reason string) { m.dropped.WithLabelValues(reason).Inc() }

// DroppedN counts n messages dropped for reason.
func (m *MQTT) DroppedN(reason string, n int) { m.dropped.WithLabelValues(reason).Add(float64(n)) }

// Refused counts a refused connection for reason.
func (m *MQTT) Refused(reason string) { m.refused.WithLabelValues(reason).Inc() }

// Healed counts n messages of a duplicate session with outcome (one of
// the Heal constants).
func (m *MQTT) Healed(outcome string, n int) {
	if n > 0 {
		m.healed.WithLabelValues(outcome).Add(float64(n))
	}
}

var (
	descMessages = prometheus.NewDesc("mendmq_messages_total", "PUBLISH packets by direction (in = from clients, out = to clients) and QoS.", []string{"direction", "qos"}, nil)
	descClients  = prometheus.NewDesc("mendmq_clients_connected", "Currently connected clients.", nil, nil)
	descTotal    = prometheus.NewDesc("mendmq_clients_known", "Known clients, connected or with a kept session (a gauge, so no _total suffix).", nil, nil)
	descBytes    = prometheus.NewDesc("mendmq_bytes_total", "MQTT bytes by direction.", []string{"direction"}, nil)
	descSubs     = prometheus.NewDesc("mendmq_subscriptions", "Current subscriptions on this node.", nil, nil)
	descRetained = prometheus.NewDesc("mendmq_retained_messages", "Retained messages held by this node.", nil, nil)
	descInflight = prometheus.NewDesc("mendmq_inflight_messages", "QoS1/2 messages awaiting acknowledgement.", nil, nil)
	descUptime   = prometheus.NewDesc("mendmq_uptime_seconds", "Seconds since the MQTT server started.", nil, nil)
)

// Describe implements prometheus.Collector.
func (m *MQTT) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descMessages, descClients, descTotal, descBytes, descSubs, descRetained, descInflight, descUptime} {
		ch <- d
	}
	m.dropped.Describe(ch)
	m.refused.Describe(ch)
	m.healed.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *MQTT) Collect(ch chan<- prometheus.Metric) {
	qos := []string{"0", "1", "2"}
	for i := range 3 {
		ch <- prometheus.MustNewConstMetric(descMessages, prometheus.CounterValue, float64(m.in[i].Load()), "in", qos[i])
		ch <- prometheus.MustNewConstMetric(descMessages, prometheus.CounterValue, float64(m.out[i].Load()), "out", qos[i])
	}
	info := m.info
	ch <- prometheus.MustNewConstMetric(descClients, prometheus.GaugeValue, float64(atomic.LoadInt64(&info.ClientsConnected)))
	ch <- prometheus.MustNewConstMetric(descTotal, prometheus.GaugeValue, float64(atomic.LoadInt64(&info.ClientsTotal)))
	ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(atomic.LoadInt64(&info.BytesReceived)), "in")
	ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(atomic.LoadInt64(&info.BytesSent)), "out")
	ch <- prometheus.MustNewConstMetric(descSubs, prometheus.GaugeValue, float64(atomic.LoadInt64(&info.Subscriptions)))
	ch <- prometheus.MustNewConstMetric(descRetained, prometheus.GaugeValue, float64(atomic.LoadInt64(&info.Retained)))
	ch <- prometheus.MustNewConstMetric(descInflight, prometheus.GaugeValue, float64(atomic.LoadInt64(&info.Inflight)))
	ch <- prometheus.MustNewConstMetric(descUptime, prometheus.GaugeValue, float64(atomic.LoadInt64(&info.Uptime)))
	m.dropped.Collect(ch)
	m.refused.Collect(ch)
	m.healed.Collect(ch)
}
