package partitiontests

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

func TestMain(m *testing.M) {
	code := m.Run()
	RemoveBinary()
	os.Exit(code)
}

// Bounds of a scenario.
const (
	detectBound  = 15 * time.Second // a cut to its detection on every node
	reformBound  = 30 * time.Second // the heal to one cluster again
	settleBound  = 15 * time.Second // the heal to every acked message delivered
	tablesBound  = 20 * time.Second // tables identical everywhere
	restoreBound = 20 * time.Second // publishes acked again after the heal
	// hold is how long a scripted cut stays after every node detected
	// it: publishes meet the split meanwhile.
	hold = 2500 * time.Millisecond
)

// Environment knobs.
const (
	// SeedEnv fixes the seed of the random schedules.
	SeedEnv = "MENDMQ_PARTITION_SEED"
	// SoakEnv, a duration (e.g. 10m), adds a long random schedule on 5
	// nodes (TestPartitionSoak).
	SoakEnv = "MENDMQ_PARTITION_SOAK"
)

// scenario is one table entry: a cluster, a workload and what is done to
// its network.
type scenario struct {
	name  string
	nodes int
	// set are extra --set flags; requires lists config keys that must
	// exist on this branch (configs/reference.yaml) for it to run.
	set      []string
	requires []string
	workload WorkloadOptions
	// script applies cuts; random, if set, runs a random schedule for
	// that long instead.
	script func(e *env)
	random time.Duration
	// cuts is how the lab drops packets (default Blackhole).
	cuts CutMode
}

// env is a running scenario.
type env struct {
	t   *testing.T
	lab *Lab
	c   *Cluster
	w   *Workload
	rng *rand.Rand
	// detections collects every measured detection, by cut kind.
	detections map[string][]Detection
	// twins are the client ids connected on several nodes at once.
	twins []*Twin
}

// probeGate connects a fresh client id to every split node: a node that
// accepts it does not gate CONNECT during a netsplit (allow_register
// false is the default). A persistent session that reconnected across
// the split would then be replaced by a new one.
func (e *env) probeGate() {
	var accepted []string
	for i := range e.lab.CutOff() {
		n := e.c.Nodes[i-1]
		cl, _, err := connect(n, fmt.Sprintf("gate-probe-%d", i), true, nil)
		if err == nil {
			accepted = append(accepted, n.Name)
			_ = cl.Disconnect(&paho.Disconnect{ReasonCode: 0})
		}
	}
	slices.Sort(accepted)
	if len(accepted) > 0 {
		// The gate (allow_register_during_netsplit false by default)
		// refuses with 0x88 once the split is detected; probeGate runs
		// after detection.
		e.t.Errorf("CONNECT accepted during the netsplit by %v: the registration gate let it through", accepted)
	}
}

// twin connects id to each of nodes (1-based) at once.
func (e *env) twin(id string, nodes ...int) {
	var ns []*Node
	for _, i := range nodes {
		ns = append(ns, e.c.Nodes[i-1])
	}
	tw, accepted := e.w.Twin(id, ns...)
	e.t.Logf("client %s connected on %v (tried %v)", id, accepted, nodes)
	e.twins = append(e.twins, tw)
}

