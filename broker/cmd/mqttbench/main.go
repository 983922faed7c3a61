// Command mqttbench is mendmq's MQTT load generator and benchmark runner.
//
//	mqttbench run   [flags]   one load run against running broker(s), prints a report
//	mqttbench mochi [flags]   serve plain upstream mochi-mqtt (the comparison peer)
//	mqttbench suite [flags]   start mendmq, mosquitto and mochi, run the scenarios with
//	                          brokers alternated, print medians and ratios (make bench)
//	mqttbench saturate [flags] start a mendmq cluster, saturate both CPUs with
//	                          cross-node load, count false netsplit detections
//	                          (make bench-saturation)
//
// Every target must be on 127.0.0.0/8. Run "mqttbench CMD -h" for the flags.
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
	"os/signal"
	"runtime/pprof"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := dispatch(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "mqttbench:", err)
		}
		stop()
		os.Exit(2)
	}
}

const usage = `usage: mqttbench <command> [flags]

commands:
  run     generate load against running broker(s) and report throughput, loss, latency
  mochi   serve plain upstream mochi-mqtt v2.7.9 (default options, allow-all auth)
  suite   start the brokers under test and run the benchmark scenarios (make bench)
  saturate  start a mendmq cluster, load it until the CPUs are saturated and count
          false netsplit detections meanwhile (make bench-saturation)

"mqttbench <command> -h" lists the command's flags.
`

// dispatch runs the subcommand named by args[0].
func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return flag.ErrHelp
	}
	switch args[0] {
	case "run":
		return cmdRun(ctx, args[1:], stdout, stderr)
	case "mochi":
		return cmdMochi(ctx, args[1:], stdout, stderr)
	case "suite":
		return cmdSuite(ctx, args[1:], stdout, stderr)
	case "saturate":
		return cmdSaturate(ctx, args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

// newLogger returns a text logger on w at the given level name.
func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("-log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// cmdRun is "mqttbench run".
func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := DefaultRunConfig()
	fs := flag.NewFlagSet("mqttbench run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bindRunFlags(fs, &cfg)
	asJSON := fs.Bool("json", false, "print the result as JSON")
	level := fs.String("log-level", "warn", "log level: debug, info, warn, error")
	cpuProfile := fs.String("cpuprofile", "", "write the generator's CPU profile to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("run: unexpected arguments %q", fs.Args())
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fmt.Errorf("-cpuprofile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("-cpuprofile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	log, err := newLogger(stderr, *level)
	if err != nil {
		return err
	}
	res, err := Run(ctx, cfg, log)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	printResult(stdout, res)
	return nil
}

// printResult writes a human-readable report of one run.
func printResult(w io.Writer, r Result) {
	ver := "3.1.1"
	if r.Version == 5 {
		ver = "5"
	}
	fmt.Fprintf(w, "client %s, MQTT %s, QoS %d, %d pairs, %d B payload, inflight %d, window %d, rate %s, stopped by %s\n",
		r.Client, ver, r.QoS, r.Pairs, r.PayloadSize, r.Inflight, r.Window, rateText(r.Rate), r.StoppedBy)
	fmt.Fprintf(w, "  publishers -> %v   subscribers -> %v\n", r.PubURLs, r.SubURLs)
	fmt.Fprintf(w, "published  %10d msgs %12.0f msgs/s  (%.2f s)\n", r.Published, r.PublishedPerSec, r.PublishSeconds)
	fmt.Fprintf(w, "delivered  %10d msgs %12.0f msgs/s  (%.2f s)\n", r.Delivered, r.DeliveredPerSec, r.DeliverSeconds)
	fmt.Fprintf(w, "loss %d (%.3f%%)  duplicates %d  out-of-order %d  foreign %d  window stalls %d\n",
		r.Lost, pct(r.Lost, r.Published), r.Duplicates, r.OutOfOrder, r.Foreign, r.WindowStalls)
	fmt.Fprintf(w, "latency    p50 %s  p90 %s  p99 %s  max %s  mean %s\n",
		msText(r.LatencyP50US), msText(r.LatencyP90US), msText(r.LatencyP99US), msText(r.LatencyMaxUS), msText(r.LatencyMeanUS))
	fmt.Fprintf(w, "cpu        generator %.2f cores (%.2f µs/msg)", r.GenCores, r.GenCPUPerMsgUS)
	if r.BrokerCPUSeconds > 0 {
		fmt.Fprintf(w, "  broker %.2f cores (%.2f µs/msg)", r.BrokerCores, r.BrokerCPUPerMsgUS)
		fmt.Fprintf(w, "  other processes %.2f cores", r.OtherCores)
	} else {
		fmt.Fprintf(w, "  broker + other processes %.2f cores", r.OtherCores)
	}
	fmt.Fprintln(w)
	if r.ErrorCount > 0 {
		fmt.Fprintf(w, "ERRORS: %d during the run (numbers unreliable); first ones:\n", r.ErrorCount)
		for _, e := range r.Errors {
			fmt.Fprintf(w, "  %s\n", e)
		}
	}
}

func rateText(r float64) string {
	if r == 0 {
		return "unlimited"
	}
	return fmt.Sprintf("%g/s per publisher", r)
}

func pct(a, b uint64) float64 {
	if b == 0 {
		return 0
	}
	return 100 * float64(a) / float64(b)
}

func msText(us float64) string { return fmt.Sprintf("%.3fms", us/1000) }
