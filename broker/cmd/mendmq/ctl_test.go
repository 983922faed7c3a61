package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/cluster"
	"github.com/mendmq/mendmq/cluster/netsplit"
)

// TestCtlCluster runs `mendmq ctl cluster ...` against two in-process
// nodes (free ports, not the example cluster's): status prints every
// column of every member, refused operations exit 1 with the server's
// reason, and leave/join report what happened.
func TestCtlCluster(t *testing.T) {
	start := func(name string, seeds ...string) *brokertest.Node {
		cfg := brokertest.Config()
		cfg.Node.Name = name
		cfg.Cluster = cluster.LoopbackConfig()
		cfg.Cluster.Seeds = seeds
		return brokertest.Start(t, cfg)
	}
	a := start("ctl-a")
	self := func(nd *brokertest.Node) cluster.MemberStatus {
		for _, m := range nd.Cluster().Status().Members {
			if m.Self {
				return m
			}
		}
		t.Fatalf("%s does not list itself", nd.Cluster().Name())
		return cluster.MemberStatus{}
	}
	b := start("ctl-b", self(a).GossipAddr)
	brokertest.Eventually(t, "both nodes to see each other alive and connected", func() bool {
		for _, nd := range []*brokertest.Node{a, b} {
			st := nd.Cluster().Status()
			if len(st.Members) != 2 {
				return false
			}
			for _, m := range st.Members {
				if m.State != "alive" || !m.Self && !m.Reachable {
					return false
				}
			}
		}
		return true
	})
	run := func(nd *brokertest.Node, args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		code := ctl(append([]string{"--admin", nd.AdminAddr()}, args...), &out, &errOut)
		return code, out.String(), errOut.String()
	}

	// status: one row per member, every column filled.
	code, out, errOut := run(a, "cluster", "status")
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, errOut)
	}
	rows := statusRows(out)
	for _, nd := range []*brokertest.Node{a, b} {
		m := self(nd)
		row := rows[m.Name]
		if row == nil {
			t.Fatalf("status lacks a row for %s:\n%s", m.Name, out)
		}
		want := []string{m.Name, "alive", m.GossipAddr, m.DataAddr}
		if got := row[:4]; strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("status row of %s: MEMBER STATE GOSSIP DATA = %v, want %v", m.Name, got, want)
		}
		if wantReach := map[bool]string{true: "(self)", false: "true"}[nd == a]; row[4] != wantReach {
			t.Errorf("status row of %s: REACHABLE %q, want %q", m.Name, row[4], wantReach)
		}
	}
	if !strings.HasPrefix(out, "node ctl-a: ") {
		t.Errorf("status header: %q", strings.SplitN(out, "\n", 2)[0])
	}

	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stdout string // substring of stdout
		stderr string // substring of stderr
		on     *brokertest.Node
	}{
		{"forget alive", []string{"cluster", "forget", "ctl-b"}, 1, "", "409 Conflict", a},
		{"forget unknown", []string{"cluster", "forget", "nobody"}, 1, "", "404 Not Found", a},
		{"forget self", []string{"cluster", "forget", "ctl-a"}, 1, "", "cannot forget itself", a},
		{"usage", []string{"cluster"}, 2, "", "usage: mendmq ctl", a},
		{"leave", []string{"cluster", "leave"}, 0, "ctl-b left the cluster: ", "", b},
		{"leave twice", []string{"cluster", "leave"}, 1, "", "left the cluster", b},
		{"join after leave", []string{"cluster", "join", self(a).GossipAddr}, 1, "", "409 Conflict", b},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := run(tc.on, tc.args...)
			if code != tc.code || !strings.Contains(out, tc.stdout) || !strings.Contains(errOut, tc.stderr) {
				t.Errorf("ctl %v: exit %d, stdout %q, stderr %q; want exit %d, stdout with %q, stderr with %q",
					tc.args, code, out, errOut, tc.code, tc.stdout, tc.stderr)
			}
		})
	}

	// The node that left shows itself alone; the other sees it left.
	if code, out, errOut := run(b, "cluster", "status"); code != 0 || len(statusRows(out)) != 1 || statusRows(out)["ctl-b"][1] != "left" {
		t.Errorf("status of the node that left: exit %d\n%s%s", code, out, errOut)
	}
	brokertest.Eventually(t, "ctl-a to see ctl-b left", func() bool {
		_, out, _ := run(a, "cluster", "status")
		row := statusRows(out)["ctl-b"]
		return row != nil && row[1] == "left"
	})
}

// statusRows splits the member table of `ctl cluster status` into
// columns, by member name.
func statusRows(out string) map[string][]string {
	rows := map[string][]string{}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 9 && f[0] != "MEMBER" {
			rows[f[0]] = f
		}
	}
	return rows
}

// TestNetsplitLine: `ctl cluster status` says in one line whether the
// node is split, gated, who is unreachable and why, and the last heal.
func TestNetsplitLine(t *testing.T) {
	at := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		ns   cluster.NetsplitStatus
		want []string
	}{
		{"never split", cluster.NetsplitStatus{Status: netsplit.Status{Mode: "any"}}, []string{"netsplit: none (mode any; 0 since start)"}},
		{"healed", cluster.NetsplitStatus{Status: netsplit.Status{Mode: "majority"}, Splits: 2,
			LastHeal: &cluster.Heal{At: at, Duration: 3 * time.Second, Converged: at.Add(time.Second), Convergence: time.Second}},
			[]string{"2 since start", "last healed 2026-12-03T10:00:00Z after 3s", "converged in 1s"}},
		{"gated", cluster.NetsplitStatus{Status: netsplit.Status{Split: true, Gated: true, Mode: "any", Since: at,
			Unreachable: []netsplit.Unreachable{{Name: "n3", Since: at, LastContact: at.Add(-400 * time.Millisecond), Reason: "link down"}}}},
			[]string{"SPLIT since 2026-12-03T10:00:00Z", "GATED", "n3 (link down, uncertainty 400ms)"}},
		{"majority side", cluster.NetsplitStatus{Status: netsplit.Status{Split: true, Mode: "majority", Since: at,
			Unreachable: []netsplit.Unreachable{{Name: "n1", Since: at, Reason: "dead"}}}},
			[]string{"not gated (this side has the majority)", "n1 (dead, uncertainty 0s)"}},
	} {
		got := netsplitLine(tc.ns)
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: %q lacks %q", tc.name, got, w)
			}
		}
	}
}
