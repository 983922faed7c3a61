package cluster_test

// Netsplit benchmarks (issue 15), in process on clustertest networks with
// the default (production) failure-detection and data-plane timings. They
// print figures (b.ReportMetric, b.Logf) and assert nothing about them;
// every wait has a deadline and fails the benchmark (b.Fatalf) instead of
// hanging. Run them all with `make bench-netsplit`.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mendmq/mendmq/cluster"
	"github.com/mendmq/mendmq/cluster/clustertest"
	"github.com/mendmq/mendmq/cluster/members"
	"github.com/mendmq/mendmq/cluster/membership"
	"github.com/mendmq/mendmq/cluster/routes"
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

// report reports the median and the maximum of ds in milliseconds as
// name-ms and name-max-ms, and logs every value.
func report(b *testing.B, name string, ds []time.Duration) {
	b.Helper()
	if len(ds) == 0 {
		return
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(median(ds)), name+"-ms")
	b.ReportMetric(ms(slices.Max(ds)), name+"-max-ms")
	rounded := make([]time.Duration, len(ds))
	for i, d := range ds {
		rounded[i] = d.Round(time.Millisecond)
	}
	b.Logf("%s: median %v, range %v..%v, all %v", name, median(ds).Round(time.Millisecond),
		slices.Min(rounded), slices.Max(rounded), rounded)
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
			b.Fatalf("%s: not after %v (%s)", what, limit, progress(nodes))
		}
		// Polling 50 nodes costs CPU the nodes need: poll them less often.
		time.Sleep(time.Duration(1+len(nodes)/10) * 5 * time.Millisecond)
	}
}

// formed reports whether n sees count members alive and linked and is
// not split: the cluster is whole again from n's side.
func formed(count int) func(*cluster.Node) bool {
	return func(n *cluster.Node) bool { return !n.Split() && upCount(n) == count }
}

// upCount is how many members n sees alive and linked, itself included
// (from the members view: cheaper than Status for 50 nodes).
func upCount(n *cluster.Node) int {
	up := 0
	for _, m := range n.Members().Members() {
		if m.State == membership.Alive && (m.Self || m.Link == members.LinkUp) {
			up++
		}
	}
	return up
}

// healedSince reports whether n's last heal started at or after t and its
// tables converged (the node's own measure, see cluster.Heal).
func healedSince(t time.Time) func(*cluster.Node) bool {
	return func(n *cluster.Node) bool {
		h := n.Netsplit().LastHeal
		return h != nil && !h.At.Before(t) && !h.Converged.IsZero()
	}
}

// lastConverged returns the latest Converged time of the nodes' last heals.
func lastConverged(nodes []*cluster.Node) time.Time {
	var last time.Time
	for _, n := range nodes {
		if h := n.Netsplit().LastHeal; h != nil && h.Converged.After(last) {
			last = h.Converged
		}
	}
	return last
}

func uncertainties(nodes []*cluster.Node) []time.Duration {
	var out []time.Duration
	for _, n := range nodes {
		for _, u := range n.Netsplit().Unreachable {
			out = append(out, u.Uncertainty())
		}
	}
	return out
}

// cutRound is one measured cut and heal.
type cutRound struct {
	detect      time.Duration   // cut -> every affected node split
	uncertainty []time.Duration // per (node, unreachable member) at detection, as the node reports it
	nodeDetect  []time.Duration // per (node, unreachable member): cut -> that node's detection
	leave       time.Duration   // heal -> no node split
	reform      time.Duration   // heal -> every node sees every member alive and linked
	converge    time.Duration   // heal -> every split node's tables converged (its own measure)
}

