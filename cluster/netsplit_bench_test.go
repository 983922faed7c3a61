package cluster_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/mendmq/mendmq/cluster"
	"github.com/mendmq/mendmq/cluster/clustertest"
)

// productionTimings gives a loopback node the default (production)
// failure-detection and data-plane timings instead of the test profile's.
func productionTimings(c *cluster.Config) {
	d := cluster.DefaultConfig()
	c.ProbeInterval, c.ProbeTimeout, c.SuspicionMult = d.ProbeInterval, d.ProbeTimeout, d.SuspicionMult
	c.GossipInterval, c.PushPullInterval = d.GossipInterval, d.PushPullInterval
	c.ReconnectInterval, c.ReconnectTimeout = d.ReconnectInterval, d.ReconnectTimeout
	c.AntiEntropyInterval = d.AntiEntropyInterval
	c.NetsplitLinkGrace = d.NetsplitLinkGrace
	c.DataKeepaliveInterval, c.DataIdleTimeout = d.DataKeepaliveInterval, d.DataIdleTimeout
	c.DataReconnectMin, c.DataReconnectMax = d.DataReconnectMin, d.DataReconnectMax
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// waitAll polls every node until cond holds for all, and returns how
// long that took from start.
func waitAll(b *testing.B, nodes []*cluster.Node, start time.Time, limit time.Duration, what string, cond func(*cluster.Node) bool) time.Duration {
	b.Helper()
	for {
		ok := true
		for _, n := range nodes {
			if !cond(n) {
				ok = false
				break
			}
		}
		if ok {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			b.Fatalf("%s: not after %v", what, limit)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// BenchmarkNetsplitDetection cuts one member of a 3-node cluster off (and
// then a single link, which only the data plane sees) with the default
// (production) timings, and reports the median time until every node is
// in the netsplit, and until every node left it after the heal, over
// five cuts each. Run: go test -run XXX -bench NetsplitDetection -benchtime 1x ./cluster/
func BenchmarkNetsplitDetection(b *testing.B) {
	for range b.N {
		for _, kind := range []string{"isolate", "link"} {
			nw := clustertest.New(b, clustertest.Config{})
			nodes := startNodesB(b, nw, 3, productionTimings)
			var detect, heal []time.Duration
			for range 5 {
				start := time.Now()
				affected := nodes
				if kind == "isolate" {
					nw.Isolate("n3")
				} else {
					nw.Cut("n1", "n2")
					affected = nodes[:2]
				}
				detect = append(detect, waitAll(b, affected, start, 30*time.Second, "detection", (*cluster.Node).Split))
				start = time.Now()
				nw.Heal()
				heal = append(heal, waitAll(b, nodes, start, 30*time.Second, "heal", func(n *cluster.Node) bool { return !n.Split() }))
			}
			b.ReportMetric(float64(median(detect).Milliseconds()), kind+"-detect-ms")
			b.ReportMetric(float64(median(heal).Milliseconds()), kind+"-heal-ms")
			b.Logf("%s: detection %v, heal %v", kind, detect, heal)
		}
	}
}

// startNodesB is startNodes for a benchmark.
func startNodesB(b *testing.B, nw *clustertest.Network, count int, mutate func(*cluster.Config)) []*cluster.Node {
	b.Helper()
	var nodes []*cluster.Node
	var seed string
	for i := 1; i <= count; i++ {
		name := fmt.Sprintf("n%d", i)
		cfg := cluster.LoopbackConfig()
		tr, err := nw.Transport(name)
		if err != nil {
			b.Fatal(err)
		}
		cfg.Transport, cfg.DataNetwork, cfg.GossipAddress = tr, nw.DataNetwork(name), tr.Addr()
		if seed != "" {
			cfg.Seeds = []string{seed}
		} else {
			seed = tr.Addr()
		}
		cfg.Logger = testLog()
		if mutate != nil {
			mutate(&cfg)
		}
		n, err := cluster.New(name, cfg, nopBroker{})
		if err != nil {
			b.Fatal(err)
		}
		if err := n.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = n.Stop() })
		nodes = append(nodes, n)
	}
	waitAll(b, nodes, time.Now(), 60*time.Second, "the cluster to form", func(n *cluster.Node) bool {
		up := 0
		for _, m := range n.Status().Members {
			if m.State == "alive" && (m.Self || m.Reachable) {
				up++
			}
		}
		return up == count && !n.Split()
	})
	return nodes
}
