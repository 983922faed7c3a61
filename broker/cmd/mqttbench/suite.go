package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"
)

// SuiteConfig drives "mqttbench suite": which brokers, which scenarios, how often.
type SuiteConfig struct {
	// Run is the template of every measured run (pairs, payload, duration, client,
	// windows...); URLs, QoS and broker PIDs are filled per scenario.
	Run RunConfig
	// QoS lists the QoS levels to measure, one scenario each. Default 0 and 1.
	QoS []byte
	// Rounds is how many times each scenario runs per broker; brokers alternate
	// round-robin (the order rotates every round) so drift on a shared machine
	// spreads over all of them. Medians are reported. Default 3.
	Rounds int
	// Warmup is the length of the discarded run before each scenario's rounds
	// (JIT-free Go still warms caches, pools and the GC's heap target). Default 1s.
	Warmup time.Duration
	// Brokers selects what to start: any of mendmq, mosquitto, mochi.
	Brokers []string
	// Mendmq is the path of the mendmq binary (built by make build).
	Mendmq string
	// Mosquitto is the path of the mosquitto binary.
	Mosquitto string
	// Self is the mqttbench executable used to run the mochi peer (default: this one).
	Self string
	// IdleConns is the number of idle clients for the memory-per-connection check;
	// 0 skips it. Default 1000.
	IdleConns int
	// Cluster switches to cluster mode: start one mendmq per ClusterConfigs entry
	// and compare same-node with cross-node traffic.
	Cluster bool
	// ClusterConfigs are the node configs for cluster mode.
	ClusterConfigs []string
	// HopRate paces each publisher of cluster mode's hop-latency groups
	// (messages/s): light enough that latency is the path, not queueing,
	// so cross-node minus same-node is the cost of the hop. 0 skips them.
	// Default 100.
	HopRate float64
	// JSONPath, if set, receives every round's result and the medians as JSON.
	JSONPath string
	// LogDir keeps configs and broker logs; default a new temp directory.
	LogDir string
}

// Broker names accepted by -brokers.
const (
	brokerMendmq    = "mendmq"
	brokerMosquitto = "mosquitto"
	brokerMochi     = "mochi"
)

// DefaultSuiteConfig returns the settings "make bench" uses.
func DefaultSuiteConfig() SuiteConfig {
	run := DefaultRunConfig()
	run.PubURLs = nil
	return SuiteConfig{
		Run:            run,
		QoS:            []byte{0, 1},
		Rounds:         3,
		Warmup:         time.Second,
		Brokers:        []string{brokerMendmq, brokerMosquitto, brokerMochi},
		Mendmq:         "bin/mendmq",
		Mosquitto:      "/usr/sbin/mosquitto",
		IdleConns:      1000,
		ClusterConfigs: []string{"examples/cluster/node1.yaml", "examples/cluster/node2.yaml", "examples/cluster/node3.yaml"},
		HopRate:        100,
	}
}

// Validate checks the suite settings; errors name the flag.
func (c *SuiteConfig) Validate() error {
	var errs []error
	run := c.Run
	run.PubURLs = []string{"tcp://127.0.0.1:1"} // filled per scenario
	if err := run.Validate(); err != nil {
		errs = append(errs, err)
	}
	if len(c.QoS) == 0 {
		errs = append(errs, errors.New("-qos: list at least one QoS level"))
	}
	for _, q := range c.QoS {
		if q > 2 {
			errs = append(errs, fmt.Errorf("-qos: %d, want 0, 1 or 2", q))
		}
	}
	if c.Rounds < 1 || c.Rounds > 100 {
		errs = append(errs, fmt.Errorf("-rounds: %d, want 1..100", c.Rounds))
	}
	if c.Warmup < 0 || c.Warmup > 10*time.Minute {
		errs = append(errs, fmt.Errorf("-warmup: %s, want 0..10m", c.Warmup))
	}
	for _, b := range c.Brokers {
		if b != brokerMendmq && b != brokerMosquitto && b != brokerMochi {
			errs = append(errs, fmt.Errorf("-brokers: unknown broker %q, want mendmq, mosquitto or mochi", b))
		}
	}
	if !c.Cluster && len(c.Brokers) == 0 {
		errs = append(errs, errors.New("-brokers: name at least one broker"))
	}
	if c.IdleConns < 0 || c.IdleConns > 10000 {
		errs = append(errs, fmt.Errorf("-idle-conns: %d, want 0..10000", c.IdleConns))
	}
	if c.HopRate < 0 || c.HopRate > 100000 {
		errs = append(errs, fmt.Errorf("-hop-rate: %g, want 0..100000 messages/s", c.HopRate))
	}
	if c.Cluster && len(c.ClusterConfigs) < 2 {
		errs = append(errs, errors.New("-cluster-configs: cluster mode needs at least two node configs"))
	}
	return errors.Join(errs...)
}