// measureCut cuts with cut, waits (up to detectLimit) until every node
// of affected is split, heals and waits (up to healLimit for each step)
// until the cluster is whole and converged again.
func measureCut(b *testing.B, nw *clustertest.Network, nodes, affected []*cluster.Node, detectLimit, healLimit time.Duration, cut func()) cutRound {
	b.Helper()
	var r cutRound
	start := time.Now()
	cut()
	r.detect = waitAll(b, affected, start, detectLimit, "detection", (*cluster.Node).Split)
	r.uncertainty = uncertainties(affected)
	for _, n := range affected {
		for _, u := range n.Netsplit().Unreachable {
			r.nodeDetect = append(r.nodeDetect, u.Since.Sub(start))
		}
	}
	if len(nodes) <= 3 {
		var seen []string
		for _, n := range affected {
			for _, u := range n.Netsplit().Unreachable {
				seen = append(seen, fmt.Sprintf("%s->%s %s at +%v (last contact %+v, uncertainty %v)", n.Name(), u.Name, u.Reason,
					u.Since.Sub(start).Round(time.Millisecond), u.LastContact.Sub(start).Round(time.Millisecond), u.Uncertainty().Round(time.Millisecond)))
			}
		}
		b.Logf("cut: all split after %v: %v", r.detect.Round(time.Millisecond), seen)
	}
	if len(nodes) > 3 {
		b.Logf("cut: every node split after %v (each node's own detection: median %v, max %v)", r.detect.Round(time.Millisecond),
			median(r.nodeDetect).Round(time.Millisecond), slices.Max(r.nodeDetect).Round(time.Millisecond))
	}
	heal := time.Now()
	nw.Heal()
	r.leave = waitAll(b, nodes, heal, healLimit, "leaving the netsplit", func(n *cluster.Node) bool { return !n.Split() })
	r.reform = waitAll(b, nodes, heal, healLimit, "the cluster to re-form", formed(len(nodes)))
	waitAll(b, affected, heal, healLimit, "the heal's convergence", healedSince(heal))
	r.converge = lastConverged(affected).Sub(heal)
	if len(nodes) > 3 {
		b.Logf("heal: leave %v, re-form %v, converge %v",
			r.leave.Round(time.Millisecond), r.reform.Round(time.Millisecond), r.converge.Round(time.Millisecond))
	}
	return r
}

func reportRounds(b *testing.B, prefix string, rs []cutRound) {
	b.Helper()
	var detect, nodeDetect, unc, leave, reform, conv []time.Duration
	for _, r := range rs {
		detect, leave, reform, conv = append(detect, r.detect), append(leave, r.leave), append(reform, r.reform), append(conv, r.converge)
		unc, nodeDetect = append(unc, r.uncertainty...), append(nodeDetect, r.nodeDetect...)
	}
	report(b, prefix+"detect", detect)
	report(b, prefix+"node-detect", nodeDetect)
	report(b, prefix+"uncertainty", unc)
	report(b, prefix+"leave", leave)
	report(b, prefix+"reform", reform)
	report(b, prefix+"converge", conv)
}

// BenchmarkNetsplitDetection cuts one member of a 3-node cluster off
// ("isolate"), then a single link n1<->n2 that only the data plane sees
// ("link"), five times each, on a network whose cuts close the streams
// across them (the peer reads EOF at once) and on a silent one (streams
// stay open and lose everything: only timeouts tell, as with a dead
// switch). Per variant it reports the medians (and maxima) of: detection
// (cut -> every affected node in the netsplit), each node's own
// detection of each member (cut -> its Unreachable.Since), the window of
// uncertainty as the nodes report it (Unreachable.Uncertainty: last
// contact -> detection; last contact includes membership events saying
// the member is alive, so it can be later than the cut), leaving the netsplit after the heal, the cluster whole
// again (every member alive and linked) and the nodes' own convergence.
//
//	go test -run XXX -bench NetsplitDetection -benchtime 1x ./cluster/
func BenchmarkNetsplitDetection(b *testing.B) {
	const cuts = 5
	for range b.N {
		for _, silent := range []bool{false, true} {
			net := "close"
			if silent {
				net = "silent"
			}
			for _, kind := range []string{"isolate", "link"} {
				b.Run(net+"-"+kind, func(b *testing.B) {
					nw := newNetwork(b, clustertest.Config{Silent: silent})
					nodes := startNodesB(b, nw, 3, productionTimings)
					var rs []cutRound
					for range cuts {
						if kind == "isolate" {
							rs = append(rs, measureCut(b, nw, nodes, nodes, 30*time.Second, 30*time.Second, func() { nw.Isolate("n3") }))
						} else {
							rs = append(rs, measureCut(b, nw, nodes, nodes[:2], 30*time.Second, 30*time.Second, func() { nw.Cut("n1", "n2") }))
						}
					}
					reportRounds(b, "", rs)
				})
			}
		}
	}
}

