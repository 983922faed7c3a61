package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mendmq/mendmq/broker"
	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/cluster"
	"github.com/mendmq/mendmq/cluster/clustertest"
	"github.com/mendmq/mendmq/plugins"
)

// acrossTimeout bounds the waits of TestCtlAcrossCluster for the cluster
// (formation, netsplit detection, heal): a few seconds under -race on two
// shared cores.
const acrossTimeout = 15 * time.Second

// pollUntil calls cond until it holds or acrossTimeout passes, then fails
// with cond's last detail.
func pollUntil(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	var detail string
	if !brokertest.PollFor(acrossTimeout, func() (ok bool) { ok, detail = cond(); return ok }) {
		t.Fatalf("timed out after %v waiting for %s: %s", acrossTimeout, what, detail)
	}
}

// faultCluster starts nodes n1..nN on a fault-injecting network, each with
// the trapping test policy on map "evil", and waits until every node sees
// every other alive with its data plane up.
func faultCluster(t *testing.T, n int) (*clustertest.Network, []*brokertest.Node) {
	t.Helper()
	nw := clustertest.New(t, clustertest.Config{})
	trap := filepath.Join("..", "..", "..", "plugins", "testdata", "hostile", "trap.wasm")
	var nodes []*brokertest.Node
	seed := ""
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("n%d", i)
		cfg := brokertest.Config()
		cfg.Node.Name = name
		cfg.Cluster = cluster.LoopbackConfig()
		// As broker/clustertests: a false "dead" under a loaded -race run
		// would split the cluster; detection still takes ~2 s.
		cfg.Cluster.ProbeInterval, cfg.Cluster.ProbeTimeout, cfg.Cluster.SuspicionMult = 300*time.Millisecond, 200*time.Millisecond, 5
		tr, err := nw.Transport(name)
		if err != nil {
			t.Fatalf("gossip transport of %s: %v", name, err)
		}
		cfg.Cluster.Transport, cfg.Cluster.DataNetwork, cfg.Cluster.GossipAddress = tr, nw.DataNetwork(name), tr.Addr()
		if seed != "" {
			cfg.Cluster.Seeds = []string{seed}
		} else {
			seed = tr.Addr()
		}
		cfg.Plugins.Policies["trap"] = plugins.PolicyConfig{Module: trap}
		cfg.Plugins.Maps["evil"] = plugins.MapConfig{MergePolicy: "trap"}
		cfg.Plugins.MapsInUse = plugins.AnyMap // "evil" is merged by this test's direct calls
		nodes = append(nodes, brokertest.Start(t, cfg))
	}
	pollUntil(t, "the cluster to form", func() (bool, string) {
		for _, nd := range nodes {
			for _, m := range nd.Cluster().Status().Members {
				if m.State != "alive" || !m.Self && !m.Reachable {
					return false, fmt.Sprintf("%s sees %s %s, reachable %v", nd.Cluster().Name(), m.Name, m.State, m.Reachable)
				}
			}
			if k := len(nd.Cluster().Status().Members); k != n {
				return false, fmt.Sprintf("%s sees %d members", nd.Cluster().Name(), k)
			}
		}
		return true, ""
	})
	return nw, nodes
}

// parkOn parks a conflict for each key on node nd: the trapping policy
// fails on keys "boom*", and the merging entry is parked there.
func parkOn(t *testing.T, nd *brokertest.Node, keys ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), acrossTimeout)
	defer cancel()
	for _, k := range keys {
		r, _ := nd.Policies().Merge(ctx, "evil", &plugins.EntryView{Key: []byte(k), Value: []byte("v-" + k)}, nil)
		if r.ConflictID == 0 {
			t.Fatalf("%s: merge of %s was not parked: %+v", nd.Cluster().Name(), k, r)
		}
	}
}

