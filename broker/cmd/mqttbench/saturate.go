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
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"
)

// SaturateConfig drives "mqttbench saturate": a real cluster of mendmq
// processes loaded by this generator until both CPUs are saturated, while
// every node's netsplit state and members are sampled, to count false
// detections (CPU starvation is their classic cause).
type SaturateConfig struct {
	// Mendmq is the path of the mendmq binary. Default bin/mendmq.
	Mendmq string
	// Configs are the node configs, one node each (at least 2). Their
	// addresses are rewritten onto free loopback ports (rewriteNodeConfig);
	// the rest is used as is. Default examples/cluster/node{1,2,3}.yaml.
	Configs []string
	// Sets are extra "key=value" overrides passed to every node as --set.
	Sets []string
	// Period is how long the load publishes. Default 2m, at most 1h.
	Period time.Duration
	// QoS lists the loads run at the same time, one per level, each with
	// Pairs pairs. Default 0 and 1.
	QoS []byte
	// Pairs per QoS level. Pair i publishes on node i mod n and subscribes
	// on another node (all 2·n·(n-1)/2 directed links carry traffic), so
	// every message crosses the data plane. Default 30.
	Pairs int
	// Run is the template of each load (payload, inflight, window, rate,
	// client); URLs, QoS, pairs, duration and PIDs are set by saturate.
	Run RunConfig
	// Sample is the interval of the /api/v1/cluster samples. Default 150ms.
	Sample time.Duration
	// SampleTimeout bounds one sample's answer. Default 2s.
	SampleTimeout time.Duration
	// JSONPath, if set, receives the report as JSON.
	JSONPath string
	// LogDir keeps node configs and logs; default a new temp directory.
	LogDir string
}

// DefaultSaturateConfig returns the settings "make bench-saturation" uses.
func DefaultSaturateConfig() SaturateConfig {
	run := DefaultRunConfig()
	run.PubURLs = nil
	run.Inflight = 10 // QoS 1 publishers pipeline a little: more load per connection
	return SaturateConfig{
		Mendmq:        "bin/mendmq",
		Configs:       DefaultSuiteConfig().ClusterConfigs,
		Period:        2 * time.Minute,
		QoS:           []byte{0, 1},
		Pairs:         30,
		Run:           run,
		Sample:        150 * time.Millisecond,
		SampleTimeout: 2 * time.Second,
	}
}