// scenario is one traffic shape; publishers connect to node pubNode of a target and
// subscribers to node subNode (indexes into target.urls), so cross-node scenarios
// are the same code with different indexes.
type scenario struct {
	name             string
	qos              byte
	pubNode, subNode int
	rate             float64 // messages/s per publisher, overriding the suite's; 0 = the suite's
}

// benchCase is one scenario on one target and its rounds.
type benchCase struct {
	label   string // row label in the table
	sc      scenario
	t       *target
	results []Result
	fails   []string
}

// group is a set of cases measured alternately and compared in one table.
type group struct {
	title string
	cases []*benchCase
	refs  []string // labels of the rows other rows are compared with
	// hop: print the cross-node row's latency less the same-node row's.
	hop bool
}

// cmdSuite is "mqttbench suite".
func cmdSuite(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := DefaultSuiteConfig()
	fs := flag.NewFlagSet("mqttbench suite", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.Mendmq, "mendmq", cfg.Mendmq, "path of the mendmq binary (skipped if missing)")
	fs.StringVar(&cfg.Mosquitto, "mosquitto", cfg.Mosquitto, "path of the mosquitto binary (skipped if missing)")
	fs.Var((*listFlag)(&cfg.Brokers), "brokers", "comma-separated brokers to compare: mendmq, mosquitto, mochi")
	fs.Var((*qosList)(&cfg.QoS), "qos", "comma-separated QoS levels, one scenario each")
	fs.IntVar(&cfg.Rounds, "rounds", cfg.Rounds, "rounds per scenario and broker (brokers alternate)")
	fs.DurationVar(&cfg.Warmup, "warmup", cfg.Warmup, "discarded warm-up run per scenario and broker (0 = none)")
	fs.DurationVar(&cfg.Run.Duration, "duration", cfg.Run.Duration, "publishing time per round")
	fs.IntVar(&cfg.Run.Pairs, "pairs", cfg.Run.Pairs, "publisher/subscriber pairs")
	fs.IntVar(&cfg.Run.PayloadSize, "payload", cfg.Run.PayloadSize, "payload bytes")
	fs.Var(versionFlag{&cfg.Run.Version}, "version", "MQTT version: 3.1.1 or 5")
	fs.StringVar(&cfg.Run.Client, "client", cfg.Run.Client, "client implementation: raw or paho")
	fs.IntVar(&cfg.Run.Inflight, "inflight", cfg.Run.Inflight, "unacknowledged QoS 1/2 messages per publisher")
	fs.IntVar(&cfg.Run.Window, "window", cfg.Run.Window, "end-to-end window per pair (0 = unlimited)")
	fs.Float64Var(&cfg.Run.Rate, "rate", cfg.Run.Rate, "messages/s per publisher (0 = unlimited)")
	fs.IntVar(&cfg.IdleConns, "idle-conns", cfg.IdleConns, "idle clients for the memory-per-connection check (0 = skip)")
	fs.BoolVar(&cfg.Cluster, "cluster", cfg.Cluster, "cluster mode: same-node vs cross-node on a mendmq cluster")
	fs.Var((*listFlag)(&cfg.ClusterConfigs), "cluster-configs", "comma-separated node configs for -cluster")
	fs.Float64Var(&cfg.HopRate, "hop-rate", cfg.HopRate, "-cluster: messages/s per publisher of the paced hop-latency runs (0 = skip them)")
	fs.StringVar(&cfg.JSONPath, "json", "", "also write all results as JSON to this file")
	fs.StringVar(&cfg.LogDir, "logs", "", "directory for broker configs and logs (default: a new temp dir)")
	level := fs.String("log-level", "warn", "log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("suite: unexpected arguments %q", fs.Args())
	}
	log, err := newLogger(stderr, *level)
	if err != nil {
		return err
	}
	return RunSuite(ctx, cfg, stdout, log)
}