var scenarios = []scenario{
	{
		name: "3nodes/isolate", nodes: 3,
		workload: WorkloadOptions{RetainedEvery: 10},
		script: func(e *env) {
			e.cutHealed("isolate n3", func() error { return e.lab.Isolate(3) }, func() {
				e.w.Bounce(e.sub("s3a"), 500*time.Millisecond)
				e.w.Bounce(e.sub("s1b"), 500*time.Millisecond)
			})
		},
	},
	{
		name: "3nodes/isolate-silent", nodes: 3, cuts: Silent,
		workload: WorkloadOptions{RetainedEvery: 10},
		script: func(e *env) {
			e.cutHealed("isolate n3", func() error { return e.lab.Isolate(3) }, nil)
		},
	},
	{
		name: "3nodes/broken-link", nodes: 3,
		workload: WorkloadOptions{RetainedEvery: 10},
		script: func(e *env) {
			e.cutHealed("cut n1-n2", func() error { return e.lab.Cut(1, 2) }, func() {
				e.w.Bounce(e.sub("s2a"), 500*time.Millisecond)
			})
		},
	},
	{
		name: "3nodes/asymmetric", nodes: 3,
		workload: WorkloadOptions{RetainedEvery: 10},
		script: func(e *env) {
			e.cutHealed("block n1->n2", func() error { return e.lab.Block(1, 2) }, nil)
		},
	},
	{
		name: "3nodes/asymmetric-silent", nodes: 3, cuts: Silent,
		workload: WorkloadOptions{RetainedEvery: 10},
		script: func(e *env) {
			e.cutHealed("block n1->n2", func() error { return e.lab.Block(1, 2) }, nil)
		},
	},
	{
		// The same client id connects on both sides of a split: after
		// the heal one connection may stay.
		name: "3nodes/duplicate-client", nodes: 3,
		workload: WorkloadOptions{},
		script: func(e *env) {
			e.cutHealed("isolate n3", func() error { return e.lab.Isolate(3) }, func() {
				// Whether both sides accept an id depends on where its
				// leader is (rendezvous hash over the members each side
				// finds alive): several ids make it likely that one is.
				for k := 1; k <= 4; k++ {
					e.twin(fmt.Sprintf("twin-%d", k), 1, 3)
				}
			})
		},
	},
	{
		// Persistent subscribers reconnect across the split with
		// messages queued in their sessions: m3 was offline on the
		// isolated n3 and comes back on n1, m1 was offline on n1 and
		// comes back on n3; m2 moves within the majority side.
		name: "3nodes/moving-subscriber", nodes: 3,
		workload: WorkloadOptions{MovingSubscribers: 3},
		script: func(e *env) {
			m1, m2, m3 := e.sub("m1"), e.sub("m2"), e.sub("m3")
			e.w.Park(m1)
			e.w.Park(m3)
			if !e.w.WaitAcked(30, restoreBound) {
				e.t.Fatalf("no publishes acked within %v", restoreBound)
			}
			e.cutHealed("isolate n3", func() error { return e.lab.Isolate(3) }, func() {
				e.probeGate()
				e.w.Resume(m3, e.c.Nodes[0])
				e.w.Resume(m1, e.c.Nodes[2])
				e.w.Move(m2, e.c.Nodes[0], 300*time.Millisecond)
			})
		},
	},
	{
		name: "3nodes/random-allow-publish", nodes: 3,
		set:      []string{"cluster.allow_publish_during_netsplit=true"},
		requires: []string{"cluster.allow_publish_during_netsplit"},
		workload: WorkloadOptions{RetainedEvery: 5, Roamers: 1},
		random:   12 * time.Second,
	},
	{
		name: "5nodes/partition-2|3", nodes: 5,
		workload: WorkloadOptions{RetainedEvery: 10, PublishersPerNode: 1},
		script: func(e *env) {
			e.cutHealed("partition n1,n2|n3,n4,n5", func() error { return e.lab.Partition([]int{1, 2}, []int{3, 4, 5}) }, func() {
				e.w.Bounce(e.sub("s1a"), 500*time.Millisecond)
				e.w.Bounce(e.sub("s4a"), 500*time.Millisecond)
				e.mapWrites()
			})
			// The small side's map entries merged into the big side
			// through the default policy (latestupdate): the later
			// write wins, entries written on one side only stay.
			want := map[string]string{}
			for i := range 15 {
				want[fmt.Sprint("k", i)] = map[bool]string{true: "small", false: "big"}[i < 5]
			}
			if err := e.c.CheckMap("pt", want, tablesBound); err != nil {
				e.t.Error(err)
			}
		},
	},
	{
		name: "5nodes/random-silent", nodes: 5, cuts: Silent,
		workload: WorkloadOptions{RetainedEvery: 10, PublishersPerNode: 1, Roamers: 2},
		random:   15 * time.Second,
	},
}

// TestPartition runs every scenario: real nodes in namespaces, QoS 1
// traffic on every node, cuts and heals, then the checker.
func TestPartition(t *testing.T) {
	if err := Available(); err != nil {
		t.Skipf("network namespaces unavailable, partition tests skipped: %v", err)
	}
	if testing.Short() {
		t.Skip("multi-process partition tests skipped in -short mode")
	}
	seed := baseSeed(t)
	t.Logf("random schedules seeded from %d (%s=%d replays their steps; timing makes each run differ anyway)", seed, SeedEnv, seed)
	var all []Detection
	for k, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			e := runScenario(t, sc, seed+uint64(k))
			for _, ds := range e.detections {
				all = append(all, ds...)
			}
		})
	}
	logMedians(t, "all scenarios", all)
}

