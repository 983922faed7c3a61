package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/mendmq/mendmq/cluster"
	"github.com/mendmq/mendmq/cluster/netsplit"
)

func TestSaturateValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(*SaturateConfig)
		want string // substring of the error; "" = valid
	}{
		{"default", func(*SaturateConfig) {}, ""},
		{"one node", func(c *SaturateConfig) { c.Configs = c.Configs[:1] }, "-configs: 1 node configs"},
		{"no binary path", func(c *SaturateConfig) { c.Mendmq = "" }, "-mendmq"},
		{"bad set", func(c *SaturateConfig) { c.Sets = []string{"log.level"} }, `-set: "log.level"`},
		{"zero period", func(c *SaturateConfig) { c.Period = 0 }, "-period"},
		{"no qos", func(c *SaturateConfig) { c.QoS = nil }, "-qos: list"},
		{"qos twice", func(c *SaturateConfig) { c.QoS = []byte{1, 1} }, "listed twice"},
		{"qos 3", func(c *SaturateConfig) { c.QoS = []byte{3} }, "-qos: 3"},
		{"no pairs", func(c *SaturateConfig) { c.Pairs = 0 }, "-pairs: 0"},
		{"sample too fast", func(c *SaturateConfig) { c.Sample = time.Millisecond }, "-sample: 1ms"},
		{"no sample timeout", func(c *SaturateConfig) { c.SampleTimeout = 0 }, "-sample-timeout"},
		{"small payload", func(c *SaturateConfig) { c.Run.PayloadSize = 4 }, "-payload: 4"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultSaturateConfig()
			tc.edit(&c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestSaturateFlags checks that bad command lines fail before anything starts.
func TestSaturateFlags(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"-period", "soon"}, "invalid value"},
		{[]string{"-qos", "0,x"}, "want 0, 1 or 2"},
		{[]string{"-pairs", "-3"}, "-pairs: -3"},
		{[]string{"-configs", "a.yaml"}, "-configs: 1 node configs"},
		{[]string{"extra"}, "unexpected arguments"},
		{[]string{"-log-level", "loud"}, "-log-level"},
		{[]string{"-mendmq", "/nonexistent/mendmq"}, "-mendmq"},
	}
	for _, tc := range tests {
		var out, errOut bytes.Buffer
		err := dispatch(context.Background(), append([]string{"saturate"}, tc.args...), &out, &errOut)
		if err == nil || errors.Is(err, flag.ErrHelp) {
			t.Errorf("%v: err %v, want an error", tc.args, err)
			continue
		}
		if msg := err.Error() + errOut.String(); !strings.Contains(msg, tc.want) {
			t.Errorf("%v: %q, want it to contain %q", tc.args, msg, tc.want)
		}
	}
}

func TestRewriteNodeConfig(t *testing.T) {
	own := nodePorts{MQTT: 1001, Admin: 1002, Gossip: 1003, Data: 1004}
	seeds := []string{"127.0.0.1:1003", "127.0.0.1:2003"}
	tests := []struct {
		name, src string
		err       string
	}{
		{"example", "node:\n  name: node2\nmqtt:\n  listeners:\n    - type: tcp\n      address: \"127.0.0.1:1884\"\n    - type: ws\n      address: \":8083\"\nadmin:\n  debug: true\n  address: \"127.0.0.1:8082\"\ncluster:\n  enabled: true\n  gossip_address: \"127.0.0.1:7956\"\n  seeds: [\"127.0.0.1:7946\"]\n  secret_key: \"s3cret\"\n", ""},
		{"empty", "", ""},
		{"sections missing", "node:\n  name: x\n", ""},
		{"not yaml", "mqtt: [", "parse node config"},
		{"admin not a mapping", "admin: 8080\n", "admin is a int"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := rewriteNodeConfig([]byte(tc.src), own, seeds)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got struct {
				Node  map[string]any `yaml:"node"`
				MQTT  struct{ Listeners []map[string]string }
				Admin map[string]any `yaml:"admin"`
				Clu   struct {
					Enabled       bool     `yaml:"enabled"`
					GossipAddress string   `yaml:"gossip_address"`
					DataAddress   string   `yaml:"data_address"`
					Seeds         []string `yaml:"seeds"`
					SecretKey     string   `yaml:"secret_key"`
				} `yaml:"cluster"`
			}
			if err := yaml.Unmarshal(out, &got); err != nil {
				t.Fatalf("output does not parse: %v\n%s", err, out)
			}
			if len(got.MQTT.Listeners) != 1 || got.MQTT.Listeners[0]["address"] != "127.0.0.1:1001" || got.MQTT.Listeners[0]["type"] != "tcp" {
				t.Errorf("listeners %v", got.MQTT.Listeners)
			}
			if got.Admin["address"] != "127.0.0.1:1002" || !got.Clu.Enabled || got.Clu.GossipAddress != "127.0.0.1:1003" ||
				got.Clu.DataAddress != "127.0.0.1:1004" || !slices.Equal(got.Clu.Seeds, seeds) {
				t.Errorf("addresses not rewritten:\n%s", out)
			}
			if tc.name == "example" && (got.Node["name"] != "node2" || got.Clu.SecretKey != "s3cret" || got.Admin["debug"] != true) {
				t.Errorf("other settings not kept:\n%s", out)
			}
		})
	}
}

