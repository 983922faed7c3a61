// Package quirks works around defects of the mochi MQTT server that a hook
// can avoid, each documented with its cause, so they can be dropped when
// mochi fixes them.
package quirks

import (
	"bytes"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Hook applies the workarounds.
//
// Send-quota deadlock (mochi v2.7.9): after every packet from a client
// with messages in flight and a positive send quota, mochi calls
// Inflight.NextImmediate, which takes the inflight read lock and then calls
// GetAll, which takes it again. A publisher goroutine asking for the write
// lock (Inflight.Set) between the two freezes that client's read loop, the
// publisher and mochi's event loop for good (the same class of bug as
// upstream mochi-mqtt/server#488). The quota is only set for MQTT 5
// clients that send Receive Maximum, and mochi only takes that path while
// it is positive, so the hook sets it to zero once the session is set up.
// Cost: the broker does not hold back QoS 1/2 deliveries beyond the
// client's Receive Maximum (mqtt.max_inflight still bounds what is stored
// per client). Clients that announce a small Receive Maximum may see more
// in flight than they asked for.
type Hook struct {
	mqtt.HookBase
}

var _ mqtt.Hook = (*Hook)(nil)

// ID names the hook.
func (h *Hook) ID() string { return "mendmq-quirks" }

// Provides declares the handled hook methods.
func (h *Hook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnSessionEstablished}, []byte{b})
}

// OnSessionEstablished runs after mochi set the client's quotas and
// inherited any previous session, before the client's first packet is read.
func (h *Hook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	cl.State.Inflight.ResetSendQuota(0)
}