// BenchmarkNetsplitSaturation runs a 3-node cluster with production
// timings for 20 s while 2 goroutines per CPU spin (hashing, allocating),
// so that every node's goroutines wait for a core — CPU starvation, the
// classic cause of false failure detections — and reports how many times
// any node entered a netsplit (there was no cut: every one is false) and
// how many times a member was suspected or declared dead by memberlist.
// NETSPLIT_SATURATION_PERIOD (a Go duration) changes the 20 s.
//
//	go test -run XXX -bench NetsplitSaturation -benchtime 1x ./cluster/
func BenchmarkNetsplitSaturation(b *testing.B) {
	period := envDuration(b, "NETSPLIT_SATURATION_PERIOD", 20*time.Second)
	for range b.N {
		nw := newNetwork(b, clustertest.Config{})
		nodes := startNodesB(b, nw, 3, productionTimings)
		before := make([]uint64, len(nodes))
		for i, n := range nodes {
			before[i] = n.Netsplit().Splits
		}
		ctx, cancel := context.WithTimeout(context.Background(), period)
		var wg sync.WaitGroup
		var work atomic.Uint64
		busy := 2 * runtime.NumCPU()
		for range busy {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 4096)
				for ctx.Err() == nil {
					for range 64 {
						s := sha256.Sum256(buf)
						buf = append(buf[:0:0], s[:]...) // allocates: the GC runs too
						buf = append(buf, make([]byte, 4064)...)
					}
					work.Add(64)
				}
			}()
		}
		splitSeen, notAlive := 0, 0
		start := time.Now()
		sample := time.NewTicker(50 * time.Millisecond)
		defer sample.Stop()
		for ctx.Err() == nil {
			for _, n := range nodes {
				if n.Split() {
					splitSeen++
				}
				for _, m := range n.Status().Members {
					if m.State != "alive" {
						notAlive++
					}
				}
			}
			select { // the next sample
			case <-ctx.Done():
			case <-sample.C:
			}
		}
		cancel()
		wg.Wait()
		elapsed := time.Since(start)
		var splits uint64
		for i, n := range nodes {
			splits += n.Netsplit().Splits - before[i]
		}
		b.ReportMetric(float64(splits), "netsplits")
		b.ReportMetric(float64(splitSeen), "split-samples")
		b.ReportMetric(float64(notAlive), "not-alive-samples")
		b.ReportMetric(float64(busy), "busy-goroutines")
		b.Logf("%v with %d busy goroutines on %d CPUs (%.0f hashes/s): %d netsplits entered, %d samples (every 50 ms per node) split, %d member samples not alive",
			elapsed.Round(time.Millisecond), busy, runtime.NumCPU(), float64(work.Load())/elapsed.Seconds(), splits, splitSeen, notAlive)
	}
}