// TestPartitionSoak is the opt-in long random run ($MENDMQ_PARTITION_SOAK).
func TestPartitionSoak(t *testing.T) {
	v := os.Getenv(SoakEnv)
	if v == "" {
		t.Skipf("set %s=10m for a long random schedule on 5 nodes", SoakEnv)
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a positive duration such as 10m", SoakEnv, v)
	}
	if err := Available(); err != nil {
		t.Skipf("network namespaces unavailable, partition tests skipped: %v", err)
	}
	seed := baseSeed(t)
	t.Logf("seed %d (%s=%d replays the schedule's steps)", seed, SeedEnv, seed)
	runScenario(t, scenario{name: "soak", nodes: 5, random: d, cuts: Silent,
		workload: WorkloadOptions{RetainedEvery: 10, PublishersPerNode: 1, Roamers: 2}}, seed)
}

func baseSeed(t *testing.T) uint64 {
	if v := os.Getenv(SeedEnv); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: want an unsigned integer", SeedEnv, v)
		}
		return s
	}
	return uint64(time.Now().UnixNano())
}

func runScenario(t *testing.T, sc scenario, seed uint64) *env {
	for _, k := range sc.requires {
		ok, err := ReferenceHasKey(k)
		if err != nil {
			t.Fatalf("read configs/reference.yaml: %v", err)
		}
		if !ok {
			t.Skipf("config key %s does not exist on this branch yet (configs/reference.yaml)", k)
		}
	}
	began := time.Now()
	lab := NewLab(t, sc.nodes)
	if err := lab.SetCutMode(sc.cuts); err != nil {
		t.Fatal(err)
	}
	c := StartCluster(t, lab, ClusterOptions{Set: sc.set})
	sc.workload.Seed = seed
	w := StartWorkload(t, c, sc.workload)
	e := &env{t: t, lab: lab, c: c, w: w, rng: rand.New(rand.NewPCG(seed, 1)), detections: map[string][]Detection{}}
	if len(sc.set) > 0 {
		t.Logf("config: %s", strings.Join(sc.set, " "))
	}
	if !w.WaitAcked(20*len(c.Nodes), restoreBound) {
		t.Fatalf("the whole cluster did not ack %d publishes within %v", 20*len(c.Nodes), restoreBound)
	}
	if sc.random > 0 {
		t.Logf("random schedule for %v, seed %d (the base seed plus the scenario's index)", sc.random, seed)
		e.randomSchedule(sc.random)
	} else {
		sc.script(e)
	}
	e.finish()
	for kind, ds := range e.detections {
		logMedians(t, kind, ds)
	}
	t.Logf("scenario took %v", time.Since(began).Round(time.Millisecond))
	return e
}

// mapWrites writes map "pt" on both sides of the 2|3 split: k0-k9
// "small" on n1, then k5-k14 "big" on n3. A write is retried, as a
// client would, until its side has taken over the partitions of the
// members it lost (their failure detection, then promotion or
// recreation).
func (e *env) mapWrites() {
	put := func(n *Node, key, value string) {
		var err error
		if _, ok := until(30*time.Second, func() (bool, string) {
			err = e.c.PutMap(n, "pt", key, value)
			return err == nil, ""
		}); !ok {
			e.t.Errorf("%s side: %v", value, err)
		}
	}
	for i := range 10 {
		put(e.c.Nodes[0], fmt.Sprint("k", i), "small")
	}
	// The big side's updates must be later by the clock latestupdate
	// compares (milliseconds): wait until it has moved on.
	last := time.Now().UnixMilli()
	until(time.Second, func() (bool, string) { return time.Now().UnixMilli() > last+1, "" })
	for i := 5; i < 15; i++ {
		put(e.c.Nodes[2], fmt.Sprint("k", i), "big")
	}
}

func (e *env) sub(id string) *Subscriber {
	for _, s := range e.w.Subs {
		if s.ID == id {
			return s
		}
	}
	e.t.Fatalf("no subscriber %s", id)
	return nil
}

