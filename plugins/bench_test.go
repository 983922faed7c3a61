package plugins

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/mendmq/mendmq/examples/policies/builtin"
	"github.com/mendmq/mendmq/sdk"
)

// Benchmarks for plugins/BENCHMARKS-plugins.md. Commands there.

const benchValue = 100 // bytes per value, as the targets state

func benchEntries(n int) []MergeItem {
	items := make([]MergeItem, n)
	for i := range items {
		key := []byte(fmt.Sprintf("key-%06d", i))
		items[i] = MergeItem{
			Merging:  &EntryView{Key: key, Value: bytes.Repeat([]byte{'m'}, benchValue), Cost: 110, Hits: 3, Version: 2, LastUpdateTime: int64(1000 + i%3)},
			Existing: &EntryView{Key: key, Value: bytes.Repeat([]byte{'e'}, benchValue), Cost: 110, Hits: 5, Version: 4, LastUpdateTime: 1001},
		}
	}
	return items
}

// benchRegistry maps "go" to the built-in latestupdate (Go module) and "c"
// to the C latestupdate example.
func benchRegistry(b *testing.B) *Registry {
	cfg := DefaultConfig()
	cfg.MapsInUse = AnyMap
	cfg.Host.WatchModules = false
	cfg.Host.CompilationCacheDir = testCacheDir
	cfg.Policies["clatest"] = PolicyConfig{Module: repoPath("examples/policies/c/latestupdate/latestupdate.wasm")}
	cfg.Maps["go"] = MapConfig{MergePolicy: "latestupdate"}
	cfg.Maps["c"] = MapConfig{MergePolicy: "clatest"}
	r, err := New(cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = r.Close() })
	return r
}

func reportMerges(b *testing.B, perOp int) {
	b.ReportMetric(float64(b.N*perOp)/b.Elapsed().Seconds(), "merges/s")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*perOp), "ns/merge")
}

// BenchmarkLatestUpdate: the same policy natively, as a C module and as a Go
// module; one entry per call and 256 per call (merge_batch).
func BenchmarkLatestUpdate(b *testing.B) {
	r := benchRegistry(b)
	ctx := context.Background()
	items := benchEntries(256)
	b.Run("native/single", func(b *testing.B) {
		m := toSDK(items[0].Merging)
		e := toSDK(items[0].Existing)
		for b.Loop() {
			if res := builtin.LatestUpdate("go", &m, &e); res.Verdict > sdk.VerdictFail {
				b.Fatal(res)
			}
		}
		reportMerges(b, 1)
	})
	b.Run("native/batch256", func(b *testing.B) {
		ms, es := make([]sdk.EntryView, len(items)), make([]sdk.EntryView, len(items))
		for i := range items {
			ms[i], es[i] = toSDK(items[i].Merging), toSDK(items[i].Existing)
		}
		out := make([]sdk.Result, len(items))
		for b.Loop() {
			for i := range ms {
				out[i] = builtin.LatestUpdate("go", &ms[i], &es[i])
			}
		}
		reportMerges(b, len(items))
	})
	for _, impl := range []string{"c", "go"} {
		b.Run(impl+"/single", func(b *testing.B) {
			for b.Loop() {
				if _, err := r.Merge(ctx, impl, items[0].Merging, items[0].Existing); err != nil {
					b.Fatal(err)
				}
			}
			reportMerges(b, 1)
		})
		b.Run(impl+"/batch256", func(b *testing.B) {
			for b.Loop() {
				if _, err := r.MergeBatch(ctx, impl, items); err != nil {
					b.Fatal(err)
				}
			}
			reportMerges(b, len(items))
		})
	}
}

// BenchmarkLatestUpdateParallel: merge_batch from GOMAXPROCS goroutines
// (pool size GOMAXPROCS); run with -cpu 1,2,… to see the pool scale.
func BenchmarkLatestUpdateParallel(b *testing.B) {
	r := benchRegistry(b)
	items := benchEntries(256)
	for _, impl := range []string{"c", "go"} {
		b.Run(impl+"/batch256", func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := r.MergeBatch(context.Background(), impl, items); err != nil {
						b.Error(err)
						return
					}
				}
			})
			reportMerges(b, len(items))
		})
	}
}

