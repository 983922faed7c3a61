package replication

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/mendmq/mendmq/cluster/dataplane"
	"github.com/mendmq/mendmq/cluster/merge"
	"github.com/mendmq/mendmq/cluster/replica"
)

// net is an in-memory data plane between replicators: Send and Call run
// the receiver's Mux handlers directly.
type net struct {
	mu    sync.Mutex
	muxes map[string]*dataplane.Mux
	down  map[string]bool
}

type endpoint struct {
	n    *net
	self string
}

func (e endpoint) target(peer string) (*dataplane.Mux, error) {
	e.n.mu.Lock()
	defer e.n.mu.Unlock()
	if e.n.down[peer] || e.n.down[e.self] {
		return nil, errors.New("link down")
	}
	return e.n.muxes[peer], nil
}

func (e endpoint) Send(peer string, typ uint8, p []byte) error {
	m, err := e.target(peer)
	if err != nil {
		return err
	}
	m.HandleFrame(e.self, typ, p)
	return nil
}

func (e endpoint) SendWait(_ context.Context, peer string, typ uint8, p []byte) error {
	return e.Send(peer, typ, p)
}

func (e endpoint) Call(_ context.Context, peer string, typ uint8, p []byte) ([]byte, error) {
	m, err := e.target(peer)
	if err != nil {
		return nil, err
	}
	return m.HandleCall(e.self, typ, p)
}

type peers struct {
	self string
	all  []string
}

func (p peers) AlivePeers() []string {
	var out []string
	for _, n := range p.all {
		if n != p.self {
			out = append(out, n)
		}
	}
	return out
}

// table "m" is decided by the merger: the larger value wins.
var mergedM = Merged{
	Table:   "m",
	MapName: "map-m",
	View: func(key string, s replica.Sibling) merge.EntryView {
		return merge.EntryView{Key: []byte(key), Value: s.Value}
	},
	Decide: func(_ string, existing, merging replica.Sibling, r merge.Result) replica.Sibling {
		if r.Verdict == merge.TakeMerging {
			return merging
		}
		return existing
	},
}

// largest keeps the larger value; it can be made to block.
type largest struct {
	mu      sync.Mutex
	calls   int
	maps    []string
	entered chan struct{}
	release chan struct{}
}

func (l *largest) MergeBatch(ctx context.Context, mapName string, items []merge.Item) ([]merge.Result, error) {
	l.mu.Lock()
	l.calls++
	l.maps = append(l.maps, mapName)
	l.mu.Unlock()
	if l.entered != nil {
		l.entered <- struct{}{}
		<-l.release
	}
	out := make([]merge.Result, len(items))
	for i, it := range items {
		if string(it.Merging.Value) > string(it.Existing.Value) {
			out[i] = merge.Result{Verdict: merge.TakeMerging, Entry: it.Merging}
		}
	}
	return out, nil
}

func newPair(t *testing.T, merger merge.Merger) (*Replicator, *Replicator, *net) {
	t.Helper()
	n := &net{muxes: map[string]*dataplane.Mux{}, down: map[string]bool{}}
	all := []string{"a", "b"}
	var rs []*Replicator
	for _, name := range all {
		mux := dataplane.NewMux()
		n.muxes[name] = mux
		r, err := New(Config{Node: name, AntiEntropyInterval: time.Hour, TombstoneGrace: time.Hour, Merger: merger, Merged: []Merged{mergedM}},
			endpoint{n, name}, peers{name, all}, mux)
		if err != nil {
			t.Fatal(err)
		}
		r.running.Store(true)
		rs = append(rs, r)
	}
	return rs[0], rs[1], n
}

