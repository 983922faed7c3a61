package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/mendmq/mendmq/cluster"
)

// nodePorts are the loopback ports one node of the saturation cluster uses.
type nodePorts struct{ MQTT, Admin, Gossip, Data int }

// allocPorts asks the kernel for 4 free TCP ports per node. memberlist also
// binds UDP on the gossip port; a UDP port taken by someone else makes that
// node fail to start, which the cluster start reports.
func allocPorts(nodes int) ([]nodePorts, error) {
	ps := make([]nodePorts, nodes)
	for i := range ps {
		for _, p := range []*int{&ps[i].MQTT, &ps[i].Admin, &ps[i].Gossip, &ps[i].Data} {
			v, err := freePort()
			if err != nil {
				return nil, err
			}
			*p = v
		}
	}
	return ps, nil
}

// rewriteNodeConfig returns a node config (an examples/cluster one) moved
// onto own ports: its MQTT listeners become one TCP listener on own.MQTT,
// and admin.address, cluster.gossip_address, cluster.data_address and
// cluster.seeds are replaced (cluster.enabled is set). Everything else
// (node name, secret key, timings) is kept, so the cluster runs the
// example's settings — the defaults — without colliding with "make cluster".
func rewriteNodeConfig(src []byte, own nodePorts, seeds []string) ([]byte, error) {
	var doc map[string]any
	if err := yaml.Unmarshal(src, &doc); err != nil {
		return nil, fmt.Errorf("parse node config: %w", err)
	}
	if doc == nil {
		doc = map[string]any{}
	}
	section := func(key string) (map[string]any, error) {
		v, ok := doc[key]
		if !ok || v == nil {
			m := map[string]any{}
			doc[key] = m
			return m, nil
		}
		m, ok := v.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("node config: %s is a %T, want a mapping", key, v)
		}
		return m, nil
	}
	mqtt, err := section("mqtt")
	if err != nil {
		return nil, err
	}
	adm, err := section("admin")
	if err != nil {
		return nil, err
	}
	cl, err := section("cluster")
	if err != nil {
		return nil, err
	}
	loop := func(p int) string { return fmt.Sprintf("127.0.0.1:%d", p) }
	mqtt["listeners"] = []any{map[string]any{"type": "tcp", "address": loop(own.MQTT)}}
	adm["address"] = loop(own.Admin)
	cl["enabled"] = true
	cl["gossip_address"] = loop(own.Gossip)
	cl["data_address"] = loop(own.Data)
	cl["seeds"] = seeds
	out, err := yaml.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("encode node config: %w", err)
	}
	return append([]byte("# written by mqttbench saturate (ports rewritten)\n"), out...), nil
}

// detectTally counts what the samples of every node's GET /api/v1/cluster
// showed. Member counts are per sample and member other than the node
// itself: a member suspected for 1 s at 150 ms sampling counts ~7 times.
type detectTally struct {
	Answered int           `json:"samples_answered"`
	Failed   int           `json:"samples_failed"`
	Slowest  time.Duration `json:"slowest_answer_ns"`
	// SplitSamples: the node was in a netsplit.
	SplitSamples int `json:"split_samples"`
	// UnreachableSamples: a member in the detector's unreachable list.
	UnreachableSamples int `json:"unreachable_member_samples"`
	// NotAliveSamples: a member's memberlist state was not alive
	// (SuspectSamples of them suspect).
	NotAliveSamples int `json:"not_alive_member_samples"`
	SuspectSamples  int `json:"suspect_member_samples"`
	// LinkDownSamples: the data-plane link to a member was not connected.
	LinkDownSamples int `json:"link_down_member_samples"`
	// first and last netsplit counters seen per node.
	first, last []uint64
	seen        []bool
	// Events are the first few non-clean samples, for the report.
	Events []string `json:"events,omitempty"`
	// FirstError is the first failed sample's error.
	FirstError string `json:"first_error,omitempty"`
}

// maxTallyEvents bounds detectTally.Events.
const maxTallyEvents = 12

func newDetectTally(nodes int) *detectTally {
	return &detectTally{first: make([]uint64, nodes), last: make([]uint64, nodes), seen: make([]bool, nodes)}
}

// add records node's answer, received lat after asking, at offset at
// from the start of sampling.
func (t *detectTally) add(node int, at time.Duration, st cluster.Status, lat time.Duration) {
	t.Answered++
	t.Slowest = max(t.Slowest, lat)
	if !t.seen[node] {
		t.seen[node], t.first[node] = true, st.Netsplit.Splits
	}
	t.last[node] = st.Netsplit.Splits
	var odd []string
	if st.Netsplit.Split {
		t.SplitSamples++
		odd = append(odd, "in a netsplit")
	}
	for _, u := range st.Netsplit.Unreachable {
		t.UnreachableSamples++
		odd = append(odd, fmt.Sprintf("%s unreachable (%s)", u.Name, u.Reason))
	}
	for _, m := range st.Members {
		if m.Self {
			continue
		}
		if m.State != "alive" {
			t.NotAliveSamples++
			if m.State == "suspect" {
				t.SuspectSamples++
			}
			odd = append(odd, fmt.Sprintf("%s %s", m.Name, m.State))
		}
		if !m.Reachable {
			t.LinkDownSamples++
			odd = append(odd, m.Name+" link down")
		}
	}
	if len(odd) > 0 && len(t.Events) < maxTallyEvents {
		t.Events = append(t.Events, fmt.Sprintf("+%.1fs %s: %s", at.Seconds(), st.Node, strings.Join(odd, ", ")))
	}
}

