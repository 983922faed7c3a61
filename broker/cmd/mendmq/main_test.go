package main

// Process-level tests: the real binary, started as an operator would, with
// mosquitto_pub/sub from Debian as clients.

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

var binPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mendmq-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "mendmq")
	out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build mendmq: %v\n%s", err, out)
		os.Exit(1)
	}
	// Nodes compile the built-in policy module at start; share compiled
	// code between processes and runs.
	os.Setenv("MENDMQ_PLUGINS__COMPILATION_CACHE_DIR", filepath.Join(os.TempDir(), "mendmq-test-wazero-cache"))
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// proc is a running mendmq serve.
type proc struct {
	cmd    *exec.Cmd
	out    *syncBuffer
	mqtt   int
	admin  int
	exited chan error
}

type syncBuffer struct {
	mu  chan struct{}
	buf bytes.Buffer
}

func newSyncBuffer() *syncBuffer { return &syncBuffer{mu: make(chan struct{}, 1)} }
func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu <- struct{}{}
	defer func() { <-b.mu }()
	return b.buf.Write(p)
}
func (b *syncBuffer) String() string {
	b.mu <- struct{}{}
	defer func() { <-b.mu }()
	return b.buf.String()
}

// startNode runs the binary with a config written from yaml (ports filled
// in) and waits until /readyz answers 200.
func startNode(t *testing.T, yaml string, env ...string) *proc {
	t.Helper()
	p := &proc{mqtt: freePort(t), admin: freePort(t), out: newSyncBuffer(), exited: make(chan error, 1)}
	cfg := fmt.Sprintf("node: {name: ptest}\nmqtt:\n  listeners: [{type: tcp, address: \"127.0.0.1:%d\"}]\nadmin: {address: \"127.0.0.1:%d\"}\n%s", p.mqtt, p.admin, yaml)
	path := filepath.Join(t.TempDir(), "node.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p.launch(t, path, env...)
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-p.exited:
			t.Fatalf("node exited at start: %v\n%s", err, p.out)
		default:
		}
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", p.admin))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("node not ready in 15s:\n%s", p.out)
	return nil
}

// launch starts `mendmq serve --config path`; the test's cleanup kills it
// if it is still running.
func (p *proc) launch(t *testing.T, path string, env ...string) {
	t.Helper()
	p.start(t, []string{"serve", "--config", path}, env)
}

// launchArgs starts the binary with args; the test's cleanup kills it if
// it is still running.
func (p *proc) launchArgs(t *testing.T, args ...string) {
	t.Helper()
	p.start(t, args, nil)
}

func (p *proc) start(t *testing.T, args, env []string) {
	t.Helper()
	p.cmd = exec.Command(binPath, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
}

// stop sends SIGTERM and returns the exit error.
func (p *proc) stop(t *testing.T) error {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.exited:
		return err
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		t.Fatalf("node did not stop within 15s of SIGTERM:\n%s", p.out)
		return nil
	}
}

func needMosquitto(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("mosquitto_sub"); err != nil {
		t.Skip("mosquitto_pub/sub not installed (apt-get install -y mosquitto-clients; .ci/run does it)")
	}
}

// mosq runs mosquitto_pub or mosquitto_sub against port with a bounded time.
func mosq(t *testing.T, tool string, port int, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	all := append([]string{"-h", "127.0.0.1", "-p", fmt.Sprint(port)}, args...)
	out, err := exec.CommandContext(ctx, tool, all...).CombinedOutput()
	return string(out), err
}

// startSub starts mosquitto_sub in the background and returns a func that
// waits for it to exit and returns its output. It waits until the
// subscription is registered by polling the node's subscription gauge is not
// possible portably, so the caller publishes with retries instead.
func startSub(t *testing.T, port int, args ...string) func() string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	all := append([]string{"-h", "127.0.0.1", "-p", fmt.Sprint(port)}, args...)
	cmd := exec.CommandContext(ctx, "mosquitto_sub", all...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	return func() string {
		_ = cmd.Wait()
		cancel()
		return out.String()
	}
}

