package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// allowAll is a copy of mochi's hooks/auth.AllowHook (same ID, same two methods).
// That package also pulls in gopkg.in/yaml.v3 for its ledger, which this module's
// go.sum does not carry; the copy keeps the benchmark peer identical without
// touching go.mod while other packages are being written.
type allowAll struct{ mqtt.HookBase }

func (h *allowAll) ID() string { return "allow-all-auth" }

func (h *allowAll) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

func (h *allowAll) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }

func (h *allowAll) OnACLCheck(*mqtt.Client, string, bool) bool { return true }

// mochiReadyPrefix starts the line "mqttbench mochi" prints on stdout once it
// accepts connections; the suite reads the address from it.
const mochiReadyPrefix = "mochi listening on "

// startMochi serves plain upstream mochi-mqtt on ln: default options, allow-all
// auth, nothing of mendmq's. The caller owns the returned server and must Close it.
func startMochi(ln net.Listener, log *slog.Logger) (*mqtt.Server, error) {
	srv := mqtt.New(&mqtt.Options{Logger: log}) // zero options = mochi's defaults
	if err := srv.AddHook(new(allowAll), nil); err != nil {
		return nil, fmt.Errorf("add allow-all auth hook: %w", err)
	}
	if err := srv.AddListener(listeners.NewNet("tcp", ln)); err != nil {
		return nil, fmt.Errorf("add listener %s: %w", ln.Addr(), err)
	}
	if err := srv.Serve(); err != nil {
		return nil, fmt.Errorf("serve mochi: %w", err)
	}
	return srv, nil
}

// cmdMochi is "mqttbench mochi".
func cmdMochi(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mqttbench mochi", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:1883", "listen address (127.0.0.0/8; port 0 picks a free one)")
	limit := fs.Duration("for", 2*time.Hour, "stop after this long even without a signal (bounds orphaned runs)")
	level := fs.String("log-level", "warn", "log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *limit <= 0 {
		return errors.New("-for: want a positive duration")
	}
	host, _, err := net.SplitHostPort(*addr)
	if err != nil {
		return fmt.Errorf("-addr %q: %w", *addr, err)
	}
	if _, err := brokerAddr("tcp://" + net.JoinHostPort(host, "1")); err != nil {
		return fmt.Errorf("-addr: %w", err)
	}
	log, err := newLogger(stderr, *level)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", *addr, err)
	}
	srv, err := startMochi(ln, log)
	if err != nil {
		ln.Close()
		return err
	}
	fmt.Fprintf(stdout, "%s%s\n", mochiReadyPrefix, ln.Addr())
	select {
	case <-ctx.Done():
	case <-time.After(*limit):
	}
	if err := srv.Close(); err != nil {
		return fmt.Errorf("close mochi: %w", err)
	}
	return nil
}
