// Package gate is the netsplit gate: while the cluster says this node is
// gated (in a netsplit; in majority mode, on the minority side), it
// refuses what the operator did not allow with
// cluster.allow_{register,publish,subscribe,unsubscribe}_during_netsplit,
// the way VerneMQ does (DESIGN §3, §8):
//
//	              MQTT 5                               MQTT 3.1.1
//	CONNECT       CONNACK 0x88 server unavailable      CONNACK return code 3
//	PUBLISH 0     dropped, counted (reason netsplit)   dropped, counted
//	PUBLISH 1     PUBACK 0x83 implementation specific  no PUBACK; disconnected,
//	PUBLISH 2     PUBREC 0x80 unspecified error          so it resends later
//	SUBSCRIBE     SUBACK 0x87 not authorized per filter SUBACK 0x80 per filter
//	UNSUBSCRIBE   UNSUBACK 0x80 per filter (kept)      no UNSUBACK; disconnected,
//	                                                     nothing unsubscribed
//
// Every refusal carries the reason string "netsplit" where MQTT 5 has
// one. A refused message is never acknowledged as a success (see package
// refuse for how each answer is written). The switches change while the
// node runs (SetAllow, from a configuration reload).
//
// What passes always: the broker's own clients (mochi's inline client,
// the cluster's injectors delivering what other nodes forward, the admin
// API's operator client, which answers its HTTP caller itself) and wills,
// which mochi publishes without OnPublish: they are the point of a will,
// and the cluster holds those for unreachable nodes.
//
// The gate reads the cluster's state at each operation, so an operation
// is refused from the moment the detector decides, and accepted again
// from the heal.
package gate

import (
	"bytes"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mendmq/mendmq/broker/refuse"
)

// Allow holds the four switches: what a gated node still accepts.
type Allow struct {
	Register, Publish, Subscribe, Unsubscribe bool
}

// State is what the gate asks of the cluster.
type State interface {
	// Gated reports whether the node is in a netsplit that gates it.
	Gated() bool
}

// Options configures the gate.
type Options struct {
	// Refuse writes the refusals (required).
	Refuse *refuse.Refuser
	// Refused, if set, counts a refused CONNECT ("netsplit"), alongside
	// the broker's other refused connections.
	Refused func(reason string)
	// Passes, if set, reports a client whose operations are never gated
	// besides inline ones (the admin API's operator).
	Passes func(cl *mqtt.Client) bool
}

// The codes of the table above.
var (
	codeConnect     = packets.Code{Code: packets.ErrServerUnavailable.Code, Reason: "netsplit"}
	codePublishQoS1 = packets.Code{Code: packets.ErrImplementationSpecificError.Code, Reason: "netsplit"}
	codePublishQoS2 = packets.Code{Code: packets.ErrUnspecifiedError.Code, Reason: "netsplit"}
	codeSubscribe   = packets.Code{Code: packets.ErrNotAuthorized.Code, Reason: "netsplit"}
	codeUnsubscribe = packets.Code{Code: packets.ErrUnspecifiedError.Code, Reason: "netsplit"}
)

// Hook is the gate, a mochi hook. Add it right behind the refuse.Refuser,
// before any hook that acts on an operation it may refuse (the cluster's
// registration and forwarding, storage).
type Hook struct {
	mqtt.HookBase
	opts    Options
	state   atomic.Pointer[stateRef]
	allow   atomic.Pointer[Allow]
	refused *prometheus.CounterVec
}

type stateRef struct{ s State }

var _ mqtt.Hook = (*Hook)(nil)

// New returns a gate that allows what allow says; it gates nothing until
// SetState.
func New(opts Options, allow Allow) *Hook {
	h := &Hook{opts: opts, refused: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mendmq_netsplit_refused_total",
		Help: "MQTT operations refused because the node was gated by a netsplit, by operation (connect, publish, subscribe, unsubscribe; subscribe and unsubscribe count filters).",
	}, []string{"operation"})}
	for _, op := range []string{"connect", "publish", "subscribe", "unsubscribe"} {
		h.refused.WithLabelValues(op) // exported at 0 before the first split
	}
	h.allow.Store(&allow)
	return h
}

// SetState connects the gate to the cluster.
func (h *Hook) SetState(s State) { h.state.Store(&stateRef{s}) }

// SetAllow changes the switches (configuration reload).
func (h *Hook) SetAllow(a Allow) { h.allow.Store(&a) }

// Allowed returns the switches in force.
func (h *Hook) Allowed() Allow { return *h.allow.Load() }

// Collector exports the refusal counter.
func (h *Hook) Collector() prometheus.Collector { return h.refused }

// ID names the hook.
func (h *Hook) ID() string { return "mendmq-netsplit-gate" }

// Provides declares the handled hook methods.
func (h *Hook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnect, mqtt.OnPublish, mqtt.OnSubscribe, mqtt.OnUnsubscribe}, []byte{b})
}

// gated reports whether cl's operation is to be refused unless allowed.
func (h *Hook) gated(cl *mqtt.Client) bool {
	ref := h.state.Load()
	if ref == nil || cl.Net.Inline || (h.opts.Passes != nil && h.opts.Passes(cl)) {
		return false
	}
	return ref.s.Gated()
}

// OnConnect refuses a CONNECT while gated, unless registration is
// allowed. It runs before authentication and before the cluster's
// registration, which could not reach the client id's leader anyway.
func (h *Hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if h.allow.Load().Register || !h.gated(cl) {
		return nil
	}
	h.refused.WithLabelValues("connect").Inc()
	if h.opts.Refused != nil {
		h.opts.Refused("netsplit")
	}
	return h.opts.Refuse.Connect(cl, codeConnect)
}

// OnPublish refuses a PUBLISH while gated, unless publishing is allowed.
func (h *Hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if h.allow.Load().Publish || !h.gated(cl) {
		return pk, nil
	}
	h.refused.WithLabelValues("publish").Inc()
	code := codePublishQoS1
	if pk.FixedHeader.Qos == 2 {
		code = codePublishQoS2
	}
	return h.opts.Refuse.Publish(cl, pk, code)
}

// OnSubscribe refuses every filter of a SUBSCRIBE while gated, unless
// subscribing is allowed.
func (h *Hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if h.allow.Load().Subscribe || !h.gated(cl) {
		return pk
	}
	h.refused.WithLabelValues("subscribe").Add(float64(len(pk.Filters)))
	return h.opts.Refuse.Subscribe(cl, pk, codeSubscribe, nil)
}

// OnUnsubscribe refuses every filter of an UNSUBSCRIBE while gated,
// unless unsubscribing is allowed.
func (h *Hook) OnUnsubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if h.allow.Load().Unsubscribe || !h.gated(cl) {
		return pk
	}
	h.refused.WithLabelValues("unsubscribe").Add(float64(len(pk.Filters)))
	return h.opts.Refuse.Unsubscribe(cl, pk, codeUnsubscribe, nil)
}
