package clusterhook

import (
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/handoff"
	"github.com/mendmq/mendmq/broker/mochix"
)

// named is a Cluster that only knows its name (all OnWill asks).
type named struct {
	Cluster
	name string
}

func (n named) Name() string { return n.name }

// TestWillKey: deliveries of a will mochi published (unstamped) are known
// by the id OnWill gave it; anything ambiguous or unknown is not.
func TestWillKey(t *testing.T) {
	sh := newShared(Options{RegisterTimeout: time.Second, ForwardTimeout: time.Second})
	sh.node.Store(&clusterRef{c: named{name: "n1"}})
	h := newWillHook(sh)
	base := sh.nextID.Load() // ids start at the time (newShared)
	cl := &mqtt.Client{ID: "w"}
	will := func(topic, payload string) {
		if _, err := h.OnWill(cl, mqtt.Will{TopicName: topic, Payload: []byte(payload), Qos: 2}); err != nil {
			t.Fatal(err)
		}
	}
	will("a/will", "gone")
	will("b/will", "gone")
	will("c/will", "twin")
	will("c/will", "twin") // the same will twice within a second: ambiguous
	now := time.Now().Unix()
	pk := func(origin, topic, payload string, created int64) packets.Packet {
		return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2}, Origin: origin,
			TopicName: topic, Payload: []byte(payload), Created: created}
	}
	for _, tc := range []struct {
		name      string
		pk        packets.Packet
		ok        bool
		id        uint64
		wantTopic string
	}{
		{"first will", pk("w", "a/will", "gone", now), true, 1, "a/will"},
		{"second will", pk("w", "b/will", "gone", now), true, 2, "b/will"},
		{"created the next second", pk("w", "a/will", "gone", now+1), true, 1, "a/will"},
		{"topic alias: topic from the note", pk("w", "", "gone", now), false, 0, ""}, // a and b both match
		{"ambiguous twins", pk("w", "c/will", "twin", now), false, 0, ""},
		{"other payload", pk("w", "a/will", "other", now), false, 0, ""},
		{"other client", pk("x", "a/will", "gone", now), false, 0, ""},
		{"too late", pk("w", "a/will", "gone", now+5), false, 0, ""},
		{"no origin", pk("", "a/will", "gone", now), false, 0, ""},
	} {
		k, topic, ok := h.keyOf(tc.pk)
		if ok != tc.ok || (ok && (k != handoff.Key{From: "n1", ID: base + tc.id} || topic != tc.wantTopic)) {
			t.Errorf("%s: keyOf = %v %q %v, want id base+%d %q %v", tc.name, k, topic, ok, tc.id, tc.wantTopic, tc.ok)
		}
	}
	// A stamp wins over a note.
	st := pk("w", "a/will", "gone", now)
	mochix.Stamp(&st, "n9", 77)
	if k, _, ok := h.keyOf(st); !ok || k != (handoff.Key{From: "n9", ID: 77}) {
		t.Errorf("stamped packet: keyOf = %v %v, want n9/77", k, ok)
	}
	// Notes are bounded per client and forgotten.
	for range 2 * maxWillNotes {
		will("d/will", "x")
	}
	if n := len(h.wills["w"]); n != maxWillNotes {
		t.Errorf("%d notes kept for one client, want %d", n, maxWillNotes)
	}
	for _, n := range append([]*willNote(nil), h.wills["w"]...) {
		h.forgetWill("w", n)
	}
	if len(h.wills) != 0 || h.nWills.Load() != 0 {
		t.Errorf("after forgetting every note: %d clients, count %d", len(h.wills), h.nWills.Load())
	}
}
