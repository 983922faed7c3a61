package cluster_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mendmq/mendmq/cluster"
	"github.com/mendmq/mendmq/cluster/clustertest"
	"github.com/mendmq/mendmq/plugins"
)

// The map benchmarks: go test -run XXX -bench Map -benchtime 1x ./cluster/
// (make bench-maps). Each reports its figures with b.ReportMetric; none
// is asserted.

// benchCluster starts count nodes (n1 seeds the others) and waits for
// their maps to settle.
func benchCluster(b *testing.B, nw *clustertest.Network, count int, mutate func(*cluster.Config)) ([]*cluster.Node, string) {
	b.Helper()
	nodes, seed := startSeeded(b, nw, count, mutate)
	waitFor(b, 60*time.Second, "the maps to settle", settled(nodes...))
	return nodes, seed
}

// load puts keys [from, to) of map name with a 64-byte value prefixed by
// tag, from workers goroutines spread over nodes.
func load(b *testing.B, nodes []*cluster.Node, name, tag string, from, to, workers int) {
	b.Helper()
	var next atomic.Int64
	next.Store(int64(from))
	var failed atomic.Int64
	var wg sync.WaitGroup
	val := make([]byte, 64)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := nodes[w%len(nodes)]
			for {
				i := int(next.Add(1)) - 1
				if i >= to {
					return
				}
				v := append([]byte(tag), val[len(tag):]...)
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				_, err := n.Maps().Put(ctx, name, fmt.Sprintf("key-%07d", i), v, 0)
				cancel()
				if err != nil {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		b.Fatalf("load %s: %d puts failed", name, f)
	}
}

// BenchmarkMapOps: put and get latency (p50, p99) and throughput with 32
// concurrent callers spread over the members, on one node and on three
// (every write also goes to one backup; two thirds of the calls cross
// the data plane to the key's owner).
func BenchmarkMapOps(b *testing.B) {
	for _, count := range []int{1, 3} {
		b.Run(fmt.Sprintf("nodes=%d", count), func(b *testing.B) {
			nw := clustertest.New(b, clustertest.Config{})
			nodes, _ := benchCluster(b, nw, count, nil)
			load(b, nodes, "bench", "init", 0, 10_000, 32)
			const callers, perCaller = 32, 1000
			b.ResetTimer()
			for range b.N {
				var mu sync.Mutex
				var puts, gets []time.Duration
				var wg sync.WaitGroup
				start := time.Now()
				for c := range callers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						n := nodes[c%len(nodes)]
						var p, g []time.Duration
						for i := range perCaller {
							key := fmt.Sprintf("key-%07d", (c*perCaller+i*7919)%10_000)
							ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
							t0 := time.Now()
							var err error
							if i%2 == 0 {
								_, err = n.Maps().Put(ctx, "bench", key, []byte("value"), 0)
								p = append(p, time.Since(t0))
							} else {
								_, _, err = n.Maps().Get(ctx, "bench", key)
								g = append(g, time.Since(t0))
							}
							cancel()
							if err != nil {
								b.Errorf("%s: %v", n.Name(), err)
								return
							}
						}
						mu.Lock()
						puts, gets = append(puts, p...), append(gets, g...)
						mu.Unlock()
					}()
				}
				wg.Wait()
				took := time.Since(start)
				b.ReportMetric(float64(callers*perCaller)/took.Seconds(), "ops/s")
				b.ReportMetric(float64(pct(puts, 50))/1e3, "put-p50-µs")
				b.ReportMetric(float64(pct(puts, 99))/1e3, "put-p99-µs")
				b.ReportMetric(float64(pct(gets, 50))/1e3, "get-p50-µs")
				b.ReportMetric(float64(pct(gets, 99))/1e3, "get-p99-µs")
			}
		})
	}
}

// profileHeal writes a CPU profile and allocation profiles at its start
// and end (compare them with go tool pprof -diff_base) of the heal alone when
// MENDMQ_BENCH_MERGE_PROFILE names a file prefix: the benchmark's own
// -cpuprofile also covers the 2M puts that load the maps. It returns the
// function that ends the profile.
func profileHeal(b *testing.B) func() {
	prefix := os.Getenv("MENDMQ_BENCH_MERGE_PROFILE")
	if prefix == "" {
		return func() {}
	}
	f, err := os.Create(prefix + ".cpu")
	if err != nil {
		b.Fatal(err)
	}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	writeAllocs(b, prefix+".heap0")
	if err := pprof.StartCPUProfile(f); err != nil {
		b.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		b.Logf("heal: %d MB allocated, %d objects, %d GCs", (after.TotalAlloc-before.TotalAlloc)>>20, after.Mallocs-before.Mallocs, after.NumGC-before.NumGC)
		runtime.GC() // the allocation profile is as of the last collection
		writeAllocs(b, prefix+".heap")
	}
}

func writeAllocs(b *testing.B, name string) {
	h, err := os.Create(name)
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	if err := pprof.Lookup("allocs").WriteTo(h, 0); err != nil {
		b.Fatal(err)
	}
}

func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}