// cutHealed applies a cut, measures how long each concerned node takes
// to report it, runs during (if set) while the cut holds, then heals and
// measures how long the cluster takes to re-form.
func (e *env) cutHealed(desc string, apply func() error, during func()) {
	t := e.t
	start := time.Now()
	if err := apply(); err != nil {
		t.Fatalf("%s: %v", desc, err)
	}
	want := e.lab.CutOff()
	ds := e.c.AwaitDetection(start, want, detectBound)
	var lines []string
	for _, d := range ds {
		lines = append(lines, d.String())
		if d.Missed {
			t.Errorf("%s: %s within %v", desc, d, detectBound)
		}
	}
	kind := desc + ", " + e.lab.CutMode().String()
	e.detections[kind] = append(e.detections[kind], ds...)
	t.Logf("%s (%s): detection: %s", desc, e.lab.CutMode(), strings.Join(lines, "; "))
	if during != nil {
		during()
	}
	sleepOr(nil, hold) // the split's duration: the fault itself
	e.heal(desc)
}

// heal removes every cut and waits for the cluster to re-form.
func (e *env) heal(desc string) {
	t := e.t
	start := time.Now()
	if err := e.lab.Heal(); err != nil {
		t.Fatalf("heal after %s: %v", desc, err)
	}
	took, err := e.c.AwaitFormed(start, reformBound)
	if err != nil {
		t.Fatalf("after %s: %v", desc, err)
	}
	t.Logf("%s: healed; one cluster again after %v", desc, took.Round(time.Millisecond))
}

// randomSchedule cuts and heals at random for d: isolations, single
// links, one-way blocks, random partitions, heals of one link or of all,
// one client id connected on two nodes at once, and subscriber bounces;
// one step every 0.3-2 s.
func (e *env) randomSchedule(d time.Duration) {
	t, lab, rng := e.t, e.lab, e.rng
	n := lab.N()
	start := time.Now()
	other := func(i int) int {
		j := 1 + rng.IntN(n-1)
		if j >= i {
			j++
		}
		return j
	}
	var log []string
	for step := 0; time.Since(start) < d && step < 1000; step++ {
		var what string
		var err error
		switch r := rng.IntN(100); {
		case r < 25:
			what, err = "heal all", lab.Heal()
		case r < 40:
			i := 1 + rng.IntN(n)
			what, err = fmt.Sprintf("isolate n%d", i), lab.Isolate(i)
		case r < 60:
			i := 1 + rng.IntN(n)
			j := other(i)
			what, err = fmt.Sprintf("cut n%d-n%d", i, j), lab.Cut(i, j)
		case r < 72:
			i := 1 + rng.IntN(n)
			j := other(i)
			what, err = fmt.Sprintf("block n%d->n%d", i, j), lab.Block(i, j)
		case r < 80:
			if b := lab.Blocked(); len(b) > 0 {
				x := b[rng.IntN(len(b))]
				what, err = fmt.Sprintf("mend n%d-n%d", x[0], x[1]), lab.Mend(x[0], x[1])
			}
		case r < 88:
			perm := rng.Perm(n)
			k := 1 + rng.IntN(n-1)
			var a, b []int
			for idx, p := range perm {
				if idx < k {
					a = append(a, p+1)
				} else {
					b = append(b, p+1)
				}
			}
			slices.Sort(a)
			slices.Sort(b)
			what, err = fmt.Sprintf("partition %v|%v", a, b), lab.Partition(a, b)
		case r < 94:
			i := 1 + rng.IntN(n)
			j := other(i)
			id := fmt.Sprintf("twin-s%d", step)
			what = fmt.Sprintf("connect %s on n%d and n%d", id, i, j)
			e.twin(id, i, j)
		default:
			s := e.w.Subs[rng.IntN(len(e.w.Subs))]
			pause := time.Duration(300+rng.IntN(1200)) * time.Millisecond
			if s.Moving {
				to := e.c.Nodes[rng.IntN(n)]
				what = fmt.Sprintf("move %s to %s after %v", s.ID, to.Name, pause)
				e.w.Move(s, to, pause)
			} else {
				what = fmt.Sprintf("bounce %s for %v", s.ID, pause)
				e.w.Bounce(s, pause)
			}
		}
		if err != nil {
			t.Fatalf("random step %q: %v", what, err)
		}
		if what != "" {
			log = append(log, fmt.Sprintf("+%.1fs %s", time.Since(start).Seconds(), what))
		}
		sleepOr(nil, time.Duration(300+rng.IntN(1700))*time.Millisecond) // the schedule's pace
	}
	t.Logf("random schedule: %s", strings.Join(log, "; "))
	// Let the nodes see the last cuts, so that the heal is one.
	if want := lab.CutOff(); len(want) > 0 {
		var lines []string
		for _, d := range e.c.AwaitDetection(time.Now(), want, detectBound) {
			lines = append(lines, d.String())
			if d.Missed {
				t.Errorf("last cuts of the schedule (%v): %s within %v", lab.Blocked(), d, detectBound)
			}
		}
		t.Logf("last cuts %v reported: %s", lab.Blocked(), strings.Join(lines, "; "))
	}
	e.heal("random schedule")
}