// BenchmarkNetsplitHealConvergence loads a 3-node cluster (production
// timings) with 10,000 sessions of 10 subscriptions each (100k
// subscriptions) and 10,000 retained messages, then: cuts n3
// off, changes 1,000 sessions' subscriptions on each side (different
// sessions) and sets all 10,000 retained messages on both sides (10,000
// conflicts), heals, five times, and reports the median time from the heal until every
// node's tables agree (the same sessions, subscription counts and
// resolved retained message on every node), plus leaving the netsplit
// and the nodes' own convergence measure.
//
//	go test -run XXX -bench NetsplitHealConvergence -benchtime 1x ./cluster/
func BenchmarkNetsplitHealConvergence(b *testing.B) {
	const (
		sessions, perSession = 10000, 10
		retainedCount        = 10000
		changed              = 1000 // sessions changed per side
		rounds               = 5
		limit                = 60 * time.Second
	)
	topic := func(i int) string { return fmt.Sprintf("conv/retained/%05d", i) }
	record := func(node string, i, subs int) routes.SessionRecord {
		// Records name nodes outside the cluster: a node deletes records
		// naming itself that have no MQTT session behind them.
		rec := routes.SessionRecord{Node: node}
		for k := range subs {
			rec.Subs = append(rec.Subs, routes.Subscription{Filter: fmt.Sprintf("conv/%d/%d/#", i, k), QoS: 1})
		}
		return rec
	}
	for range b.N {
		nw := newNetwork(b, clustertest.Config{})
		nodes := startNodesB(b, nw, 3, productionTimings)
		n1, n3 := nodes[0], nodes[2]
		load := time.Now()
		now := load
		for i := range sessions {
			nodes[i%3].PutSession(fmt.Sprintf("conv-%05d", i), record(fmt.Sprintf("elsewhere-%d", i%3), i, perSession))
		}
		for i := range retainedCount {
			nodes[i%3].PutRetained(topic(i), cluster.RetainedMessage{Publish: []byte("initial"), Created: now}, now)
		}
		waitAll(b, nodes, load, limit, "the load to replicate", func(n *cluster.Node) bool {
			st := n.Status()
			return st.Sessions == sessions && st.Retained == retainedCount && total(st.Subscriptions) == sessions*perSession
		})
		b.Logf("loaded %d sessions, %d subscriptions, %d retained messages on every node in %v",
			sessions, sessions*perSession, retainedCount, time.Since(load).Round(time.Millisecond))

		var agree, leave, own []time.Duration
		for r := range rounds {
			sideA, sideB := fmt.Sprintf("side-a-r%d", r), fmt.Sprintf("side-b-r%d", r)
			start := time.Now()
			nw.Isolate("n3")
			waitAll(b, nodes, start, limit, "detection", (*cluster.Node).Split)
			now := time.Now()
			for i := range changed {
				n1.PutSession(fmt.Sprintf("conv-%05d", i), record(sideA, i, perSession+1))
				j := changed + i
				n3.PutSession(fmt.Sprintf("conv-%05d", j), record(sideB, j, perSession-1))
			}
			for i := range retainedCount {
				n1.PutRetained(topic(i), cluster.RetainedMessage{Publish: []byte(fmt.Sprintf("a%d-%d", r, i)), Created: now}, now)
				n3.PutRetained(topic(i), cluster.RetainedMessage{Publish: []byte(fmt.Sprintf("b%d-%d", r, i)), Created: now}, now)
			}
			// n2 has n1's side before the heal, so what converges is the
			// split's difference only.
			waitAll(b, nodes[:2], now, limit, "side A to replicate", func(n *cluster.Node) bool {
				return n.Status().Subscriptions[sideA] == changed*(perSession+1)
			})
			heal := time.Now()
			nw.Heal()
			leave = append(leave, waitAll(b, nodes, heal, limit, "leaving the netsplit", func(n *cluster.Node) bool { return !n.Split() }))
			want := map[string]int{sideA: changed * (perSession + 1), sideB: changed * (perSession - 1)}
			agree = append(agree, waitAll(b, nodes[:1], heal, limit, "the tables to agree", func(*cluster.Node) bool {
				return tablesAgree(nodes, sessions, sessions*perSession, want, retainedCount, topic, fmt.Sprintf("a%d-", r), fmt.Sprintf("b%d-", r))
			}))
			waitAll(b, nodes, heal, limit, "the nodes' own convergence", healedSince(heal))
			own = append(own, lastConverged(nodes).Sub(heal))
			waitAll(b, nodes, heal, limit, "the cluster to re-form", formed(len(nodes)))
		}
		report(b, "agree", agree)
		report(b, "leave", leave)
		report(b, "converge", own)
	}
}

func total(m map[string]int) int {
	t := 0
	for _, v := range m {
		t += v
	}
	return t
}

// tablesAgree reports whether every node holds the expected numbers of
// sessions and subscriptions (with want's per-node subscription counts),
// and the same resolved retained message for every topic, one set in
// this round on either side.
func tablesAgree(nodes []*cluster.Node, sessions, subs int, want map[string]int, retainedCount int, topic func(int) string, prefixes ...string) bool {
	for _, n := range nodes {
		st := n.Status()
		if st.Sessions != sessions || st.Retained != retainedCount || total(st.Subscriptions) != subs {
			return false
		}
		for node, c := range want {
			if st.Subscriptions[node] != c {
				return false
			}
		}
	}
	for i := range retainedCount {
		first, ok := nodes[0].Retained(topic(i))
		if !ok || !slices.ContainsFunc(prefixes, func(p string) bool { return bytes.HasPrefix(first.Publish, []byte(p)) }) {
			return false
		}
		for _, n := range nodes[1:] {
			m, ok := n.Retained(topic(i))
			if !ok || !bytes.Equal(m.Publish, first.Publish) || m.Version != first.Version {
				return false
			}
		}
	}
	return true
}

