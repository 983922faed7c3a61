package clusterhook

import (
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/mochix"
	"github.com/mendmq/mendmq/cluster"
)

// RetainedHook replicates the retained messages local clients (and wills)
// set or clear, applies the cluster's resolved retained messages, and
// counts their reads: a retained message mochi sends to a client because
// it subscribed is a hit (the EntryView's hits and last access time that
// a $retained merge policy sees, see cluster/retained.Reads).
//
// The cluster replicates a retained message as its v5 PUBLISH packet
// (EncodePublish) with its creation and expiry times beside it
// (cluster.RetainedMessage); concurrent ones are decided by the $retained
// merge policy in the cluster (cluster/retained).
type RetainedHook struct {
	mqtt.HookBase
	sh *shared
}

var _ mqtt.Hook = (*RetainedHook)(nil)

// ID names the hook.
func (r *RetainedHook) ID() string { return "mendmq-cluster-retained" }

// Provides declares the handled hook methods.
func (r *RetainedHook) Provides(b byte) bool {
	return b == mqtt.OnRetainMessage || b == mqtt.OnRetainPublished
}

// OnRetainPublished counts a read: mochi sent cl the retained message pk
// because cl subscribed to a matching filter. mochi calls it on the
// SUBSCRIBE's path, once per message sent, so it only bumps counters.
func (r *RetainedHook) OnRetainPublished(cl *mqtt.Client, pk packets.Packet) {
	if c := r.sh.cluster(); c != nil {
		c.ReadRetained(pk.TopicName, time.Now())
	}
}

// OnRetainMessage replicates a retained message set or cleared by a local
// client (or will).
func (r *RetainedHook) OnRetainMessage(cl *mqtt.Client, pk packets.Packet, n int64) {
	c := r.sh.cluster()
	if c == nil || cl.Net.Inline {
		return
	}
	now := time.Now()
	if len(pk.Payload) == 0 {
		c.DeleteRetained(pk.TopicName, now)
		return
	}
	m, err := retainedMessage(pk, now)
	if err != nil {
		r.sh.log.Error("encode retained", "topic", pk.TopicName, "error", err)
		return
	}
	c.PutRetained(pk.TopicName, m, now)
}

// retainedMessage is pk as the cluster replicates it: the v5 PUBLISH, its
// creation time and, with a message expiry interval, when it expires.
func retainedMessage(pk packets.Packet, now time.Time) (cluster.RetainedMessage, error) {
	b, err := EncodePublish(pk)
	if err != nil {
		return cluster.RetainedMessage{}, err
	}
	m := cluster.RetainedMessage{Publish: b, Created: now}
	if pk.Created != 0 {
		m.Created = time.Unix(pk.Created, 0)
	}
	if exp := pk.Properties.MessageExpiryInterval; exp > 0 {
		m.Expires = m.Created.Add(time.Duration(exp) * time.Second)
	}
	return m, nil
}

// ApplyRetained implements cluster.Broker: the resolved retained message
// of topic changed (nil: deleted). The cluster serializes calls.
func (r *RetainedHook) ApplyRetained(topic string, m *cluster.RetainedMessage) {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true}, TopicName: topic}
	if m != nil {
		var err error
		if pk, err = DecodePublish(m.Publish); err != nil {
			r.sh.log.Error("replicated retained message unreadable; keeping the local one", "topic", topic, "error", err)
			return
		}
		pk.Created = m.Created.Unix()
		pk.FixedHeader.Retain = true
		if exp := int64(pk.Properties.MessageExpiryInterval); exp > 0 {
			if max := mochix.MaxMessageExpiry(r.sh.srv); max > 0 && exp > max {
				exp = max
			}
			pk.Expiry = pk.Created + exp
			if pk.Expiry <= time.Now().Unix() {
				pk.Payload = nil // already expired: delete
			}
		}
	}
	mochix.SetRetained(r.sh.srv, pk)
}
