package pmap

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mendmq/mendmq/cluster/merge"
	"github.com/mendmq/mendmq/cluster/partition"
)

// simNet is an in-memory data plane between the Maps of one test: a call
// runs the peer's handler in the caller's goroutine, and a handler's
// error comes back as text, as it crosses the real data plane.
type simNet struct {
	mu    sync.Mutex
	nodes map[string]*Maps
}

type simTransport struct {
	net  *simNet
	self string
}

func (t simTransport) Call(ctx context.Context, peer string, typ uint8, payload []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("sim: call %s: %w", peer, err)
	}
	t.net.mu.Lock()
	m := t.net.nodes[peer]
	t.net.mu.Unlock()
	if m == nil {
		return nil, fmt.Errorf("sim: no node %s", peer)
	}
	handlers := map[uint8]func(string, []byte) ([]byte, error){
		CallOp: m.handleOp, CallBackup: m.handleBackup, FrameBackup: m.handleBackup, CallPull: m.handlePull,
		CallCopy: m.handleCopy, CallSide: m.handleSide, CallMerge: m.handleMerge,
	}
	h, ok := handlers[typ]
	if !ok {
		return nil, fmt.Errorf("sim: call type %d", typ)
	}
	out, err := h(t.self, slices.Clone(payload))
	if err != nil {
		return nil, fmt.Errorf("sim: %s: remote error: %s", peer, err.Error())
	}
	return out, nil
}

func (t simTransport) Send(peer string, typ uint8, payload []byte) error {
	_, err := t.Call(context.Background(), peer, typ, payload)
	return err
}

// simView is a node's view of the alive members, set by the test.
type simView struct {
	mu    sync.Mutex
	alive []string
}

func (v *simView) Alive() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.alive)
}

func (v *simView) set(alive []string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.alive = slices.Sorted(slices.Values(alive))
}

// discardPolicy keeps the existing entry, an absent one absent:
// Hazelcast's DiscardMergePolicy, the discard built-in.
type discardPolicy struct{}

func (discardPolicy) MergeBatch(_ context.Context, _ string, items []merge.Item) ([]merge.Result, error) {
	return make([]merge.Result, len(items)), nil
}

// latestPolicy takes the merging entry unless the existing one was
// updated later: the latestupdate built-in.
type latestPolicy struct{}

func (latestPolicy) MergeBatch(_ context.Context, _ string, items []merge.Item) ([]merge.Result, error) {
	out := make([]merge.Result, len(items))
	for i, it := range items {
		if it.Existing == nil || it.Existing.LastUpdateTime <= it.Merging.LastUpdateTime {
			out[i] = merge.Result{Verdict: merge.TakeMerging, Entry: it.Merging}
		}
	}
	return out, nil
}

// simNode is one node of a healing 1|1|1 split: alone, with a lineage of
// its own and its own writes.
type simNode struct {
	m    *Maps
	view *simView
}

// newSplitNodes starts nodes n1..n3, each alone as after a 1|1|1 split:
// lineage hashes 3, 2, 1 (n1's the biggest), clocks one second apart
// (n3's writes are the latest), and each writes "both" and "only-<name>".
func newSplitNodes(t *testing.T, ctx context.Context, policy merge.Merger) map[string]*simNode {
	t.Helper()
	net := &simNet{nodes: map[string]*Maps{}}
	nodes := map[string]*simNode{}
	for i, name := range []string{"n1", "n2", "n3"} {
		view := &simView{}
		view.set([]string{name})
		skew := time.Duration(i) * time.Second
		cfg := Config{
			Node: name, PartitionCount: partition.DefaultCount, MaxBackups: 1, MergeBatchSize: 2, Merger: policy,
			ShrinkDelay: time.Nanosecond, // a member out of the view leaves the table at once
			Now:         func() time.Time { return time.Now().Add(skew) },
			Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)),
		}
		m, err := New(cfg, simTransport{net: net, self: name}, view, nil)
		if err != nil {
			t.Fatalf("start %s: %v", name, err)
		}
		m.lineage = Lineage{Hash: uint64(3 - i), Size: 1}
		m.base = m.lineage.Hash
		net.mu.Lock()
		net.nodes[name] = m
		net.mu.Unlock()
		nodes[name] = &simNode{m: m, view: view}
		for _, key := range []string{"both", "only-" + name} {
			if _, err := m.Put(ctx, "m", key, []byte("from-"+name), 0); err != nil {
				t.Fatalf("%s: put %s: %v", name, key, err)
			}
		}
	}
	t.Cleanup(func() {
		for _, n := range nodes {
			n.m.Wait()
		}
	})
	return nodes
}

