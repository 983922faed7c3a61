package clusterhook

import (
	"bytes"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Wills and publish ids.
//
// mochi builds a will's PUBLISH itself (sendLWT, sendDelayedLWT) from the
// client's Will, without OnPublish, so no stamp rides in the deliveries it
// makes of it on this node; the hook forwards it (OnWillSent) with an id.
// A session being handed off can get both copies: the old node's shadow
// catches the local delivery while the new node gets the forward, or the
// new node delivers its own client's will locally while the old node
// hands over the forwarded copy it caught. So OnWill numbers the will
// before mochi publishes it and notes its origin client, topic, payload
// and second; the handoff paths look an unstamped delivery up there
// (keyOf), and OnWillSent forwards the will under the same id.

// willNote is the id a will got, and what identifies its deliveries.
type willNote struct {
	key     msgKey
	topic   string
	payload []byte
	at      int64 // Unix second of OnWill; mochi's Created is this or the next
}

// maxWillNotes bounds the notes kept per client id: a client has one will
// per connection, so more than a few live at once only under churn, and
// an unknown will is merely not deduplicated.
const maxWillNotes = 8

// OnWill numbers the will mochi is about to publish (see above). It does
// not change the will.
func (h *Hook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	c := h.cluster()
	if c == nil || cl.Net.Inline {
		return will, nil
	}
	if will.WillDelayInterval > 0 && isEphemeral(cl) {
		// The session ends with this connection, so the will is due now
		// [MQTT-3.1.3-9: the delay or the end of the session, whichever
		// comes first]. mochi would delay it anyway, and publish it
		// after its client is gone, which no hook sees: it would reach
		// this node's subscribers late and no other node's. mochi reads
		// the delay from the client, not from the will returned here.
		cl.Properties.Will.WillDelayInterval = 0
		will.WillDelayInterval = 0
	}
	now := time.Now()
	n := &willNote{key: msgKey{c.Name(), h.nextID.Add(1)}, topic: will.TopicName,
		payload: bytes.Clone(will.Payload), at: now.Unix()}
	h.willMu.Lock()
	list := h.wills[cl.ID]
	if len(list) >= maxWillNotes {
		list = list[1:]
	} else {
		h.nWills.Add(1)
	}
	h.wills[cl.ID] = append(list, n)
	h.willMu.Unlock()
	// The note is needed while copies of the will can be handed over: its
	// delay, then the longest a handoff lasts (startIncoming).
	keep := time.Duration(will.WillDelayInterval)*time.Second + h.opts.RegisterTimeout + (graceFactor+2)*h.opts.ForwardTimeout
	time.AfterFunc(keep, func() { h.forgetWill(cl.ID, n) })
	return will, nil
}

// forgetWill drops note n of client id.
func (h *Hook) forgetWill(id string, n *willNote) {
	h.willMu.Lock()
	defer h.willMu.Unlock()
	list := h.wills[id]
	for i, w := range list {
		if w == n {
			list = append(list[:i:i], list[i+1:]...)
			h.nWills.Add(-1)
			break
		}
	}
	if len(list) == 0 {
		delete(h.wills, id)
	} else {
		h.wills[id] = list
	}
}

// willKey returns the id of the will pk is a delivery of; ok is false
// if pk is no noted will, or if two notes match it.
func (h *Hook) willKey(pk packets.Packet) (k msgKey, topic string, ok bool) {
	if h.nWills.Load() == 0 || pk.Origin == "" {
		return msgKey{}, "", false
	}
	h.willMu.Lock()
	defer h.willMu.Unlock()
	matches := 0
	for _, w := range h.wills[pk.Origin] {
		// A delivery may carry a topic alias instead of the topic.
		if (pk.TopicName == "" || pk.TopicName == w.topic) && (pk.Created == w.at || pk.Created == w.at+1) &&
			bytes.Equal(pk.Payload, w.payload) {
			k, topic = w.key, w.topic
			matches++
		}
	}
	return k, topic, matches == 1
}

// keyOf returns a publish's origin node, id and topic: the stamp of a
// client's or a forwarded publish, or the note of a will; ok is false for
// a publish with neither (a message restored from storage).
func (h *Hook) keyOf(pk packets.Packet) (k msgKey, topic string, ok bool) {
	if k, topic, ok = stampOf(pk); ok {
		return k, topic, ok
	}
	return h.willKey(pk)
}
