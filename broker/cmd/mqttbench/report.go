package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// What a suite reports: the per-case results, their medians and the
// tables printed for each group.

// suiteReport is the -json output.
type suiteReport struct {
	Command  string        `json:"command"`
	Started  time.Time     `json:"started"`
	Env      []string      `json:"environment"`
	Groups   []groupReport `json:"groups"`
	IdleRSS  []rssReport   `json:"idle_rss,omitempty"`
	Skipped  []string      `json:"skipped,omitempty"`
	Finished time.Time     `json:"finished"`
}

type groupReport struct {
	Title string       `json:"title"`
	Cases []caseReport `json:"cases"`
}

type caseReport struct {
	Label    string   `json:"label"`
	Scenario string   `json:"scenario"`
	Target   string   `json:"target"`
	Rounds   []Result `json:"rounds"`
	Failures []string `json:"failures,omitempty"`
	Median   medians  `json:"median"`
}

type rssReport struct {
	Broker       string  `json:"broker"`
	Conns        int     `json:"conns"`
	BeforeBytes  int64   `json:"before_bytes"`
	AfterBytes   int64   `json:"after_bytes"`
	PerConnBytes float64 `json:"per_conn_bytes"`
	Error        string  `json:"error,omitempty"`
}

// medians are the per-metric medians over a case's successful rounds.
type medians struct {
	N           int     `json:"rounds"`
	Delivered   float64 `json:"delivered_per_sec"`
	Published   float64 `json:"published_per_sec"`
	P50US       float64 `json:"latency_p50_us"`
	P99US       float64 `json:"latency_p99_us"`
	BrokerCores float64 `json:"broker_cores"`
	GenCores    float64 `json:"generator_cores"`
	OtherCores  float64 `json:"other_cores"`
	BrokerUSMsg float64 `json:"broker_cpu_per_msg_us"`
	GenUSMsg    float64 `json:"generator_cpu_per_msg_us"`
	Lost        uint64  `json:"lost_total"`
	Dups        uint64  `json:"duplicates_total"`
	Reordered   uint64  `json:"out_of_order_total"`
}

// median returns the median of xs (mean of the middle two for even counts).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// summarize computes a case's medians.
func summarize(rs []Result) medians {
	m := medians{N: len(rs)}
	col := func(f func(Result) float64) float64 {
		xs := make([]float64, len(rs))
		for i, r := range rs {
			xs[i] = f(r)
		}
		return median(xs)
	}
	m.Delivered = col(func(r Result) float64 { return r.DeliveredPerSec })
	m.Published = col(func(r Result) float64 { return r.PublishedPerSec })
	m.P50US = col(func(r Result) float64 { return r.LatencyP50US })
	m.P99US = col(func(r Result) float64 { return r.LatencyP99US })
	m.BrokerCores = col(func(r Result) float64 { return r.BrokerCores })
	m.GenCores = col(func(r Result) float64 { return r.GenCores })
	m.OtherCores = col(func(r Result) float64 { return r.OtherCores })
	m.BrokerUSMsg = col(func(r Result) float64 { return r.BrokerCPUPerMsgUS })
	m.GenUSMsg = col(func(r Result) float64 { return r.GenCPUPerMsgUS })
	for _, r := range rs {
		m.Lost += r.Lost
		m.Dups += r.Duplicates
		m.Reordered += r.OutOfOrder
	}
	return m
}

func errNote(r Result) string {
	if r.ErrorCount == 0 {
		return ""
	}
	return fmt.Sprintf("  %d ERRORS (round excluded): %s", r.ErrorCount, strings.Join(r.Errors[:min(1, len(r.Errors))], ""))
}