// TestConflictsResolvedOutsideTheLock: conflicting writes of a merged
// table made while the nodes could not talk are decided by the Merger,
// batched, to the same value on both nodes, and a Merger that hangs does
// not hold up replication of anything else.
func TestConflictsResolvedOutsideTheLock(t *testing.T) {
	m := &largest{entered: make(chan struct{}, 2), release: make(chan struct{})}
	a, b, n := newPair(t, m)
	n.down["a"] = true
	for i := range 5 {
		key := fmt.Sprint("k", i)
		if err := a.Put("m", key, []byte(fmt.Sprint("a", i%2)), time.Now()); err != nil {
			t.Fatal(err)
		}
		if err := b.Put("m", key, []byte(fmt.Sprint("b", i%2)), time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	n.down["a"] = false
	_, _, _ = a.AntiEntropy(context.Background(), "b") // both now hold both versions
	keys := func(r *Replicator) []tableKey {
		var ks []tableKey
		r.pendMu.Lock()
		for k := range r.pending {
			ks = append(ks, k)
		}
		clear(r.pending)
		r.pendMu.Unlock()
		return ks
	}
	ka, kb := keys(a), keys(b)
	if len(ka) != 5 || len(kb) != 5 {
		t.Fatalf("pending: a %d, b %d, want 5 each", len(ka), len(kb))
	}
	done := make(chan []tableKey)
	go func() { done <- a.resolveConflicts(context.Background(), ka) }()
	<-m.entered // the policy is running, and stuck
	// Replication goes on meanwhile: local writes, reads, peers' deltas.
	writes := make(chan error, 1)
	go func() {
		err := a.Put("other", "x", []byte("1"), time.Now())
		if v, ok := b.Get("other", "x"); err == nil && (!ok || string(v) != "1") {
			err = fmt.Errorf("b has %q %v", v, ok)
		}
		writes <- err
	}()
	select {
	case err := <-writes:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a write waited for the merge policy")
	}
	close(m.release) // let the merges finish
	if failed := <-done; len(failed) != 0 {
		t.Fatalf("unmerged %v", failed)
	}
	if failed := b.resolveConflicts(context.Background(), kb); len(failed) != 0 {
		t.Fatalf("unmerged on b %v", failed)
	}
	for i := range 5 {
		key := fmt.Sprint("k", i)
		va, _ := a.Get("m", key)
		vb, _ := b.Get("m", key)
		if want := fmt.Sprint("b", i%2); string(va) != want || string(vb) != want {
			t.Errorf("%s: a %q, b %q, want %q", key, va, vb, want)
		}
	}
	// One batch per node for the five conflicts (two siblings each).
	if m.calls != 2 || m.maps[0] != "map-m" {
		t.Fatalf("merger calls %d for maps %v, want 2", m.calls, m.maps)
	}
	if a.stats.Merges.Load() != 5 || b.stats.Merges.Load() != 5 {
		t.Fatalf("merges counted a %d, b %d", a.stats.Merges.Load(), b.stats.Merges.Load())
	}
}

// failing leaves everything unmerged.
type failing struct{ calls int }

func (f *failing) MergeBatch(_ context.Context, _ string, items []merge.Item) ([]merge.Result, error) {
	f.calls++
	out := make([]merge.Result, len(items))
	for i := range out {
		out[i].Unmerged = true
	}
	return out, errors.New("conflict store full")
}

// TestUnmergedConflictsStayPending: when the Merger cannot decide, the
// key keeps its value and stays pending, to be tried again.
func TestUnmergedConflictsStayPending(t *testing.T) {
	f := &failing{}
	a, b, n := newPair(t, f)
	n.down["a"] = true
	_ = a.Put("m", "k", []byte("x"), time.Now())
	_ = b.Put("m", "k", []byte("y"), time.Now())
	n.down["a"] = false
	_, _, _ = a.AntiEntropy(context.Background(), "b")
	failed := a.resolveConflicts(context.Background(), []tableKey{{"m", "k"}})
	if len(failed) != 1 || f.calls == 0 {
		t.Fatalf("failed %v after %d calls", failed, f.calls)
	}
	if v, _ := a.Get("m", "k"); string(v) != "x" {
		t.Fatalf("value %q, want the one a had", v)
	}
	a.mu.Lock()
	pending := a.store.PendingKeys("m")
	a.mu.Unlock()
	if len(pending) != 1 {
		t.Fatalf("pending %v", pending)
	}
}

// TestWriteBatchAndFingerprints: a batch of puts and deletes reaches the
// peer (more keys than one frame carries), watchers hear of each change,
// and the two nodes' fingerprints are equal exactly when their tables
// are; a node without the table has no fingerprint for it.
func TestWriteBatchAndFingerprints(t *testing.T) {
	a, b, n := newPair(t, &largest{})
	var changes int
	a.Watch("h", func(replica.Change, bool) { changes++ })
	const keys = chunk + 10
	ws := make([]Write, keys)
	for i := range ws {
		ws[i] = Write{Key: fmt.Sprint("k", i), Value: []byte("v")}
	}
	if err := a.WriteBatch("h", ws, time.Now()); err != nil {
		t.Fatal(err)
	}
	if a.Len("h") != keys || b.Len("h") != keys || changes != keys {
		t.Fatalf("after the batch: a holds %d, b %d, %d changes; want %d each", a.Len("h"), b.Len("h"), changes, keys)
	}
	if fa, fb := a.Fingerprints(), b.Fingerprints(); fa["h"] == 0 || fa["h"] != fb["h"] {
		t.Fatalf("fingerprints after the batch: a %v, b %v", fa, fb)
	}
	n.mu.Lock()
	n.down["b"] = true
	n.mu.Unlock()
	if err := a.WriteBatch("h", []Write{{Key: "k0", Delete: true}, {Key: "", Value: []byte("x")}}, time.Now()); err == nil {
		t.Fatal("a batch with an invalid key reported no error")
	}
	if a.Len("h") != keys-1 || a.Fingerprints()["h"] == b.Fingerprints()["h"] {
		t.Fatalf("the deletion b missed: a holds %d, fingerprints equal %v", a.Len("h"), a.Fingerprints()["h"] == b.Fingerprints()["h"])
	}
	n.mu.Lock()
	n.down["b"] = false
	n.mu.Unlock()
	if _, _, err := b.AntiEntropy(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
	if fa, fb := a.Fingerprints(), b.Fingerprints(); fa["h"] != fb["h"] {
		t.Fatalf("fingerprints after anti-entropy: a %v, b %v", fa, fb)
	}
	if _, ok := newEmpty(t).Fingerprints()["h"]; ok {
		t.Fatal("an empty replicator has a fingerprint for table h")
	}
}

func newEmpty(t *testing.T) *Replicator {
	t.Helper()
	r, err := New(Config{Node: "x", AntiEntropyInterval: time.Hour, TombstoneGrace: time.Hour}, nil, peers{"x", nil}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
