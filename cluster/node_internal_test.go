package cluster

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/mendmq/mendmq/cluster/membership"
	"github.com/mendmq/mendmq/cluster/replica"
	"github.com/mendmq/mendmq/cluster/routes"
)

// stubBroker is a Broker that records forwarded deliveries.
type stubBroker struct{ delivered int }

func (b *stubBroker) DeliverForwarded(Delivery) error                      { b.delivered++; return nil }
func (b *stubBroker) ApplyRetained(string, []byte)                         {}
func (b *stubBroker) TakeoverSession(string, string, bool) ([]byte, error) { return nil, nil }
func (b *stubBroker) FinishTakeover(string, string) ([]byte, error)        { return nil, nil }
func (b *stubBroker) AppendSession(string, []byte) error                   { return nil }
func (b *stubBroker) LocalSession(string) bool                             { return false }

// newTestNode builds node "a" (not started: nothing binds) whose members
// are as given.
func newTestNode(t *testing.T, members map[string]membership.State) (*Node, *stubBroker) {
	t.Helper()
	b := &stubBroker{}
	n, err := New("a", LoopbackConfig(), b)
	if err != nil {
		t.Fatal(err)
	}
	n.members = map[string]membership.State{"a": membership.Alive}
	for k, v := range members {
		n.members[k] = v
	}
	return n, b
}

// putRecord writes a session record of client id hosted on node.
func putRecord(t *testing.T, n *Node, id, node string, filters ...string) {
	t.Helper()
	rec := routes.SessionRecord{Node: node}
	for _, f := range filters {
		rec.Subs = append(rec.Subs, routes.Subscription{Filter: f, QoS: 1})
	}
	b, err := rec.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	n.mu.Lock()
	up, err := n.store.Put(tableSessions, id, b, time.Now())
	if err == nil {
		n.applyLocked(up.Change, false)
	}
	n.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
}

// TestForwardToNodesNotAlive: a QoS 1/2 publish matching a session (or
// the only members of a shared group) on a node that is not alive —
// failed, stopped (left), unknown — is refused with ErrUnreachable before
// anything is sent; a QoS 0 one is dropped and counted. Nothing is
// treated as a stale route any more.
func TestForwardToNodesNotAlive(t *testing.T) {
	for _, tc := range []struct {
		name  string
		state membership.State
		known bool
	}{
		{"dead", membership.Dead, true},
		{"left (graceful stop)", membership.Left, true},
		{"unknown (forgotten, or not heard of yet)", 0, false},
	} {
		for _, shared := range []bool{false, true} {
			name := tc.name
			filter := "t/#"
			if shared {
				name += ", shared group"
				filter = "$share/g/t/#"
			}
			t.Run(name, func(t *testing.T) {
				members := map[string]membership.State{}
				if tc.known {
					members["b"] = tc.state
				}
				n, _ := newTestNode(t, members)
				n.running.Store(true) // Forward needs it; nothing is sent before the checks
				putRecord(t, n, "c1", "b", filter)
				enc := func() ([]byte, error) { return []byte("m"), nil }
				for _, qos := range []byte{1, 2} {
					if err := n.Forward(context.Background(), "t/x", qos, 1, enc); !errors.Is(err, ErrUnreachable) {
						t.Errorf("QoS %d: Forward = %v, want ErrUnreachable", qos, err)
					}
				}
				if got := n.stats.refusedUnreachable.Load(); got != 2 {
					t.Errorf("refused counter %d, want 2", got)
				}
				if err := n.Forward(context.Background(), "t/x", 0, 2, enc); err != nil {
					t.Errorf("QoS 0: Forward = %v, want nil (dropped)", err)
				}
				if got := n.stats.dropUnreachable.Load(); got != 1 {
					t.Errorf("QoS 0 dropped counter %d, want 1", got)
				}
				if n.stats.forwarded.Load() != 0 {
					t.Error("something was forwarded to a node that is not alive")
				}
			})
		}
	}
}

// TestRouteStates: only alive and suspect members take messages, and
// none once this node left.
func TestRouteStates(t *testing.T) {
	n, _ := newTestNode(t, map[string]membership.State{
		"alive": membership.Alive, "suspect": membership.Suspect, "dead": membership.Dead, "left": membership.Left,
	})
	want := map[string]int{"alive": routeOK, "suspect": routeOK, "dead": routeDown, "left": routeDown, "unknown": routeDown}
	for peer, w := range want {
		if got := n.route(peer); got != w {
			t.Errorf("route(%s) = %d, want %d", peer, got, w)
		}
	}
	n.left.Store(true)
	for peer := range want {
		if got := n.route(peer); got != routeDown {
			t.Errorf("after leaving: route(%s) = %d, want down", peer, got)
		}
	}
}

// TestLeftNodeRefusesPeers: once detached (Leave), a node applies no
// deltas and answers no call of its former peers; while it is leaving it
// still takes publishes for its clients but answers no anti-entropy.
func TestLeftNodeRefusesPeers(t *testing.T) {
	n, b := newTestNode(t, map[string]membership.State{"b": membership.Alive})
	h := (*dpHandler)(n)
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
	up, err := other.Put(tableSessions, "from-b", rec, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	deltas := replica.AppendDeltas(nil, up.Out...)
	fwd := appendForward(nil, nil, 1, []byte("m"))

	n.leaving.Store(true)
	if _, err := h.HandleCall("b", callDigest, nil); !errors.Is(err, ErrLeft) {
		t.Errorf("leaving: digest call = %v, want ErrLeft", err)
	}
	if _, err := h.HandleCall("b", callForward, fwd); err != nil {
		t.Errorf("leaving: forward call = %v, want accepted", err)
	}
	if b.delivered != 1 {
		t.Errorf("leaving: %d forwarded publishes delivered, want 1", b.delivered)
	}

	n.detach()
	for _, typ := range []uint8{callForward, callDigest, callRegister, callTakeover, callApply, callHandoff, callAppend} {
		if _, err := h.HandleCall("b", typ, deltas); !errors.Is(err, ErrLeft) {
			t.Errorf("left: call type %d = %v, want ErrLeft", typ, err)
		}
	}
	h.HandleFrame("b", frameDeltas, deltas)
	h.HandleFrame("b", frameForward, fwd)
	if _, ok := n.SessionNode("from-b"); ok {
		t.Error("left: a former peer's deltas were applied")
	}
	if b.delivered != 1 {
		t.Errorf("left: %d forwarded publishes delivered, want still 1", b.delivered)
	}
	if got := n.aliveMembers(); len(got) != 1 || got[0] != "a" {
		t.Errorf("left: alive members %v, want [a]", got)
	}
}