// healed reports whether every node has the whole table, nothing
// migrating and nothing left to merge.
func healed(nodes map[string]*simNode) (bool, string) {
	for name, n := range nodes {
		if tb := n.m.Table(); len(tb.Members) != len(nodes) || !n.m.Settled() {
			return false, fmt.Sprintf("%s: table %v, migrating %d, lineage %+v", name, tb.Members, len(n.m.Migrating()), n.m.Lineage())
		}
	}
	return true, ""
}

// healStep: node sees the members sees and reconciles its table.
type healStep struct {
	node string
	sees []string
}

// TestHealThreeWays heals a 1|1|1 split in the orders seen in
// TestMapMergeThreeWays' failures: members appear to each node at
// different times, so a node merges into a side that already took it
// into its table, hears of the bigger side from another merging node,
// or merges twice. Whatever the order, the biggest lineage's (n1's)
// entries survive and every acknowledged entry is still there unless
// the policy dropped it for an existing one: discard keeps n1's entries
// only, latestupdate the last write of every key.
func TestHealThreeWays(t *testing.T) {
	all := []string{"n1", "n2", "n3"}
	orders := []struct {
		name  string
		steps []healStep
	}{
		{"bigger side took the merger in first", []healStep{{"n2", []string{"n2", "n3"}}, {"n1", []string{"n1", "n3"}}, {"n2", all}, {"n1", all}, {"n3", []string{"n1", "n3"}}}},
		{"merger hears of the bigger side from another merger", []healStep{{"n2", []string{"n2", "n3"}}, {"n1", []string{"n1", "n3"}}, {"n2", all}, {"n3", all}}},
		{"merger merges twice", []healStep{{"n3", []string{"n2", "n3"}}, {"n2", all}, {"n1", []string{"n1", "n2"}}, {"n3", all}}},
	}
	policies := []struct {
		name   string
		policy merge.Merger
		want   map[string]string // key -> value everywhere ("" absent)
	}{
		{"discard", discardPolicy{}, map[string]string{"both": "from-n1", "only-n1": "from-n1", "only-n2": "", "only-n3": ""}},
		{"latestupdate", latestPolicy{}, map[string]string{"both": "from-n3", "only-n1": "from-n1", "only-n2": "from-n2", "only-n3": "from-n3"}},
	}
	for _, o := range orders {
		for _, p := range policies {
			t.Run(o.name+"/"+p.name, func(t *testing.T) {
				ctx, cancel := context.WithCancel(context.Background())
				t.Cleanup(cancel) // before the nodes' Wait: cleanups run last-registered first
				nodes := newSplitNodes(t, ctx, p.policy)
				for _, s := range o.steps {
					nodes[s.node].view.set(s.sees)
					nodes[s.node].m.reconcile(ctx, false)
				}
				healAll(t, ctx, nodes, all)
				for _, name := range all {
					for key, want := range p.want {
						gctx, gcancel := context.WithTimeout(ctx, 5*time.Second)
						e, found, err := nodes[name].m.Get(gctx, "m", key)
						gcancel()
						if got := string(e.Value); err != nil || found != (want != "") || got != want {
							var local []string
							for _, o := range all {
								le, lok := nodes[o].m.Local("m", key)
								local = append(local, fmt.Sprintf("%s %q %v", o, le.Value, lok))
							}
							t.Errorf("%s: %s = %q %v %v, want %q (local copies: %s)", name, key, got, found, err, want, strings.Join(local, ", "))
						}
					}
				}
			})
		}
	}
}

