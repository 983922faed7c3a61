package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	tests := []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{5}, 5},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
	}
	for _, tc := range tests {
		in := append([]float64(nil), tc.in...)
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
		for i := range in {
			if in[i] != tc.in[i] {
				t.Fatalf("median reordered its input")
			}
		}
	}
}

func TestCommandLine(t *testing.T) {
	got := commandLine([]string{"bin/mqttbench", "suite", "-rounds", "3", "-logs", "/tmp/a b", "-x", "it's", ""})
	want := `bin/mqttbench suite -rounds 3 -logs '/tmp/a b' -x 'it'\''s' ''`
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

func TestNodeMQTTAddr(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		body, want string
		ok         bool
	}{
		{"mqtt:\n  listeners:\n    - type: ws\n      address: 127.0.0.1:8083\n    - type: tcp\n      address: 127.0.0.1:1884\n", "127.0.0.1:1884", true},
		{"mqtt:\n  listeners:\n    - type: tcp\n      address: \":1885\"\n", "127.0.0.1:1885", true},
		{"mqtt:\n  listeners:\n    - type: tcp\n      address: 10.1.1.1:1883\n", "", false},
		{"node: {name: n1}\n", "", false},
		{"mqtt: [", "", false},
	}
	for i, tc := range tests {
		got, err := nodeMQTTAddr(write("n.yaml", tc.body))
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("case %d: got %q, %v; want %q ok=%v", i, got, err, tc.want, tc.ok)
		}
	}
	if _, err := nodeMQTTAddr(filepath.Join(dir, "missing.yaml")); err == nil {
		t.Error("missing file accepted")
	}
}

func TestPrintGroupRatios(t *testing.T) {
	mk := func(name string, rates ...float64) *benchCase {
		c := &benchCase{label: name, t: &target{name: name}}
		for _, r := range rates {
			c.results = append(c.results, Result{DeliveredPerSec: r, LatencyP50US: 1e6 / r, LatencyP99US: 2e6 / r})
		}
		return c
	}
	g := &group{title: "QoS 0", refs: []string{brokerMosquitto, brokerMochi}, cases: []*benchCase{
		mk(brokerMendmq, 30000, 50000, 40000),
		mk(brokerMosquitto, 80000, 90000, 70000),
		mk(brokerMochi, 40000, 30000, 50000),
		{label: "broken", t: &target{name: "broken"}, fails: []string{"round 1: boom"}},
	}}
	var out bytes.Buffer
	cfg := DefaultSuiteConfig()
	printGroup(&out, cfg, g)
	s := out.String()
	// mendmq median 40000: 0.50 of mosquitto's 80000, 1.00 of mochi's 40000.
	mendmqLine := lineWith(s, "mendmq")
	for _, want := range []string{"40000", "0.50", "1.00", "3/3"} {
		if !strings.Contains(mendmqLine, want) {
			t.Errorf("mendmq row lacks %q: %q", want, mendmqLine)
		}
	}
	if !strings.Contains(s, "no successful round") || !strings.Contains(s, "broken: round 1: boom") {
		t.Errorf("failed case not reported:\n%s", s)
	}
}

func lineWith(s, prefix string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), prefix) {
			return l
		}
	}
	return ""
}

func TestSuiteValidate(t *testing.T) {
	tests := []struct {
		flag string
		mod  func(*SuiteConfig)
	}{
		{"-rounds", func(c *SuiteConfig) { c.Rounds = 0 }},
		{"-brokers", func(c *SuiteConfig) { c.Brokers = []string{"emqx"} }},
		{"-brokers", func(c *SuiteConfig) { c.Brokers = nil }},
		{"-qos", func(c *SuiteConfig) { c.QoS = nil }},
		{"-idle-conns", func(c *SuiteConfig) { c.IdleConns = -1 }},
		{"-cluster-configs", func(c *SuiteConfig) { c.Cluster, c.ClusterConfigs = true, []string{"one.yaml"} }},
		{"-pairs", func(c *SuiteConfig) { c.Run.Pairs = 0 }},
	}
	for _, tc := range tests {
		c := DefaultSuiteConfig()
		tc.mod(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.flag) {
			t.Errorf("%s: err = %v", tc.flag, err)
		}
	}
	c := DefaultSuiteConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

// TestSuiteEndToEnd runs a tiny suite: the mochi peer as a separate process (this
// test binary re-executed as mqttbench), mosquitto if installed, and a missing
// mendmq binary, which must be skipped with a message.
func TestSuiteEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts broker processes")
	}
	t.Setenv(envTestMain, "1")
	cfg := DefaultSuiteConfig()
	cfg.Mendmq = filepath.Join(t.TempDir(), "no-such-mendmq")
	cfg.Brokers = []string{brokerMendmq, brokerMochi}
	if _, err := os.Stat(cfg.Mosquitto); err == nil {
		cfg.Brokers = append(cfg.Brokers, brokerMosquitto)
	}
	cfg.Self = os.Args[0]
	cfg.QoS = []byte{1}
	cfg.Rounds, cfg.Warmup, cfg.IdleConns = 2, 100*time.Millisecond, 50
	cfg.Run.Pairs, cfg.Run.Duration = 5, 200*time.Millisecond
	cfg.LogDir = t.TempDir()
	cfg.JSONPath = filepath.Join(t.TempDir(), "report.json")
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := RunSuite(ctx, cfg, &out, quietLog); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	s := out.String()
	for _, want := range []string{"SKIPPED: mendmq: binary", "per connection", "medians — QoS 1", "command: "} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
	b, err := os.ReadFile(cfg.JSONPath)
	if err != nil {
		t.Fatal(err)
	}
	var rep suiteReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Groups) != 1 || len(rep.Groups[0].Cases) != len(cfg.Brokers)-1 {
		t.Fatalf("groups %+v", rep.Groups)
	}
	for _, c := range rep.Groups[0].Cases {
		if len(c.Rounds) != 2 || c.Median.Delivered <= 0 || c.Median.Lost != 0 {
			t.Errorf("%s: %d rounds, median %+v, failures %v", c.Label, len(c.Rounds), c.Median, c.Failures)
		}
		if c.Rounds[0].BrokerCPUSeconds <= 0 {
			t.Errorf("%s: broker CPU not measured", c.Label)
		}
	}
	if len(rep.IdleRSS) == 0 || rep.IdleRSS[0].Error != "" || rep.IdleRSS[0].AfterBytes <= 0 {
		t.Errorf("idle RSS %+v", rep.IdleRSS)
	}
}