// RunSuite starts the brokers, runs every group and prints the tables.
func RunSuite(ctx context.Context, cfg SuiteConfig, out io.Writer, log *slog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid suite config: %w", err)
	}
	if cfg.Self == "" {
		self, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find own executable for the mochi peer: %w", err)
		}
		cfg.Self = self
	}
	if cfg.LogDir == "" {
		dir, err := os.MkdirTemp("", "mqttbench-suite-")
		if err != nil {
			return fmt.Errorf("create log dir: %w", err)
		}
		cfg.LogDir = dir
	} else if err := os.MkdirAll(cfg.LogDir, 0o755); err != nil {
		return fmt.Errorf("create -logs dir: %w", err)
	}
	rep := &suiteReport{Command: commandLine(os.Args), Started: time.Now()}
	rep.Env = environment(cfg)
	fmt.Fprintf(out, "mqttbench suite — %s\ncommand: %s\n", rep.Started.Format(time.RFC3339), rep.Command)
	for _, e := range rep.Env {
		fmt.Fprintf(out, "  %s\n", e)
	}
	fmt.Fprintf(out, "  broker configs and logs: %s\n", cfg.LogDir)

	skip := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		rep.Skipped = append(rep.Skipped, msg)
		fmt.Fprintf(out, "SKIPPED: %s\n", msg)
	}
	var targets []*target
	defer func() {
		for _, t := range targets {
			if err := t.stop(); err != nil {
				log.Warn("stop broker", "broker", t.name, "err", err)
			}
		}
	}()
	var groups []*group
	if cfg.Cluster {
		t := startClusterTarget(ctx, cfg, skip)
		if t == nil {
			return finishSuite(cfg, rep, out)
		}
		targets = append(targets, t)
		groups = clusterGroups(cfg, t)
	} else {
		targets = startTargets(ctx, cfg, skip)
		if len(targets) == 0 {
			skip("no broker could be started; nothing to measure")
			return finishSuite(cfg, rep, out)
		}
		groups = brokerGroups(cfg, targets)
		if cfg.IdleConns > 0 {
			rep.IdleRSS = measureIdle(ctx, cfg, targets, out)
		}
	}
	for _, g := range groups {
		if err := runGroup(ctx, cfg, g, out, log); err != nil {
			return err
		}
		printGroup(out, cfg, g)
		gr := groupReport{Title: g.title}
		for _, c := range g.cases {
			gr.Cases = append(gr.Cases, caseReport{Label: c.label, Scenario: c.sc.name, Target: c.t.name, Rounds: c.results, Failures: c.fails, Median: summarize(c.results)})
		}
		rep.Groups = append(rep.Groups, gr)
	}
	return finishSuite(cfg, rep, out)
}

// finishSuite writes the JSON report if asked.
func finishSuite(cfg SuiteConfig, rep *suiteReport, out io.Writer) error {
	rep.Finished = time.Now()
	fmt.Fprintf(out, "\ncommand: %s\n", rep.Command)
	if cfg.JSONPath == "" {
		return nil
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return fmt.Errorf("encode JSON report: %w", err)
	}
	if err := os.WriteFile(cfg.JSONPath, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write -json %s: %w", cfg.JSONPath, err)
	}
	fmt.Fprintf(out, "JSON report: %s\n", cfg.JSONPath)
	return nil
}

// startTargets starts the selected brokers; one that cannot start is skipped with
// the reason.
func startTargets(ctx context.Context, cfg SuiteConfig, skip func(string, ...any)) []*target {
	var ts []*target
	for _, name := range cfg.Brokers {
		var t *target
		var err error
		switch name {
		case brokerMendmq:
			if _, serr := os.Stat(cfg.Mendmq); serr != nil {
				skip("mendmq: binary %s not found (run make build first)", cfg.Mendmq)
				continue
			}
			t, err = startMendmq(ctx, cfg.Mendmq, cfg.LogDir)
		case brokerMosquitto:
			if _, serr := os.Stat(cfg.Mosquitto); serr != nil {
				skip("mosquitto: %s not found (apt-get install mosquitto)", cfg.Mosquitto)
				continue
			}
			t, err = startMosquitto(ctx, cfg.Mosquitto, cfg.LogDir)
		case brokerMochi:
			t, err = startMochiPeer(ctx, cfg.Self, cfg.LogDir)
		}
		if err != nil {
			skip("%s: %v", name, err)
			continue
		}
		ts = append(ts, t)
	}
	return ts
}

