package clustertests

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mendmq/mendmq/broker/config"
	"github.com/mendmq/mendmq/plugins"
)

// builtinMaps names one map per built-in policy.
var builtinMaps = []string{"passthrough", "putifabsent", "higherhits", "latestupdate", "latestaccess", "expirationtime", "discard"}

func policyMaps(name string, cfg *config.Config) {
	for _, p := range builtinMaps {
		cfg.Plugins.Maps["m-"+p] = plugins.MapConfig{MergePolicy: p}
	}
}

func (c *testCluster) mapsSettled(names ...string) func() (bool, string) {
	return func() (bool, string) {
		for _, n := range names {
			m := c.node(n).Cluster().Maps()
			if !m.Settled() || len(m.Table().Members) != len(names) {
				var all []string
				for _, o := range c.names {
					om := c.node(o).Cluster().Maps()
					all = append(all, fmt.Sprintf("%s table %v lineage %+v migrating %d alive %v", o, om.Table().Members, om.Lineage(),
						len(om.Migrating()), c.node(o).Cluster().Members().Alive()))
				}
				return false, fmt.Sprintf("%s: migrating %v, table %v; %s", n, m.Migrating(), m.Table().Members, strings.Join(all, "; "))
			}
		}
		return true, ""
	}
}

// mctx bounds one map operation of a test.
func mctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// writeSide writes, on node n, key "both" = value (with ttl), reads it
// reads times, and writes "only-"+value.
func (c *testCluster) writeSide(t *testing.T, n, value string, ttl time.Duration, reads int) {
	t.Helper()
	m := c.node(n).Cluster().Maps()
	for _, mp := range builtinMaps {
		if _, err := m.Put(mctx(t), "m-"+mp, "both", []byte(value), ttl); err != nil {
			t.Fatalf("%s put: %v", n, err)
		}
		if _, err := m.Put(mctx(t), "m-"+mp, "only-"+value, []byte(value), 0); err != nil {
			t.Fatalf("%s put: %v", n, err)
		}
		if _, err := m.Put(mctx(t), "m-"+mp, "tie", []byte(value), 0); err != nil {
			t.Fatalf("%s put: %v", n, err)
		}
		for range reads {
			if _, _, err := m.Get(mctx(t), "m-"+mp, "both"); err != nil {
				t.Fatalf("%s get: %v", n, err)
			}
		}
	}
}