// TestSuiteClusterSkips: cluster mode without configs says what is missing.
func TestSuiteClusterSkips(t *testing.T) {
	cfg := DefaultSuiteConfig()
	cfg.Cluster = true
	cfg.Mendmq = filepath.Join(t.TempDir(), "mendmq") // exists (not runnable); the configs do not
	if err := os.WriteFile(cfg.Mendmq, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.ClusterConfigs = []string{filepath.Join(t.TempDir(), "node1.yaml"), filepath.Join(t.TempDir(), "node2.yaml")}
	cfg.LogDir = t.TempDir()
	var out bytes.Buffer
	if err := RunSuite(context.Background(), cfg, &out, quietLog); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "SKIPPED: cluster: node config") {
		t.Fatalf("output:\n%s", out.String())
	}
}

func TestClusterGroupsScenarios(t *testing.T) {
	cfg := DefaultSuiteConfig()
	tg := &target{name: "c", urls: []string{"tcp://127.0.0.1:1883", "tcp://127.0.0.1:1884", "tcp://127.0.0.1:1885"}}
	gs := clusterGroups(cfg, tg)
	// Saturated QoS 0 and 1, then paced (hop latency) QoS 0 and 1.
	if len(gs) != 4 || gs[1].hop || !gs[3].hop {
		t.Fatalf("%d groups", len(gs))
	}
	for _, c := range gs[3].cases {
		if rc := caseConfig(cfg, &benchCase{sc: c.sc, t: &target{urls: tg.urls}}); rc.Rate != cfg.HopRate || rc.QoS != 1 {
			t.Errorf("%s paced: rate %g qos %d, want %g and 1", c.label, rc.Rate, rc.QoS, cfg.HopRate)
		}
	}
	cfg.HopRate = 0
	if n := len(clusterGroups(cfg, tg)); n != 2 {
		t.Errorf("-hop-rate 0: %d groups, want 2", n)
	}
	cfg.HopRate = DefaultSuiteConfig().HopRate
	same, cross := gs[1].cases[0], gs[1].cases[1]
	rcSame, rcCross := caseConfig(cfg, &benchCase{sc: same.sc, t: &target{urls: tg.urls}}), caseConfig(cfg, &benchCase{sc: cross.sc, t: &target{urls: tg.urls}})
	if rcSame.PubURLs[0] != tg.urls[0] || rcSame.SubURLs[0] != tg.urls[0] {
		t.Errorf("same-node: %v -> %v", rcSame.PubURLs, rcSame.SubURLs)
	}
	if rcCross.PubURLs[0] != tg.urls[0] || rcCross.SubURLs[0] != tg.urls[1] || rcCross.QoS != 1 {
		t.Errorf("cross-node: %v -> %v qos %d", rcCross.PubURLs, rcCross.SubURLs, rcCross.QoS)
	}
}

// TestPrintGroupHop: a hop group prints cross-node less same-node latency.
func TestPrintGroupHop(t *testing.T) {
	mk := func(label string, p50, p99 float64) *benchCase {
		c := &benchCase{label: label, t: &target{name: "mendmq"}}
		for range 3 {
			c.results = append(c.results, Result{DeliveredPerSec: 400, LatencyP50US: p50, LatencyP99US: p99})
		}
		return c
	}
	g := &group{title: "hop", refs: []string{labelSameNode}, hop: true,
		cases: []*benchCase{mk(labelSameNode, 300, 900), mk(labelCrossNode, 550, 1400)}}
	var out bytes.Buffer
	printGroup(&out, DefaultSuiteConfig(), g)
	if want := "cross-node hop (cross-node less same-node latency): p50 +0.250 ms, p99 +0.500 ms"; !strings.Contains(out.String(), want) {
		t.Errorf("output lacks %q:\n%s", want, out.String())
	}
	g.hop = false
	out.Reset()
	printGroup(&out, DefaultSuiteConfig(), g)
	if strings.Contains(out.String(), "cross-node hop") {
		t.Errorf("a group without hop printed the hop line:\n%s", out.String())
	}
}
