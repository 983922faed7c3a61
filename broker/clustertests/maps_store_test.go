package clustertests

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/mendmq/mendmq/broker/config"
	"github.com/mendmq/mendmq/cluster/partition"
	"github.com/mendmq/mendmq/plugins"
)

// TestMapStoreReadByPolicy: policies that read the MapStore through
// mendmq.stored_entry_v1 (sdk/ABI.md §9) decide a heal from the stored
// copy on the key's owner. A 3-node cluster with storage splits 2|1; the
// bigger side writes "big" (stored write-through by its owner), the
// smaller side "small" later. After the heal every node holds:
//   - map "db" (examples/policies/c/fromstore): the stored value, big —
//     where latestupdate (map "lu") takes the later small;
//   - map "probe" (plugins/testdata/stored/probe): "stored:big", the
//     value the host read from the owner's store; a key the bigger side
//     never wrote was not stored there: "notfound:small";
//   - map "plain" (the probe, no map_store): "nostore:small".
//
// The keys are chosen so that their owner is the same bigger-side node
// before the split, during it and after the heal: the store read is the
// one that owner wrote.
func TestMapStoreReadByPolicy(t *testing.T) {
	abs := func(rel string) string {
		p, err := filepath.Abs(filepath.Join("..", "..", rel))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	through, none := "write-through", ""
	c := newCluster(t, 3, clusterOptions{Faults: true, Storage: true, Mutate: func(_ string, cfg *config.Config) {
		cfg.Plugins.Policies["fromstore"] = plugins.PolicyConfig{Module: abs("examples/policies/c/fromstore/fromstore.wasm")}
		cfg.Plugins.Policies["probe"] = plugins.PolicyConfig{Module: abs("plugins/testdata/stored/probe.wasm")}
		cfg.Plugins.Maps["db"] = plugins.MapConfig{MergePolicy: "fromstore", MapStore: &through}
		cfg.Plugins.Maps["probe"] = plugins.MapConfig{MergePolicy: "probe", MapStore: &through}
		cfg.Plugins.Maps["plain"] = plugins.MapConfig{MergePolicy: "probe", MapStore: &none}
		cfg.Plugins.Maps["lu"] = plugins.MapConfig{MergePolicy: "latestupdate", MapStore: &through}
	}})
	c.eventually("the maps to settle", c.mapsSettled(c.names...))
	whole := c.node("n1").Cluster().Maps().Table()
	c.net.Partition([]string{"n1", "n2"}, []string{"n3"})
	c.eventually("both sides to settle", func() (bool, string) {
		if ok, why := c.mapsSettled("n1", "n2")(); !ok {
			return false, why
		}
		return c.mapsSettled("n3")()
	})
	half := c.node("n1").Cluster().Maps().Table()
	count := len(whole.Replicas)
	var keys []string // owned by the same bigger-side node in both tables
	for i := 0; len(keys) < 3 && i < 1000; i++ {
		k := fmt.Sprint("k-", i)
		p := partition.Of([]byte(k), count)
		if o := whole.Owner(p); o != "n3" && o == half.Owner(p) {
			keys = append(keys, k)
		}
	}
	if len(keys) < 3 {
		t.Fatalf("no keys with a stable owner among 1000 (tables %v / %v)", whole.Members, half.Members)
	}
	both, only := keys[:2], keys[2]
	maps := []string{"db", "probe", "plain", "lu"}
	put := func(n, m, key, value string) int64 {
		t.Helper()
		e, err := c.node(n).Cluster().Maps().Put(mctx(t), m, key, []byte(value), 0)
		if err != nil {
			t.Fatalf("%s put %s/%s: %v", n, m, key, err)
		}
		return e.LastUpdateTime
	}
	var last int64
	for _, m := range maps {
		for _, k := range both {
			last = max(last, put("n1", m, k, "big"))
		}
	}
	// The smaller side writes later: latestupdate takes its entries.
	if _, ok := pollFor(5*time.Second, func() (bool, string) { return time.Now().UnixMilli() > last, "" }); !ok {
		t.Fatal("the clock did not move on")
	}
	for _, m := range maps {
		for _, k := range append([]string{only}, both...) {
			put("n3", m, k, "small")
		}
	}
	c.net.Heal()
	c.eventually("the merge", func() (bool, string) {
		if ok, why := c.mapsSettled(c.names...)(); !ok {
			return false, why
		}
		if p := c.node("n3").Cluster().Maps().Progress(); p.Finished.IsZero() || p.Done != p.Total {
			return false, fmt.Sprintf("n3 merge progress %+v", p)
		}
		return true, ""
	})
	want := map[string]map[string]string{
		"db":    {both[0]: "big", both[1]: "big", only: "small"},
		"probe": {both[0]: "stored:big", both[1]: "stored:big", only: "notfound:small"},
		"plain": {both[0]: "nostore:small", both[1]: "nostore:small", only: "nostore:small"},
		"lu":    {both[0]: "small", both[1]: "small", only: "small"},
	}
	for _, n := range c.names {
		for m, kv := range want {
			for k, v := range kv {
				e, ok, err := c.node(n).Cluster().Maps().Get(mctx(t), m, k)
				if err != nil || !ok || string(e.Value) != v {
					t.Errorf("%s: %s/%s = %q (found %v, %v), want %q", n, m, k, e.Value, ok, err, v)
				}
			}
		}
		if cs := conflictsOf(t, c.node(n)); len(cs) != 0 {
			t.Errorf("%s parked %d conflicts: %+v", n, len(cs), cs)
		}
	}
}