// TestMapMergeBuiltins splits 3 and 5 node clusters 2|1 and 3|2, writes
// conflicting entries on both sides, heals, and checks each built-in's
// outcome on every node against Hazelcast's rule: the smaller side's
// entry is merging, the bigger side's existing; ties go to merging.
func TestMapMergeBuiltins(t *testing.T) {
	for _, tc := range []struct {
		nodes int
		big   []string
		small []string
	}{
		{3, []string{"n1", "n2"}, []string{"n3"}},
		{5, []string{"n1", "n2", "n3"}, []string{"n4", "n5"}},
	} {
		t.Run(fmt.Sprintf("%d|%d", len(tc.big), len(tc.small)), func(t *testing.T) {
			c := newCluster(t, tc.nodes, clusterOptions{Faults: true, Mutate: policyMaps})
			c.eventually("the maps to settle", c.mapsSettled(c.names...))
			c.net.Partition(tc.big, tc.small)
			c.eventually("both sides to settle", func() (bool, string) {
				if ok, why := c.mapsSettled(tc.big...)(); !ok {
					return false, why
				}
				return c.mapsSettled(tc.small...)()
			})
			// The big side first: fewer-hit, earlier, sooner-expiring
			// entries; then the small side's, later, longer-lived, read
			// less. "tie" has no reads on either side: equal hits.
			c.writeSide(t, tc.big[0], "big", time.Hour, 3)
			time.Sleep(5 * time.Millisecond) // later updates and accesses: what latestupdate/latestaccess compare
			c.writeSide(t, tc.small[0], "small", 2*time.Hour, 1)
			c.net.Heal()
			c.eventually("the merge", func() (bool, string) {
				if ok, why := c.mapsSettled(c.names...)(); !ok {
					return false, why
				}
				for _, n := range tc.small {
					if p := c.node(n).Cluster().Maps().Progress(); p.Finished.IsZero() {
						return false, n + " has not merged"
					}
				}
				return true, ""
			})
			want := map[string]map[string]string{ // map -> key -> value ("" absent)
				"passthrough":    {"both": "small", "only-small": "small", "only-big": "big", "tie": "small"},
				"putifabsent":    {"both": "big", "only-small": "small", "only-big": "big", "tie": "big"},
				"higherhits":     {"both": "big", "only-small": "small", "only-big": "big", "tie": "small"},
				"latestupdate":   {"both": "small", "only-small": "small", "only-big": "big", "tie": "small"},
				"latestaccess":   {"both": "small", "only-small": "small", "only-big": "big", "tie": "small"},
				"expirationtime": {"both": "small", "only-small": "small", "only-big": "big", "tie": "small"},
				"discard":        {"both": "big", "only-small": "", "only-big": "big", "tie": "big"},
			}
			for _, n := range c.names {
				m := c.node(n).Cluster().Maps()
				for mp, keys := range want {
					for key, v := range keys {
						e, ok, err := m.Get(mctx(t), "m-"+mp, key)
						if err != nil || ok != (v != "") || (ok && string(e.Value) != v) {
							t.Errorf("%s: %s/%s = %q %v %v, want %q", n, mp, key, e.Value, ok, err, v)
						}
					}
				}
			}
		})
	}
}

// TestMapMergeThreeWays: 1|1|1, each node writes the same keys in turn;
// after the heal every node has the same entries, latestupdate keeps the
// last write and the other policies one of the written values.
func TestMapMergeThreeWays(t *testing.T) {
	c := newCluster(t, 3, clusterOptions{Faults: true, Mutate: policyMaps})
	c.eventually("the maps to settle", c.mapsSettled(c.names...))
	c.net.Partition([]string{"n1"}, []string{"n2"}, []string{"n3"})
	c.eventually("three sides", func() (bool, string) {
		for _, n := range c.names {
			if ok, why := c.mapsSettled(n)(); !ok {
				return false, why
			}
		}
		return true, ""
	})
	for _, n := range c.names {
		c.writeSide(t, n, "from-"+n, 0, 0)
		time.Sleep(5 * time.Millisecond)
	}
	c.net.Heal()
	c.eventually("one cluster again", c.mapsSettled(c.names...))
	for _, mp := range builtinMaps {
		var vals []string
		for _, n := range c.names {
			e, ok, err := c.node(n).Cluster().Maps().Get(mctx(t), "m-"+mp, "both")
			if err != nil || !ok {
				for _, o := range c.names {
					om := c.node(o).Cluster().Maps()
					le, lok := om.Local("m-"+mp, "both")
					st := om.Stats()
					t.Logf("%s: local %q %v; recreated %d migrations %d promotions %d merged-in %d merged %d kept %d; progress %+v",
						o, le.Value, lok, st.Recreated.Load(), st.Migrations.Load(), st.Promotions.Load(), st.MergedIn.Load(),
						st.Merged.Load(), st.MergeKept.Load(), om.Progress())
				}
				t.Fatalf("%s: %s/both: %v %v", n, mp, ok, err)
			}
			vals = append(vals, string(e.Value))
		}
		if len(slices.Compact(slices.Clone(vals))) != 1 {
			t.Errorf("%s: nodes disagree: %v", mp, vals)
		}
		if !strings.HasPrefix(vals[0], "from-n") {
			t.Errorf("%s: %q is no written value", mp, vals[0])
		}
		if mp == "latestupdate" && vals[0] != "from-n3" {
			t.Errorf("latestupdate kept %q, want the last write, from-n3", vals[0])
		}
	}
}