// startClusterTarget starts the mendmq cluster or reports why not.
func startClusterTarget(ctx context.Context, cfg SuiteConfig, skip func(string, ...any)) *target {
	if _, err := os.Stat(cfg.Mendmq); err != nil {
		skip("cluster: mendmq binary %s not found (run make build first)", cfg.Mendmq)
		return nil
	}
	for _, c := range cfg.ClusterConfigs {
		if _, err := os.Stat(c); err != nil {
			skip("cluster: node config %s not found", c)
			return nil
		}
	}
	t, err := startCluster(ctx, cfg.Mendmq, cfg.ClusterConfigs, cfg.LogDir)
	if err != nil {
		skip("cluster: %v", err)
		return nil
	}
	return t
}

// brokerGroups builds one group per QoS: every broker, same node for both sides.
func brokerGroups(cfg SuiteConfig, ts []*target) []*group {
	var gs []*group
	for _, q := range cfg.QoS {
		sc := scenario{name: fmt.Sprintf("qos%d", q), qos: q}
		g := &group{title: scenarioTitle(cfg, q, ""), refs: []string{brokerMosquitto, brokerMochi}}
		for _, t := range ts {
			g.cases = append(g.cases, &benchCase{label: t.name, sc: sc, t: t})
		}
		gs = append(gs, g)
	}
	return gs
}

// Row labels of cluster mode.
const (
	labelSameNode  = "same-node"
	labelCrossNode = "cross-node"
)

// clusterGroups builds one group per QoS: publishers and subscribers on node 1, and
// publishers on node 1 with subscribers on node 2.
func clusterGroups(cfg SuiteConfig, t *target) []*group {
	var gs []*group
	for _, q := range cfg.QoS {
		g := &group{title: scenarioTitle(cfg, q, "mendmq cluster of "+strconv.Itoa(len(t.urls))), refs: []string{labelSameNode}}
		g.cases = []*benchCase{
			{label: labelSameNode, sc: scenario{name: fmt.Sprintf("qos%d-same-node", q), qos: q, pubNode: 0, subNode: 0}, t: t},
			{label: labelCrossNode, sc: scenario{name: fmt.Sprintf("qos%d-cross-node", q), qos: q, pubNode: 0, subNode: 1}, t: t},
		}
		gs = append(gs, g)
	}
	if cfg.HopRate == 0 {
		return gs
	}
	for _, q := range cfg.QoS {
		paced := cfg
		paced.Run.Rate = cfg.HopRate
		g := &group{title: scenarioTitle(paced, q, "cross-node hop latency"), refs: []string{labelSameNode}, hop: true}
		g.cases = []*benchCase{
			{label: labelSameNode, sc: scenario{name: fmt.Sprintf("qos%d-same-node-paced", q), qos: q, pubNode: 0, subNode: 0, rate: cfg.HopRate}, t: t},
			{label: labelCrossNode, sc: scenario{name: fmt.Sprintf("qos%d-cross-node-paced", q), qos: q, pubNode: 0, subNode: 1, rate: cfg.HopRate}, t: t},
		}
		gs = append(gs, g)
	}
	return gs
}

func scenarioTitle(cfg SuiteConfig, q byte, what string) string {
	ver := "3.1.1"
	if cfg.Run.Version == 5 {
		ver = "5"
	}
	s := fmt.Sprintf("QoS %d: %d pairs x %d B, MQTT %s, %s client, window %d", q, cfg.Run.Pairs, cfg.Run.PayloadSize, ver, cfg.Run.Client, cfg.Run.Window)
	if q > 0 {
		s += fmt.Sprintf(", inflight %d", cfg.Run.Inflight)
	}
	if cfg.Run.Rate > 0 {
		s += fmt.Sprintf(", %g msgs/s per publisher", cfg.Run.Rate)
	}
	s += fmt.Sprintf(", %d rounds x %s", cfg.Rounds, cfg.Run.Duration)
	if what != "" {
		s += " — " + what
	}
	return s
}