// finish checks service after the last heal, stops the publishers and
// runs every check.
func (e *env) finish() {
	t, c, w := e.t, e.c, e.w
	if !w.WaitAcked(10*len(c.Nodes), restoreBound) {
		t.Errorf("after the heal, the cluster did not ack %d publishes within %v", 10*len(c.Nodes), restoreBound)
	}
	w.StopPublishers()
	// (a) every acked message delivered to every subscriber that was
	// subscribed when it was sent, at the latest once healed.
	var r Report
	start := time.Now()
	until(settleBound, func() (bool, string) {
		r = Check(w.H)
		connected := true
		for _, s := range w.Subs {
			connected = connected && s.Connected()
		}
		return len(r.Missing) == 0 && connected, ""
	})
	t.Logf("history: %s (settled %v after the last heal)", r.Summary(), time.Since(start).Round(time.Millisecond))
	if !r.OK() {
		t.Errorf("checker: %s", r.Problems(20))
	}
	for _, s := range w.Subs {
		if !s.Connected() {
			t.Errorf("subscriber %s not connected to %s %v after the heal", s.ID, s.Node().Name, settleBound)
		}
	}
	// (b) one node per client id, the same in every session table.
	var ids []string
	pinned := map[string]string{}
	for _, s := range w.Subs {
		ids = append(ids, s.ID)
		pinned[s.ID] = s.Node().Name // where it connects now
	}
	for _, p := range w.pubs {
		ids = append(ids, p.id)
		if !p.roam {
			pinned[p.id] = p.node.Name
		}
	}
	for _, tw := range e.twins {
		ids = append(ids, tw.ID)
	}
	if err := c.CheckSessions(ids, pinned, tablesBound); err != nil {
		t.Errorf("%v", err)
	}
	_, _, _, events := w.H.Snapshot()
	for _, tw := range e.twins {
		var seen []string
		for _, ev := range events {
			if ev.Client == tw.ID {
				seen = append(seen, fmt.Sprintf("n%d: %s", ev.Node, ev.What))
			}
		}
		open := tw.Open()
		t.Logf("client %s: %s; open after the heal on %v", tw.ID, strings.Join(seen, ", "), open)
		if len(open) > 1 {
			t.Errorf("client %s still has connections open on %v after the heal", tw.ID, open)
		}
	}
	// (c) identical tables and retained messages everywhere; each
	// retained message is one a client published.
	retained, err := c.CheckTables("rt/#", tablesBound)
	if err != nil {
		t.Errorf("%v", err)
	}
	pubs, _, _, _ := w.H.Snapshot()
	sent := map[string]Publish{}
	for _, p := range pubs {
		if p.Retain {
			sent[p.ID] = p
		}
	}
	for topic, payload := range retained {
		p, ok := sent[payload]
		switch {
		case !ok || p.Topic != topic:
			t.Errorf("retained %s = %q: no client published that there", topic, payload)
		case p.Outcome != Acked:
			t.Logf("retained %s = %q, a publish its client saw %s (code 0x%02x %s)", topic, payload, p.Outcome, p.Code, p.Err)
		}
	}
	t.Logf("metrics:\n%s", c.MetricSummary("mendmq_cluster_conflicts_total", "mendmq_cluster_held_total",
		"mendmq_cluster_forward_refused_total", "mendmq_messages_dropped_total", "mendmq_cluster_registrations_total",
		"mendmq_connections_refused_total", "mendmq_cluster_netsplits_total"))
	// (d) no node crashed or logged a panic.
	if err := c.CheckHealth(); err != nil {
		t.Errorf("node health: %v", err)
	}
}

func logMedians(t *testing.T, kind string, ds []Detection) {
	var all []time.Duration
	missed := 0
	for _, d := range ds {
		if d.Missed {
			missed++
			continue
		}
		all = append(all, d.After)
	}
	if len(all) == 0 {
		return
	}
	t.Logf("detection %s: median %v over %d reports (min %v, max %v), %d missed",
		kind, Median(all).Round(time.Millisecond), len(all), slices.Min(all).Round(time.Millisecond),
		slices.Max(all).Round(time.Millisecond), missed)
}
