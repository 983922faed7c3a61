package router

import (
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"testing"

	"github.com/mendmq/mendmq/cluster/outbox"
	"github.com/mendmq/mendmq/cluster/routes"
)

// members is a fixed routable set.
type members map[string]bool

func (m members) Routable(name string) bool { return m[name] }

// transport records what is sent; a call fails for peers in fail, and
// CallHeld goes to held (the receiving router) when set.
type transport struct {
	mu           sync.Mutex
	sent, called []string
	fail         map[string]bool
	held         *Router
}

func (t *transport) Send(peer string, typ uint8, payload []byte) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sent = append(t.sent, peer)
	return nil
}

func (t *transport) Call(ctx context.Context, peer string, typ uint8, payload []byte) ([]byte, error) {
	t.mu.Lock()
	t.called = append(t.called, peer)
	fail, held := t.fail[peer], t.held
	t.mu.Unlock()
	if fail {
		return nil, errors.New("call timed out")
	}
	if typ == CallHeld && held != nil {
		return held.handleHeld("a", payload)
	}
	return nil, nil
}

// broker records deliveries; while refuse is set it refuses them (a node
// whose MQTT server does not serve yet).
type broker struct {
	delivered []Delivery
	refuse    error
}

func (b *broker) DeliverForwarded(d Delivery) error {
	if b.refuse != nil {
		return b.refuse
	}
	b.delivered = append(b.delivered, d)
	return nil
}

func newRouter(t *testing.T, m members) (*Router, *routes.Index, *transport, *broker) {
	t.Helper()
	ix := routes.NewIndex()
	tr, b := &transport{}, &broker{}
	ob, err := outbox.New(outbox.Config{MaxMessages: 3})
	if err != nil {
		t.Fatal(err)
	}
	r, err := New("a", ix, m, tr, b, ob, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.SetRunning(true)
	return r, ix, tr, b
}

func record(node string, filters ...string) routes.SessionRecord {
	rec := routes.SessionRecord{Node: node}
	for _, f := range filters {
		rec.Subs = append(rec.Subs, routes.Subscription{Filter: f, QoS: 1})
	}
	return rec
}

var enc = func() ([]byte, error) { return []byte("m"), nil }

// TestForwardToNodesNotRoutable: a QoS 1/2 publish matching a session (or
// the only members of a shared group) on a node that is not routable —
// failed, stopped (left), unknown — is refused with ErrUnreachable before
// anything is sent; a QoS 0 one is dropped and counted.
func TestForwardToNodesNotRoutable(t *testing.T) {
	for _, filter := range []string{"t/#", "$share/g/t/#"} {
		t.Run(filter, func(t *testing.T) {
			r, ix, tr, _ := newRouter(t, members{"a": true})
			ix.Set("c1", record("b", filter))
			for _, qos := range []byte{1, 2} {
				if err := r.Forward(context.Background(), "t/x", qos, 1, enc); !errors.Is(err, ErrUnreachable) {
					t.Errorf("QoS %d: Forward = %v, want ErrUnreachable", qos, err)
				}
			}
			if got := r.stats.RefusedUnreachable.Load(); got != 2 {
				t.Errorf("refused counter %d, want 2", got)
			}
			if err := r.Forward(context.Background(), "t/x", 0, 2, enc); err != nil {
				t.Errorf("QoS 0: Forward = %v, want nil (dropped)", err)
			}
			if got := r.stats.DropUnreachable.Load(); got != 1 {
				t.Errorf("QoS 0 dropped counter %d, want 1", got)
			}
			if len(tr.sent)+len(tr.called) != 0 || r.stats.Forwarded.Load() != 0 {
				t.Error("something was forwarded to a node that is not routable")
			}
		})
	}
}

// TestForwardAllOrNothing: a QoS 1 publish matching sessions on a
// routable and an unroutable node reaches neither; with both routable it
// reaches each once, by call; QoS 0 goes by frame.
func TestForwardAllOrNothing(t *testing.T) {
	m := members{"a": true, "b": true}
	r, ix, tr, _ := newRouter(t, m)
	ix.Set("c1", record("b", "t/#"))
	ix.Set("c2", record("c", "t/+"))
	if err := r.Forward(context.Background(), "t/x", 1, 1, enc); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("Forward = %v, want ErrUnreachable", err)
	}
	if len(tr.called) != 0 {
		t.Fatalf("called %v before refusing", tr.called)
	}
	m["c"] = true
	if err := r.Forward(context.Background(), "t/x", 1, 2, enc); err != nil {
		t.Fatal(err)
	}
	if len(tr.called) != 2 {
		t.Fatalf("called %v, want b and c", tr.called)
	}
	if err := r.Forward(context.Background(), "t/x", 0, 3, enc); err != nil || len(tr.sent) != 2 {
		t.Fatalf("QoS 0: %v, sent %v", err, tr.sent)
	}
	if got := r.PeerTraffic("b").Forwarded.Load(); got != 2 {
		t.Fatalf("b forwarded %d, want 2", got)
	}
}

// TestNotRunningForwardsNothing: before Start (or after Stop) Forward is
// a no-op.
func TestNotRunningForwardsNothing(t *testing.T) {
	r, ix, tr, _ := newRouter(t, members{"a": true, "b": true})
	ix.Set("c1", record("b", "t/#"))
	r.SetRunning(false)
	if err := r.Forward(context.Background(), "t/x", 1, 1, enc); err != nil || len(tr.called) != 0 {
		t.Fatalf("Forward = %v, called %v", err, tr.called)
	}
}

