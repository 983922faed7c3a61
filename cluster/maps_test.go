package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/mendmq/mendmq/cluster"
	"github.com/mendmq/mendmq/cluster/clustertest"
	"github.com/mendmq/mendmq/cluster/partition"
	"github.com/mendmq/mendmq/cluster/pmap"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
)

// metricSum is the sum of a node's metric name over the series whose
// labels include want.
func metricSum(t testing.TB, n *cluster.Node, name string, want map[string]string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(n)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("%s: gather metrics: %v", n.Name(), err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !labelsMatch(m.GetLabel(), want) {
				continue
			}
			switch {
			case m.Counter != nil:
				sum += m.GetCounter().GetValue()
			case m.Gauge != nil:
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

func labelsMatch(got []*dto.LabelPair, want map[string]string) bool {
	for k, v := range want {
		found := false
		for _, l := range got {
			if l.GetName() == k && l.GetValue() == v {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func mapCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func settled(nodes ...*cluster.Node) func() (bool, string) {
	return func() (bool, string) {
		for _, n := range nodes {
			if !n.Maps().Settled() || len(n.Maps().Table().Members) != len(nodes) {
				return false, fmt.Sprintf("%s: not active %v, table of %d", n.Name(), n.Maps().Migrating(), len(n.Maps().Table().Members))
			}
		}
		return true, ""
	}
}

// TestMapAcrossNodes: entries written on any node are read on every
// node, with Hazelcast's metadata (version +1 per update, hits +1 per
// read), and survive the loss of a member (backups promoted).
func TestMapAcrossNodes(t *testing.T) {
	t.Parallel()
	nw := clustertest.New(t, clustertest.Config{})
	nodes := startNodes(t, nw, 3, nil)
	waitFor(t, 10*time.Second, "the maps to settle", settled(nodes...))
	ctx := mapCtx(t)
	for i := range 100 {
		if _, err := nodes[i%3].Maps().Put(ctx, "m", fmt.Sprint("k", i), []byte(fmt.Sprint("v", i)), 0); err != nil {
			t.Fatal(err)
		}
	}
	e, err := nodes[0].Maps().Put(ctx, "m", "k7", []byte("v7b"), 0)
	if err != nil || e.Version != 1 || e.CreationTime == 0 || e.LastUpdateTime < e.CreationTime {
		t.Fatalf("update: %+v %v", e, err)
	}
	for _, n := range nodes {
		got, ok, err := n.Maps().Get(ctx, "m", "k7")
		if err != nil || !ok || string(got.Value) != "v7b" {
			t.Fatalf("%s: get k7 = %q %v %v", n.Name(), got.Value, ok, err)
		}
	}
	if got, _, _ := nodes[1].Maps().Get(ctx, "m", "k7"); got.Hits != 4 {
		t.Fatalf("hits %d, want 4 (three reads before this one)", got.Hits)
	}
	if ok, err := nodes[2].Maps().Delete(ctx, "m", "k8"); !ok || err != nil {
		t.Fatalf("delete: %v %v", ok, err)
	}
	// n3 crashes: its partitions are promoted on n1 and n2, nothing lost.
	nw.Isolate("n3")
	waitFor(t, 15*time.Second, "n1 and n2 to settle without n3", settled(nodes[0], nodes[1]))
	for i := range 100 {
		got, ok, err := nodes[i%2].Maps().Get(ctx, "m", fmt.Sprint("k", i))
		want := fmt.Sprint("v", i)
		if i == 7 {
			want = "v7b"
		}
		if i == 8 {
			if ok || err != nil {
				t.Fatalf("k8 deleted, got %q %v %v", got.Value, ok, err)
			}
			continue
		}
		if err != nil || !ok || string(got.Value) != want {
			t.Fatalf("after losing n3: k%d = %q %v %v", i, got.Value, ok, err)
		}
	}
	st := nodes[0].Maps().Stats().Promotions.Load() + nodes[1].Maps().Stats().Promotions.Load()
	if st == 0 {
		t.Error("no backup was promoted")
	}
}

// TestMapSplitAndMerge: a 2|1 split, writes on both sides, the heal: the
// single node merges into the pair through the policy (the cluster's
// default merger is latestupdate: the later update wins), and every node
// ends with the same entries.
func TestMapSplitAndMerge(t *testing.T) {
	t.Parallel()
	nw := clustertest.New(t, clustertest.Config{})
	nodes := startNodes(t, nw, 3, nil)
	waitFor(t, 10*time.Second, "the maps to settle", settled(nodes...))
	ctx := mapCtx(t)
	for i := range 30 {
		if _, err := nodes[0].Maps().Put(ctx, "m", fmt.Sprint("k", i), []byte("before"), 0); err != nil {
			t.Fatal(err)
		}
	}
	before := mapMergeMetrics(t, nodes)
	nw.Partition([]string{"n1", "n2"}, []string{"n3"})
	waitFor(t, 15*time.Second, "both sides to settle", all(settled(nodes[0], nodes[1]), settled(nodes[2])))
	// Conflicting writes: the small side writes k0-k9 first, the big side
	// k5-k14 after; only the small side writes k20.
	for i := range 10 {
		if _, err := nodes[2].Maps().Put(ctx, "m", fmt.Sprint("k", i), []byte("small"), 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := nodes[2].Maps().Put(ctx, "m", "only-small", []byte("small"), 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond) // later updates, by the clock latestupdate compares
	for i := 5; i < 15; i++ {
		if _, err := nodes[0].Maps().Put(ctx, "m", fmt.Sprint("k", i), []byte("big"), 0); err != nil {
			t.Fatal(err)
		}
	}
	nw.Heal()
	waitFor(t, 20*time.Second, "the merge", func() (bool, string) {
		if ok, why := settled(nodes...)(); !ok {
			return false, why
		}
		if p := nodes[2].Maps().Progress(); p.Finished.IsZero() {
			return false, "n3 has not merged"
		}
		return true, ""
	})
	want := func(i int) string {
		switch {
		case i < 5:
			return "small"
		case i < 15:
			return "big"
		}
		return "before"
	}
	for _, n := range nodes {
		for i := range 30 {
			got, ok, err := n.Maps().Get(ctx, "m", fmt.Sprint("k", i))
			if err != nil || !ok || string(got.Value) != want(i) {
				t.Errorf("%s: k%d = %q %v %v, want %q", n.Name(), i, got.Value, ok, err, want(i))
			}
		}
		if got, ok, _ := n.Maps().Get(ctx, "m", "only-small"); !ok || string(got.Value) != "small" {
			t.Errorf("%s: only-small = %q %v", n.Name(), got.Value, ok)
		}
	}
	if l0, l2 := nodes[0].Maps().Lineage(), nodes[2].Maps().Lineage(); l0.Hash != l2.Hash {
		t.Errorf("lineages differ after the merge: %+v vs %+v", l0, l2)
	}
	// What operators see: one merge more on the small side, each entry it
	// sent decided once by the big side's policy, the table whole again.
	// (Merges of empty lineages while the cluster formed count too, hence
	// the differences with before the split.)
	after := mapMergeMetrics(t, nodes)
	p := nodes[2].Maps().Progress()
	for _, c := range []struct {
		what      string
		got, want float64
	}{
		{"merges on n3", after.merges[2] - before.merges[2], 1},
		{"merges on n1, n2", after.merges[0] + after.merges[1] - before.merges[0] - before.merges[1], 0},
		{"entries sent by n3", after.sent - before.sent, float64(p.Done)},
		{"policy verdicts on n1, n2", after.verdicts - before.verdicts, float64(p.Done)},
		{"entries failed", after.failed, 0},
		{"partitions owned", sumMetric(t, nodes, "mendmq_map_partitions", map[string]string{"role": "owned"}), partition.DefaultCount},
		{"partitions migrating", sumMetric(t, nodes, "mendmq_map_partitions", map[string]string{"role": "migrating"}), 0},
		{"entries of m owned", sumMetric(t, nodes, "mendmq_map_entries", map[string]string{"map": "m", "copy": "owned"}), 31},
		{"entries of m backed up", sumMetric(t, nodes, "mendmq_map_entries", map[string]string{"map": "m", "copy": "backup"}), 31},
	} {
		if c.got != c.want {
			t.Errorf("metrics: %s = %v, want %v", c.what, c.got, c.want)
		}
	}
	if p.Done == 0 {
		t.Errorf("n3 merged no entry: %+v", p)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(nodes[2])
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range mfs {
		found = found || mf.GetName() == "mendmq_map_store_dirty_entries"
	}
	if !found {
		t.Error("metrics: no mendmq_map_store_dirty_entries gauge")
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, pr := range problems {
		t.Errorf("promlint: %s: %s", pr.Metric, pr.Text)
	}
}

type mergeMetrics struct {
	merges                 []float64
	sent, verdicts, failed float64
}

func mapMergeMetrics(t *testing.T, nodes []*cluster.Node) mergeMetrics {
	var mm mergeMetrics
	for _, n := range nodes {
		mm.merges = append(mm.merges, metricSum(t, n, "mendmq_map_merges_total", nil))
		mm.sent += metricSum(t, n, "mendmq_map_merge_entries_total", map[string]string{"outcome": "sent"})
		mm.failed += metricSum(t, n, "mendmq_map_merge_entries_total", map[string]string{"outcome": "failed"})
		for _, o := range []string{"replaced", "deleted", "kept", "parked"} {
			mm.verdicts += metricSum(t, n, "mendmq_map_merge_entries_total", map[string]string{"outcome": o})
		}
	}
	return mm
}

func sumMetric(t *testing.T, nodes []*cluster.Node, name string, labels map[string]string) float64 {
	var v float64
	for _, n := range nodes {
		v += metricSum(t, n, name, labels)
	}
	return v
}

// TestMapStoreSurvivesFullRestart: a map with a write-through store keeps
// its entries across a restart of every node; a write-behind one is
// stored within a second (dirty until then).
func TestMapStoreSurvivesFullRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	modes := map[string]string{"through": pmap.StoreWriteThrough, "behind": pmap.StoreWriteBehind}
	mutate := func(c *cluster.Config) {
		c.MapConfig = func(name string) pmap.MapConfig {
			return pmap.MapConfig{BackupCount: 1, MapStore: modes[name]}
		}
	}
	withStorage := func(name string) func(*cluster.Config) {
		return func(c *cluster.Config) {
			mutate(c)
			c.StoragePath = filepath.Join(dir, name+".cluster")
		}
	}
	run := func(write bool) {
		nw := clustertest.New(t, clustertest.Config{})
		var nodes []*cluster.Node
		var seed string
		for i := 1; i <= 3; i++ {
			name := fmt.Sprintf("n%d", i)
			cfg := cluster.LoopbackConfig()
			tr, err := nw.Transport(name)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Transport, cfg.DataNetwork, cfg.GossipAddress, cfg.Logger = tr, nw.DataNetwork(name), tr.Addr(), testLog()
			if seed != "" {
				cfg.Seeds = []string{seed}
			} else {
				seed = tr.Addr()
			}
			withStorage(name)(&cfg)
			n, err := cluster.New(name, cfg, nopBroker{})
			if err != nil {
				t.Fatal(err)
			}
			if err := n.Start(); err != nil {
				t.Fatal(err)
			}
			nodes = append(nodes, n)
		}
		waitFor(t, 20*time.Second, "the maps to settle", settled(nodes...))
		ctx := mapCtx(t)
		if write {
			for i := range 40 {
				for _, m := range []string{"through", "behind"} {
					e, err := nodes[i%3].Maps().Put(ctx, m, fmt.Sprint("k", i), []byte(fmt.Sprint(m, i)), 0)
					if err != nil {
						t.Fatal(err)
					}
					if m == "through" && e.LastStoredTime == 0 {
						t.Fatalf("a write-through entry answered before it was stored: %+v", e)
					}
				}
			}
			waitFor(t, 5*time.Second, "the write-behind entries to be stored", func() (bool, string) {
				for _, n := range nodes {
					if d := n.Maps().Dirty(); d != 0 {
						return false, fmt.Sprintf("%s: %d dirty", n.Name(), d)
					}
					// What operators see: the gauge and the member stats.
					if g, st := metricSum(t, n, "mendmq_map_store_dirty_entries", nil), n.Maps().LocalStats().StoreDirty; g != 0 || st != 0 {
						return false, fmt.Sprintf("%s: gauge %v, stats %d", n.Name(), g, st)
					}
				}
				return true, ""
			})
			if e, _, _ := nodes[0].Maps().Get(ctx, "behind", "k1"); e.LastStoredTime == 0 {
				t.Fatalf("write-behind entry never stored: %+v", e)
			}
		} else {
			waitFor(t, 20*time.Second, "the stored entries back everywhere", func() (bool, string) {
				for i := range 40 {
					for _, m := range []string{"through", "behind"} {
						e, ok, err := nodes[(i+1)%3].Maps().Get(ctx, m, fmt.Sprint("k", i))
						if err != nil || !ok || string(e.Value) != fmt.Sprint(m, i) {
							return false, fmt.Sprintf("%s/k%d = %q %v %v", m, i, e.Value, ok, err)
						}
					}
				}
				return true, ""
			})
		}
		for _, n := range nodes {
			if err := n.Stop(); err != nil {
				t.Logf("stop %s: %v", n.Name(), err)
			}
		}
	}
	run(true)
	run(false)
}

// TestMapStoreAcrossSplit: with a write-through store, each side of a
// split stores the partitions it took over (a promoted backup's entries
// go to its node's store, not only the lost owner's), and after the heal
// the merging node keeps no stored copy of what it merged into other
// owners — a stale copy would come back, unmerged, in a partition it
// recreates or at a restart. At the end each entry is stored by its
// owner only, with the value the cluster serves.
func TestMapStoreAcrossSplit(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	nw := clustertest.New(t, clustertest.Config{})
	started := 0
	nodes := startNodes(t, nw, 3, func(c *cluster.Config) {
		c.MapConfig = func(string) pmap.MapConfig {
			return pmap.MapConfig{BackupCount: 1, MapStore: pmap.StoreWriteThrough}
		}
		started++ // startNodes starts the nodes one after another
		c.StoragePath = filepath.Join(dir, fmt.Sprintf("n%d.cluster", started))
	})
	waitFor(t, 10*time.Second, "the maps to settle", settled(nodes...))
	ctx := mapCtx(t)
	const keys = 60
	for i := range keys {
		if _, err := nodes[i%3].Maps().Put(ctx, "s", fmt.Sprint("k", i), []byte("before"), 0); err != nil {
			t.Fatal(err)
		}
	}
	// storedBy checks that, on every node of side, each entry it serves
	// is in its owner's store with the value served, and in no other
	// member's store.
	storedBy := func(side []*cluster.Node) func() (bool, string) {
		return func() (bool, string) {
			for i := range keys {
				k := fmt.Sprint("k", i)
				gctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				e, ok, err := side[0].Maps().Get(gctx, "s", k)
				cancel()
				if err != nil {
					return false, fmt.Sprintf("get %s: %v", k, err)
				}
				owner := side[0].Maps().Table().Owner(partition.Of([]byte(k), partition.DefaultCount))
				for _, n := range side {
					st, found, err := n.Maps().Stored("s", k)
					if err != nil {
						return false, err.Error()
					}
					switch {
					case n.Name() == owner && ok && (!found || string(st.Value) != string(e.Value)):
						return false, fmt.Sprintf("%s owns %s = %q but stores %q (found %v)", n.Name(), k, e.Value, st.Value, found)
					case n.Name() != owner && found:
						return false, fmt.Sprintf("%s stores %s = %q but %s owns it", n.Name(), k, st.Value, owner)
					}
				}
			}
			return true, ""
		}
	}
	waitFor(t, 10*time.Second, "every entry stored by its owner", storedBy(nodes))

	nw.Partition([]string{"n1", "n2"}, []string{"n3"})
	waitFor(t, 15*time.Second, "both sides to settle", all(settled(nodes[0], nodes[1]), settled(nodes[2])))
	// n3 alone owns every partition it kept (its own, the promoted
	// backups, the recreated ones): it stores all it serves.
	waitFor(t, 10*time.Second, "n3 to store what it took over", storedBy(nodes[2:]))
	waitFor(t, 10*time.Second, "n1 and n2 to store what they took over", storedBy(nodes[:2]))
	for i := range 10 {
		if _, err := nodes[2].Maps().Put(mapCtx(t), "s", fmt.Sprint("k", i), []byte("small"), 0); err != nil {
			t.Fatal(err)
		}
	}
	nw.Heal()
	waitFor(t, 20*time.Second, "the merge", func() (bool, string) {
		if ok, why := settled(nodes...)(); !ok {
			return false, why
		}
		if p := nodes[2].Maps().Progress(); p.Finished.IsZero() || p.Done == 0 {
			return false, fmt.Sprintf("n3 has not merged: %+v", p)
		}
		return true, ""
	})
	waitFor(t, 10*time.Second, "each entry stored by its owner only, after the merge", storedBy(nodes))
	for _, n := range nodes {
		if e, _, _ := n.Maps().Get(mapCtx(t), "s", "k3"); string(e.Value) != "small" {
			t.Errorf("%s: k3 = %q, want the small side's later write", n.Name(), e.Value)
		}
	}
}

// TestMapMinClusterSize: Hazelcast's split-brain protection. With
// min_cluster_size 2, the single node cut off from a 3-node cluster
// refuses writes (and, with read_quorum, reads) of that map, while the
// pair keeps serving it; other maps are not affected, and the heal lifts
// the refusal.
func TestMapMinClusterSize(t *testing.T) {
	t.Parallel()
	nw := clustertest.New(t, clustertest.Config{})
	nodes := startNodes(t, nw, 3, func(c *cluster.Config) {
		c.MapConfig = func(name string) pmap.MapConfig {
			mc := pmap.MapConfig{BackupCount: 1}
			if name != "free" {
				mc.MinClusterSize, mc.ReadQuorum = 2, name == "strict"
			}
			return mc
		}
	})
	waitFor(t, 10*time.Second, "the maps to settle", settled(nodes...))
	ctx := mapCtx(t)
	for _, m := range []string{"guarded", "strict", "free"} {
		if _, err := nodes[0].Maps().Put(ctx, m, "k", []byte("before"), 0); err != nil {
			t.Fatal(err)
		}
	}
	nw.Partition([]string{"n1", "n2"}, []string{"n3"})
	waitFor(t, 15*time.Second, "both sides to settle", all(settled(nodes[0], nodes[1]), settled(nodes[2])))
	for _, tc := range []struct {
		node    *cluster.Node
		m       string
		write   bool // refused write
		read    bool // refused read
		comment string
	}{
		{nodes[2], "guarded", true, false, "one member < 2: writes refused, reads served"},
		{nodes[2], "strict", true, true, "read_quorum: reads refused too"},
		{nodes[2], "free", false, false, "no protection"},
		{nodes[0], "guarded", false, false, "two members: serving"},
		{nodes[0], "strict", false, false, "two members: serving"},
	} {
		_, err := tc.node.Maps().Put(ctx, tc.m, "k", []byte("during"), 0)
		if got := errors.Is(err, pmap.ErrRefused); got != tc.write {
			t.Errorf("%s put %s (%s): err %v, refused want %v", tc.node.Name(), tc.m, tc.comment, err, tc.write)
		}
		_, _, err = tc.node.Maps().Get(ctx, tc.m, "k")
		if got := errors.Is(err, pmap.ErrRefused); got != tc.read {
			t.Errorf("%s get %s (%s): err %v, refused want %v", tc.node.Name(), tc.m, tc.comment, err, tc.read)
		}
	}
	nw.Heal()
	waitFor(t, 20*time.Second, "the cluster to settle again", settled(nodes...))
	if _, err := nodes[2].Maps().Put(ctx, "strict", "k", []byte("after"), 0); err != nil {
		t.Errorf("put on n3 after the heal: %v", err)
	}
}

// TestMapStored: Maps.Stored reads an entry as the owner's MapStore holds
// it — with the time it was stored, before and after a later write — and
// reports a key not stored, a map without a store mode (its writes are not
// stored), and a node without a storage file (ErrNoStore).
func TestMapStored(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	nw := clustertest.New(t, clustertest.Config{})
	nodes := startNodes(t, nw, 1, func(c *cluster.Config) {
		c.StoragePath = filepath.Join(dir, "n1.cluster")
		c.MapConfig = func(name string) pmap.MapConfig {
			if name == "db" {
				return pmap.MapConfig{BackupCount: 1, MapStore: pmap.StoreWriteThrough}
			}
			return pmap.MapConfig{BackupCount: 1}
		}
	})
	waitFor(t, 10*time.Second, "the maps to settle", settled(nodes...))
	m, ctx := nodes[0].Maps(), mapCtx(t)
	for i, v := range []string{"first", "second"} {
		put, err := m.Put(ctx, "db", "k", []byte(v), 0)
		if err != nil {
			t.Fatal(err)
		}
		e, ok, err := m.Stored("db", "k")
		if err != nil || !ok || string(e.Value) != v || e.Version != int64(i) || e.LastStoredTime == 0 ||
			e.LastStoredTime != put.LastStoredTime || e.LastUpdateTime != put.LastUpdateTime {
			t.Fatalf("after put %q (%+v): stored %+v %v %v", v, put, e, ok, err)
		}
	}
	if _, err := m.Put(ctx, "plain", "k", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	for _, k := range [][2]string{{"db", "missing"}, {"plain", "k"}} {
		if e, ok, err := m.Stored(k[0], k[1]); ok || err != nil {
			t.Errorf("%s/%s: stored %+v %v %v, want not stored", k[0], k[1], e, ok, err)
		}
	}

	bare := startNodes(t, clustertest.New(t, clustertest.Config{}), 1, nil)
	if _, _, err := bare[0].Maps().Stored("db", "k"); !errors.Is(err, pmap.ErrNoStore) {
		t.Fatalf("node without storage: %v, want ErrNoStore", err)
	}
}
