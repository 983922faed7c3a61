package partitiontests

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mendmq/mendmq/broker"
	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/cluster"
)

// Ports every node uses on its namespace's address.
const (
	MQTTPort   = 1883
	AdminPort  = 8080
	GossipPort = 7946
	DataPort   = 7947
)

// Bounds of the process lifecycle.
const (
	startTimeout = 30 * time.Second // process start to /readyz 200
	formTimeout  = 30 * time.Second // all nodes started to one cluster
	stopTimeout  = 8 * time.Second  // SIGTERM to exit, then SIGKILL
	httpTimeout  = 3 * time.Second  // one admin API request
)

// Environment knobs.
const (
	// RaceEnv set to 1 builds the nodes with -race (slower: expect false
	// netsplit detections on two cores).
	RaceEnv = "MENDMQ_PARTITION_RACE"
	// LogLinesEnv sets how many lines of each node's log a failed test
	// prints (default 80).
	LogLinesEnv = "MENDMQ_PARTITION_LOG_LINES"
)

var (
	buildMu  sync.Mutex
	buildDir string
	binPath  string
	buildErr error
)

// Binary builds bin/mendmq once per test binary (go build -o
// <tmp>/mendmq ./broker/cmd/mendmq from the module root) and returns its
// path. RemoveBinary deletes it; call it from TestMain.
func Binary(t testing.TB) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if binPath == "" && buildErr == nil {
		binPath, buildErr = build()
	}
	if buildErr != nil {
		t.Fatalf("build mendmq: %v", buildErr)
	}
	return binPath
}

func build() (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "mendmq-partition-bin")
	if err != nil {
		return "", err
	}
	buildDir = dir
	out := filepath.Join(dir, "mendmq")
	goCmd := "go"
	if _, err := exec.LookPath(goCmd); err != nil {
		goCmd = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	args := []string{"build", "-o", out}
	if os.Getenv(RaceEnv) == "1" {
		args = append(args, "-race")
	}
	args = append(args, "./broker/cmd/mendmq")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goCmd, args...)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%s %s: %w\n%s", goCmd, strings.Join(args, " "), err, b)
	}
	return out, nil
}

// RemoveBinary deletes what Binary built.
func RemoveBinary() {
	buildMu.Lock()
	defer buildMu.Unlock()
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
}

// moduleRoot finds the directory of go.mod above the working directory.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// ReferenceHasKey reports whether configs/reference.yaml documents the
// dotted key (e.g. "cluster.allow_publish_during_netsplit"): a node
// refuses unknown keys at start, so a scenario that sets a key this
// branch may not have checks first.
func ReferenceHasKey(key string) (bool, error) {
	root, err := moduleRoot()
	if err != nil {
		return false, err
	}
	f, err := os.Open(filepath.Join(root, "configs", "reference.yaml"))
	if err != nil {
		return false, err
	}
	defer f.Close()
	parts := strings.Split(key, ".")
	depth := 0 // how many parts of the key matched, by indentation
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		trimmed := strings.TrimLeft(line, " ")
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		indent := (len(line) - len(trimmed)) / 2
		if indent < depth {
			depth = indent
		}
		if indent == depth && strings.HasPrefix(trimmed, parts[depth]+":") {
			depth++
			if depth == len(parts) {
				return true, nil
			}
		}
	}
	return false, sc.Err()
}

// ClusterOptions shape a Cluster.
type ClusterOptions struct {
	// Set are extra `--set key=value` flags for every node, e.g.
	// "cluster.allow_publish_during_netsplit=true".
	Set []string
	// LogLevel of the nodes; default info.
	LogLevel string
}

// Cluster is one mendmq process per namespace of a Lab, named n1..nN,
// seeded with n1, sharing a secret key.
type Cluster struct {
	t     testing.TB
	Lab   *Lab
	Nodes []*Node // Nodes[i-1] is node i
	token string
	http  *http.Client
}

// Node is one mendmq process.
type Node struct {
	I    int
	Name string
	Addr string // the namespace's address

	c       *Cluster
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
	exitErr error
	stopped bool // stopped by the harness (guarded by stopMu)
	stopMu  sync.Mutex
}

