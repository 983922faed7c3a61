// Package brokertest runs real mendmq nodes inside a test: real listeners on
// 127.0.0.1, the real admin HTTP server, and real MQTT clients
// (github.com/eclipse/paho.golang for v5, github.com/eclipse/paho.mqtt.golang
// for v3.1.1) plus raw TCP helpers for malformed input.
//
// Every wait in this package is bounded by Timeout and fails the test when
// the awaited event does not happen; nothing sleeps for a fixed time. Every
// node, client and connection it creates is closed by t.Cleanup, so tests
// only write what they assert.
package brokertest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/mendmq/mendmq/broker"
	"github.com/mendmq/mendmq/broker/config"
)

// Timeout bounds every wait for an event (a message, an ack, a closed
// connection, a metric reaching a value). It is generous because the
// suite runs under -race on two shared cores; a passing test never waits
// for it.
const Timeout = 5 * time.Second

// LogEnv names the environment variable that sets the level of node logs
// written to the test log: debug, info, warn (default) or error.
const LogEnv = "MENDMQ_TEST_LOG"

// Config returns the configuration of a test node: the defaults, with node
// name "test", one TCP listener and the admin server on 127.0.0.1 port 0
// (read the bound addresses back with Node.ListenerAddr and
// Node.AdminAddr), and no storage. Tests change fields before Start.
func Config() config.Config {
	cfg := config.DefaultConfig()
	cfg.Node.Name = "test"
	cfg.MQTT.Listeners = []config.ListenerConfig{{Type: "tcp", Address: "127.0.0.1:0"}}
	cfg.Admin.Address = "127.0.0.1:0"
	// Compiling the built-in Go policy module takes ~1 s (~7 s under
	// -race); share compiled code between test runs and packages.
	cfg.Plugins.Host.CompilationCacheDir = TestCompilationCache
	return cfg
}

// TestCompilationCache is the on-disk wazero cache tests share (the
// plugins tests use the same directory).
var TestCompilationCache = filepath.Join(os.TempDir(), "mendmq-test-wazero-cache")

// Logger returns a logger that writes to t.Log at the level named by
// $MENDMQ_TEST_LOG (default warn). Lines logged by goroutines that outlive
// the test are dropped instead of panicking in t.Log.
func Logger(t testing.TB) *slog.Logger {
	level := slog.LevelWarn
	if v := os.Getenv(LogEnv); v != "" {
		if err := level.UnmarshalText([]byte(v)); err != nil {
			t.Fatalf("$%s=%q: %v", LogEnv, v, err)
		}
	}
	w := &tbWriter{t: t}
	t.Cleanup(w.stop)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// tbWriter forwards log lines to t.Log until the test's cleanup runs; the
// mutex makes "still running" and "logged" one step, so no line reaches
// t.Log after the test has finished.
type tbWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *tbWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Helper()
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *tbWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

// Node is a started broker owned by one test.
type Node struct {
	*broker.Broker
	t testing.TB
}

// Start validates cfg, builds the node, runs each before function on it
// (to add hooks or attach a cluster before anything binds), starts it, and
// registers a cleanup that shuts it down. Any error fails the test.
func Start(t testing.TB, cfg config.Config, before ...func(*broker.Broker) error) *Node {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("test config is invalid: %v", err)
	}
	b, err := broker.New(cfg, Logger(t))
	if err != nil {
		t.Fatalf("broker.New: %v", err)
	}
	for _, f := range before {
		if err := f(b); err != nil {
			t.Fatalf("prepare node: %v", err)
		}
	}
	if err := b.Start(); err != nil {
		t.Fatalf("broker.Start: %v", err)
	}
	n := &Node{Broker: b, t: t}
	t.Cleanup(n.Stop)
	// mochi's WebSocket listener binds in a goroutine after Start has
	// returned: wait until it accepts, so tests can connect at once.
	for i, lc := range cfg.MQTT.Listeners {
		if lc.Type != "ws" {
			continue
		}
		addr := n.ListenerAddr(i)
		Eventually(t, "WebSocket listener "+addr+" to accept", func() bool {
			c, err := net.DialTimeout("tcp", addr, Timeout)
			if err == nil {
				_ = c.Close()
			}
			return err == nil
		})
	}
	return n
}

// Stop shuts the node down, bounded by Timeout; safe to call twice.
func (n *Node) Stop() {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	if err := n.Shutdown(ctx); err != nil {
		n.t.Errorf("shutdown node: %v", err)
	}
}