// healAll shows every node all the members and reconciles them, round
// after round, until they have healed (20 s at most).
func healAll(t *testing.T, ctx context.Context, nodes map[string]*simNode, all []string) {
	t.Helper()
	reconcileUntil(t, ctx, nodes, all, false, func() (bool, string) { return healed(nodes) })
}

// reconcileUntil shows the nodes named in sees the members sees and
// reconciles them, round after round, until done (20 s at most).
func reconcileUntil(t *testing.T, ctx context.Context, nodes map[string]*simNode, sees []string, split bool, done func() (bool, string)) {
	t.Helper()
	var why string
	deadline := time.Now().Add(20 * time.Second)
	for ok := false; !ok; {
		if time.Now().After(deadline) {
			t.Fatalf("not done: %s", why)
		}
		for _, name := range sees {
			nodes[name].view.set(sees)
			nodes[name].m.reconcile(ctx, split)
		}
		ok, why = done()
		if !ok {
			select { // the pulls and merges run in the background
			case <-ctx.Done():
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
}

// TestHealBeforeASideNoticed: n3 is cut off from n1 and n2, which see it
// gone and go on as a side of their own (a lineage of 2) and write; the
// split heals before n3 saw them gone, so its table still has all three
// and it still reports the whole cluster's lineage, of 3. The smaller
// side is n3 all the same: it must merge into n1 and n2, not they into
// it. With discard (the existing entry stays), every value n1's side
// wrote during the split is then what every node reads.
func TestHealBeforeASideNoticed(t *testing.T) {
	all := []string{"n1", "n2", "n3"}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	nodes := newSplitNodes(t, ctx, discardPolicy{})
	healAll(t, ctx, nodes, all)
	const keys = 40
	for i := range keys {
		if _, err := nodes["n3"].m.Put(ctx, "m", fmt.Sprintf("k%d", i), []byte("whole"), 0); err != nil {
			t.Fatalf("put k%d: %v", i, err)
		}
	}
	whole := nodes["n3"].m.Lineage()
	side := []string{"n1", "n2"}
	reconcileUntil(t, ctx, nodes, side, true, func() (bool, string) {
		for _, name := range side {
			n := nodes[name]
			if tb := n.m.Table(); !slices.Equal(tb.Members, side) || !n.m.Settled() {
				return false, fmt.Sprintf("%s: table %v", name, tb.Members)
			}
		}
		return true, ""
	})
	for i := range keys {
		if _, err := nodes["n1"].m.Put(ctx, "m", fmt.Sprintf("k%d", i), []byte("side"), 0); err != nil {
			t.Fatalf("put k%d on n1's side: %v", i, err)
		}
	}
	if got := nodes["n3"].m.Lineage(); got != whole || len(nodes["n3"].m.Table().Members) != 3 {
		t.Fatalf("n3 saw the split: lineage %+v, table %v", got, nodes["n3"].m.Table().Members)
	}
	if got := nodes["n1"].m.Lineage(); got.Size != 2 {
		t.Fatalf("n1's side: lineage %+v, want one of 2", got)
	}
	healAll(t, ctx, nodes, all)
	for _, name := range all {
		for i := range keys {
			key := fmt.Sprintf("k%d", i)
			gctx, gcancel := context.WithTimeout(ctx, 5*time.Second)
			e, found, err := nodes[name].m.Get(gctx, "m", key)
			gcancel()
			if err != nil || !found || string(e.Value) != "side" {
				t.Errorf("%s: %s = %q %v %v, want the bigger side's \"side\"", name, key, e.Value, found, err)
			}
		}
	}
}