// StartCluster starts one node per namespace of lab and waits until they
// form one cluster (every node sees every other alive and reachable, no
// netsplit). Nodes are stopped at cleanup, and a failed test gets the
// tail of each node's log.
func StartCluster(t testing.TB, lab *Lab, o ClusterOptions) *Cluster {
	t.Helper()
	bin := Binary(t)
	dir := t.TempDir()
	c := &Cluster{t: t, Lab: lab, http: &http.Client{Timeout: httpTimeout}}
	c.token = randomHex(24)
	tokenFile := filepath.Join(dir, "admin-token")
	if err := os.WriteFile(tokenFile, []byte(c.token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	secret := randomHex(16)
	level := o.LogLevel
	if level == "" {
		level = "info"
	}
	t.Cleanup(func() {
		c.StopAll()
		if t.Failed() {
			c.DumpLogs()
		}
	})
	for i := 1; i <= lab.N(); i++ {
		n := &Node{I: i, Name: fmt.Sprintf("n%d", i), Addr: lab.Addr(i), c: c, exited: make(chan struct{})}
		n.logPath = filepath.Join(dir, n.Name+".log")
		cfg := fmt.Sprintf(`node: {name: %s}
log: {level: %s}
mqtt:
  listeners: [{type: tcp, address: "%[3]s:%[4]d"}]
admin: {address: "%[3]s:%[5]d", token_file: %[6]q}
storage: {path: %[7]q}
cluster:
  enabled: true
  gossip_address: "%[3]s:%[8]d"
  data_address: "%[3]s:%[9]d"
  seeds: ["%[10]s:%[8]d"]
  secret_key: %[11]q
plugins: {compilation_cache_dir: %[12]q}
`, n.Name, level, n.Addr, MQTTPort, AdminPort, tokenFile, filepath.Join(dir, n.Name+".db"),
			GossipPort, DataPort, lab.Addr(1), secret, filepath.Join(os.TempDir(), "mendmq-test-wazero-cache"))
		cfgPath := filepath.Join(dir, n.Name+".yaml")
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := n.start(bin, cfgPath, o.Set); err != nil {
			t.Fatalf("start %s: %v", n.Name, err)
		}
		c.Nodes = append(c.Nodes, n)
	}
	for _, n := range c.Nodes {
		if err := n.waitReady(); err != nil {
			t.Fatalf("%s: %v\n%s", n.Name, err, n.LogTail(40))
		}
	}
	start := time.Now()
	if d, ok := c.Until(formTimeout, c.Formed); !ok {
		t.Fatalf("the cluster did not form within %v: %s", formTimeout, d)
	}
	t.Logf("%d nodes formed one cluster in %v (subnet %s.0/24)", lab.N(), time.Since(start).Round(time.Millisecond), lab.subnet)
	return c
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (n *Node) start(bin, cfgPath string, set []string) error {
	lf, err := os.Create(n.logPath)
	if err != nil {
		return err
	}
	args := []string{"netns", "exec", n.c.Lab.Namespace(n.I), bin, "serve", "--config", cfgPath, "--shutdown-timeout", "5s"}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	n.cmd = exec.Command("ip", args...)
	// The node reads MENDMQ_* variables as configuration and refuses
	// unknown keys: the harness's own knobs (MENDMQ_PARTITION_SOAK...)
	// and a developer's shell must not reach it.
	n.cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "MENDMQ_") })
	n.cmd.Stdout, n.cmd.Stderr = lf, lf
	// ip netns exec execs the node in place: if the test process dies
	// without its cleanup, the kernel kills the node.
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := n.cmd.Start(); err != nil {
		lf.Close()
		return err
	}
	go func() {
		n.exitErr = n.cmd.Wait()
		lf.Close()
		close(n.exited)
	}()
	return nil
}

func (n *Node) waitReady() error {
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-n.exited:
			return fmt.Errorf("exited at start: %v", n.exitErr)
		default:
		}
		if code, _, err := n.c.get(n, "/readyz"); err == nil && code == http.StatusOK {
			return nil
		}
		time.Sleep(50 * time.Millisecond) // nothing to wait on but the port
	}
	return fmt.Errorf("not ready within %v", startTimeout)
}