func TestMosquittoRoundTrip(t *testing.T) {
	needMosquitto(t)
	p := startNode(t, "")
	for _, qos := range []string{"0", "1", "2"} {
		t.Run("qos"+qos, func(t *testing.T) {
			// Retained first, so the subscriber cannot miss it by
			// subscribing late; -C 1 exits after one message.
			if out, err := mosq(t, "mosquitto_pub", p.mqtt, "-q", qos, "-r", "-t", "rt/"+qos, "-m", "hello-"+qos); err != nil {
				t.Fatalf("pub: %v %s", err, out)
			}
			out, err := mosq(t, "mosquitto_sub", p.mqtt, "-q", qos, "-t", "rt/"+qos, "-C", "1", "-W", "5", "-v")
			if err != nil || strings.TrimSpace(out) != "rt/"+qos+" hello-"+qos {
				t.Fatalf("sub got %q (%v)", out, err)
			}
		})
	}
	if err := p.stop(t); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, p.out)
	}
}

func TestSIGTERMShutdownIsClean(t *testing.T) {
	needMosquitto(t)
	p := startNode(t, "")
	// A connected v5 subscriber must be told the server is shutting down.
	wait := startSub(t, p.mqtt, "-V", "5", "-t", "x", "-W", "8")
	time.Sleep(300 * time.Millisecond) // let it connect; only lowers the chance of testing an idle node
	if err := p.stop(t); err != nil {
		t.Fatalf("exit code after SIGTERM: %v\n%s", err, p.out)
	}
	if !strings.Contains(p.out.String(), "stopped cleanly") {
		t.Fatalf("no clean-stop log:\n%s", p.out)
	}
	out := wait()
	if strings.Contains(out, "Timed out") {
		t.Fatalf("subscriber was not disconnected by the shutdown: %q", out)
	}
}

func TestStorageSurvivesRestart(t *testing.T) {
	needMosquitto(t)
	dir := t.TempDir()
	store := fmt.Sprintf("storage: {path: %q}\n", filepath.Join(dir, "mendmq.db"))
	p := startNode(t, store)
	// A persistent (clean session false) QoS1 subscription, then gone.
	if out, err := mosq(t, "mosquitto_sub", p.mqtt, "-c", "-i", "keeper", "-q", "1", "-t", "q/#", "-E"); err != nil {
		t.Fatalf("persistent subscribe: %v %s", err, out)
	}
	if out, err := mosq(t, "mosquitto_pub", p.mqtt, "-q", "1", "-r", "-t", "ret/a", "-m", "kept"); err != nil {
		t.Fatalf("retained pub: %v %s", err, out)
	}
	if out, err := mosq(t, "mosquitto_pub", p.mqtt, "-q", "1", "-t", "q/1", "-m", "queued-while-away"); err != nil {
		t.Fatalf("queued pub: %v %s", err, out)
	}
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v\n%s", err, p.out)
	}

	p2 := startNode(t, store)
	out, err := mosq(t, "mosquitto_sub", p2.mqtt, "-t", "ret/#", "-C", "1", "-W", "5", "-v")
	if err != nil || strings.TrimSpace(out) != "ret/a kept" {
		t.Fatalf("retained after restart: %q (%v)\n%s", out, err, p2.out)
	}
	out, err = mosq(t, "mosquitto_sub", p2.mqtt, "-c", "-i", "keeper", "-q", "1", "-t", "q/#", "-C", "1", "-W", "5", "-v")
	if err != nil || strings.TrimSpace(out) != "q/1 queued-while-away" {
		t.Fatalf("queued message after restart: %q (%v)\n%s", out, err, p2.out)
	}
}

func TestConfigErrorsExitNonZero(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		env  []string
		want string
	}{
		{"unknown key", "mqtt:\n  max_packet_sise: 5\n", nil, "max_packet_sise"},
		{"bad type", "mqtt:\n  max_connections: many\n", nil, "mqtt.max_connections"},
		{"missing cert", "mqtt:\n  listeners: [{type: tls, address: \"127.0.0.1:0\", cert_file: /no/cert.pem, key_file: /no/key.pem}]\n", nil, "mqtt.listeners[0].cert_file"},
		{"bad env", "", []string{"MENDMQ_MQTT__CONNECT_TIMEOUT=never"}, "mqtt.connect_timeout"},
		// The admin API on every interface without a token or mutual TLS.
		{"open admin server", "admin: {address: \"0.0.0.0:0\"}\n", nil, "admin.token_file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "bad.yaml")
			if err := os.WriteFile(path, []byte(tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, binPath, "serve", "--config", path)
			cmd.Env = append(os.Environ(), tc.env...)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("exit 0 on bad config; output:\n%s", out)
			}
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
				t.Fatalf("want exit code 1, got %v\n%s", err, out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Fatalf("error does not name %q:\n%s", tc.want, out)
			}
		})
	}
}

