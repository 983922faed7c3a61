package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.yaml.in/yaml/v3"
)

// target is one deployment under test: a single broker or a cluster, as processes
// this suite started, and the MQTT URL of each node (index = node number - 1).
type target struct {
	name  string
	urls  []string
	procs []*brokerProc
}

// pids returns the process ids of all the target's nodes.
func (t *target) pids() []int {
	p := make([]int, len(t.procs))
	for i, bp := range t.procs {
		p[i] = bp.cmd.Process.Pid
	}
	return p
}

// stop ends every node.
func (t *target) stop() error {
	var errs []error
	for _, bp := range t.procs {
		errs = append(errs, bp.stop())
	}
	return errors.Join(errs...)
}

// brokerProc is a broker process started by the suite.
type brokerProc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{} // closed when the process has exited
	waitErr error         // set before exited closes
	logFile *os.File
}

// Bounds on broker process lifecycle.
const (
	readyTimeout   = 20 * time.Second
	readyPoll      = 50 * time.Millisecond
	stopGrace      = 10 * time.Second
	clusterTimeout = 60 * time.Second
)

// startProc starts cmd with output to logPath. The child gets SIGTERM if the suite
// dies (Pdeathsig), so an interrupted suite does not leave brokers behind.
func startProc(name string, cmd *exec.Cmd, logPath string) (*brokerProc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("create log %s: %w", logPath, err)
	}
	if cmd.Stdout == nil {
		cmd.Stdout = f
	}
	cmd.Stderr = f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s (%s): %w", name, cmd.Path, err)
	}
	bp := &brokerProc{name: name, cmd: cmd, logPath: logPath, exited: make(chan struct{}), logFile: f}
	go func() {
		bp.waitErr = cmd.Wait()
		close(bp.exited)
	}()
	return bp, nil
}

// stop sends SIGTERM, waits up to stopGrace, then kills.
func (bp *brokerProc) stop() error {
	defer bp.logFile.Close()
	select {
	case <-bp.exited:
		return nil
	default:
	}
	_ = bp.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(stopGrace)
	defer t.Stop()
	select {
	case <-bp.exited:
		return nil
	case <-t.C:
		_ = bp.cmd.Process.Kill()
		<-bp.exited
		return fmt.Errorf("%s (pid %d) ignored SIGTERM for %s and was killed", bp.name, bp.cmd.Process.Pid, stopGrace)
	}
}

// logTail returns the last lines of the process's log, for error messages.
func (bp *brokerProc) logTail() string {
	b, err := os.ReadFile(bp.logPath)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 8 {
		lines = lines[len(lines)-8:]
	}
	return strings.Join(lines, "\n    ")
}

// waitReady polls until an MQTT client can connect to addr, the process exits, or
// readyTimeout passes.
func (bp *brokerProc) waitReady(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	t := time.NewTicker(readyPoll)
	defer t.Stop()
	var last error
	for {
		dctx, dcancel := context.WithTimeout(ctx, time.Second)
		c, _, err := dialRaw(dctx, addr, 4, "mqttbench-ready", 0)
		dcancel()
		if err == nil {
			return c.close(false)
		}
		last = err
		select {
		case <-bp.exited:
			return fmt.Errorf("%s exited before accepting MQTT connections (%v); log %s:\n    %s", bp.name, bp.waitErr, bp.logPath, bp.logTail())
		case <-ctx.Done():
			return fmt.Errorf("%s not accepting MQTT connections on %s within %s: %v; log %s:\n    %s", bp.name, addr, readyTimeout, last, bp.logPath, bp.logTail())
		case <-t.C:
		}
	}
}

// freePort asks the kernel for a free loopback port. Another process could take
// it before the broker binds; startup then fails visibly and the suite reports it.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// mendmqConfig is the single-node config the suite writes for bin/mendmq.
func mendmqConfig(mqttPort, adminPort int) string {
	return fmt.Sprintf(`# written by mqttbench suite
node:
  name: bench
mqtt:
  listeners:
    - type: tcp
      address: "127.0.0.1:%d"
admin:
  address: "127.0.0.1:%d"
`, mqttPort, adminPort)
}

// mosquittoConfig is the config the suite writes for mosquitto: one loopback
// listener, anonymous access, everything else at mosquitto's defaults.
func mosquittoConfig(port int) string {
	return fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\n", port)
}

