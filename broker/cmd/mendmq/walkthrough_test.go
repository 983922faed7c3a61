package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mendmq/mendmq/broker/brokertest"
)

// TestPolicyAuthorWalkthrough walks sdk/README.md's "Watch your policy
// decide a split" as a new policy author would, with the real binary:
// scaffold a Go and a C policy with `mendmq policy new`, build and
// unit-test them with their Makefiles (`mendmq policy test --cases`),
// start the example 3-node cluster (examples/cluster, ports moved to
// free ones), hot-load both modules by appending to the node configs,
// split node3 off with `mendmq ctl debug partition`, write the same map
// key and retained topic on both sides, heal with `ctl debug heal`, and
// check that every node holds the same outcome and that the author's
// modules decided it: the per-merge debug log names the policy and the
// module's sha256, and mendmq_policy_merges_total counts it.
func TestPolicyAuthorWalkthrough(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process walkthrough skipped in -short mode")
	}
	needMosquitto(t)
	for _, tool := range []string{"make", "clang", "wasm-ld"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (apt-get install -y make clang lld; .ci/run does it): %v", tool, err)
		}
	}
	began := time.Now()
	dir := t.TempDir()
	sdk, err := filepath.Abs(filepath.Join("..", "..", "..", "sdk"))
	if err != nil {
		t.Fatal(err)
	}

	// 1. Scaffold, build and unit-test a policy in each language.
	modules := map[string]string{} // policy name -> module path
	for _, lang := range []string{"go", "c"} {
		name := "my" + lang
		run(t, dir, binPath, "policy", "new", name, "--lang", lang, "--sdk", sdk)
		pdir := filepath.Join(dir, name)
		run(t, pdir, "make")
		out := run(t, pdir, "make", "test", "MENDMQ="+binPath)
		if !strings.Contains(out, "4 passed, 0 failed") {
			t.Fatalf("%s: make test did not pass the scaffold's cases:\n%s", name, out)
		}
		modules[name] = filepath.Join(pdir, name+".wasm")
	}
	t.Logf("scaffolded, built and unit-tested two policies in %v", time.Since(began).Round(time.Millisecond))

	// 2. The example cluster, moved to free ports, debug logs on
	// (make cluster CLUSTER_DIR=... CLUSTER_FLAGS='--set log.level=debug').
	cdir := filepath.Join(dir, "mycluster")
	if err := os.Mkdir(cdir, 0o755); err != nil {
		t.Fatal(err)
	}
	ports := map[string]string{}
	for _, p := range []string{"1883", "1884", "1885", "8081", "8082", "8083", "7946", "7947", "7956", "7957", "7966", "7967"} {
		ports["127.0.0.1:"+p] = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	}
	var procs [3]*proc
	var admins [3]string
	for i := range procs {
		raw, err := os.ReadFile(filepath.Join("..", "..", "..", "examples", "cluster", fmt.Sprintf("node%d.yaml", i+1)))
		if err != nil {
			t.Fatal(err)
		}
		cfg := string(raw)
		if !strings.Contains(cfg, "debug: true") {
			t.Fatalf("examples/cluster/node%d.yaml does not set admin.debug: true; the walkthrough needs it", i+1)
		}
		for from, to := range ports {
			cfg = strings.ReplaceAll(cfg, from, to)
		}
		path := filepath.Join(cdir, fmt.Sprintf("node%d.yaml", i+1))
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		p := &proc{out: newSyncBuffer(), exited: make(chan error, 1)}
		p.mqtt = portOf(t, ports[fmt.Sprintf("127.0.0.1:%d", 1883+i)])
		admins[i] = ports[fmt.Sprintf("127.0.0.1:%d", 8081+i)]
		p.launchArgs(t, "serve", "--config", path, "--set", "log.level=debug")
		procs[i] = p
	}
	logs := func() string {
		var b strings.Builder
		for _, p := range procs {
			b.WriteString(p.out.String())
		}
		return b.String()
	}
	ctlOut := func(i int, args ...string) (int, string) {
		code, out, errOut := runCtlArgs(append([]string{"--admin", admins[i]}, args...)...)
		return code, out + errOut
	}
	until(t, 30*time.Second, "three alive members on every node", logs, func() (bool, string) {
		for i := range procs {
			if _, out := ctlOut(i, "cluster status"); strings.Count(out, " alive ") != 3 || !strings.Contains(out, "netsplit: none") {
				return false, out
			}
		}
		return true, ""
	})

	// 3. Hot-load the two modules: append the block of sdk/README.md to
	// every node's config (its first lines continue the cluster section
	// that ends the example files); the nodes watch the file.
	add := fmt.Sprintf(`  allow_register_during_netsplit: true
  allow_publish_during_netsplit: true
policies:
  mygo: {module: %q}
  myc: {module: %q}
maps:
  orders: {merge_policy: mygo}
retained:
  merge_policy: myc
`, modules["mygo"], modules["myc"])
	for i := range procs {
		f, err := os.OpenFile(filepath.Join(cdir, fmt.Sprintf("node%d.yaml", i+1)), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(add); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	until(t, 60*time.Second, "both modules loaded on every node", logs, func() (bool, string) {
		for i := range procs {
			_, out := ctlOut(i, "policy list")
			for _, want := range []string{`myc\s+yes\s+\$retained`, `mygo\s+yes\s+orders`} {
				if !regexp.MustCompile(want).MatchString(out) {
					return false, out
				}
			}
		}
		return true, ""
	})

	// What the hot-loaded module decides, asked of a node without a
	// split (nothing is parked or written).
	if code, out := ctlOut(1, "policy", "test", "orders", "--merging", `{"key":"k","value":"new","last_update_time":2}`,
		"--existing", `{"key":"k","value":"old","last_update_time":1}`); code != 0 ||
		!strings.Contains(out, fmt.Sprintf("mygo (sha256 %.12s) on map orders: take_merging", fileSHA(t, modules["mygo"]))) {
		t.Fatalf("ctl policy test: exit %d:\n%s", code, out)
	}

	// split cuts node3 off from one command on node3 and waits until
	// both sides see it; write puts key on node1, then on node3, during
	// the split (node3 last); heal heals from node3.
	// mapsSettled reports whether node i's maps table has members
	// members owning the 271 partitions, none migrating (ctl map stats).
	mapsSettled := func(i, members int) (bool, string) {
		_, out := ctlOut(i, "map", "stats")
		owned, rows := 0, 0
		for _, line := range strings.Split(out, "\n") {
			var member string
			var parts, backups, migrating int
			if n, _ := fmt.Sscanf(line, "%s %d %d %d", &member, &parts, &backups, &migrating); n == 4 && strings.HasPrefix(member, "node") {
				if migrating != 0 {
					return false, out
				}
				owned, rows = owned+parts, rows+1
			}
		}
		if rows != members || owned != 271 {
			return false, fmt.Sprintf("node%d: %d members own %d partitions, want %d:\n%s", i+1, rows, owned, members, out)
		}
		return true, ""
	}
	// split cuts node3 off from one command on node3 and waits until
	// each side has settled: node3 sees node1 and node2 dead and holds
	// every partition alone, node1 and node2 share them. (Split while the
	// tables still disagree, a heal can leave a node out of the maps'
	// table — the open bug of README "Partitioned maps"; heal before a
	// side has declared the other dead, and that side still counts it, so
	// the sizes that decide who merges into whom are not the real ones.)
	split := func() {
		t.Helper()
		until(t, 30*time.Second, "the maps to settle on every node", logs, func() (bool, string) {
			for i := range procs {
				if ok, why := mapsSettled(i, 3); !ok {
					return false, why
				}
			}
			return true, ""
		})
		if code, out := ctlOut(2, "debug", "partition", "node1", "node2"); code != 0 || !strings.Contains(out, "cut to node1, node2") {
			t.Fatalf("ctl debug partition: exit %d\n%s", code, out)
		}
		until(t, 30*time.Second, "each side to settle apart", logs, func() (bool, string) {
			for i, dead := range []int{1, 1, 2} {
				if _, out := ctlOut(i, "cluster status"); !strings.Contains(out, "netsplit: SPLIT") || strings.Count(out, " dead ") != dead {
					return false, out
				}
			}
			for i, members := range []int{2, 2, 1} {
				if ok, why := mapsSettled(i, members); !ok {
					return false, why
				}
			}
			return true, ""
		})
	}
	write := func(key, prefix string, retained bool) {
		t.Helper()
		for _, node := range []int{0, 2} {
			val := fmt.Sprintf("%snode%d", prefix, node+1)
			until(t, 20*time.Second, "a map write on node"+fmt.Sprint(node+1), logs, func() (bool, string) {
				code, out := ctlOut(node, "map", "put", "orders", key, val)
				return code == 0, out
			})
			if !retained {
				continue
			}
			if out, err := mosq(t, "mosquitto_pub", procs[node].mqtt, "-q", "1", "-r", "-t", "sensors/1", "-m", val); err != nil {
				t.Fatalf("retained publish on node%d during the split: %v %s", node+1, err, out)
			}
		}
	}
	heal := func() {
		t.Helper()
		if code, out := ctlOut(2, "debug", "heal"); code != 0 || !strings.Contains(out, "healed node1, node2") {
			t.Fatalf("ctl debug heal: exit %d\n%s", code, out)
		}
	}

	// 4. Split node3 off.
	split()
	// 5. The same key and topic written on both sides, node3 last.
	write("k1", "from-", true)
	// 6. Heal, and watch the author's modules decide.
	heal()
	until(t, 30*time.Second, "every node to hold node3's writes", logs, func() (bool, string) {
		for i := range procs {
			if _, out := ctlOut(i, "map", "get", "orders", "k1"); !regexp.MustCompile(`value\s+from-node3`).MatchString(out) {
				return false, fmt.Sprintf("node%d: %s", i+1, out)
			}
			if _, out := ctlOut(i, "retained", "get", "sensors/1"); !strings.Contains(out, `"from-node3"`) {
				return false, fmt.Sprintf("node%d: %s", i+1, out)
			}
		}
		return true, ""
	})
	for name, m := range map[string]string{"mygo": "orders", "myc": `\$retained`} {
		sum := fileSHA(t, modules[name])
		line := regexp.MustCompile(`msg="merge decided" .*map=` + m + ` key=\S+ verdict=take_merging existing=true policy=` + name + ` sha256=` + sum)
		if !line.MatchString(logs()) {
			t.Errorf("no debug log line of %s (sha256 %s) deciding a merge of %s", name, sum, m)
		}
		metric := regexp.MustCompile(`mendmq_policy_merges_total\{map="` + m + `",policy="` + name + `",verdict="take_merging"\} [1-9]`)
		found := false
		for _, a := range admins {
			found = found || metric.MatchString(httpGet(t, "http://"+a+"/metrics"))
		}
		if !found {
			t.Errorf("no node counted a merge of %s by %s in mendmq_policy_merges_total", m, name)
		}
	}
	if t.Failed() {
		t.Fatalf("node logs:\n%s", logs())
	}

	// 7. A policy that leaves the decision to an operator: every merge
	// it sees is parked; the operator resolves it from any node.
	run(t, dir, binPath, "policy", "new", "needsop", "--lang", "c", "--sdk", sdk)
	src := filepath.Join(dir, "needsop", "policy.c")
	code, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	stub := "    (void)map_name;\n"
	if !strings.Contains(string(code), stub) {
		t.Fatalf("the C scaffold changed; sdk/README.md's step 7 edits the line %q:\n%s", stub, code)
	}
	code = []byte(strings.Replace(string(code), stub, stub+`    return mendmq_fail("an operator decides");`+"\n", 1))
	if err := os.WriteFile(src, code, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, filepath.Join(dir, "needsop"), "make")
	for i := range procs {
		path := filepath.Join(cdir, fmt.Sprintf("node%d.yaml", i+1))
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		cfg := strings.Replace(string(raw), "  orders: {merge_policy: mygo}", "  orders: {merge_policy: needsop}", 1)
		cfg = strings.Replace(cfg, "policies:\n", fmt.Sprintf("policies:\n  needsop: {module: %q}\n", filepath.Join(dir, "needsop", "needsop.wasm")), 1)
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	until(t, 60*time.Second, "needsop loaded for orders on every node", logs, func() (bool, string) {
		for i := range procs {
			if _, out := ctlOut(i, "policy list"); !regexp.MustCompile(`needsop\s+yes\s+orders`).MatchString(out) {
				return false, out
			}
		}
		return true, ""
	})
	split()
	write("k2", "k2-", false)
	heal()
	var ref string
	until(t, 30*time.Second, "the parked conflict, listed from node2", logs, func() (bool, string) {
		code, out, errOut := runCtlArgs("--admin", admins[1], "--json", "policy", "conflicts")
		if code != 0 {
			return false, out + errOut
		}
		var page struct {
			Conflicts []struct {
				Ref     string `json:"ref"`
				Map     string `json:"map"`
				Policy  string `json:"policy"`
				Merging struct {
					Key   []byte `json:"key"`
					Value []byte `json:"value"`
				} `json:"merging"`
			} `json:"conflicts"`
		}
		if err := json.Unmarshal([]byte(out), &page); err != nil {
			return false, fmt.Sprintf("%v: %s", err, out)
		}
		for _, c := range page.Conflicts {
			if c.Map == "orders" && string(c.Merging.Key) == "k2" && c.Policy == "needsop" && string(c.Merging.Value) == "k2-node3" {
				ref = c.Ref
				return true, ""
			}
		}
		return false, out
	})
	if code, out := ctlOut(1, "policy", "conflicts", "resolve", ref, "take_merging"); code != 0 {
		t.Fatalf("ctl policy conflicts resolve %s take_merging: exit %d\n%s", ref, code, out)
	}
	until(t, 20*time.Second, "every node to hold the entry the operator took", logs, func() (bool, string) {
		for i := range procs {
			if _, out := ctlOut(i, "map", "get", "orders", "k2"); !regexp.MustCompile(`value\s+k2-node3`).MatchString(out) {
				return false, fmt.Sprintf("node%d: %s", i+1, out)
			}
		}
		return true, ""
	})
	if _, out := ctlOut(1, "policy", "conflicts"); strings.Contains(out, ref+" ") {
		t.Errorf("conflict %s still listed after its resolution:\n%s", ref, out)
	}
	t.Logf("walkthrough done in %v", time.Since(began).Round(time.Millisecond))
}

// run runs a command in dir with a bounded time and returns its output;
// a failure fails the test.
func run(t *testing.T, dir string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.WaitDelay = time.Second
	done := time.AfterFunc(2*time.Minute, func() { _ = cmd.Process.Kill() })
	defer done.Stop()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s (in %s): %v\n%s", name, strings.Join(args, " "), dir, err, out)
	}
	return string(out)
}

// until polls cond (a pause of 50 ms between tries) for at most d, and
// fails the test with cond's last answer and the node logs.
func until(t *testing.T, d time.Duration, what string, logs func() string, cond func() (bool, string)) {
	t.Helper()
	var why string
	if !brokertest.PollFor(d, func() (ok bool) { ok, why = cond(); return ok }) {
		t.Fatalf("timed out after %v waiting for %s: %s\nnode logs:\n%s", d, what, why, logs())
	}
}

func portOf(t *testing.T, addr string) int {
	t.Helper()
	var p int
	if _, err := fmt.Sscanf(addr[strings.LastIndex(addr, ":")+1:], "%d", &p); err != nil {
		t.Fatal(err)
	}
	return p
}

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