// BenchmarkApplySwap: latency of Apply for a policy change by config only
// (both policies already loaded), and for a module change that loads a C or
// a Go module (compiled code from the cache; instantiate and self-test).
func BenchmarkApplySwap(b *testing.B) {
	base := func() Config {
		cfg := DefaultConfig()
		cfg.MapsInUse = AnyMap
		cfg.Host.WatchModules = false
		cfg.Host.PoolSize = 1
		cfg.Host.CompilationCacheDir = testCacheDir
		return cfg
	}
	cLatest, err := filepath.Abs(repoPath("examples/policies/c/latestupdate/latestupdate.wasm"))
	if err != nil {
		b.Fatal(err)
	}
	cCounter, err := filepath.Abs(repoPath("examples/policies/c/counter/counter.wasm"))
	if err != nil {
		b.Fatal(err)
	}
	cases := []struct {
		name string
		a, z func(*Config)
	}{
		{"config-only", func(c *Config) {
			c.Maps["x"] = MapConfig{MergePolicy: "passthrough"}
			c.Maps["y"] = MapConfig{MergePolicy: "discard"}
		}, func(c *Config) {
			c.Maps["x"] = MapConfig{MergePolicy: "discard"}
			c.Maps["y"] = MapConfig{MergePolicy: "passthrough"}
		}},
		{"c-module", func(c *Config) {
			c.Policies["p"] = PolicyConfig{Module: cLatest}
			c.Maps["x"] = MapConfig{MergePolicy: "p"}
		}, func(c *Config) {
			c.Policies["p"] = PolicyConfig{Module: cCounter}
			c.Maps["x"] = MapConfig{MergePolicy: "p"}
		}},
		{"go-module", func(c *Config) { c.Maps["x"] = MapConfig{MergePolicy: "passthrough"} },
			func(c *Config) { c.Maps["x"] = MapConfig{MergePolicy: "discard"} }},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			a, z := base(), base()
			c.a(&a)
			c.z(&z)
			r, err := New(a, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer r.Close()
			if err := r.Apply(z); err != nil { // warm the compilation cache
				b.Fatal(err)
			}
			i := 0
			for b.Loop() {
				cfg := a
				if i%2 == 1 {
					cfg = z
				}
				i++
				if err := r.Apply(cfg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func toSDK(e *EntryView) sdk.EntryView {
	return sdk.EntryView{Key: e.Key, Value: e.Value, Cost: e.Cost, Hits: e.Hits, Version: e.Version,
		CreationTime: e.CreationTime, LastAccessTime: e.LastAccessTime, LastUpdateTime: e.LastUpdateTime,
		LastStoredTime: e.LastStoredTime, ExpirationTime: e.ExpirationTime}
}

// BenchmarkObserve: what counting and (not) logging costs per merge call
// with debug logging off — the overhead of observable merges (the tally
// per verdict is made by run in the loop that fills the results anyway).
func BenchmarkObserve(b *testing.B) {
	r := newRegistry(b, cConfig())
	r.logger = slog.New(slog.DiscardHandler)
	s, err := r.acquire()
	if err != nil {
		b.Fatal(err)
	}
	defer s.release()
	p := s.policyFor("orders")
	ctx := context.Background()
	for _, n := range []int{1, 256} {
		items := benchEntries(n)
		out := make([]Result, n)
		var counts verdictCounts
		for i := range out {
			out[i] = Result{Verdict: Verdict(i % 2)}
			counts[slot(&out[i])]++
		}
		b.Run(fmt.Sprintf("entries%d", n), func(b *testing.B) {
			for b.Loop() {
				r.observe(ctx, p, "orders", items, out, &counts)
			}
		})
	}
}

// BenchmarkFromStore: the C fromstore example (it imports
// mendmq.stored_entry_v1) merging batches of 256 with the stored copy read
// from an in-memory StoreReader for every entry ("stored"), and on a map
// without a store ("nostore": the host answers without a reader). Compare
// with BenchmarkLatestUpdate/c/batch256, which does not read the store.
func BenchmarkFromStore(b *testing.B) {
	cfg := DefaultConfig()
	cfg.MapsInUse = AnyMap
	cfg.Host.WatchModules = false
	cfg.Host.CompilationCacheDir = testCacheDir
	through := "write-through"
	cfg.Policies["fromstore"] = PolicyConfig{Module: repoPath("examples/policies/c/fromstore/fromstore.wasm")}
	cfg.Maps["stored"] = MapConfig{MergePolicy: "fromstore", MapStore: &through}
	cfg.Maps["nostore"] = MapConfig{MergePolicy: "fromstore"}
	r, err := New(cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = r.Close() })
	items := benchEntries(256)
	store := &fakeStore{entries: map[string]EntryView{}}
	for _, it := range items {
		store.entries["stored/"+string(it.Merging.Key)] = *it.Existing // the store agrees with existing
	}
	r.SetStoreReader(store)
	for _, m := range []string{"stored", "nostore"} {
		b.Run(m+"/batch256", func(b *testing.B) {
			for b.Loop() {
				if _, err := r.MergeBatch(context.Background(), m, items); err != nil {
					b.Fatal(err)
				}
			}
			reportMerges(b, len(items))
		})
	}
}
