package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/mendmq/mendmq/broker"
	"github.com/mendmq/mendmq/broker/config"
	"github.com/mendmq/mendmq/plugins/filewatch"
)

func init() {
	register("serve", "run a broker node", runServe)
}

// multiFlag collects repeated --set flags.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func runServe(args []string) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfgFile := fs.String("config", "", "config file (YAML, or TOML with a .toml extension) layered over the embedded defaults")
	var sets multiFlag
	fs.Var(&sets, "set", "override one key, e.g. --set mqtt.max_packet_size=65536 (repeatable; wins over file and env)")
	shutdownTimeout := fs.Duration("shutdown-timeout", 10*time.Second, "how long a graceful shutdown may take")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := config.Load(config.Sources{File: *cfgFile, Environ: os.Environ(), Sets: sets})
	if err != nil {
		fmt.Fprintf(os.Stderr, "mendmq: config error: %v\n", err)
		return 1
	}
	log := newLogger(cfg.Log, os.Stderr)
	b, err := broker.New(cfg, log)
	if err != nil {
		log.Error("cannot start", "error", err)
		return 1
	}
	if err := b.Start(); err != nil {
		log.Error("cannot start", "error", err)
		return 1
	}
	src := config.Sources{File: *cfgFile, Environ: os.Environ(), Sets: sets}
	reload := func() error {
		next, err := config.Load(src)
		if err != nil {
			return err
		}
		return b.Reconfigure(next)
	}
	b.SetReloader(reload)
	if *cfgFile != "" {
		// Hot reload: a changed config file is validated and applied; a
		// broken one is refused and the running configuration stays.
		w, err := filewatch.New(filewatch.Config{Logger: log}, []string{*cfgFile}, func([]string) {
			if err := reload(); err != nil {
				log.Error("config reload refused; keeping the running configuration", "file", *cfgFile, "error", err)
			}
		})
		if err != nil {
			log.Error("cannot watch the config file; hot reload disabled", "file", *cfgFile, "error", err)
		} else {
			defer w.Close()
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	<-ctx.Done()
	stop()
	sctx, cancel := context.WithTimeout(context.Background(), *shutdownTimeout)
	defer cancel()
	if err := b.Shutdown(sctx); err != nil {
		log.Error("shutdown", "error", err)
		return 1
	}
	log.Info("stopped cleanly")
	return 0
}

func newLogger(lc config.LogConfig, w io.Writer) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(lc.Level))
	opts := &slog.HandlerOptions{Level: lvl}
	if lc.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