func TestCrossNodeURLs(t *testing.T) {
	for _, n := range []int{2, 3, 5} {
		urls := make([]string, n)
		for i := range urls {
			urls[i] = string(rune('a' + i))
		}
		pub, sub := crossNodeURLs(urls)
		if len(pub) != n*(n-1) || len(sub) != len(pub) {
			t.Fatalf("n=%d: %d/%d entries, want %d", n, len(pub), len(sub), n*(n-1))
		}
		seen := map[string]bool{}
		for i := range pub {
			if pub[i] == sub[i] {
				t.Errorf("n=%d: entry %d is same-node (%s)", n, i, pub[i])
			}
			seen[pub[i]+sub[i]] = true
		}
		if len(seen) != n*(n-1) {
			t.Errorf("n=%d: %d distinct directed links, want %d", n, len(seen), n*(n-1))
		}
	}
}

func TestDetectTally(t *testing.T) {
	clean := func(node string, splits uint64) cluster.Status {
		return cluster.Status{Node: node, Netsplit: cluster.NetsplitStatus{Splits: splits},
			Members: []cluster.MemberStatus{{Name: node, State: "alive", Self: true}, {Name: "peer", State: "alive", Reachable: true}}}
	}
	suspect := clean("n1", 0)
	suspect.Members[1].State = "suspect"
	split := clean("n2", 1)
	split.Netsplit.Split = true
	split.Netsplit.Unreachable = []netsplit.Unreachable{{Name: "peer", Reason: "dead"}}
	split.Members[1].State, split.Members[1].Reachable = "dead", false
	type sample struct {
		node int
		st   cluster.Status
	}
	tests := []struct {
		name                                           string
		samples                                        []sample
		splits                                         uint64
		splitS, unreach, notAlive, suspects, linksDown int
		events                                         int
	}{
		{"clean", []sample{{0, clean("n1", 4)}, {1, clean("n2", 0)}, {0, clean("n1", 4)}}, 0, 0, 0, 0, 0, 0, 0},
		{"suspicion", []sample{{0, clean("n1", 0)}, {0, suspect}, {0, clean("n1", 0)}}, 0, 0, 0, 1, 1, 0, 1},
		{"split counted once per node", []sample{{1, clean("n2", 0)}, {1, split}, {1, split}, {1, clean("n2", 1)}}, 1, 2, 2, 2, 0, 2, 2},
		{"counter grew between samples", []sample{{0, clean("n1", 2)}, {0, clean("n1", 5)}}, 3, 0, 0, 0, 0, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tl := newDetectTally(2)
			for i, s := range tc.samples {
				tl.add(s.node, time.Duration(i)*time.Second, s.st, time.Duration(i)*time.Millisecond)
			}
			if got := tl.NetsplitsEntered(); got != tc.splits {
				t.Errorf("netsplits %d, want %d", got, tc.splits)
			}
			got := []int{tl.SplitSamples, tl.UnreachableSamples, tl.NotAliveSamples, tl.SuspectSamples, tl.LinkDownSamples, len(tl.Events), tl.Answered}
			want := []int{tc.splitS, tc.unreach, tc.notAlive, tc.suspects, tc.linksDown, tc.events, len(tc.samples)}
			if !slices.Equal(got, want) {
				t.Errorf("split/unreachable/not alive/suspect/link down/events/answered = %v, want %v (events %q)", got, want, tl.Events)
			}
		})
	}
	tl := newDetectTally(1)
	tl.fail(errors.New("first"))
	tl.fail(errors.New("second"))
	if tl.Failed != 2 || tl.FirstError != "first" {
		t.Errorf("failures %d %q", tl.Failed, tl.FirstError)
	}
}

func TestDecodeClusterStatus(t *testing.T) {
	tests := []struct {
		body, node, err string
	}{
		{`{"enabled":true,"status":{"node":"n1","netsplit":{"split":true,"splits":2,"unreachable":[{"name":"n3","reason":"link down"}]}}}`, "n1", ""},
		{`{"enabled":false,"node":"n1"}`, "", "clustering is disabled"},
		{`{"status":{}}`, "", "no \"enabled\""},
		{`not json`, "", "decode"},
	}
	for _, tc := range tests {
		st, err := decodeClusterStatus(strings.NewReader(tc.body))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v, want %q", tc.body, err, tc.err)
			}
			continue
		}
		if err != nil || st.Node != tc.node || !st.Netsplit.Split || st.Netsplit.Splits != 2 || len(st.Netsplit.Unreachable) != 1 {
			t.Errorf("%s: %+v, %v", tc.body, st, err)
		}
	}
}