// caseConfig is the run config of one case.
func caseConfig(cfg SuiteConfig, c *benchCase) RunConfig {
	rc := cfg.Run
	rc.QoS = c.sc.qos
	if c.sc.rate > 0 {
		rc.Rate = c.sc.rate
	}
	rc.PubURLs = []string{c.t.urls[c.sc.pubNode]}
	rc.SubURLs = []string{c.t.urls[c.sc.subNode]}
	rc.BrokerPIDs = c.t.pids()
	rc.ClientIDPrefix = "mqb-" + c.sc.name
	if len(c.t.urls) > 1 {
		rc.ProbeTimeout = clusterTimeout // a cluster may take a while to route a new subscription
	}
	return rc
}

// runGroup warms every case up, then runs the rounds with the case order rotated
// each round.
func runGroup(ctx context.Context, cfg SuiteConfig, g *group, out io.Writer, log *slog.Logger) error {
	fmt.Fprintf(out, "\n== %s\n", g.title)
	if cfg.Warmup > 0 {
		for _, c := range g.cases {
			rc := caseConfig(cfg, c)
			rc.Duration = cfg.Warmup
			waitQuiet(ctx, rc.BrokerPIDs)
			if _, err := Run(ctx, rc, log); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				fmt.Fprintf(out, "  warm-up %s failed: %v\n", c.label, err)
			}
		}
	}
	n := len(g.cases)
	for round := 0; round < cfg.Rounds; round++ {
		for i := 0; i < n; i++ {
			c := g.cases[(i+round)%n]
			rc := caseConfig(cfg, c)
			waitQuiet(ctx, rc.BrokerPIDs)
			res, err := Run(ctx, rc, log)
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				c.fails = append(c.fails, err.Error())
				fmt.Fprintf(out, "  round %d/%d %-12s FAILED: %v\n", round+1, cfg.Rounds, c.label, err)
				continue
			}
			if res.ErrorCount > 0 {
				c.fails = append(c.fails, fmt.Sprintf("round %d: %d client errors, first: %s", round+1, res.ErrorCount, strings.Join(res.Errors[:min(1, len(res.Errors))], "")))
			} else {
				c.results = append(c.results, res)
			}
			fmt.Fprintf(out, "  round %d/%d %-12s %9.0f msgs/s  p50 %8.3fms  p99 %8.3fms  loss %d  dups %d  ooo %d  cpu broker %.2f gen %.2f other %.2f%s\n",
				round+1, cfg.Rounds, c.label, res.DeliveredPerSec, res.LatencyP50US/1e3, res.LatencyP99US/1e3,
				res.Lost, res.Duplicates, res.OutOfOrder, res.BrokerCores, res.GenCores, res.OtherCores, errNote(res))
		}
	}
	return nil
}

// noisyOtherCores is the CPU use by other processes above which a table is flagged.
const noisyOtherCores = 0.25

// measureIdle prints and returns the resident memory per idle connection.
func measureIdle(ctx context.Context, cfg SuiteConfig, ts []*target, out io.Writer) []rssReport {
	fmt.Fprintf(out, "\n== idle memory: VmRSS before/after connecting %d idle MQTT 3.1.1 clients\n", cfg.IdleConns)
	var reps []rssReport
	for _, t := range ts {
		per, before, after, err := idleRSS(ctx, t, cfg.IdleConns)
		r := rssReport{Broker: t.name, Conns: cfg.IdleConns, BeforeBytes: before, AfterBytes: after, PerConnBytes: per}
		if err != nil {
			r.Error = err.Error()
			fmt.Fprintf(out, "  %-10s failed: %v\n", t.name, err)
		} else {
			fmt.Fprintf(out, "  %-10s %7.1f MiB -> %7.1f MiB  = %6.1f KiB per connection\n", t.name, float64(before)/(1<<20), float64(after)/(1<<20), per/1024)
		}
		reps = append(reps, r)
	}
	return reps
}

// listFlag is a comma-separated list of names.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error {
	*l = nil
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

// qosList is a comma-separated list of QoS levels.
type qosList []byte

func (l *qosList) String() string {
	s := make([]string, len(*l))
	for i, q := range *l {
		s[i] = strconv.Itoa(int(q))
	}
	return strings.Join(s, ",")
}
func (l *qosList) Set(s string) error {
	*l = nil
	for _, p := range strings.Split(s, ",") {
		v, err := strconv.ParseUint(strings.TrimSpace(p), 10, 8)
		if err != nil || v > 2 {
			return fmt.Errorf("QoS %q: want 0, 1 or 2", p)
		}
		*l = append(*l, byte(v))
	}
	return nil
}
