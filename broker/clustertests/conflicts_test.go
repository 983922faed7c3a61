package clustertests

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mendmq/mendmq/broker"
	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/broker/clusterhook"
	"github.com/mendmq/mendmq/broker/config"
	"github.com/mendmq/mendmq/cluster/partition"
	"github.com/mendmq/mendmq/plugins"
)

// post sends body to the admin API of node n and returns the status and
// the answer.
func post(t *testing.T, n *brokertest.Node, path, body string) (int, string) {
	t.Helper()
	c := http.Client{Timeout: 20 * time.Second}
	resp, err := c.Post("http://"+n.AdminAddr()+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// conflictList lists the parked conflicts through node n: its own
// (scope "node") or the cluster's ("cluster").
func conflictList(t *testing.T, n *brokertest.Node, scope string) broker.ConflictList {
	t.Helper()
	code, body := n.Get("/api/v1/policies/conflicts?scope=" + scope)
	if code != http.StatusOK {
		t.Fatalf("GET conflicts: %d %s", code, body)
	}
	var l broker.ConflictList
	if err := json.Unmarshal([]byte(body), &l); err != nil {
		t.Fatalf("GET conflicts: %v: %s", err, body)
	}
	return l
}

// conflictsOf lists node n's parked conflicts.
func conflictsOf(t *testing.T, n *brokertest.Node) []plugins.Conflict {
	t.Helper()
	var cs []plugins.Conflict
	for _, c := range conflictList(t, n, "node").Conflicts {
		cs = append(cs, c.Conflict)
	}
	return cs
}

// TestParkedMapConflict: a policy that traps on an entry at the heal
// parks it on the key's owner (the existing entry stays, nothing is
// lost); the conflict survives the owner's restart, bad resolutions are
// refused with a reason, a rerun goes through the policy again (which
// parks it anew), and take_merging writes the parked entry on every node
// and removes the conflict.
func TestParkedMapConflict(t *testing.T) {
	trap, err := filepath.Abs(filepath.Join("..", "..", "plugins", "testdata", "hostile", "trap.wasm"))
	if err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, 3, clusterOptions{Faults: true, Storage: true, Mutate: func(_ string, cfg *config.Config) {
		cfg.Plugins.Policies["hostile"] = plugins.PolicyConfig{Module: trap}
		cfg.Plugins.Maps["evil"] = plugins.MapConfig{MergePolicy: "hostile"}
	}})
	c.eventually("the maps to settle", c.mapsSettled(c.names...))
	c.net.Partition([]string{"n1", "n2"}, []string{"n3"})
	c.eventually("both sides to settle", func() (bool, string) {
		if ok, why := c.mapsSettled("n1", "n2")(); !ok {
			return false, why
		}
		return c.mapsSettled("n3")()
	})
	put := func(n, key, value string) {
		t.Helper()
		if _, err := c.node(n).Cluster().Maps().Put(mctx(t), "evil", key, []byte(value), 0); err != nil {
			t.Fatalf("%s put %s: %v", n, key, err)
		}
	}
	put("n1", "boom-1", "big")
	put("n3", "boom-1", "small")
	put("n3", "fine-1", "small")
	c.net.Heal()
	c.eventually("the merge", func() (bool, string) {
		if ok, why := c.mapsSettled(c.names...)(); !ok {
			return false, why
		}
		if p := c.node("n3").Cluster().Maps().Progress(); p.Finished.IsZero() {
			return false, "n3 has not merged"
		}
		return true, ""
	})
	get := func(n, key string) string {
		t.Helper()
		e, ok, err := c.node(n).Cluster().Maps().Get(mctx(t), "evil", key)
		if err != nil {
			t.Fatalf("%s get %s: %v", n, key, err)
		}
		if !ok {
			return "<absent>"
		}
		return string(e.Value)
	}
	for _, n := range c.names {
		if v := get(n, "boom-1"); v != "big" {
			t.Fatalf("%s: boom-1 = %q, want the existing entry kept (big)", n, v)
		}
		if v := get(n, "fine-1"); v != "small" {
			t.Fatalf("%s: fine-1 = %q, want small (merged)", n, v)
		}
	}
	// The conflict is on the node that owned boom-1 at the heal.
	owner := ""
	var parked plugins.Conflict
	for _, n := range c.names {
		cs := conflictsOf(t, c.node(n))
		if len(cs) > 0 {
			if owner != "" || len(cs) != 1 {
				t.Fatalf("conflicts on %s and %s (%d): want one, on the owner", owner, n, len(cs))
			}
			owner, parked = n, cs[0]
		}
	}
	if owner == "" || parked.Map != "evil" || string(parked.Merging.Key) != "boom-1" || string(parked.Merging.Value) != "small" ||
		parked.Existing == nil || string(parked.Existing.Value) != "big" || parked.Kind != plugins.FailureTrap {
		t.Fatalf("parked conflict on %q: %+v", owner, parked)
	}

	// Every other node lists it, as the owner's.
	for _, n := range c.names {
		l := conflictList(t, c.node(n), "cluster")
		if len(l.Conflicts) != 1 || l.Conflicts[0].Node != owner || l.Conflicts[0].Ref != fmt.Sprintf("%s/%d", owner, parked.ID) || len(l.Unreachable) != 0 {
			t.Fatalf("%s lists %+v, unreachable %+v; want %s's conflict %d", n, l.Conflicts, l.Unreachable, owner, parked.ID)
		}
	}

	// The owner restarts: the conflict is still there, same id.
	c.stop(owner)
	c.start(owner)
	c.waitFormed()
	c.eventually("the maps to settle", c.mapsSettled(c.names...))
	cs := conflictsOf(t, c.node(owner))
	if len(cs) != 1 || cs[0].ID != parked.ID || string(cs[0].Merging.Value) != "small" {
		t.Fatalf("after %s restarted: conflicts %+v, want %d", owner, cs, parked.ID)
	}

	path := fmt.Sprintf("/api/v1/policies/conflicts/%d", parked.ID)
	for _, bad := range []struct {
		path, body string
		code       int
		want       string
	}{
		{path, `{"action":"apply"}`, http.StatusBadRequest, "take_merging"},
		{path, `{"action":`, http.StatusBadRequest, ""},
		{"/api/v1/policies/conflicts/999999", `{"action":"take_merging"}`, http.StatusNotFound, "no such conflict"},
		{"/api/v1/policies/conflicts/x", `{"action":"take_merging"}`, http.StatusBadRequest, "number"},
	} {
		code, body := post(t, c.node(owner), bad.path, bad.body)
		if code != bad.code || !strings.Contains(body, bad.want) {
			t.Errorf("POST %s %s: %d %s, want %d with %q", bad.path, bad.body, code, body, bad.code, bad.want)
		}
	}
	if cs := conflictsOf(t, c.node(owner)); len(cs) != 1 {
		t.Fatalf("a refused resolution changed the conflicts: %+v", cs)
	}
	// Re-run with the same (still trapping) policy: merged at the key's
	// owner now (since the heal the partition may have moved: the
	// merging side joins the table after its merge), which parks it
	// again; the old conflict is gone.
	code, body := post(t, c.node(owner), path, `{"action":"rerun"}`)
	if code != http.StatusOK || !strings.Contains(body, "merged at the owner") {
		t.Fatalf("resolve rerun: %d %s", code, body)
	}
	keyOwner := c.node(owner).Cluster().Maps().Table().Owner(partition.Of([]byte("boom-1"), partition.DefaultCount))
	for _, n := range c.names {
		cs := conflictsOf(t, c.node(n))
		want := 0
		if n == keyOwner {
			want = 1
		}
		if len(cs) != want || (want == 1 && string(cs[0].Merging.Value) != "small") {
			t.Fatalf("after a rerun that failed again: %s has %+v, want %d (the key's owner is %s)", n, cs, want, keyOwner)
		}
		if want == 1 {
			path = fmt.Sprintf("/api/v1/policies/conflicts/%d", cs[0].ID)
		}
	}
	if v := get(owner, "boom-1"); v != "big" {
		t.Fatalf("boom-1 = %q after a failed rerun, want big", v)
	}
	owner = keyOwner
	code, body = post(t, c.node(owner), path, `{"action":"take_merging"}`)
	if code != http.StatusOK || !strings.Contains(body, `"written"`) {
		t.Fatalf("resolve take_merging: %d %s", code, body)
	}
	for _, n := range c.names {
		if v := get(n, "boom-1"); v != "small" {
			t.Errorf("%s: boom-1 = %q after take_merging, want small", n, v)
		}
	}
	if cs := conflictsOf(t, c.node(owner)); len(cs) != 0 {
		t.Fatalf("conflicts after the resolution: %+v", cs)
	}
	if code, body := post(t, c.node(owner), path, `{"action":"keep_existing"}`); code != http.StatusNotFound {
		t.Fatalf("resolving twice: %d %s", code, body)
	}
}

// buildTrapFor compiles the hostile test module (plugins/testdata/hostile)
// so that it traps on map mapName, keys starting with "boom"; it skips the
// test where clang cannot target wasm32.
func buildTrapFor(t *testing.T, mapName string) string {
	t.Helper()
	clang, err := exec.LookPath("clang")
	if err != nil {
		t.Skip("clang not installed: cannot build the test policy (apt-get install clang lld)")
	}
	root := filepath.Join("..", "..")
	out := filepath.Join(t.TempDir(), "trap.wasm")
	args := []string{"--target=wasm32", "-O2", "-ffreestanding", "-nostdlib", "-mbulk-memory",
		"-I", filepath.Join(root, "sdk", "c"), "-Wl,--no-entry", "-Wl,--strip-all",
		"-DHOSTILE_TRAP", fmt.Sprintf("-DHOSTILE_MAP=%q", mapName),
		"-o", out, filepath.Join(root, "plugins", "testdata", "hostile", "hostile.c")}
	if b, err := exec.Command(clang, args...).CombinedOutput(); err != nil {
		if strings.Contains(string(b), "wasm-ld") || strings.Contains(string(b), "unable to execute") {
			t.Skipf("clang cannot link wasm32 (is lld installed?): %s", b)
		}
		t.Fatalf("clang: %v\n%s", err, b)
	}
	return out
}

// TestParkedRetainedConflict: a $retained policy that traps on the
// retained messages set on both sides of a split parks them at the heal
// (each node keeps its own, nothing is lost); take_merging on one node
// writes its parked message, which then wins on every node.
func TestParkedRetainedConflict(t *testing.T) {
	trap := buildTrapFor(t, "$retained")
	c := newCluster(t, 3, clusterOptions{Faults: true, Mutate: func(_ string, cfg *config.Config) {
		cfg.Plugins.Policies["hostile"] = plugins.PolicyConfig{Module: trap}
		cfg.Plugins.Retained.MergePolicy = "hostile"
		cfg.Cluster.AllowPublishDuringNetsplit = true
	}})
	big := brokertest.MustV5(t, c.node("n1").URL(0), "pub-big")
	small := brokertest.MustV5(t, c.node("n3").URL(0), "pub-small")
	c.net.Partition([]string{"n1", "n2"}, []string{"n3"})
	c.eventually("both sides to see the split", func() (bool, string) {
		for _, n := range c.names {
			if !c.node(n).Cluster().Split() {
				return false, n + " not split"
			}
		}
		return true, ""
	})
	big.MustPub("boom/t", 1, true, "big")
	small.MustPub("boom/t", 1, true, "small")
	c.net.Heal()
	c.waitFormed()
	var at string
	var parked plugins.Conflict
	c.eventually("a parked $retained conflict", func() (bool, string) {
		for _, n := range c.names {
			for _, cf := range conflictsOf(t, c.node(n)) {
				if cf.Map == plugins.RetainedMap && string(cf.Merging.Key) == "boom/t" {
					at, parked = n, cf
					return true, ""
				}
			}
		}
		return false, "none yet"
	})
	retainedOn := func(n string) string {
		code, body := c.node(n).Get("/api/v1/retained?filter=boom/t")
		if code != http.StatusOK {
			t.Fatalf("GET retained on %s: %d %s", n, code, body)
		}
		var l struct {
			Messages []struct {
				Payload *string `json:"payload"`
			} `json:"messages"`
		}
		if err := json.Unmarshal([]byte(body), &l); err != nil || len(l.Messages) != 1 || l.Messages[0].Payload == nil {
			return fmt.Sprintf("<%s>", body)
		}
		return *l.Messages[0].Payload
	}
	// Nothing is lost: each side still has its own message.
	for _, n := range c.names {
		if v := retainedOn(n); v != "big" && v != "small" {
			t.Fatalf("%s: retained boom/t = %q after a failed merge", n, v)
		}
	}
	code, body := post(t, c.node(at), fmt.Sprintf("/api/v1/policies/conflicts/%d", parked.ID), `{"action":"take_merging"}`)
	if code != http.StatusOK || !strings.Contains(body, "written") {
		t.Fatalf("take_merging on %s: %d %s", at, code, body)
	}
	// The merging message is the later of the two in the replicas'
	// canonical order (by write time), on every node — not the one from
	// the other side of the split: n3 parks "small" as merging too. (The
	// test expected "big" when n3 parked first and failed then.)
	pk, err := clusterhook.DecodePublish(parked.Merging.Value)
	if err != nil {
		t.Fatalf("parked merging value: %v", err)
	}
	want := string(pk.Payload)
	if want != "big" && want != "small" {
		t.Fatalf("parked merging message %q", want)
	}
	c.eventually("the resolved message on every node", func() (bool, string) {
		for _, n := range c.names {
			if v := retainedOn(n); v != want {
				return false, fmt.Sprintf("%s: %q, want %q", n, v, want)
			}
		}
		return true, ""
	})
	// A failed merge is parked once per node that saw the conflict, not
	// again at every anti-entropy round.
	for _, n := range c.names {
		k := 0
		for _, cf := range conflictsOf(t, c.node(n)) {
			if cf.Map == plugins.RetainedMap && string(cf.Merging.Key) == "boom/t" {
				k++
			}
		}
		t.Logf("%s: %d parked conflicts of boom/t", n, k)
		if k > 1 {
			t.Errorf("%s: boom/t parked %d times", n, k)
		}
	}
}