// fail records a sample that got no answer.
func (t *detectTally) fail(err error) {
	t.Failed++
	if t.FirstError == "" {
		t.FirstError = err.Error()
	}
}

// NetsplitsEntered is the sum over nodes of the growth of their netsplit
// counters between their first and last answered sample.
func (t *detectTally) NetsplitsEntered() uint64 {
	var n uint64
	for i := range t.first {
		if t.seen[i] && t.last[i] > t.first[i] {
			n += t.last[i] - t.first[i]
		}
	}
	return n
}

// watchCluster samples every admin URL's /api/v1/cluster every `every`
// until ctx ends; each round asks all nodes at once and waits for all
// (each answer bounded by timeout), so a round that overruns delays the
// next rather than piling requests onto a starved node.
func watchCluster(ctx context.Context, admins []string, every, timeout time.Duration, t *detectTally) {
	client := &http.Client{Timeout: timeout}
	start := time.Now()
	tick := time.NewTicker(every)
	defer tick.Stop()
	type answer struct {
		st  cluster.Status
		lat time.Duration
		err error
	}
	for ctx.Err() == nil {
		at := time.Since(start)
		res := make([]answer, len(admins))
		var wg sync.WaitGroup
		for i, a := range admins {
			wg.Add(1)
			go func() {
				defer wg.Done()
				t0 := time.Now()
				st, err := fetchStatus(ctx, client, a)
				res[i] = answer{st, time.Since(t0), err}
			}()
		}
		wg.Wait()
		if ctx.Err() != nil { // answers cut short by the end are not failures
			return
		}
		for i, r := range res {
			if r.err != nil {
				t.fail(fmt.Errorf("node %d: %w", i+1, r.err))
				continue
			}
			t.add(i, at, r.st, r.lat)
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

// fetchStatus reads one node's GET /api/v1/cluster.
func fetchStatus(ctx context.Context, c *http.Client, base string) (cluster.Status, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/v1/cluster", nil)
	if err != nil {
		return cluster.Status{}, fmt.Errorf("build request: %w", err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return cluster.Status{}, fmt.Errorf("GET /api/v1/cluster: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		return cluster.Status{}, fmt.Errorf("GET /api/v1/cluster: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return decodeClusterStatus(resp.Body)
}

// decodeClusterStatus parses the body of GET /api/v1/cluster.
func decodeClusterStatus(r io.Reader) (cluster.Status, error) {
	var body struct {
		Enabled *bool          `json:"enabled"`
		Status  cluster.Status `json:"status"`
	}
	if err := json.NewDecoder(io.LimitReader(r, 4<<20)).Decode(&body); err != nil {
		return cluster.Status{}, fmt.Errorf("decode /api/v1/cluster: %w", err)
	}
	if body.Enabled == nil {
		return cluster.Status{}, fmt.Errorf("decode /api/v1/cluster: no \"enabled\" field")
	}
	if !*body.Enabled {
		return cluster.Status{}, fmt.Errorf("/api/v1/cluster: clustering is disabled on this node")
	}
	return body.Status, nil
}

// detectionLogPatterns are the node log lines that mark a (false)
// detection, with the name the report gives their count. The memberlist
// ones are its own lines, bridged into the node's log.
var detectionLogPatterns = []struct{ name, substr string }{
	{"netsplit entered", "netsplit: entered"},
	{"member unreachable", "netsplit: member unreachable"},
	{"member suspected", "member suspected"},
	{"memberlist suspicion", "has failed, no acks received"},
	{"suspicion refuted", "Refuting a suspect message"},
	{"marked failed", "as failed, suspect timeout reached"},
	{"member failed", "msg=\"member failed"},
	{"member gone", "member gone"},
}

// logCounts is the count of each detection pattern in the node logs, and
// the first matching lines.
type logCounts struct {
	Counts map[string]int `json:"counts"`
	Lines  []string       `json:"first_lines,omitempty"`
}

// maxLogLines bounds logCounts.Lines.
const maxLogLines = 20

// scanDetectionLogs counts the detection lines of one log (named node in
// the kept lines) into c.
func scanDetectionLogs(r io.Reader, node string, c *logCounts) error {
	if c.Counts == nil {
		c.Counts = map[string]int{}
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		hit := false
		for _, p := range detectionLogPatterns {
			if strings.Contains(line, p.substr) {
				c.Counts[p.name]++
				hit = true
			}
		}
		if hit && len(c.Lines) < maxLogLines {
			c.Lines = append(c.Lines, node+": "+line)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("scan %s log: %w", node, err)
	}
	return nil
}

// scanLogFiles counts the detection lines of every node's log file.
func scanLogFiles(paths, names []string) (logCounts, error) {
	var c logCounts
	for i, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return c, fmt.Errorf("open node log: %w", err)
		}
		err = scanDetectionLogs(f, names[i], &c)
		f.Close()
		if err != nil {
			return c, err
		}
	}
	return c, nil
}

// cpuPressure returns the total time some runnable task waited for a CPU
// (Linux PSI, the "some" line of /proc/pressure/cpu); ok is false where
// PSI is not available.
func cpuPressure() (d time.Duration, ok bool) {
	b, err := os.ReadFile("/proc/pressure/cpu")
	if err != nil {
		return 0, false
	}
	d, err = parsePressureSome(string(b))
	return d, err == nil
}

// parsePressureSome reads total= (microseconds) of the "some" line of a
// /proc/pressure file.
func parsePressureSome(s string) (time.Duration, error) {
	for _, line := range strings.Split(s, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "some" {
			continue
		}
		for _, kv := range f[1:] {
			if v, ok := strings.CutPrefix(kv, "total="); ok {
				us, err := strconv.ParseUint(v, 10, 64)
				if err != nil || us > math.MaxInt64/uint64(time.Microsecond) {
					return 0, fmt.Errorf("parse pressure: total=%q", v)
				}
				return time.Duration(us) * time.Microsecond, nil
			}
		}
		return 0, fmt.Errorf("parse pressure: no total= in %q", truncate(line, 80))
	}
	return 0, fmt.Errorf("parse pressure: no \"some\" line")
}

// cpuSeries is the machine's busy CPU time sampled every second.
type cpuSeries struct {
	CPUs int `json:"cpus"`
	// Cores is each interval's busy CPU time / wall time (0..CPUs).
	Cores []float64 `json:"cores"`
}

// summary returns the mean busy cores and the share of intervals in which
// every CPU was at least `full` busy (0.95 = 95 %).
func (s cpuSeries) summary(full float64) (mean, fullShare float64) {
	if len(s.Cores) == 0 || s.CPUs < 1 {
		return 0, 0
	}
	n := 0
	for _, c := range s.Cores {
		mean += c
		if c >= full*float64(s.CPUs) {
			n++
		}
	}
	return mean / float64(len(s.Cores)), float64(n) / float64(len(s.Cores))
}

// sampleCPU appends the busy cores of each `every` interval until ctx ends.
func sampleCPU(ctx context.Context, every time.Duration, s *cpuSeries) {
	prev, err := systemBusy()
	if err != nil {
		return
	}
	last := time.Now()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		cur, err := systemBusy()
		if err != nil {
			return
		}
		now := time.Now()
		s.Cores = append(s.Cores, float64(cur-prev)/float64(now.Sub(last)))
		prev, last = cur, now
	}
}

// stallTracker records the longest gaps between the ticks of a timer in
// this process: a gap well over the tick is time this process did not run.
// If the generator stalled when the nodes did, the whole machine (or all
// its processes at once) stopped, not one node.
type stallTracker struct {
	Tick time.Duration `json:"tick_ns"`
	// Longest are the longest gaps seen (over Tick), longest first, with
	// their offset from the start.
	Longest []stall `json:"longest"`
	last    time.Duration
	started bool
}

// stall is one gap between ticks.
type stall struct {
	At  time.Duration `json:"at_ns"` // offset of the tick that ended it
	Gap time.Duration `json:"gap_ns"`
}

// maxStalls bounds stallTracker.Longest.
const maxStalls = 5

// observe records a tick at offset at.
func (s *stallTracker) observe(at time.Duration) {
	if !s.started {
		s.started, s.last = true, at
		return
	}
	gap := at - s.last
	s.last = at
	if gap <= 2*s.Tick {
		return
	}
	i, _ := slices.BinarySearchFunc(s.Longest, gap, func(e stall, g time.Duration) int { return cmp.Compare(g, e.Gap) })
	if i >= maxStalls {
		return
	}
	s.Longest = slices.Insert(s.Longest, i, stall{At: at, Gap: gap})
	if len(s.Longest) > maxStalls {
		s.Longest = s.Longest[:maxStalls]
	}
}

// watchStalls ticks every s.Tick until ctx ends.
func watchStalls(ctx context.Context, s *stallTracker) {
	start := time.Now()
	tick := time.NewTicker(s.Tick)
	defer tick.Stop()
	s.observe(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			s.observe(time.Since(start))
		}
	}
}