// TestDeliverDecodes: a forwarded payload reaches the broker with its
// origin, id and groups; garbage is counted and refused.
func TestDeliverDecodes(t *testing.T) {
	r, _, _, b := newRouter(t, members{})
	if err := r.deliver("b", appendForward(nil, []string{"$share/g/x"}, 9, []byte("m"))); err != nil {
		t.Fatal(err)
	}
	if len(b.delivered) != 1 || b.delivered[0].From != "b" || b.delivered[0].ID != 9 || b.delivered[0].Groups[0] != "$share/g/x" {
		t.Fatalf("delivered %+v", b.delivered)
	}
	if err := r.deliver("b", []byte{0xff}); err == nil || r.stats.BadMessages.Load() != 1 {
		t.Fatalf("garbage: %v, bad %d", err, r.stats.BadMessages.Load())
	}
}

// TestForwardHold: with hold, unroutable targets get the publish later
// from the outbox, routable ones now; a failed call is held too; a full
// outbox refuses and holds nothing; the drain delivers each message once,
// in order, even when a batch is sent twice.
func TestForwardHold(t *testing.T) {
	m := members{"a": true, "b": true}
	r, ix, tr, _ := newRouter(t, m)
	ix.Set("c1", record("b", "t/#"))
	ix.Set("c2", record("c", "t/#"))
	ix.Set("c3", record("d", "t/#"))
	tr.fail = map[string]bool{}
	if err := r.ForwardHold(context.Background(), "t/x", 1, 1, enc); err != nil {
		t.Fatalf("ForwardHold = %v", err)
	}
	if n, _ := r.outbox.Len("c"); n != 1 {
		t.Fatalf("held for c: %d", n)
	}
	if len(tr.called) != 1 || tr.called[0] != "b" {
		t.Fatalf("called %v, want b only", tr.called)
	}
	// b's call fails: held for b too.
	tr.fail["b"] = true
	if err := r.ForwardHold(context.Background(), "t/x", 1, 2, enc); err != nil {
		t.Fatalf("ForwardHold with a failing call = %v", err)
	}
	if n, _ := r.outbox.Len("b"); n != 1 {
		t.Fatalf("held for b after its call failed: %d", n)
	}
	// c and d hold 2 each of 3; a third fits, a fourth does not: then
	// neither is held (all or nothing).
	if err := r.ForwardHold(context.Background(), "t/x", 1, 3, enc); err != nil {
		t.Fatal(err)
	}
	if err := r.ForwardHold(context.Background(), "t/x", 1, 4, enc); !errors.Is(err, outbox.ErrFull) {
		t.Fatalf("over the bound: %v, want ErrFull", err)
	}
	if nc, _ := r.outbox.Len("c"); nc != 3 {
		t.Fatalf("c holds %d, want 3", nc)
	}
	if nd, _ := r.outbox.Len("d"); nd != 3 {
		t.Fatalf("d holds %d, want 3", nd)
	}

	// c comes back: the drain hands its queue to the receiver, in order;
	// a batch sent again is delivered once.
	rb := &broker{}
	recv, err := New("c", routes.NewIndex(), members{}, &transport{}, rb, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	tr.held = recv
	m["c"] = true
	batch := r.outbox.Peek("c", 10, 1<<20)
	r.drainPeer(context.Background(), "c")
	if n, _ := r.outbox.Len("c"); n != 0 {
		t.Fatalf("c still holds %d after the drain", n)
	}
	ids := []uint64{}
	for _, d := range rb.delivered {
		ids = append(ids, d.ID)
	}
	if len(ids) != 3 || ids[0] != 1 || ids[1] != 2 || ids[2] != 3 {
		t.Fatalf("delivered ids %v, want [1 2 3]", ids)
	}
	var again []byte
	again = binary.AppendUvarint(again, uint64(len(batch)))
	for _, msg := range batch {
		again = binary.AppendUvarint(again, uint64(len(msg.Payload)))
		again = append(again, msg.Payload...)
	}
	if _, err := recv.handleHeld("a", again); err != nil {
		t.Fatal(err)
	}
	if len(rb.delivered) != 3 || recv.stats.Duplicates.Load() != 3 {
		t.Fatalf("a repeated batch: %d delivered, %d duplicates", len(rb.delivered), recv.stats.Duplicates.Load())
	}
}

// TestHeldRefusedByReceiver: a drain the receiving broker refuses (its
// MQTT server does not serve yet) keeps the messages held, and the next
// drain delivers them — the receiver's dedup does not take the refused
// first attempt for a delivery.
func TestHeldRefusedByReceiver(t *testing.T) {
	m := members{"a": true}
	r, ix, tr, _ := newRouter(t, m)
	ix.Set("c1", record("c", "t/#"))
	for id := uint64(1); id <= 2; id++ {
		if err := r.ForwardHold(context.Background(), "t/x", 1, id, enc); err != nil {
			t.Fatal(err)
		}
	}
	rb := &broker{refuse: errors.New("not serving yet")}
	recv, err := New("c", routes.NewIndex(), members{}, &transport{}, rb, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	tr.held = recv
	m["c"] = true
	r.drainPeer(context.Background(), "c")
	if n, _ := r.outbox.Len("c"); n != 2 || len(rb.delivered) != 0 {
		t.Fatalf("after a refused drain: %d held, %d delivered; want 2 held", n, len(rb.delivered))
	}
	rb.refuse = nil
	r.drainPeer(context.Background(), "c")
	if n, _ := r.outbox.Len("c"); n != 0 || len(rb.delivered) != 2 || recv.stats.Duplicates.Load() != 0 {
		t.Fatalf("after the retry: %d held, %d delivered, %d duplicates; want all delivered once",
			n, len(rb.delivered), recv.stats.Duplicates.Load())
	}
}