// BenchmarkNetsplitBigCluster starts 50 nodes in process with production
// timings and splits them 49|1 ("one-"), then 25|25 ("half-"), three
// times each, reporting
// the medians of detection (every node split), leaving the netsplit,
// re-forming (every node sees every member alive and linked) and the
// nodes' own convergence after the heal. NETSPLIT_BIG_NODES (default 50)
// changes the size; NETSPLIT_BIG_SILENT=1 makes the cuts silent
// (clustertest.Config.Silent).
//
//	go test -run XXX -bench NetsplitBigCluster -benchtime 1x -timeout 30m ./cluster/
func BenchmarkNetsplitBigCluster(b *testing.B) {
	const rounds = 3
	count := bigClusterNodes(b)
	for range b.N {
		nw := newNetwork(b, clustertest.Config{Silent: os.Getenv("NETSPLIT_BIG_SILENT") != ""})
		start := time.Now()
		nodes := startNodesB(b, nw, count, productionTimings)
		b.Logf("%d nodes formed in %v", count, time.Since(start).Round(time.Millisecond))
		b.ReportMetric(float64(count), "nodes")
		names := make([]string, count)
		for i, n := range nodes {
			names[i] = n.Name()
		}
		half := count / 2
		for _, sc := range []struct {
			name string
			cut  func()
		}{
			{"one-", func() { nw.Isolate(names[count-1]) }},
			{"half-", func() { nw.Partition(names[:half], names[half:]) }},
		} {
			var rs []cutRound
			for range rounds {
				rs = append(rs, measureCut(b, nw, nodes, nodes, 60*time.Second, 4*time.Minute, sc.cut))
			}
			reportRounds(b, sc.name, rs)
		}
	}
}

func envDuration(b *testing.B, name string, def time.Duration) time.Duration {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		b.Fatalf("%s=%q: want a positive Go duration (e.g. 2m)", name, s)
	}
	return d
}

func bigClusterNodes(b *testing.B) int {
	count := 50
	if s := os.Getenv("NETSPLIT_BIG_NODES"); s != "" {
		if _, err := fmt.Sscan(s, &count); err != nil || count < 2 {
			b.Fatalf("NETSPLIT_BIG_NODES=%q: want a number >= 2", s)
		}
	}
	return count
}

// quietTB keeps the network's log line per cut and heal out of the
// benchmark's output, which `go test` cuts at 10 lines without -v.
type quietTB struct{ testing.TB }

func (quietTB) Logf(string, ...any) {}

// newNetwork is clustertest.New without its log (the seed is logged
// here; the benchmarks use no random faults).
func newNetwork(b *testing.B, cfg clustertest.Config) *clustertest.Network {
	nw := clustertest.New(quietTB{b}, cfg)
	b.Logf("clustertest seed %d, silent %v", nw.Seed(), cfg.Silent)
	return nw
}

// progress summarizes the nodes' views for a failure or a progress log.
func progress(nodes []*cluster.Node) string {
	ups := make([]int, len(nodes))
	split := 0
	for i, n := range nodes {
		ups[i] = upCount(n)
		if n.Split() {
			split++
		}
	}
	slices.Sort(ups)
	return fmt.Sprintf("members alive and linked per node: min %d, median %d, max %d; %d of %d nodes split",
		ups[0], ups[len(ups)/2], ups[len(ups)-1], split, len(nodes))
}

// startNodesB is startNodes for a benchmark: nodes n1..nN seeded with n1,
// waiting (up to 60 s, plus 2 s per node beyond 10) until every node
// sees every member alive and linked.
func startNodesB(b *testing.B, nw *clustertest.Network, count int, mutate func(*cluster.Config)) []*cluster.Node {
	b.Helper()
	started := time.Now()
	nodes, _ := startSeeded(b, nw, count, mutate)
	limit := 60 * time.Second
	if count > 10 {
		limit += time.Duration(count-10) * 2 * time.Second
		b.Logf("%d nodes started in %v: %s", count, time.Since(started).Round(time.Millisecond), progress(nodes))
	}
	waitAll(b, nodes, time.Now(), limit, "the cluster to form", formed(count))
	return nodes
}