// startMendmq runs "mendmq serve --config" on free ports.
func startMendmq(ctx context.Context, bin, dir string) (*target, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	adminPort, err := freePort()
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(dir, "mendmq.yaml")
	if err := os.WriteFile(cfgPath, []byte(mendmqConfig(port, adminPort)), 0o644); err != nil {
		return nil, fmt.Errorf("write mendmq config: %w", err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	bp, err := startProc("mendmq", exec.Command(bin, "serve", "--config", cfgPath), filepath.Join(dir, "mendmq.log"))
	if err != nil {
		return nil, err
	}
	t := &target{name: "mendmq", urls: []string{"tcp://" + addr}, procs: []*brokerProc{bp}}
	if err := bp.waitReady(ctx, addr); err != nil {
		return nil, errors.Join(err, t.stop())
	}
	return t, nil
}

// startMosquitto runs mosquitto with a temp config on a free port.
func startMosquitto(ctx context.Context, bin, dir string) (*target, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(cfgPath, []byte(mosquittoConfig(port)), 0o644); err != nil {
		return nil, fmt.Errorf("write mosquitto config: %w", err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	bp, err := startProc("mosquitto", exec.Command(bin, "-c", cfgPath), filepath.Join(dir, "mosquitto.log"))
	if err != nil {
		return nil, err
	}
	t := &target{name: "mosquitto", urls: []string{"tcp://" + addr}, procs: []*brokerProc{bp}}
	if err := bp.waitReady(ctx, addr); err != nil {
		return nil, errors.Join(err, t.stop())
	}
	return t, nil
}

// startMochiPeer runs "mqttbench mochi -addr 127.0.0.1:0" (this same executable)
// and reads the bound address from its first stdout line.
func startMochiPeer(ctx context.Context, self, dir string) (*target, error) {
	cmd := exec.Command(self, "mochi", "-addr", "127.0.0.1:0")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("mochi stdout: %w", err)
	}
	bp, err := startProc("mochi", cmd, filepath.Join(dir, "mochi.log"))
	if err != nil {
		return nil, err
	}
	t := &target{name: "mochi", procs: []*brokerProc{bp}}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() { // keep draining so the child never blocks on stdout
			select {
			case lines <- sc.Text():
			default:
			}
		}
	}()
	timer := time.NewTimer(readyTimeout)
	defer timer.Stop()
	select {
	case line := <-lines:
		addr, ok := strings.CutPrefix(line, mochiReadyPrefix)
		if !ok {
			return nil, errors.Join(fmt.Errorf("mochi peer: unexpected first line %q", line), t.stop())
		}
		t.urls = []string{"tcp://" + addr}
		if err := bp.waitReady(ctx, addr); err != nil {
			return nil, errors.Join(err, t.stop())
		}
		return t, nil
	case <-bp.exited:
		return nil, fmt.Errorf("mochi peer exited (%v); log %s:\n    %s", bp.waitErr, bp.logPath, bp.logTail())
	case <-timer.C:
		return nil, errors.Join(fmt.Errorf("mochi peer printed no address within %s", readyTimeout), t.stop())
	}
}

// nodeMQTTAddr reads the first TCP MQTT listener address from a mendmq YAML config.
func nodeMQTTAddr(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read cluster config: %w", err)
	}
	var doc struct {
		MQTT struct {
			Listeners []struct {
				Type    string `yaml:"type"`
				Address string `yaml:"address"`
			} `yaml:"listeners"`
		} `yaml:"mqtt"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return "", fmt.Errorf("parse %s: %w", path, err)
	}
	for _, l := range doc.MQTT.Listeners {
		if l.Type == "tcp" || l.Type == "" {
			addr := l.Address
			if strings.HasPrefix(addr, ":") {
				addr = "127.0.0.1" + addr
			}
			return brokerAddr("tcp://" + addr)
		}
	}
	return "", fmt.Errorf("%s: no mqtt.listeners entry of type tcp", path)
}

// startCluster runs one "mendmq serve --config" per config file (extra
// appended to each command line) and waits until a message published on
// node 1 reaches subscribers on every other node.
func startCluster(ctx context.Context, bin string, configs []string, dir string, extra ...string) (*target, error) {
	t := &target{name: "mendmq-cluster"}
	fail := func(err error) (*target, error) { return nil, errors.Join(err, t.stop()) }
	for i, cfg := range configs {
		addr, err := nodeMQTTAddr(cfg)
		if err != nil {
			return fail(err)
		}
		name := fmt.Sprintf("mendmq-node%d", i+1)
		bp, err := startProc(name, exec.Command(bin, append([]string{"serve", "--config", cfg}, extra...)...), filepath.Join(dir, name+".log"))
		if err != nil {
			return fail(err)
		}
		t.procs = append(t.procs, bp)
		t.urls = append(t.urls, "tcp://"+addr)
	}
	for i, bp := range t.procs {
		addr, _ := brokerAddr(t.urls[i])
		if err := bp.waitReady(ctx, addr); err != nil {
			return fail(err)
		}
	}
	if err := waitClusterRoutes(ctx, t); err != nil {
		return fail(err)
	}
	return t, nil
}

// waitClusterRoutes publishes on node 1 until subscribers on every other node have
// received a message (the cluster formed and replicated their subscriptions).
func waitClusterRoutes(ctx context.Context, t *target) error {
	if len(t.urls) < 2 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, clusterTimeout)
	defer cancel()
	eng := &rawEngine{opts: engineOptions{Version: 4, QoS: 0, Inflight: 1, FlushEvery: 1}}
	topic := fmt.Sprintf("mqttbench/cluster-ready/%d", time.Now().UnixNano())
	var mu sync.Mutex
	got := make([]bool, len(t.urls))
	var subs []subscriber
	defer func() {
		for _, s := range subs {
			s.Close()
		}
	}()
	for i := 1; i < len(t.urls); i++ {
		addr, _ := brokerAddr(t.urls[i])
		s, err := eng.DialSubscriber(ctx, addr, fmt.Sprintf("mqttbench-ready-s%d", i), topic, func([]byte) {
			mu.Lock()
			got[i] = true
			mu.Unlock()
		}, nil)
		if err != nil {
			return fmt.Errorf("cluster readiness: node %d: %w", i+1, err)
		}
		subs = append(subs, s)
	}
	addr, _ := brokerAddr(t.urls[0])
	pub, err := eng.DialPublisher(ctx, addr, "mqttbench-ready-p", topic)
	if err != nil {
		return fmt.Errorf("cluster readiness: node 1: %w", err)
	}
	defer pub.Close()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	payload := make([]byte, minPayloadSize)
	for {
		mu.Lock()
		all := true
		for i := 1; i < len(got); i++ {
			all = all && got[i]
		}
		mu.Unlock()
		if all {
			return nil
		}
		if err := pub.Publish(ctx, payload, func([]byte) {}); err != nil {
			return fmt.Errorf("cluster readiness: publish on node 1: %w", err)
		}
		select {
		case <-ctx.Done():
			mu.Lock()
			defer mu.Unlock()
			return fmt.Errorf("cluster readiness: messages published on node 1 did not reach every node within %s (received per node: %v)", clusterTimeout, got[1:])
		case <-tick.C:
		}
	}
}

// quietCPU is the broker CPU share under which a broker counts as idle again.
const (
	quietShare   = 0.05
	quietSample  = 100 * time.Millisecond
	quietTimeout = 5 * time.Second
)

// waitQuiet waits (bounded) until the processes use less than quietShare of a core,
// so one run's cleanup (closing 100 sessions, GC) does not bleed into the next.
func waitQuiet(ctx context.Context, pids []int) {
	deadline := time.Now().Add(quietTimeout)
	prev := procsCPU(pids, func(error) {})
	t := time.NewTicker(quietSample)
	defer t.Stop()
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cur := procsCPU(pids, func(error) {})
		if float64(cur-prev) < quietShare*float64(quietSample) {
			return
		}
		prev = cur
	}
}

// idleRSS connects n idle clients to the target's first node and returns the
// growth of its resident memory per connection.
func idleRSS(ctx context.Context, t *target, n int) (perConn float64, before, after int64, err error) {
	pid := t.procs[0].cmd.Process.Pid
	addr, err := brokerAddr(t.urls[0])
	if err != nil {
		return 0, 0, 0, err
	}
	waitQuiet(ctx, []int{pid})
	if before, err = procRSS(pid); err != nil {
		return 0, 0, 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	conns := make([]*rawConn, n)
	defer func() {
		var wg sync.WaitGroup
		sem := make(chan struct{}, 64)
		for _, c := range conns {
			if c == nil {
				continue
			}
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				c.close(false)
			}()
		}
		wg.Wait()
	}()
	sem := make(chan struct{}, dialConcurrency)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range conns {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			c, _, err := dialRaw(ctx, addr, 4, fmt.Sprintf("mqttbench-idle-%d", i), 0)
			if err != nil {
				errs[i] = err
				return
			}
			c.startPinger()
			conns[i] = c
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return 0, 0, 0, fmt.Errorf("connect %d idle clients to %s: %w", n, t.name, err)
	}
	// RSS settles once the broker has finished setting the sessions up; wait for two
	// equal-ish readings (bounded).
	after, err = procRSS(pid)
	for i := 0; i < 30 && err == nil; i++ {
		waitQuiet(ctx, []int{pid})
		var cur int64
		if cur, err = procRSS(pid); err == nil {
			if cur-after < after/200 {
				after = cur
				break
			}
			after = cur
		}
	}
	if err != nil {
		return 0, 0, 0, err
	}
	return float64(after-before) / float64(n), before, after, nil
}