func TestEnvOverride(t *testing.T) {
	// The config file says one admin port, the environment another: the
	// environment wins.
	envPort := freePort(t)
	p := &proc{}
	_ = p
	path := filepath.Join(t.TempDir(), "n.yaml")
	mq := freePort(t)
	cfg := fmt.Sprintf("mqtt:\n  listeners: [{type: tcp, address: \"127.0.0.1:%d\"}]\nadmin: {address: \"127.0.0.1:1\"}\n", mq)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binPath, "serve", "--config", path)
	cmd.Env = append(os.Environ(), fmt.Sprintf("MENDMQ_ADMIN__ADDRESS=127.0.0.1:%d", envPort), "MENDMQ_NODE__NAME=envnode")
	out := newSyncBuffer()
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", envPort))
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("admin not on env port %d:\n%s", envPort, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(out.String(), "node=envnode") {
		t.Fatalf("MENDMQ_NODE__NAME not applied:\n%s", out)
	}
}

// TestConfigHotReload edits the config file of a running node: a broken
// policy name is refused (the running policies stay), a valid change is
// applied without restart, and `mendmq policy list|reload` see it.
func TestConfigHotReload(t *testing.T) {
	p := &proc{mqtt: freePort(t), admin: freePort(t), out: newSyncBuffer(), exited: make(chan error, 1)}
	dir := t.TempDir()
	path := filepath.Join(dir, "node.yaml")
	write := func(policy string) {
		cfg := fmt.Sprintf("mqtt:\n  listeners: [{type: tcp, address: \"127.0.0.1:%d\"}]\nadmin: {address: \"127.0.0.1:%d\"}\nretained: {merge_policy: %s}\n", p.mqtt, p.admin, policy)
		// Editors replace files by rename; do the same.
		tmp := filepath.Join(dir, ".node.yaml.tmp")
		if err := os.WriteFile(tmp, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write("latestupdate")
	p.launch(t, path)
	defer p.stop(t)
	admin := fmt.Sprintf("http://127.0.0.1:%d", p.admin)
	list := func() string {
		out, _ := exec.Command(binPath, "policy", "list", "--admin", admin).CombinedOutput()
		return string(out)
	}
	retainedPolicy := func(out string) string {
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "$retained") {
				return strings.Fields(line)[0]
			}
		}
		return ""
	}
	deadline := time.Now().Add(15 * time.Second)
	for retainedPolicy(list()) != "latestupdate" {
		if time.Now().After(deadline) {
			t.Fatalf("node not serving its policies:\n%s\n%s", list(), p.out)
		}
		time.Sleep(50 * time.Millisecond)
	}

	write("nosuch")
	for !strings.Contains(p.out.String(), "config reload refused") {
		if time.Now().After(deadline) {
			t.Fatalf("broken config not refused:\n%s", p.out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := retainedPolicy(list()); got != "latestupdate" {
		t.Fatalf("broken config replaced the running policy: %q", got)
	}
	out, err := exec.Command(binPath, "policy", "reload", "--admin", admin).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "retained.merge_policy") {
		t.Fatalf("policy reload of a broken config: err=%v\n%s", err, out)
	}

	write("higherhits")
	for retainedPolicy(list()) != "higherhits" {
		if time.Now().After(deadline) {
			t.Fatalf("valid change not applied:\n%s\n%s", list(), p.out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestFreshStartLogsNoError starts the binary as `make run` does (text
// log, info level) on a fresh node, with and without storage.path, and
// checks that nothing is logged at ERROR: mochi's bolt hook used to log
// "failed to get data ... key=SYS" on every start with a new file.
func TestFreshStartLogsNoError(t *testing.T) {
	for name, yaml := range map[string]string{
		"memory":  "",
		"storage": fmt.Sprintf("storage: {path: %q}\n", filepath.Join(t.TempDir(), "fresh.db")),
	} {
		t.Run(name, func(t *testing.T) {
			p := startNode(t, yaml)
			if err := p.stop(t); err != nil {
				t.Fatalf("stop: %v\n%s", err, p.out)
			}
			out := p.out.String()
			if !strings.Contains(out, "mendmq serving") {
				t.Fatalf("no start line in the log:\n%s", out)
			}
			for _, line := range strings.Split(out, "\n") {
				if strings.Contains(line, "level=ERROR") {
					t.Errorf("ERROR logged on a fresh start: %s", line)
				}
			}
		})
	}
}