// Alive reports whether the process still runs.
func (n *Node) Alive() bool {
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

// ExitErr is the process's exit status once it exited.
func (n *Node) ExitErr() error {
	select {
	case <-n.exited:
		return n.exitErr
	default:
		return nil
	}
}

// URL is the node's MQTT URL.
func (n *Node) URL() string { return fmt.Sprintf("tcp://%s:%d", n.Addr, MQTTPort) }

// MQTTAddr is the node's MQTT host:port.
func (n *Node) MQTTAddr() string { return fmt.Sprintf("%s:%d", n.Addr, MQTTPort) }

// Stop sends SIGTERM and waits stopTimeout, then SIGKILL; it returns the
// exit error (nil: exited 0). Safe to call twice.
func (n *Node) Stop() error {
	n.stopMu.Lock()
	n.stopped = true
	n.stopMu.Unlock()
	if n.cmd == nil || n.cmd.Process == nil {
		return nil
	}
	if !n.Alive() {
		return n.exitErr
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.exited:
		return n.exitErr
	case <-time.After(stopTimeout):
	}
	_ = n.cmd.Process.Kill()
	select {
	case <-n.exited:
	case <-time.After(stopTimeout):
		return fmt.Errorf("%s (pid %d) survived SIGKILL for %v", n.Name, n.cmd.Process.Pid, stopTimeout)
	}
	return fmt.Errorf("%s did not stop within %v of SIGTERM; killed", n.Name, stopTimeout)
}

// StopAll heals every cut and stops the nodes one after the other, the
// last started first, so each leaves a cluster that can still hear it
// (stopped all at once, a node's leave broadcast times out and it exits
// with status 1). A node that does not exit cleanly is reported.
func (c *Cluster) StopAll() {
	if err := c.Lab.Heal(); err != nil {
		c.t.Errorf("heal before stopping the nodes: %v", err)
	}
	for _, n := range slices.Backward(c.Nodes) {
		n.stopMu.Lock()
		was := n.stopped
		n.stopMu.Unlock()
		alive := n.Alive()
		if err := n.Stop(); alive && !was && err != nil {
			c.t.Errorf("stop %s: %v", n.Name, err)
		}
	}
}

// LogTail returns the last k lines of the node's log.
func (n *Node) LogTail(k int) string {
	b, err := os.ReadFile(n.logPath)
	if err != nil {
		return fmt.Sprintf("(log unreadable: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > k {
		lines = lines[len(lines)-k:]
	}
	return strings.Join(lines, "\n")
}

// DumpLogs writes the tail of every node's log to the test log.
func (c *Cluster) DumpLogs() {
	k := 80
	if v, err := strconv.Atoi(os.Getenv(LogLinesEnv)); err == nil && v > 0 {
		k = v
	}
	for _, n := range c.Nodes {
		c.t.Logf("---- last %d lines of %s's log (%s) ----\n%s", k, n.Name, n.logPath, n.LogTail(k))
	}
}

// crashLine matches what a crashed or panicking node writes: a Go runtime
// panic or fatal error, a log line at ERROR about a panic, or (nodes
// built with MENDMQ_PARTITION_RACE=1) a data race report.
var crashLine = regexp.MustCompile(`^(panic: |fatal error: |goroutine \d+ \[running\]:|WARNING: DATA RACE)|level=ERROR.*(?i:panic)`)

// LogProblems returns the lines of the node's log that tell of a crash or
// a recovered panic.
func (n *Node) LogProblems() ([]string, error) {
	f, err := os.Open(n.logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		if crashLine.MatchString(sc.Text()) {
			out = append(out, sc.Text())
		}
	}
	return out, sc.Err()
}

// get sends an authenticated GET to node n's admin API.
func (c *Cluster) get(n *Node, path string) (int, []byte, error) {
	req, err := http.NewRequest(http.MethodGet, fmt.Sprintf("http://%s:%d%s", n.Addr, AdminPort, path), nil)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// GetJSON GETs path from node n's admin API and decodes a 200 answer
// into v; another status is an error carrying the body.
func (c *Cluster) GetJSON(n *Node, path string, v any) error {
	code, b, err := c.get(n, path)
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("GET %s on %s: %d %s", path, n.Name, code, strings.TrimSpace(string(b)))
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("GET %s on %s: %w", path, n.Name, err)
	}
	return nil
}

// Status returns node n's GET /api/v1/cluster.
func (c *Cluster) Status(n *Node) (cluster.Status, error) {
	var resp struct {
		Enabled bool           `json:"enabled"`
		Status  cluster.Status `json:"status"`
	}
	if err := c.GetJSON(n, "/api/v1/cluster", &resp); err != nil {
		return cluster.Status{}, err
	}
	if !resp.Enabled {
		return cluster.Status{}, fmt.Errorf("%s: clustering is disabled", n.Name)
	}
	return resp.Status, nil
}

// Statuses reads every node's status concurrently.
func (c *Cluster) Statuses() ([]cluster.Status, error) {
	out := make([]cluster.Status, len(c.Nodes))
	errs := make([]error, len(c.Nodes))
	var wg sync.WaitGroup
	for i, n := range c.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i], errs[i] = c.Status(n)
		}()
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// Sessions returns node n's sessions (GET /api/v1/sessions?state=...).
func (c *Cluster) Sessions(n *Node, state string) (broker.SessionList, error) {
	var l broker.SessionList
	err := c.GetJSON(n, "/api/v1/sessions?limit=100000&state="+state, &l)
	return l, err
}

// SessionNode asks node n where client id lives according to its session
// table: the node that holds it (200: the session as that node sees it,
// fetched through it when it is another; "node" names it), or "" (404).
// An unreachable holder (504) names it too.
func (c *Cluster) SessionNode(n *Node, id string) (string, error) {
	code, b, err := c.get(n, "/api/v1/sessions/show?client_id="+id)
	if err != nil {
		return "", err
	}
	switch code {
	case http.StatusOK, http.StatusGatewayTimeout:
		var e struct {
			Node string `json:"node"`
		}
		if err := json.Unmarshal(b, &e); err != nil || e.Node == "" {
			return "", fmt.Errorf("sessions/show on %s: %d without a node: %s", n.Name, code, b)
		}
		return e.Node, nil
	case http.StatusNotFound:
		return "", nil
	}
	return "", fmt.Errorf("sessions/show on %s: %d %s", n.Name, code, b)
}

// Retained returns node n's retained messages matching filter.
func (c *Cluster) Retained(n *Node, filter string) (broker.RetainedList, error) {
	var l broker.RetainedList
	err := c.GetJSON(n, "/api/v1/retained?limit=100000&filter="+strings.ReplaceAll(strings.ReplaceAll(filter, "#", "%23"), "+", "%2B"), &l)
	return l, err
}

// Formed reports whether every node sees every node alive, every peer's
// data plane connected and no netsplit; the detail says what is not.
func (c *Cluster) Formed() (bool, string) {
	sts, err := c.Statuses()
	if err != nil {
		return false, err.Error()
	}
	for i, st := range sts {
		var alive []string
		for _, m := range st.Members {
			if m.State != "alive" {
				continue
			}
			if !m.Self && !m.Reachable {
				return false, fmt.Sprintf("n%d: data plane to %s not connected", i+1, m.Name)
			}
			alive = append(alive, m.Name)
		}
		if len(alive) != len(c.Nodes) {
			slices.Sort(alive)
			return false, fmt.Sprintf("n%d sees alive %v", i+1, alive)
		}
		if st.Netsplit.Split {
			return false, fmt.Sprintf("n%d still reports a netsplit (unreachable %v)", i+1, names(st.Netsplit.Unreachable))
		}
	}
	return true, ""
}

// Until calls cond until it holds or d passes, pausing briefly between
// calls (the admin API offers nothing to wait on); it returns cond's last
// detail and whether it held.
func (c *Cluster) Until(d time.Duration, cond func() (bool, string)) (string, bool) {
	return until(d, cond)
}

func until(d time.Duration, cond func() (bool, string)) (string, bool) {
	deadline := time.Now().Add(d)
	pause := 5 * time.Millisecond
	for {
		ok, detail := cond()
		if ok {
			return detail, true
		}
		if time.Now().After(deadline) {
			return detail, false
		}
		time.Sleep(pause)
		pause = min(2*pause, 100*time.Millisecond)
	}
}

// Metrics reads node n's /metrics into series -> value
// (brokertest.ParseMetrics keys).
func (c *Cluster) Metrics(n *Node) (map[string]float64, error) {
	code, b, err := c.get(n, "/metrics")
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics on %s: %d", n.Name, code)
	}
	return brokertest.ParseMetrics(string(b))
}

// MetricSummary lists, per node, the non-zero series whose names start
// with one of prefixes: for the test log.
func (c *Cluster) MetricSummary(prefixes ...string) string {
	var lines []string
	for _, n := range c.Nodes {
		m, err := c.Metrics(n)
		if err != nil {
			lines = append(lines, fmt.Sprintf("%s: %v", n.Name, err))
			continue
		}
		var parts []string
		for _, p := range prefixes {
			for _, k := range brokertest.SeriesNames(m, p) {
				if m[k] != 0 {
					parts = append(parts, fmt.Sprintf("%s=%g", strings.TrimPrefix(k, "mendmq_"), m[k]))
				}
			}
		}
		lines = append(lines, fmt.Sprintf("%s: %s", n.Name, strings.Join(parts, " ")))
	}
	return strings.Join(lines, "\n")
}