func TestScanDetectionLogs(t *testing.T) {
	tests := []struct {
		name, log string
		want      map[string]int
		lines     int
	}{
		{"quiet", "time=x level=INFO msg=\"member joined\" peer=node2\n", map[string]int{}, 0},
		{"refuted suspicion", `time=x level=WARN msg="member suspected" node=node3 member=node1
time=x level=INFO msg="Suspect node1 has failed, no acks received" node=node3 component=memberlist
time=x level=WARN msg="Refuting a suspect message (from: node3)" node=node1 component=memberlist
`, map[string]int{"member suspected": 1, "memberlist suspicion": 1, "suspicion refuted": 1}, 3},
		{"split", `time=x level=WARN msg="netsplit: member unreachable" peer=node2 reason=dead
time=x level=WARN msg="netsplit: entered" mode=any
time=x level=WARN msg="member failed" member=node2
time=x level=INFO msg="Marking node2 as failed, suspect timeout reached (0 peer confirmations)"
time=x level=INFO msg="member gone" peer=node2 state=dead
`, map[string]int{"member unreachable": 1, "netsplit entered": 1, "member failed": 1, "marked failed": 1, "member gone": 1}, 5},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var c logCounts
			if err := scanDetectionLogs(strings.NewReader(tc.log), "n", &c); err != nil {
				t.Fatal(err)
			}
			for k, v := range c.Counts {
				if tc.want[k] != v {
					t.Errorf("%s: %d, want %d", k, v, tc.want[k])
				}
			}
			for k, v := range tc.want {
				if c.Counts[k] != v {
					t.Errorf("%s: %d, want %d", k, c.Counts[k], v)
				}
			}
			if len(c.Lines) != tc.lines {
				t.Errorf("kept %d lines, want %d: %q", len(c.Lines), tc.lines, c.Lines)
			}
		})
	}
}

func TestCPUSeriesSummary(t *testing.T) {
	tests := []struct {
		s          cpuSeries
		mean, full float64
	}{
		{cpuSeries{CPUs: 2}, 0, 0},
		{cpuSeries{CPUs: 2, Cores: []float64{2, 2}}, 2, 1},
		{cpuSeries{CPUs: 2, Cores: []float64{2, 1.8, 1.95, 1}}, 1.6875, 0.5},
		{cpuSeries{CPUs: 0, Cores: []float64{1}}, 0, 0},
	}
	for _, tc := range tests {
		mean, full := tc.s.summary(0.95)
		if mean != tc.mean || full != tc.full {
			t.Errorf("%+v: mean %v full %v, want %v %v", tc.s, mean, full, tc.mean, tc.full)
		}
	}
}

func TestParsePressureSome(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		err  bool
	}{
		{"some avg10=80.73 avg60=89.72 avg300=63.89 total=7472238859\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n", 7472238859 * time.Microsecond, false},
		{"full avg10=0.00 total=5\nsome avg10=1.00 total=12\n", 12 * time.Microsecond, false},
		{"full avg10=0.00 total=5\n", 0, true},
		{"some avg10=1.00\n", 0, true},
		{"some total=x\n", 0, true},
		{"some total=99999999999999999999\n", 0, true},
	}
	for _, tc := range tests {
		got, err := parsePressureSome(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("%q: %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestStallTracker(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		ticks []time.Duration
		want  []stall
	}{
		{[]time.Duration{0, 20 * ms, 40 * ms, 60 * ms}, nil},
		{[]time.Duration{0, 20 * ms, 500 * ms, 520 * ms, 3520 * ms}, []stall{{3520 * ms, 3000 * ms}, {500 * ms, 480 * ms}}},
		{[]time.Duration{0, 100 * ms, 300 * ms, 600 * ms, 1000 * ms, 1500 * ms, 2100 * ms, 2200 * ms}, // 6 gaps > 40ms, 5 kept
			[]stall{{2100 * ms, 600 * ms}, {1500 * ms, 500 * ms}, {1000 * ms, 400 * ms}, {600 * ms, 300 * ms}, {300 * ms, 200 * ms}}},
	}
	for _, tc := range tests {
		s := stallTracker{Tick: 20 * ms}
		for _, at := range tc.ticks {
			s.observe(at)
		}
		if !slices.Equal(s.Longest, tc.want) {
			t.Errorf("%v: %v, want %v", tc.ticks, s.Longest, tc.want)
		}
	}
}