// TestCtlAcrossCluster drives the cluster-wide operator commands through
// `mendmq ctl` on a three-node cluster: a session shown from a node that
// does not hold it, parked conflicts listed from a node that holds none
// and resolved and dropped there on the nodes that hold them; then, with
// a node cut off, the list is partial and names it, and a question for
// that node fails at once with a 504 naming it.
func TestCtlAcrossCluster(t *testing.T) {
	nw, nodes := faultCluster(t, 3)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	on := func(nd *brokertest.Node, args ...string) (int, string, string) {
		return runCtlArgs(append([]string{"--admin", nd.AdminAddr()}, args...)...)
	}

	far := brokertest.MustV5(t, n2.URL(0), "far-1")
	far.MustSub("far/#", 1)
	pollUntil(t, "n1 to place far-1 on n2", func() (bool, string) {
		node, _ := n1.Cluster().SessionNode("far-1")
		return node == "n2", node
	})
	brokertest.MustV5(t, n1.URL(0), "near-1").MustSub("near/#", 0)

	t.Run("sessions show", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			code int
			want []string // substrings of stdout+stderr
		}{
			{[]string{"sessions", "show", "far-1"}, 0, []string{"n2 (asked through n1)", "far/#"}},
			{[]string{"sessions", "show", "near-1"}, 0, []string{"near/#"}},
			{[]string{"sessions", "show", "nobody"}, 1, []string{"404", `"nobody"`}},
		} {
			code, out, errOut := on(n1, tc.args...)
			for _, w := range tc.want {
				if code != tc.code || !strings.Contains(out+errOut, w) {
					t.Errorf("ctl %v on n1: exit %d\n%s%s\nwant exit %d with %q", tc.args, code, out, errOut, tc.code, w)
				}
			}
		}
		_, out, _ := on(n1, "sessions", "show", "near-1")
		if strings.Contains(out, "asked through") {
			t.Errorf("a local session shown as fetched:\n%s", out)
		}
		code, out, _ := on(n3, "--json", "sessions", "show", "far-1")
		var si broker.SessionInfo
		if err := json.Unmarshal([]byte(out), &si); code != 0 || err != nil || si.Node != "n2" || si.Via != "n3" ||
			!si.Connected || len(si.Subs) != 1 || si.Subs[0].Filter != "far/#" || si.Subs[0].QoS != 1 {
			t.Errorf("--json sessions show far-1 on n3: exit %d, %+v (%v)\n%s", code, si, err, out)
		}
	})

	parkOn(t, n1, "boom-1", "boom-2")
	parkOn(t, n2, "boom-3")
	id := func(nd *brokertest.Node, key string) uint64 {
		for _, c := range nd.Policies().Conflicts() {
			if string(c.Merging.Key) == key {
				return c.ID
			}
		}
		return 0
	}
	ref1, ref2, ref3 := fmt.Sprintf("n1/%d", id(n1, "boom-1")), fmt.Sprintf("n1/%d", id(n1, "boom-2")), fmt.Sprintf("n2/%d", id(n2, "boom-3"))

	t.Run("conflicts list", func(t *testing.T) {
		code, out, errOut := on(n3, "policy", "conflicts")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if code != 0 || errOut != "" || len(lines) != 4 || !strings.HasPrefix(lines[0], "REF") {
			t.Fatalf("policy conflicts on n3: exit %d\n%s%s", code, out, errOut)
		}
		for i, want := range []string{ref1, ref2, ref3} {
			f := strings.Fields(lines[i+1])
			if f[0] != want || f[1] != "evil" || f[2] != "trap" || f[3] != "trap" {
				t.Errorf("row %d: %q, want %s of map evil, policy trap, kind trap", i+1, lines[i+1], want)
			}
		}
		code, out, _ = on(n3, "policy", "conflicts", "list", "--json")
		var l broker.ConflictList
		if err := json.Unmarshal([]byte(out), &l); code != 0 || err != nil {
			t.Fatalf("--json: exit %d, %v\n%s", code, err, out)
		}
		if l.Node != "n3" || l.Scope != "cluster" || len(l.Conflicts) != 3 || len(l.Unreachable) != 0 || l.Truncated ||
			l.Parked["n1"] != 2 || l.Parked["n2"] != 1 || l.Parked["n3"] != 0 {
			t.Errorf("--json list on n3: %+v", l)
		}
		if c := l.Conflicts[2]; c.Node != "n2" || c.Ref != ref3 || string(c.Merging.Value) != "v-boom-3" {
			t.Errorf("n2's conflict: %+v", c)
		}
		if code, out, _ := on(n3, "policy", "conflicts", "list", "--scope", "node"); code != 0 || strings.Count(out, "\n") != 1 {
			t.Errorf("--scope node on n3 (which holds none): exit %d\n%s", code, out)
		}
		if code, out, errOut := on(n3, "policy", "conflicts", "--limit", "1"); code != 0 || strings.Count(out, "\n") != 3 || !strings.Contains(errOut, "truncated") {
			t.Errorf("--limit 1 (per node): exit %d\n%s%s", code, out, errOut)
		}
	})

	t.Run("resolve and drop on the holding node", func(t *testing.T) {
		code, out, errOut := on(n3, "policy", "conflicts", "resolve", ref1, "take_merging")
		if want := fmt.Sprintf("conflict %s (map evil, key \"boom-1\") resolved: take_merging, written", ref1); code != 0 || !strings.Contains(out, want) {
			t.Fatalf("resolve %s on n3: exit %d\n%s%s\nwant %q", ref1, code, out, errOut, want)
		}
		if id(n1, "boom-1") != 0 {
			t.Errorf("n1 still holds the resolved conflict: %+v", n1.Policies().Conflicts())
		}
		ctx, cancel := context.WithTimeout(context.Background(), acrossTimeout)
		defer cancel()
		if e, ok, err := n1.Cluster().Maps().Get(ctx, "evil", "boom-1"); err != nil || !ok || string(e.Value) != "v-boom-1" {
			t.Errorf("evil/boom-1 after take_merging: %q %v %v, want the parked entry written", e.Value, ok, err)
		}
		if code, out, errOut := on(n1, "policy", "drop", ref3); code != 0 || !strings.Contains(out, "conflict "+ref3+" dropped") {
			t.Fatalf("drop %s on n1: exit %d\n%s%s", ref3, code, out, errOut)
		}
		if cs := n2.Policies().Conflicts(); len(cs) != 0 {
			t.Errorf("n2 still holds conflicts after the drop: %+v", cs)
		}
		if _, ok, err := n2.Cluster().Maps().Get(ctx, "evil", "boom-3"); err != nil || ok {
			t.Errorf("evil/boom-3 after a drop: present %v (%v), want nothing written", ok, err)
		}
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"policy", "conflicts", "resolve", ref3, "keep_existing"}, "404"},
			{[]string{"policy", "conflicts", "drop", ref1}, "404"},
			{[]string{"policy", "conflicts", "drop", "n9/1"}, "no such member"},
			{[]string{"policy", "conflicts", "resolve", ref2, "apply"}, "400"},
		} {
			if code, out, errOut := on(n3, tc.args...); code != exitServer || !strings.Contains(errOut, tc.want) {
				t.Errorf("ctl %v on n3: exit %d\n%s%s\nwant exit 1 with %q", tc.args, code, out, errOut, tc.want)
			}
		}
		if id(n1, "boom-2") == 0 {
			t.Error("a refused resolution removed n1's other conflict")
		}
	})

	t.Run("a node cut off", func(t *testing.T) {
		nw.Cut("n3", "n1")
		pollUntil(t, "n3 to find n1 unreachable", func() (bool, string) {
			var names []string
			for _, u := range n3.Cluster().Netsplit().Unreachable {
				names = append(names, u.Name)
			}
			return slices.Contains(names, "n1"), fmt.Sprint(names)
		})
		code, out, errOut := on(n3, "policy", "conflicts")
		if code != 0 || strings.Contains(out, ref2) || !strings.Contains(errOut, "warning: could not ask n1") {
			t.Errorf("list with n1 cut off: exit %d\n%s%s\nwant exit 0, n1 named on stderr", code, out, errOut)
		}
		_, out, _ = on(n3, "--json", "policy", "conflicts")
		var l broker.ConflictList
		if err := json.Unmarshal([]byte(out), &l); err != nil || len(l.Unreachable) != 1 || l.Unreachable[0].Node != "n1" {
			t.Errorf("--json list with n1 cut off: %+v (%v)", l.Unreachable, err)
		}
		for _, args := range [][]string{
			{"policy", "conflicts", "resolve", ref2, "take_merging"},
			{"policy", "conflicts", "drop", ref2},
		} {
			start := time.Now()
			code, out, errOut := on(n3, args...)
			t.Logf("ctl %v to n1, cut off: exit %d in %v", args, code, time.Since(start).Round(time.Millisecond))
			if code != exitServer || !strings.Contains(errOut, "504") || !strings.Contains(errOut, "n1") || time.Since(start) > 3*time.Second {
				t.Errorf("ctl %v to n1, cut off: exit %d after %v\n%s%s\nwant exit 1 at once, 504 naming n1", args, code, time.Since(start), out, errOut)
			}
		}
		// n2 still answers for its session through n3.
		if code, out, errOut := on(n3, "sessions", "show", "far-1"); code != 0 || !strings.Contains(out, "n2 (asked through n3)") {
			t.Errorf("sessions show far-1 on n3 with n1 cut off: exit %d\n%s%s", code, out, errOut)
		}
		nw.Cut("n1", "n2")
		pollUntil(t, "n1 to find n2 unreachable", func() (bool, string) {
			return len(n1.Cluster().Netsplit().Unreachable) == 2, fmt.Sprint(n1.Cluster().Netsplit().Unreachable)
		})
		start := time.Now()
		code, out, errOut = on(n1, "sessions", "show", "far-1")
		t.Logf("sessions show far-1 on n1, cut off from n2: exit %d in %v", code, time.Since(start).Round(time.Millisecond))
		if code != exitServer || !strings.Contains(errOut, "504") || !strings.Contains(errOut, "n2") || time.Since(start) > 3*time.Second {
			t.Errorf("sessions show far-1 on n1, cut off from n2: exit %d after %v\n%s%s\nwant exit 1 at once, 504 naming n2", code, time.Since(start), out, errOut)
		}
		if id(n1, "boom-2") == 0 {
			t.Error("n1 lost its conflict while cut off")
		}
		nw.Heal()
		pollUntil(t, "n3 to list n1's conflict again", func() (bool, string) {
			code, out, errOut := on(n3, "policy", "conflicts")
			return code == 0 && strings.Contains(out, ref2) && errOut == "", out + errOut
		})
	})
}