// Validate checks the settings; errors name the flag.
func (c *SaturateConfig) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Mendmq == "" {
		bad("-mendmq: the path of the mendmq binary is required")
	}
	if len(c.Configs) < 2 || len(c.Configs) > 9 {
		bad("-configs: %d node configs, want 2..9", len(c.Configs))
	}
	for _, s := range c.Sets {
		if k, _, ok := strings.Cut(s, "="); !ok || strings.TrimSpace(k) == "" {
			bad("-set: %q, want key=value", s)
		}
	}
	if c.Period <= 0 || c.Period > maxDuration {
		bad("-period: %s, want >0 and <= %s", c.Period, maxDuration)
	}
	if len(c.QoS) == 0 {
		bad("-qos: list at least one QoS level")
	}
	seen := map[byte]bool{}
	for _, q := range c.QoS {
		if q > 2 {
			bad("-qos: %d, want 0, 1 or 2", q)
		}
		if seen[q] {
			bad("-qos: %d listed twice", q)
		}
		seen[q] = true
	}
	if c.Pairs < 1 || c.Pairs > 1000 {
		bad("-pairs: %d, want 1..1000 per QoS level", c.Pairs)
	}
	if c.Sample < 10*time.Millisecond || c.Sample > 10*time.Second {
		bad("-sample: %s, want 10ms..10s", c.Sample)
	}
	if c.SampleTimeout <= 0 || c.SampleTimeout > time.Minute {
		bad("-sample-timeout: %s, want >0 and <= 1m", c.SampleTimeout)
	}
	run := c.Run
	run.PubURLs, run.Pairs, run.Duration = []string{"tcp://127.0.0.1:1"}, c.Pairs, time.Second // set per load
	if c.Pairs >= 1 && c.Pairs <= 1000 {
		if err := run.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// cmdSaturate is "mqttbench saturate".
func cmdSaturate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := DefaultSaturateConfig()
	fs := flag.NewFlagSet("mqttbench saturate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.Mendmq, "mendmq", cfg.Mendmq, "path of the mendmq binary")
	fs.Var((*listFlag)(&cfg.Configs), "configs", "comma-separated node configs, one node each (addresses rewritten onto free ports)")
	fs.Var((*multiFlag)(&cfg.Sets), "set", "key=value passed to every node as --set (repeatable)")
	fs.DurationVar(&cfg.Period, "period", cfg.Period, "how long the load publishes")
	fs.Var((*qosList)(&cfg.QoS), "qos", "comma-separated QoS levels, one load each, all at once")
	fs.IntVar(&cfg.Pairs, "pairs", cfg.Pairs, "publisher/subscriber pairs per QoS level, all cross-node")
	fs.IntVar(&cfg.Run.PayloadSize, "payload", cfg.Run.PayloadSize, "payload bytes")
	fs.IntVar(&cfg.Run.Inflight, "inflight", cfg.Run.Inflight, "unacknowledged QoS 1/2 messages per publisher")
	fs.IntVar(&cfg.Run.Window, "window", cfg.Run.Window, "end-to-end window per pair (0 = unlimited)")
	fs.Float64Var(&cfg.Run.Rate, "rate", cfg.Run.Rate, "messages/s per publisher (0 = unlimited)")
	fs.DurationVar(&cfg.Sample, "sample", cfg.Sample, "interval of the /api/v1/cluster samples of every node")
	fs.DurationVar(&cfg.SampleTimeout, "sample-timeout", cfg.SampleTimeout, "bound on one sample's answer")
	fs.StringVar(&cfg.JSONPath, "json", "", "also write the report as JSON to this file")
	fs.StringVar(&cfg.LogDir, "logs", "", "directory for node configs and logs (default: a new temp dir)")
	level := fs.String("log-level", "warn", "log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("saturate: unexpected arguments %q", fs.Args())
	}
	log, err := newLogger(stderr, *level)
	if err != nil {
		return err
	}
	return RunSaturate(ctx, cfg, stdout, log)
}

// multiFlag collects a repeatable flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, " ") }
func (m *multiFlag) Set(s string) error { *m = append(*m, s); return nil }

// saturateReport is what one saturation run measured.
type saturateReport struct {
	Command  string    `json:"command"`
	Env      []string  `json:"environment"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	LoadEnd  string    `json:"load_average_at_end"`
	Nodes    int       `json:"nodes"`
	Period   string    `json:"period"`
	Loads    []Result  `json:"loads"`
	Failures []string  `json:"load_failures,omitempty"`
	// DeliveredPerSec sums the loads' delivered rates.
	DeliveredPerSec float64 `json:"delivered_per_sec"`
	// Sampled is the wall time the samplers ran (set-up, load and drain).
	SampledSeconds float64   `json:"sampled_seconds"`
	CPU            cpuSeries `json:"cpu"`
	CPUMean        float64   `json:"cpu_busy_cores_mean"`
	CPUFullShare   float64   `json:"cpu_share_of_seconds_all_cpus_95pct_busy"`
	BrokerCores    float64   `json:"broker_cores"`
	GenCores       float64   `json:"generator_cores"`
	// OtherCores is the busy CPU not used by the nodes or the generator: the
	// other work of a shared machine.
	OtherCores float64 `json:"other_cores"`
	// CPUPressure is the share of the sampled time in which some runnable
	// task waited for a CPU (PSI; -1 where unavailable): how starved.
	CPUPressure float64      `json:"cpu_pressure_some"`
	Samples     *detectTally `json:"samples"`
	// Stalls are the generator's own longest scheduling gaps.
	Stalls    stallTracker `json:"generator_stalls"`
	Netsplits uint64       `json:"netsplits_entered"`
	Logs      logCounts    `json:"logs"`
}

// RunSaturate starts the cluster, loads it for cfg.Period while sampling,
// and prints the report. False detections are reported, not an error.
func RunSaturate(ctx context.Context, cfg SaturateConfig, out io.Writer, log *slog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid saturate config: %w", err)
	}
	if _, err := os.Stat(cfg.Mendmq); err != nil {
		return fmt.Errorf("-mendmq: %w (run make build first)", err)
	}
	if cfg.LogDir == "" {
		dir, err := os.MkdirTemp("", "mqttbench-saturate-")
		if err != nil {
			return fmt.Errorf("create log dir: %w", err)
		}
		cfg.LogDir = dir
	} else if err := os.MkdirAll(cfg.LogDir, 0o755); err != nil {
		return fmt.Errorf("create -logs dir: %w", err)
	}
	rep := &saturateReport{Command: commandLine(os.Args), Started: time.Now(), Nodes: len(cfg.Configs), Period: cfg.Period.String()}
	rep.Env = environment(SuiteConfig{Cluster: true, Mendmq: cfg.Mendmq})
	fmt.Fprintf(out, "mqttbench saturate — %s\ncommand: %s\n", rep.Started.Format(time.RFC3339), rep.Command)
	for _, e := range rep.Env {
		fmt.Fprintf(out, "  %s\n", e)
	}
	fmt.Fprintf(out, "  node configs and logs: %s\n", cfg.LogDir)

	paths, admins, err := writeSaturateConfigs(cfg)
	if err != nil {
		return err
	}
	var extra []string
	for _, s := range cfg.Sets {
		extra = append(extra, "--set", s)
	}
	t, err := startCluster(ctx, cfg.Mendmq, paths, cfg.LogDir, extra...)
	if err != nil {
		return fmt.Errorf("start the cluster: %w", err)
	}
	defer func() {
		if err := t.stop(); err != nil {
			log.Warn("stop cluster", "err", err)
		}
	}()
	fmt.Fprintf(out, "  cluster: %d nodes up, MQTT %v, admin %v\n", len(t.urls), t.urls, admins)

	rep.Samples = newDetectTally(len(admins))
	rep.CPU.CPUs = runtime.NumCPU()
	wctx, wcancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	rep.Stalls.Tick = 20 * time.Millisecond
	wg.Add(3)
	go func() { defer wg.Done(); watchStalls(wctx, &rep.Stalls) }()
	go func() { defer wg.Done(); watchCluster(wctx, admins, cfg.Sample, cfg.SampleTimeout, rep.Samples) }()
	go func() { defer wg.Done(); sampleCPU(wctx, time.Second, &rep.CPU) }()
	pids := t.pids()
	broker0 := procsCPU(pids, func(error) {})
	gen0, _ := selfCPU()
	psi0, psiOK0 := cpuPressure()
	start := time.Now()

	fmt.Fprintf(out, "\nloading for %s: %d pairs per QoS level %v, all cross-node, at the same time...\n", cfg.Period, cfg.Pairs, (*qosList)(&cfg.QoS).String())
	loads := make([]Result, len(cfg.QoS))
	errs := make([]error, len(cfg.QoS))
	var lwg sync.WaitGroup
	for i, q := range cfg.QoS {
		lwg.Add(1)
		go func() {
			defer lwg.Done()
			loads[i], errs[i] = Run(ctx, saturateLoad(cfg, t, q, pids), log)
		}()
	}
	lwg.Wait()
	wcancel()
	wg.Wait()
	elapsed := time.Since(start)
	broker1 := procsCPU(pids, func(error) {})
	gen1, _ := selfCPU()
	psi1, psiOK1 := cpuPressure()
	if ctx.Err() != nil {
		return ctx.Err()
	}

	rep.SampledSeconds = elapsed.Seconds()
	rep.BrokerCores = float64(broker1-broker0) / float64(elapsed)
	rep.GenCores = float64(gen1-gen0) / float64(elapsed)
	rep.CPUMean, rep.CPUFullShare = rep.CPU.summary(0.95)
	rep.OtherCores = max(0, rep.CPUMean-rep.BrokerCores-rep.GenCores)
	rep.CPUPressure = -1
	if psiOK0 && psiOK1 {
		rep.CPUPressure = float64(psi1-psi0) / float64(elapsed)
	}
	for i, r := range loads {
		if errs[i] != nil {
			rep.Failures = append(rep.Failures, fmt.Sprintf("QoS %d: %v", cfg.QoS[i], errs[i]))
			continue
		}
		rep.Loads = append(rep.Loads, r)
		rep.DeliveredPerSec += r.DeliveredPerSec
	}
	rep.Netsplits = rep.Samples.NetsplitsEntered()
	names := make([]string, len(t.procs))
	logs := make([]string, len(t.procs))
	for i, p := range t.procs {
		names[i], logs[i] = fmt.Sprintf("node%d", i+1), p.logPath
	}
	rep.Logs, err = scanLogFiles(logs, names)
	if err != nil {
		rep.Failures = append(rep.Failures, err.Error())
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		rep.LoadEnd = strings.TrimSpace(string(b))
	}
	rep.Finished = time.Now()
	printSaturate(out, cfg, rep)
	if cfg.JSONPath != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return fmt.Errorf("encode JSON report: %w", err)
		}
		if err := os.WriteFile(cfg.JSONPath, append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("write -json %s: %w", cfg.JSONPath, err)
		}
		fmt.Fprintf(out, "JSON report: %s\n", cfg.JSONPath)
	}
	if len(rep.Loads) == 0 {
		return fmt.Errorf("no load ran: %s", strings.Join(rep.Failures, "; "))
	}
	return nil
}

// writeSaturateConfigs writes each node config, moved onto free ports, to
// the log dir and returns their paths and the nodes' admin base URLs.
func writeSaturateConfigs(cfg SaturateConfig) (paths, admins []string, err error) {
	ports, err := allocPorts(len(cfg.Configs))
	if err != nil {
		return nil, nil, err
	}
	seeds := make([]string, len(ports))
	for i, p := range ports {
		seeds[i] = fmt.Sprintf("127.0.0.1:%d", p.Gossip)
	}
	for i, src := range cfg.Configs {
		b, err := os.ReadFile(src)
		if err != nil {
			return nil, nil, fmt.Errorf("-configs: %w", err)
		}
		nb, err := rewriteNodeConfig(b, ports[i], seeds)
		if err != nil {
			return nil, nil, fmt.Errorf("-configs %s: %w", src, err)
		}
		p := filepath.Join(cfg.LogDir, fmt.Sprintf("node%d.yaml", i+1))
		if err := os.WriteFile(p, nb, 0o644); err != nil {
			return nil, nil, fmt.Errorf("write node config: %w", err)
		}
		paths = append(paths, p)
		admins = append(admins, fmt.Sprintf("http://127.0.0.1:%d", ports[i].Admin))
	}
	return paths, admins, nil
}

// saturateLoad is the run config of the load at QoS q: pair i publishes on
// node i mod n and subscribes on node (i mod n + 1 + (i/n) mod (n-1)) mod n,
// so pairs cycle through every ordered pair of distinct nodes.
func saturateLoad(cfg SaturateConfig, t *target, q byte, pids []int) RunConfig {
	rc := cfg.Run
	rc.QoS, rc.Pairs, rc.Duration = q, cfg.Pairs, cfg.Period
	rc.PubURLs, rc.SubURLs = crossNodeURLs(t.urls)
	rc.BrokerPIDs = pids
	rc.ClientIDPrefix = fmt.Sprintf("mqb-sat-q%d", q)
	rc.ProbeTimeout = clusterTimeout
	rc.ConnectTimeout = clusterTimeout
	return rc
}

// crossNodeURLs returns publisher and subscriber URL lists of equal length
// n·(n-1) whose entries i name different nodes, covering every ordered pair
// of distinct nodes once (RunConfig uses entry i mod len for pair i).
func crossNodeURLs(urls []string) (pub, sub []string) {
	n := len(urls)
	for shift := 1; shift < n; shift++ {
		for i := range n {
			pub = append(pub, urls[i])
			sub = append(sub, urls[(i+shift)%n])
		}
	}
	return pub, sub
}

// printSaturate writes the human-readable report.
func printSaturate(w io.Writer, cfg SaturateConfig, r *saturateReport) {
	fmt.Fprintln(w)
	for _, l := range r.Loads {
		fmt.Fprintf(w, "QoS %d: %d pairs x %d B: delivered %d msgs, %.0f msgs/s; loss %d, duplicates %d, p50 %s, p99 %s, client errors %d\n",
			l.QoS, l.Pairs, l.PayloadSize, l.Delivered, l.DeliveredPerSec, l.Lost, l.Duplicates, msText(l.LatencyP50US), msText(l.LatencyP99US), l.ErrorCount)
		for _, e := range l.Errors[:min(3, len(l.Errors))] {
			fmt.Fprintf(w, "    %s\n", e)
		}
	}
	for _, f := range r.Failures {
		fmt.Fprintf(w, "FAILED: %s\n", f)
	}
	fmt.Fprintf(w, "delivered, all loads: %.0f msgs/s\n", r.DeliveredPerSec)
	fmt.Fprintf(w, "cpu over %.0f s sampled: all CPUs busy %.2f of %d cores (%.0f%%), seconds with every CPU >= 95%% busy: %.0f%%; nodes %.2f cores, generator %.2f, other processes %.2f\n",
		r.SampledSeconds, r.CPUMean, r.CPU.CPUs, 100*r.CPUMean/float64(max(1, r.CPU.CPUs)), 100*r.CPUFullShare, r.BrokerCores, r.GenCores, r.OtherCores)
	if r.CPUPressure >= 0 {
		fmt.Fprintf(w, "cpu pressure: some runnable task waited for a CPU %.0f%% of the time (/proc/pressure/cpu)\n", 100*r.CPUPressure)
	}
	s := r.Samples
	fmt.Fprintf(w, "samples of /api/v1/cluster every %s per node: %d answered, %d failed, slowest answer %s\n",
		cfg.Sample, s.Answered, s.Failed, s.Slowest.Round(time.Millisecond))
	fmt.Fprint(w, "  the generator's own longest gaps between 20 ms ticks (it did not run):")
	for _, st := range r.Stalls.Longest {
		fmt.Fprintf(w, " %s at +%.1fs;", st.Gap.Round(time.Millisecond), st.At.Seconds())
	}
	if len(r.Stalls.Longest) == 0 {
		fmt.Fprint(w, " none over 40 ms")
	}
	fmt.Fprintln(w)
	if s.FirstError != "" {
		fmt.Fprintf(w, "  first failure: %s\n", s.FirstError)
	}
	fmt.Fprintf(w, "  netsplits entered %d; samples in a netsplit %d; member samples: unreachable %d, not alive %d (suspect %d), data-plane link down %d\n",
		r.Netsplits, s.SplitSamples, s.UnreachableSamples, s.NotAliveSamples, s.SuspectSamples, s.LinkDownSamples)
	for _, e := range s.Events {
		fmt.Fprintf(w, "  %s\n", e)
	}
	fmt.Fprint(w, "node logs:")
	for _, p := range detectionLogPatterns {
		fmt.Fprintf(w, " %s %d;", p.name, r.Logs.Counts[p.name])
	}
	fmt.Fprintln(w)
	for _, l := range r.Logs.Lines {
		fmt.Fprintf(w, "  %s\n", l)
	}
	if r.Netsplits == 0 && s.SplitSamples == 0 && s.UnreachableSamples == 0 {
		fmt.Fprintln(w, "false detections: none (no netsplit entered, no member found unreachable)")
	} else {
		fmt.Fprintf(w, "FALSE DETECTIONS: %d netsplits entered, %d unreachable-member samples (see above)\n", r.Netsplits, s.UnreachableSamples)
	}
	fmt.Fprintf(w, "load average at end: %s\ncommand: %s\n", r.LoadEnd, r.Command)
}
