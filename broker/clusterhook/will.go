package clusterhook

import (
	"bytes"
	"context"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/handoff"
	"github.com/mendmq/mendmq/broker/mochix"
)

// WillHook forwards the wills of local clients to the other nodes and
// publishes the cluster's $SYS topics (sys.go).
//
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
type WillHook struct {
	mqtt.HookBase
	sh *shared

	mu     sync.Mutex
	wills  map[string][]*willNote // by origin client
	nWills atomic.Int32
}

var _ mqtt.Hook = (*WillHook)(nil)

func newWillHook(sh *shared) *WillHook {
	return &WillHook{sh: sh, wills: map[string][]*willNote{}}
}

// ID names the hook.
func (w *WillHook) ID() string { return "mendmq-cluster-wills-sys" }

// Provides declares the handled hook methods.
func (w *WillHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnWill, mqtt.OnWillSent, mqtt.OnSysInfoTick, mqtt.OnStopped:
		return true
	}
	return false
}

// OnStopped waits for a $SYS tick under way (sys.go).
func (w *WillHook) OnStopped() { w.sh.stop() }

// willNote is the id a will got, and what identifies its deliveries.
type willNote struct {
	key     handoff.Key
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
func (w *WillHook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	c := w.sh.cluster()
	if c == nil || cl.Net.Inline {
		return will, nil
	}
	if will.WillDelayInterval > 0 && mochix.Ephemeral(cl) {
		// The session ends with this connection, so the will is due now
		// [MQTT-3.1.3-9: the delay or the end of the session, whichever
		// comes first]. mochi would delay it anyway, and publish it
		// after its client is gone, which no hook sees: it would reach
		// this node's subscribers late and no other node's.
		mochix.ClearWillDelay(cl)
		will.WillDelayInterval = 0
	}
	now := time.Now()
	n := &willNote{key: handoff.Key{From: c.Name(), ID: w.sh.nextID.Add(1)}, topic: will.TopicName,
		payload: bytes.Clone(will.Payload), at: now.Unix()}
	w.mu.Lock()
	list := w.wills[cl.ID]
	if len(list) >= maxWillNotes {
		list = list[1:]
	} else {
		w.nWills.Add(1)
	}
	w.wills[cl.ID] = append(list, n)
	w.mu.Unlock()
	// The note is needed while copies of the will can be handed over: its
	// delay, then the longest a handoff lasts.
	keep := time.Duration(will.WillDelayInterval)*time.Second + w.sh.hcfg.Lifetime()
	time.AfterFunc(keep, func() { w.forgetWill(cl.ID, n) })
	return will, nil
}

// OnWillSent forwards a will message to the other nodes [MQTT-3.1.2-8],
// holding it for those that cannot be reached now.
func (w *WillHook) OnWillSent(cl *mqtt.Client, pk packets.Packet) {
	c := w.sh.cluster()
	if c == nil || cl.Net.Inline {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), w.sh.opts.ForwardTimeout)
	defer cancel()
	// The id OnWill gave it, which the handoff paths know its local
	// deliveries by.
	k, _, ok := w.willKey(pk)
	id := k.ID
	if !ok {
		id = w.sh.nextID.Add(1)
	}
	// Held for the nodes that cannot be reached now (a netsplit, or a
	// node restarting) and delivered when they are back, once: the will
	// is the news of this client's end, which those subscribers need
	// most. A QoS 0 will is forwarded as QoS 1 between nodes for that
	// (its subscribers still get it at QoS 0).
	fq := max(pk.FixedHeader.Qos, 1)
	if err := c.ForwardHold(ctx, pk.TopicName, fq, id, func() ([]byte, error) { return EncodePublish(pk) }); err != nil {
		w.sh.log.Error("will not forwarded to every node", "client", cl.ID, "topic", pk.TopicName, "error", err)
	}
}

// forgetWill drops note n of client id.
func (w *WillHook) forgetWill(id string, n *willNote) {
	w.mu.Lock()
	defer w.mu.Unlock()
	list := w.wills[id]
	for i, x := range list {
		if x == n {
			list = append(list[:i:i], list[i+1:]...)
			w.nWills.Add(-1)
			break
		}
	}
	if len(list) == 0 {
		delete(w.wills, id)
	} else {
		w.wills[id] = list
	}
}

// willKey returns the id of the will pk is a delivery of; ok is false
// if pk is no noted will, or if two notes match it.
func (w *WillHook) willKey(pk packets.Packet) (k handoff.Key, topic string, ok bool) {
	if w.nWills.Load() == 0 || pk.Origin == "" {
		return handoff.Key{}, "", false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	matches := 0
	for _, n := range w.wills[pk.Origin] {
		// A delivery may carry a topic alias instead of the topic.
		if (pk.TopicName == "" || pk.TopicName == n.topic) && (pk.Created == n.at || pk.Created == n.at+1) &&
			bytes.Equal(pk.Payload, n.payload) {
			k, topic = n.key, n.topic
			matches++
		}
	}
	return k, topic, matches == 1
}

// keyOf returns a publish's origin node, id and topic: the stamp of a
// client's or a forwarded publish, or the note of a will; ok is false for
// a publish with neither (a message restored from storage).
func (w *WillHook) keyOf(pk packets.Packet) (k handoff.Key, topic string, ok bool) {
	if from, id, topic, ok := mochix.StampOf(pk); ok {
		return handoff.Key{From: from, ID: id}, topic, true
	}
	return w.willKey(pk)
}
