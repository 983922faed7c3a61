package broker_test

import (
	"slices"
	"testing"

	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/cluster"
)

// TestDebugPartitionAPI: the partition switch answers 403 while
// admin.debug is false and 409 without a cluster; bad input changes
// nothing; a cut shows in /api/v1/cluster; turning admin.debug off by a
// reload heals every cut.
func TestDebugPartitionAPI(t *testing.T) {
	t.Parallel()
	single := brokertest.Config()
	single.Admin.Debug = true
	alone := brokertest.Start(t, single)
	mustCall(t, alone, "POST", "/api/v1/debug/partition", `{"members":["x"]}`, 409, nil)

	start := func(name string, debug bool, seeds ...string) *brokertest.Node {
		cfg := brokertest.Config()
		cfg.Node.Name, cfg.Admin.Debug = name, debug
		cfg.Cluster = cluster.LoopbackConfig()
		cfg.Cluster.Seeds = seeds
		return brokertest.Start(t, cfg)
	}
	a := start("dbg-a", false)
	m, _ := a.Cluster().Members().Member("dbg-a")
	b := start("dbg-b", true, m.GossipAddr)
	brokertest.Eventually(t, "two alive members", func() bool {
		return len(a.Cluster().Members().Alive()) == 2 && len(b.Cluster().Members().Alive()) == 2
	})

	mustCall(t, a, "POST", "/api/v1/debug/partition", `{"members":["dbg-b"]}`, 403, nil)
	mustCall(t, a, "POST", "/api/v1/debug/heal", ``, 403, nil)
	var st struct {
		Enabled bool     `json:"enabled"`
		Cut     []string `json:"cut"`
		Healed  []string `json:"healed"`
	}
	mustCall(t, a, "GET", "/api/v1/debug/partition", ``, 200, &st)
	if st.Enabled || len(st.Cut) != 0 {
		t.Fatalf("debug off: %+v", st)
	}
	for _, body := range []string{``, `{}`, `{"members":[]}`, `{"members":["dbg-b"],"x":1}`, `{"members":["nope"]}`, `{"members":["dbg-b"`, `{"members":["dbg-b"]}x`} {
		mustCall(t, b, "POST", "/api/v1/debug/partition", body, 400, nil)
	}
	mustCall(t, b, "POST", "/api/v1/debug/partition", `{"members":["dbg-b"]}`, 400, nil) // itself
	if cut := b.Cluster().DebugCuts(); len(cut) != 0 {
		t.Fatalf("bad input cut %v", cut)
	}

	mustCall(t, b, "POST", "/api/v1/debug/partition", `{"members":["dbg-a"]}`, 200, &st)
	if !st.Enabled || !slices.Equal(st.Cut, []string{"dbg-a"}) {
		t.Fatalf("after the cut: %+v", st)
	}
	var cl struct {
		Status cluster.Status `json:"status"`
	}
	mustCall(t, b, "GET", "/api/v1/cluster", ``, 200, &cl)
	if !slices.Equal(cl.Status.DebugCut, []string{"dbg-a"}) {
		t.Errorf("/api/v1/cluster debug_cut = %v", cl.Status.DebugCut)
	}
	brokertest.Eventually(t, "both sides split", func() bool { return a.Cluster().Split() && b.Cluster().Split() })

	// A reload that turns admin.debug off heals, and the switch refuses.
	cfg := b.Broker.Config()
	cfg.Admin.Debug = false
	if err := b.Broker.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	if cut := b.Cluster().DebugCuts(); len(cut) != 0 {
		t.Errorf("admin.debug off left %v cut", cut)
	}
	mustCall(t, b, "POST", "/api/v1/debug/partition", `{"members":["dbg-a"]}`, 403, nil)
	brokertest.Eventually(t, "the heal", func() bool { return !a.Cluster().Split() && !b.Cluster().Split() })

	cfg.Admin.Debug = true
	if err := b.Broker.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	mustCall(t, b, "POST", "/api/v1/debug/partition", `{"members":["dbg-a"]}`, 200, nil)
	mustCall(t, b, "POST", "/api/v1/debug/heal", `{"members":["dbg-a"]}`, 200, &st)
	if !slices.Equal(st.Healed, []string{"dbg-a"}) || len(st.Cut) != 0 {
		t.Errorf("heal answer %+v", st)
	}
}