// URL is a client URL for listener i: tcp://, tls:// or ws://host:port/mqtt.
// Both client helpers of this package and paho.mqtt.golang accept it.
func (n *Node) URL(i int) string {
	addr := n.ListenerAddr(i)
	switch typ := n.Config().MQTT.Listeners[i].Type; typ {
	case "ws":
		return "ws://" + addr + "/mqtt"
	default:
		return typ + "://" + addr
	}
}

// Get fetches path from the admin server and returns the status code and
// body. A transport error fails the test.
func (n *Node) Get(path string) (int, string) {
	n.t.Helper()
	code, body, err := HTTPGet("http://" + n.AdminAddr() + path)
	if err != nil {
		n.t.Fatalf("GET %s: %v", path, err)
	}
	return code, body
}

// HTTPGet fetches url with a Timeout-bounded client.
func HTTPGet(url string) (int, string, error) {
	c := http.Client{Timeout: Timeout}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// Metric sums the current value of every series of the counter or gauge
// name in the node's registry whose labels include labels (pairs: "reason",
// "connect_rate"). A missing series counts 0.
func (n *Node) Metric(name string, labels ...string) float64 {
	n.t.Helper()
	if len(labels)%2 != 0 {
		n.t.Fatalf("Metric(%s): labels must be name/value pairs, got %q", name, labels)
	}
	fams, err := n.Registry().Gather()
	if err != nil {
		n.t.Fatalf("gather metrics: %v", err)
	}
	var sum float64
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if hasLabels(m, labels) {
				// A histogram counts as its number of observations.
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue() + m.GetUntyped().GetValue() +
					float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum
}

func hasLabels(m *dto.Metric, pairs []string) bool {
	for i := 0; i < len(pairs); i += 2 {
		found := false
		for _, lp := range m.GetLabel() {
			if lp.GetName() == pairs[i] && lp.GetValue() == pairs[i+1] {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// WaitMetric waits until Metric(name, labels...) equals want, failing the
// test with the last value after Timeout. Counters updated after an ack is
// written (messages out) need this rather than a single read.
func (n *Node) WaitMetric(want float64, name string, labels ...string) {
	n.t.Helper()
	var got float64
	if !Poll(func() bool { got = n.Metric(name, labels...); return got == want }) {
		n.t.Fatalf("metric %s%v = %v, want %v", name, labels, got, want)
	}
}

// Poll calls cond until it returns true or Timeout passes, with a short
// growing pause between calls; it reports whether cond became true. Use it
// only for state that offers nothing to wait on (counters, gauges).
func Poll(cond func() bool) bool { return PollFor(Timeout, cond) }

// PollFor is Poll with its own bound d: for state of other processes
// (their admin APIs) and of clusters that take longer than Timeout.
func PollFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	pause := time.Millisecond
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pause)
		pause = min(2*pause, 50*time.Millisecond)
	}
}

// Eventually is Poll that fails the test with what when cond stays false.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if !Poll(cond) {
		t.Fatalf("timed out after %v waiting for %s", Timeout, what)
	}
}

// FreeAddr returns a 127.0.0.1 address whose port was free a moment ago,
// for listeners that cannot report the port they bound (mochi's WebSocket
// listener binds only once it serves, so port 0 cannot be read back) and
// for a second listener, since config.Validate refuses two listeners with
// the same address, "127.0.0.1:0" included.
func FreeAddr(t testing.TB) string {
	t.Helper()
	return FreeAddrs(t, 1)[0]
}

// FreeAddrs is FreeAddr for n distinct addresses.
func FreeAddrs(t testing.TB, n int) []string {
	t.Helper()
	var out []string
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("find a free port: %v", err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().String())
	}
	return out
}

// ParseMetrics reads a Prometheus text exposition into series -> value,
// keyed as printed: `name{label="v",...}` (labels in exposition order, which
// client_golang sorts by name) or bare `name`.
func ParseMetrics(text string) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			return nil, fmt.Errorf("metrics line %q: no value", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %q: %w", line, err)
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// SeriesNames lists the keys of a ParseMetrics result that start with
// prefix, sorted; for failure messages.
func SeriesNames(m map[string]float64, prefix string) []string {
	var out []string
	for k := range m {
		if strings.HasPrefix(k, prefix) {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}