// BenchmarkMapHeapPerEntry: heap bytes per entry on one node holding 1M
// entries (11-byte keys, 64-byte values, no backups: the node is alone).
func BenchmarkMapHeapPerEntry(b *testing.B) {
	const entries = 1_000_000
	for range b.N {
		nw := clustertest.New(b, clustertest.Config{})
		nodes, _ := benchCluster(b, nw, 1, nil)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		load(b, nodes, "heap", "v", 0, entries, 8)
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/entries, "heap-B/entry")
		b.ReportMetric(float64(11+64), "payload-B/entry")
	}
}

// BenchmarkMapMigration: time for the map data to settle after a second
// node joins one holding 1M entries (half the partitions move to the
// newcomer and every partition gets a backup copy on the other node):
// until every partition has its owner, and until every backup copy is
// complete.
func BenchmarkMapMigration(b *testing.B) {
	const entries = 1_000_000
	for range b.N {
		nw := clustertest.New(b, clustertest.Config{})
		nodes, seed := benchCluster(b, nw, 1, nil)
		load(b, nodes, "mig", "v", 0, entries, 8)
		start := time.Now()
		n2, _ := startNode(b, nw, "n2", seed, nil)
		copies := func() (owned, backups float64) {
			for _, n := range []*cluster.Node{nodes[0], n2} {
				owned += metricSum(b, n, "mendmq_map_entries", map[string]string{"map": "mig", "copy": "owned"})
				backups += metricSum(b, n, "mendmq_map_entries", map[string]string{"map": "mig", "copy": "backup"})
			}
			return owned, backups
		}
		settledAt := waitFor(b, 5*time.Minute, "the migration", settled(nodes[0], n2))
		took := waitFor(b, 5*time.Minute, "the backup copies", func() (bool, string) {
			owned, backups := copies()
			return owned == entries && backups == entries, fmt.Sprintf("%v owned, %v backed up", owned, backups)
		})
		b.ReportMetric(settledAt.Seconds(), "owners-settled-s")
		b.ReportMetric((settledAt + took).Seconds(), "backups-complete-s")
		b.ReportMetric(time.Since(start).Seconds(), "join-to-settled-s")
	}
}

// BenchmarkMapMerge: time to merge 1M conflicting entries into the bigger
// side after a 2|1 split heals, through the C latestupdate module
// (examples/policies/c/latestupdate) as every map's policy. Both sides
// wrote every key while split.
func BenchmarkMapMerge(b *testing.B) {
	const entries = 1_000_000
	mod, err := filepath.Abs(filepath.Join("..", "examples", "policies", "c", "latestupdate", "latestupdate.wasm"))
	if err != nil {
		b.Fatal(err)
	}
	for range b.N {
		nw := clustertest.New(b, clustertest.Config{})
		nodes, _ := benchCluster(b, nw, 3, func(c *cluster.Config) {
			pc := plugins.DefaultConfig()
			pc.Policies = map[string]plugins.PolicyConfig{"clatest": {Module: mod}}
			pc.Maps = map[string]plugins.MapConfig{"default": {MergePolicy: "clatest"}}
			pc.MapsInUse = plugins.AnyMap
			reg, err := plugins.New(pc, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = reg.Close() })
			c.Merger = reg
			if v := os.Getenv("MENDMQ_BENCH_MERGE_BATCH"); v != "" {
				// Exploring batch sizes: MENDMQ_BENCH_MERGE_BATCH=500.
				if c.MapMergeBatchSize, err = strconv.Atoi(v); err != nil {
					b.Fatal(err)
				}
			}
		})
		nw.Partition([]string{"n1", "n2"}, []string{"n3"})
		waitFor(b, time.Minute, "both sides to settle", all(settled(nodes[0], nodes[1]), settled(nodes[2])))
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); load(b, nodes[:2], "merge", "big", 0, entries, 32) }()
		go func() { defer wg.Done(); load(b, nodes[2:], "merge", "small", 0, entries, 8) }()
		wg.Wait()
		before := nodes[2].Maps().Progress()
		stop := profileHeal(b)
		cpu0 := cpuTime(b)
		healed := time.Now()
		nw.Heal()
		waitFor(b, 5*time.Minute, "the merge", func() (bool, string) {
			p := nodes[2].Maps().Progress()
			return !p.Started.Equal(before.Started) && !p.Finished.IsZero(), fmt.Sprintf("n3 merge %+v", p)
		})
		cpu := cpuTime(b) - cpu0
		stop()
		waitFor(b, 5*time.Minute, "the partitions to settle", settled(nodes...))
		took := time.Since(healed)
		p := nodes[2].Maps().Progress()
		if p.Done != entries || p.Failed != 0 {
			b.Fatalf("n3 merged %d of %d entries (%d failed)", p.Done, p.Total, p.Failed)
		}
		b.ReportMetric(p.Finished.Sub(p.Started).Seconds(), "merge-s")
		// The CPU the three nodes used from the heal to the merge's end:
		// less at the mercy of what else runs on the machine than the
		// wall time.
		b.ReportMetric(cpu.Seconds(), "heal-cpu-s")
		b.ReportMetric(float64(entries)/p.Finished.Sub(p.Started).Seconds(), "entries/s")
		b.ReportMetric(took.Seconds(), "heal-to-settled-s")
	}
}
