package membership_test

import (
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mendmq/mendmq/cluster/clustertest"
	"github.com/mendmq/mendmq/cluster/membership"
)

// Measurements are opt-in (slow, timing-sensitive):
//
//	MENDMQ_MEASURE=1 go test -run TestMeasure -v ./cluster/membership/
//
// MENDMQ_MEASURE_TRIALS sets the number of trials (default 7),
// MENDMQ_MEASURE_NODES the cluster size for detection (default 3).

func measureEnabled(t *testing.T) int {
	if os.Getenv("MENDMQ_MEASURE") == "" {
		t.Skip("set MENDMQ_MEASURE=1 to measure")
	}
	n, err := strconv.Atoi(os.Getenv("MENDMQ_MEASURE_TRIALS"))
	if err != nil || n < 1 {
		n = 7
	}
	return n
}

// TestMeasureDetection isolates one member of a cluster and measures how
// long until all others declare it Dead.
func TestMeasureDetection(t *testing.T) {
	trials := measureEnabled(t)
	for _, c := range []struct {
		name string
		cfg  membership.Config
	}{
		{"DefaultConfig", membership.DefaultConfig()},
		{"LoopbackConfig", membership.LoopbackConfig()},
	} {
		t.Run(c.name, func(t *testing.T) {
			var ds []time.Duration
			for range trials {
				ds = append(ds, detectOnce(t, c.cfg))
			}
			slices.Sort(ds)
			t.Logf("%s: dead-member detection over %d trials: median %v, min %v, max %v (all %v)",
				c.name, trials, ds[len(ds)/2].Round(time.Millisecond), ds[0].Round(time.Millisecond), ds[len(ds)-1].Round(time.Millisecond), ds)
		})
	}
}

func detectOnce(t *testing.T, cfg membership.Config) time.Duration {
	size, err := strconv.Atoi(os.Getenv("MENDMQ_MEASURE_NODES"))
	if err != nil || size < 3 {
		size = 3
	}
	nw := clustertest.New(t, clustertest.Config{})
	nodes := startCluster(t, nw, cfg, size)
	// Let probing settle into its steady round-robin.
	time.Sleep(2 * cfg.ProbeInterval)
	victim := nodes[len(nodes)-1]
	start := time.Now()
	nw.Isolate(victim.name)
	for _, n := range nodes[:len(nodes)-1] {
		waitView(t, n, 20*time.Second, map[string]membership.State{victim.name: membership.Dead})
	}
	d := time.Since(start)
	for _, n := range nodes {
		_ = n.m.Shutdown()
	}
	return d
}

// TestMeasureFalsePositives runs a healthy 3-node cluster with
// DefaultConfig while the process burns CPU and allocates (GC pressure)
// and counts members wrongly suspected or declared dead.
func TestMeasureFalsePositives(t *testing.T) {
	measureEnabled(t)
	d := 20 * time.Second
	if s := os.Getenv("MENDMQ_MEASURE_SECONDS"); s != "" {
		if n, err := strconv.Atoi(s); err == nil {
			d = time.Duration(n) * time.Second
		}
	}
	nw := clustertest.New(t, clustertest.Config{})
	nodes := startCluster(t, nw, membership.DefaultConfig(), 3)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sink atomic.Int64
	for range 2 * runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var keep [][]byte
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				keep = append(keep, make([]byte, 4096))
				if len(keep) > 4096 {
					keep = keep[:0]
				}
				sink.Add(int64(len(keep)))
			}
		}()
	}
	time.Sleep(d)
	close(stop)
	wg.Wait()
	var suspects, failures uint64
	for _, n := range nodes {
		n.rec.mu.Lock()
		for _, e := range n.rec.evs {
			if len(e) > 7 && e[:7] == "update " && contains(e, " suspect") {
				suspects++
			}
		}
		n.rec.mu.Unlock()
		failures += n.m.Stats().Failures
	}
	t.Logf("DefaultConfig under CPU+GC load for %v: %d local suspicions, %d false deaths (3 nodes, GOMAXPROCS %d)",
		d, suspects, failures, runtime.GOMAXPROCS(0))
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}
