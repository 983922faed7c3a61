package cluster

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/mendmq/mendmq/cluster/members"
	"github.com/mendmq/mendmq/cluster/membership"
	"github.com/mendmq/mendmq/cluster/registry"
	"github.com/mendmq/mendmq/cluster/replica"
	"github.com/mendmq/mendmq/cluster/replication"
	"github.com/mendmq/mendmq/cluster/router"
	"github.com/mendmq/mendmq/cluster/routes"
	"github.com/mendmq/mendmq/cluster/sessions"
)

// stubBroker is a Broker that records forwarded deliveries.
type stubBroker struct{ delivered int }

func (b *stubBroker) DeliverForwarded(Delivery) error                      { b.delivered++; return nil }
func (b *stubBroker) ApplyRetained(string, *RetainedMessage)               {}
func (b *stubBroker) TakeoverSession(string, string, bool) ([]byte, error) { return nil, nil }
func (b *stubBroker) FinishTakeover(string, string) ([]byte, error)        { return nil, nil }
func (b *stubBroker) AppendSession(string, []byte) error                   { return nil }
func (b *stubBroker) DropDuplicate(string, routes.SessionRecord)           {}
func (b *stubBroker) LocalSession(string) bool                             { return false }
func (b *stubBroker) KickSession(string) (bool, error)                     { return false, nil }

// newTestNode builds node "a" (not started: nothing binds) that knows
// the given members.
func newTestNode(t *testing.T, states map[string]membership.State) (*Node, *stubBroker) {
	t.Helper()
	b := &stubBroker{}
	n, err := New("a", LoopbackConfig(), b)
	if err != nil {
		t.Fatal(err)
	}
	for name, s := range states {
		n.view.Apply(members.Event{Kind: members.Joined, Member: name, At: time.Now(), State: s})
	}
	return n, b
}

// TestLeftNodeRefusesPeers: once detached (Leave), a node applies no
// deltas and answers no call of its former peers; while it is leaving it
// still takes publishes for its clients but answers no anti-entropy.
func TestLeftNodeRefusesPeers(t *testing.T) {
	n, b := newTestNode(t, map[string]membership.State{"b": membership.Alive})
	rec, err := routes.SessionRecord{Node: "b", Subs: []routes.Subscription{{Filter: "x", QoS: 1}}}.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	rc := replica.DefaultConfig()
	rc.Node = "b"
	other, err := replica.New(rc)
	if err != nil {
		t.Fatal(err)
	}
	up, err := other.Put(sessions.Table, "from-b", rec, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	deltas := replica.AppendDeltas(nil, up.Out...)
	fwd := []byte{0, 1, 'm'} // no groups, id 1, message "m"

	n.leaving.Store(true)
	n.view.Detach()
	if _, err := n.mux.HandleCall("b", replication.CallDigest, nil); !errors.Is(err, ErrLeft) {
		t.Errorf("leaving: digest call = %v, want ErrLeft", err)
	}
	if _, err := n.mux.HandleCall("b", router.CallForward, fwd); err != nil {
		t.Errorf("leaving: forward call = %v, want accepted", err)
	}
	if b.delivered != 1 {
		t.Errorf("leaving: %d forwarded publishes delivered, want 1", b.delivered)
	}
	if !n.view.Routable("b") {
		t.Error("leaving: b no longer routable before the node left")
	}

	n.detach()
	for _, typ := range []uint8{router.CallForward, replication.CallDigest, registry.CallRegister, registry.CallTakeover,
		replication.CallApply, registry.CallHandoff, registry.CallAppend, CallForget, CallKick} {
		if _, err := n.mux.HandleCall("b", typ, deltas); !errors.Is(err, ErrLeft) {
			t.Errorf("left: call type %d = %v, want ErrLeft", typ, err)
		}
	}
	n.mux.HandleFrame("b", replication.FrameDeltas, deltas)
	n.mux.HandleFrame("b", router.FrameForward, fwd)
	if _, ok := n.SessionNode("from-b"); ok {
		t.Error("left: a former peer's deltas were applied")
	}
	if b.delivered != 1 {
		t.Errorf("left: %d forwarded publishes delivered, want still 1", b.delivered)
	}
	if got := n.view.Alive(); !slices.Equal(got, []string{"a"}) || n.view.Routable("b") {
		t.Errorf("left: alive members %v, b routable %v", got, n.view.Routable("b"))
	}
}

// TestEveryCallTypeRegisteredOnce: the parts register the protocol's
// message types on one Mux without clashing, and the numbers are the
// protocol's (a change here is a protocol change).
func TestEveryCallTypeRegisteredOnce(t *testing.T) {
	n, _ := newTestNode(t, nil)
	for _, typ := range []uint8{replication.FrameDeltas, router.FrameForward} {
		if n.mux.HandleFrameFunc(typ, nil) == nil {
			t.Errorf("frame type %d not registered", typ)
		}
	}
	for _, typ := range []uint8{router.CallForward, replication.CallDigest, registry.CallRegister, registry.CallTakeover,
		replication.CallApply, registry.CallHandoff, registry.CallAppend, CallForget, CallKick} {
		if n.mux.HandleCallFunc(typ, false, nil) == nil {
			t.Errorf("call type %d not registered", typ)
		}
	}
	want := map[string]uint8{"deltas": 1, "forward": 2, "call forward": 10, "digest": 11, "register": 12, "takeover": 13,
		"apply": 14, "handoff": 15, "append": 16, "forget": 18, "kick": 19}
	got := map[string]uint8{"deltas": replication.FrameDeltas, "forward": router.FrameForward, "call forward": router.CallForward,
		"digest": replication.CallDigest, "register": registry.CallRegister, "takeover": registry.CallTakeover,
		"apply": replication.CallApply, "handoff": registry.CallHandoff, "append": registry.CallAppend,
		"forget": CallForget, "kick": CallKick}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s is type %d, the protocol says %d", k, got[k], v)
		}
	}
}