// printGroup prints a group's medians and the ratios to its reference rows.
func printGroup(out io.Writer, cfg SuiteConfig, g *group) {
	sums := map[string]medians{}
	for _, c := range g.cases {
		sums[c.label] = summarize(c.results)
	}
	var refs []string
	for _, r := range g.refs {
		if m, ok := sums[r]; ok && m.N > 0 {
			refs = append(refs, r)
		}
	}
	fmt.Fprintf(out, "\nmedians — %s\n", g.title)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	head := []string{"", "delivered/s"}
	for _, r := range refs {
		head = append(head, "x"+r)
	}
	head = append(head, "p50 ms")
	for _, r := range refs {
		head = append(head, "x"+r)
	}
	head = append(head, "p99 ms")
	for _, r := range refs {
		head = append(head, "x"+r)
	}
	head = append(head, "loss", "dups", "ooo", "broker cores", "broker µs/msg", "gen cores", "gen µs/msg", "other cores", "rounds")
	fmt.Fprintln(tw, strings.Join(head, "\t")+"\t")
	for _, c := range g.cases {
		m := sums[c.label]
		row := []string{c.label}
		if m.N == 0 {
			row = append(row, "no successful round")
			fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
			continue
		}
		ratio := func(v, ref float64) string {
			if ref == 0 {
				return "-"
			}
			return fmt.Sprintf("%.2f", v/ref)
		}
		row = append(row, fmt.Sprintf("%.0f", m.Delivered))
		for _, r := range refs {
			row = append(row, ratio(m.Delivered, sums[r].Delivered))
		}
		row = append(row, fmt.Sprintf("%.3f", m.P50US/1e3))
		for _, r := range refs {
			row = append(row, ratio(m.P50US, sums[r].P50US))
		}
		row = append(row, fmt.Sprintf("%.3f", m.P99US/1e3))
		for _, r := range refs {
			row = append(row, ratio(m.P99US, sums[r].P99US))
		}
		row = append(row, strconv.FormatUint(m.Lost, 10), strconv.FormatUint(m.Dups, 10), strconv.FormatUint(m.Reordered, 10),
			fmt.Sprintf("%.2f", m.BrokerCores), fmt.Sprintf("%.1f", m.BrokerUSMsg), fmt.Sprintf("%.2f", m.GenCores),
			fmt.Sprintf("%.1f", m.GenUSMsg), fmt.Sprintf("%.2f", m.OtherCores), fmt.Sprintf("%d/%d", m.N, cfg.Rounds))
		fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
	}
	tw.Flush()
	if same, cross := sums[labelSameNode], sums[labelCrossNode]; g.hop && same.N > 0 && cross.N > 0 {
		fmt.Fprintf(out, "  cross-node hop (cross-node less same-node latency): p50 %+.3f ms, p99 %+.3f ms\n",
			(cross.P50US-same.P50US)/1e3, (cross.P99US-same.P99US)/1e3)
	}
	fmt.Fprintln(out, "  x<ref> = this row / reference row: above 1 is better for delivered/s, below 1 is better for latency.")
	fmt.Fprintf(out, "  loss/dups/ooo are totals over the counted rounds; cores are CPU-seconds per wall second (%d CPUs in all).\n", runtime.NumCPU())
	worst := 0.0
	for _, c := range g.cases {
		worst = max(worst, sums[c.label].OtherCores)
	}
	if worst > noisyOtherCores {
		fmt.Fprintf(out, "  WARNING: other processes used up to %.2f cores during these runs (median per row); the machine was shared and the figures are disturbed — rerun on a quiet machine.\n", worst)
	}
	for _, c := range g.cases {
		for _, f := range c.fails {
			fmt.Fprintf(out, "  %s: %s\n", c.label, f)
		}
	}
}

// environment describes the machine and the software versions compared.
func environment(cfg SuiteConfig) []string {
	env := []string{
		fmt.Sprintf("cpus %d, %s, %s/%s", runtime.NumCPU(), runtime.Version(), runtime.GOOS, runtime.GOARCH),
		fmt.Sprintf("upstream mochi-mqtt %s (mqttbench mochi, default options, allow-all auth)", mqtt.Version),
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		env = append(env, "load average at start: "+strings.TrimSpace(string(b)))
	}
	if v := probeVersion(cfg.Mosquitto, "-h"); v != "" {
		env = append(env, v)
	}
	if !cfg.Cluster && !slices.Contains(cfg.Brokers, brokerMendmq) {
		return env
	}
	if v := probeVersion(cfg.Mendmq, "version"); v != "" {
		env = append(env, "mendmq: "+v)
	}
	return env
}

// probeVersion runs "bin arg" briefly and returns the first output line.
func probeVersion(bin, arg string) string {
	if _, err := os.Stat(bin); err != nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b, _ := exec.CommandContext(ctx, bin, arg).CombinedOutput()
	line, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return line
}

// commandLine quotes args for a POSIX shell so the printed command can be pasted.
func commandLine(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,@%+", r))
		}) < 0 {
			q[i] = a
			continue
		}
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}
