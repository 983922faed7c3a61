// Package deploy_test checks the deploy files of examples/deploy as far as
// this machine can: the compose file and the Kubernetes manifests parse
// with the expected kinds and fields, the configuration they carry loads
// (and its policy module is the repository's), the Grafana dashboard only
// queries metrics a live node exports, and the Dockerfile builds where a
// Docker daemon answers.
package deploy_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/broker/config"
	"github.com/mendmq/mendmq/cluster"
	"github.com/mendmq/mendmq/plugins"
)

const repoRoot = "../.."

func readYAMLDocs(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var docs []map[string]any
	for {
		var d map[string]any
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if d != nil {
			docs = append(docs, d)
		}
	}
	return docs
}

// get walks maps and lists: get(doc, "spec", "template", "spec").
func get(t *testing.T, v any, path ...any) any {
	t.Helper()
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				t.Fatalf("at %v: not a map (%T)", path, v)
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				t.Fatalf("at %v: not a list with %d items", path, k+1)
			}
			v = l[k]
		}
	}
	return v
}

func str(t *testing.T, v any, path ...any) string {
	t.Helper()
	s, _ := get(t, v, path...).(string)
	return s
}

// writeToken stands in for the token a deployment mounts.
func writeToken(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "admin-token")
	if err := os.WriteFile(p, []byte("deploy-test-token-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// loadConfig loads a deploy configuration as a node would, with the
// environment the deploy file gives it and the paths that only exist in
// the container replaced.
func loadConfig(t *testing.T, yamlText string, env []string, sets ...string) config.Config {
	t.Helper()
	p := filepath.Join(t.TempDir(), "mendmq.yaml")
	if err := os.WriteFile(p, []byte(yamlText), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(config.Sources{File: p, Environ: env, Sets: append([]string{"admin.token_file=" + writeToken(t)}, sets...)})
	if err != nil {
		t.Fatalf("the deploy configuration does not load: %v", err)
	}
	return cfg
}

func TestComposeFile(t *testing.T) {
	docs := readYAMLDocs(t, "docker-compose.yml")
	if len(docs) != 1 {
		t.Fatalf("%d documents", len(docs))
	}
	c := docs[0]
	services, _ := get(t, c, "services").(map[string]any)
	var names []string
	for n := range services {
		names = append(names, n)
	}
	sort.Strings(names)
	if strings.Join(names, " ") != "node1 node2 node3" {
		t.Fatalf("services %v, want node1 node2 node3", names)
	}
	confFile := str(t, c, "configs", "mendmq_config", "file")
	conf, err := os.ReadFile(confFile)
	if err != nil {
		t.Fatalf("configs.mendmq_config.file: %v", err)
	}
	if f := str(t, c, "secrets", "admin_token", "file"); f != "./compose/admin-token" {
		t.Errorf("secrets.admin_token.file = %q", f)
	}
	hostPorts := map[string]bool{}
	for _, n := range names {
		s := services[n]
		if got := str(t, s, "build", "dockerfile"); got != "examples/deploy/Dockerfile" {
			t.Errorf("%s: build.dockerfile %q", n, got)
		}
		if _, err := os.Stat(filepath.Join(str(t, s, "build", "context"), str(t, s, "build", "dockerfile"))); err != nil {
			t.Errorf("%s: the build context does not hold the Dockerfile: %v", n, err)
		}
		if got := str(t, s, "environment", "MENDMQ_NODE__NAME"); got != n {
			t.Errorf("%s: MENDMQ_NODE__NAME %q", n, got)
		}
		if str(t, s, "configs", 0, "target") != "/etc/mendmq/mendmq.yaml" || str(t, s, "secrets", 0) != "admin_token" {
			t.Errorf("%s: config or secret not mounted: %v %v", n, get(t, s, "configs"), get(t, s, "secrets"))
		}
		for _, p := range get(t, s, "ports").([]any) {
			ps := p.(string)
			if !strings.HasPrefix(ps, "127.0.0.1:") || hostPorts[ps[:strings.LastIndexByte(ps, ':')]] {
				t.Errorf("%s: port %q (want distinct host ports on 127.0.0.1)", n, ps)
			}
			hostPorts[ps[:strings.LastIndexByte(ps, ':')]] = true
		}
		env := []string{"MENDMQ_NODE__NAME=" + n}
		for k, v := range get(t, s, "environment").(map[string]any) {
			env = append(env, k+"="+v.(string))
		}
		cfg := loadConfig(t, string(conf), env)
		if cfg.Node.Name != n || !cfg.Cluster.Enabled || cfg.Admin.Address != ":8080" || cfg.Storage.Path == "" {
			t.Errorf("%s: loaded %+v / %+v", n, cfg.Node, cfg.Admin)
		}
		for _, want := range names {
			if !slices.Contains(cfg.Cluster.Seeds, want+":7946") {
				t.Errorf("%s: cluster.seeds %v lacks %s:7946", n, cfg.Cluster.Seeds, want)
			}
		}
	}
	// The admin server listens off loopback: without the token the node
	// must refuse to start, which is why the compose file mounts one.
	p := filepath.Join(t.TempDir(), "mendmq.yaml")
	os.WriteFile(p, conf, 0o600)
	if _, err := config.Load(config.Sources{File: p, Environ: []string{"MENDMQ_CLUSTER__SECRET_KEY=0123456789abcdef"}, Sets: []string{"admin.token_file="}}); err == nil ||
		!strings.Contains(err.Error(), "admin.address") {
		t.Errorf("compose config without a token: %v, want refused naming admin.address", err)
	}
}

func TestKubernetesManifests(t *testing.T) {
	docs := readYAMLDocs(t, "kubernetes/mendmq.yaml")
	byKind := map[string][]map[string]any{}
	for _, d := range docs {
		k := str(t, d, "kind")
		if str(t, d, "apiVersion") == "" || str(t, d, "metadata", "name") == "" {
			t.Errorf("document of kind %q without apiVersion or name", k)
		}
		byKind[k] = append(byKind[k], d)
	}
	want := map[string]int{"Secret": 1, "ConfigMap": 2, "Service": 2, "StatefulSet": 1, "PodDisruptionBudget": 1}
	for k, n := range want {
		if len(byKind[k]) != n {
			t.Errorf("%d %s, want %d", len(byKind[k]), k, n)
		}
	}
	if len(byKind) != len(want) {
		t.Errorf("kinds %v", byKind)
	}
	named := func(kind, name string) map[string]any {
		for _, d := range byKind[kind] {
			if str(t, d, "metadata", "name") == name {
				return d
			}
		}
		t.Fatalf("no %s %s", kind, name)
		return nil
	}
	sts := byKind["StatefulSet"][0]
	headless := named("Service", str(t, sts, "spec", "serviceName"))
	if str(t, headless, "spec", "clusterIP") != "None" || get(t, headless, "spec", "publishNotReadyAddresses") != true {
		t.Errorf("headless service %v", get(t, headless, "spec"))
	}
	labels := get(t, sts, "spec", "template", "metadata", "labels").(map[string]any)
	for _, sel := range []any{get(t, sts, "spec", "selector", "matchLabels"), get(t, headless, "spec", "selector"),
		get(t, named("Service", "mendmq"), "spec", "selector"), get(t, byKind["PodDisruptionBudget"][0], "spec", "selector", "matchLabels")} {
		for k, v := range sel.(map[string]any) {
			if labels[k] != v {
				t.Errorf("selector %v does not match the pod labels %v", sel, labels)
			}
		}
	}
	if get(t, byKind["PodDisruptionBudget"][0], "spec", "maxUnavailable") != 1 {
		t.Errorf("PodDisruptionBudget: %v", get(t, byKind["PodDisruptionBudget"][0], "spec"))
	}
	ctr := get(t, sts, "spec", "template", "spec", "containers", 0)
	if p := str(t, ctr, "readinessProbe", "httpGet", "path"); p != "/readyz" {
		t.Errorf("readiness probe path %q, want /readyz", p)
	}
	if p := str(t, ctr, "livenessProbe", "httpGet", "path"); p != "/healthz" {
		t.Errorf("liveness probe path %q, want /healthz", p)
	}
	if get(t, sts, "spec", "template", "spec", "securityContext", "runAsNonRoot") != true {
		t.Error("pods may run as root")
	}
	mounts := map[string]string{}
	for _, m := range get(t, ctr, "volumeMounts").([]any) {
		mm := m.(map[string]any)
		if _, sub := mm["subPath"]; sub {
			t.Errorf("volume mount %v uses subPath: ConfigMap updates would never reach it", mm)
		}
		mounts[mm["name"].(string)] = mm["mountPath"].(string)
	}
	var env []string
	for _, e := range get(t, ctr, "env").([]any) {
		em := e.(map[string]any)
		switch em["name"] {
		case "MENDMQ_NODE__NAME":
			if str(t, em, "valueFrom", "fieldRef", "fieldPath") != "metadata.name" {
				t.Errorf("node name from %v", em)
			}
			env = append(env, "MENDMQ_NODE__NAME=mendmq-0")
		case "MENDMQ_CLUSTER__SECRET_KEY":
			key := str(t, em, "valueFrom", "secretKeyRef", "key")
			env = append(env, "MENDMQ_CLUSTER__SECRET_KEY="+str(t, named("Secret", str(t, em, "valueFrom", "secretKeyRef", "name")), "stringData", key))
		default:
			env = append(env, em["name"].(string)+"="+str(t, em, "value"))
		}
	}

	// The configuration loads, names the files where the pod mounts them,
	// and its policy module is the repository's C latestupdate.wasm and loads.
	cm := named("ConfigMap", "mendmq-config")
	args := get(t, ctr, "args").([]any)
	if cfgPath := args[len(args)-1].(string); filepath.Dir(cfgPath) != mounts["config"] {
		t.Errorf("--config %s is not in the config mount %s", cfgPath, mounts["config"])
	}
	mod, err := base64.StdEncoding.DecodeString(str(t, named("ConfigMap", "mendmq-policies"), "binaryData", "latestupdate.wasm"))
	if err != nil {
		t.Fatal(err)
	}
	repoMod, err := os.ReadFile(filepath.Join(repoRoot, "examples", "policies", "c", "latestupdate", "latestupdate.wasm"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mod, repoMod) {
		t.Error("mendmq-policies latestupdate.wasm differs from examples/policies/c/latestupdate/latestupdate.wasm: regenerate it (command in the manifest)")
	}
	modPath := filepath.Join(t.TempDir(), "latestupdate.wasm")
	os.WriteFile(modPath, mod, 0o600)
	cfg := loadConfig(t, str(t, cm, "data", "mendmq.yaml"), env, "policies.retained-latest.module="+modPath)
	if cfg.Node.Name != "mendmq-0" || !cfg.Cluster.Enabled || len(cfg.Cluster.Seeds) != 1 ||
		cfg.Cluster.Seeds[0] != str(t, headless, "metadata", "name")+":7946" {
		t.Errorf("node %q cluster %+v", cfg.Node.Name, cfg.Cluster.Seeds)
	}
	orig := loadConfig(t, str(t, cm, "data", "mendmq.yaml"), env)
	if m := orig.Plugins.Policies["retained-latest"].Module; filepath.Dir(m) != mounts["policies"] {
		t.Errorf("policies.retained-latest.module %s is not in the policies mount %s", m, mounts["policies"])
	}
	if filepath.Dir(orig.Admin.TokenFile) == mounts["secrets"] {
		t.Errorf("admin.token_file was replaced by the test's")
	}
	cfg.Plugins.Host.WatchModules = false
	reg, err := plugins.New(cfg.Plugins, nil)
	if err != nil {
		t.Fatalf("the manifest's policies do not load: %v", err)
	}
	reg.Close()
	for _, p := range []string{"/etc/mendmq/secrets/admin-token"} {
		if filepath.Dir(p) != mounts["secrets"] {
			t.Errorf("%s is not in the secrets mount", p)
		}
	}
}

// TestGrafanaDashboard: the dashboard parses, and every metric it queries
// is exported by a live clustered node once each kind of event happened.
func TestGrafanaDashboard(t *testing.T) {
	b, err := os.ReadFile("grafana/mendmq-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	if dash.Title == "" || dash.UID == "" || len(dash.Panels) == 0 {
		t.Fatalf("dashboard without title, uid or panels")
	}
	re := regexp.MustCompile(`\bmendmq_[a-z0-9_]+`)
	used := map[string][]string{}
	for _, p := range dash.Panels {
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			for _, m := range re.FindAllString(tg.Expr, -1) {
				used[m] = append(used[m], p.Title)
			}
		}
	}

	exported := scrapeBusyNode(t)
	for name, panels := range used {
		base := name
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if b, ok := strings.CutSuffix(name, suf); ok && exported[b] {
				base = b
			}
		}
		if !exported[base] {
			t.Errorf("panels %q query %s, which the node does not export", panels, name)
		}
	}
	t.Logf("dashboard queries %d metrics; the node exports %d metric families", len(used), len(exported))
}

// scrapeBusyNode starts a clustered node with an admin token and a policy
// that fails on demand, makes each counted event happen once (a refused
// publish and connection, a refused admin request, a parked conflict,
// traffic), and returns the metric family names of a /metrics scrape.
func scrapeBusyNode(t *testing.T) map[string]bool {
	cfg := brokertest.Config()
	cfg.Node.Name = "dash"
	cfg.Cluster = cluster.LoopbackConfig()
	cfg.Admin.TokenFile = writeToken(t)
	cfg.Plugins.Policies["trap"] = plugins.PolicyConfig{Module: filepath.Join(repoRoot, "plugins", "testdata", "hostile", "trap.wasm")}
	cfg.Plugins.Maps["evil"] = plugins.MapConfig{MergePolicy: "trap"}
	cfg.Plugins.MapsInUse = plugins.AnyMap // "evil" is merged only by this test's direct calls
	n := brokertest.Start(t, cfg)
	// A peer, for the per-peer series and the replication lag.
	pcfg := brokertest.Config()
	pcfg.Node.Name = "dash-peer"
	pcfg.Cluster = cluster.LoopbackConfig()
	pcfg.Cluster.Seeds = []string{n.Cluster().Status().Members[0].GossipAddr}
	peer := brokertest.Start(t, pcfg)
	brokertest.Eventually(t, "the peer to be connected", func() bool {
		for _, m := range n.Cluster().Status().Members {
			if m.Name == "dash-peer" {
				return m.State == "alive" && m.Reachable
			}
		}
		return false
	})
	brokertest.MustV5(t, peer.URL(0), "far").MustSub("d/#", 1)
	brokertest.Eventually(t, "the peer's session record to replicate", func() bool {
		node, ok := n.Cluster().SessionNode("far")
		return ok && node == "dash-peer"
	})
	c := brokertest.MustV5(t, n.URL(0), "dash-client")
	c.MustSub("d/#", 1)
	c.MustPub("d/x", 1, true, "retained")
	c.Next()
	c.Pub("$SYS/forged", 1, false, "x")                                  // dropped: reserved_topic
	brokertest.ConnectV5(t, n.URL(0), "$forged", brokertest.V5Options{}) // refused connection
	if code, _, _ := brokertest.HTTPGet("http://" + n.AdminAddr() + "/metrics"); code != http.StatusUnauthorized {
		t.Fatalf("/metrics without the token = %d, want 401", code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := n.Policies().Merge(ctx, "evil", &plugins.EntryView{Key: []byte("boom"), Value: []byte("v")}, nil); err != nil {
		t.Logf("merge with the trapping policy: %v", err)
	}
	req, _ := http.NewRequest("GET", "http://"+n.AdminAddr()+"/metrics", nil)
	tok, _ := os.ReadFile(cfg.Admin.TokenFile)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	out := map[string]bool{}
	for _, line := range strings.Split(string(body), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" {
			out[f[2]] = true
		}
	}
	return out
}

// TestDockerfileBuilds builds the image where a Docker daemon answers.
func TestDockerfileBuilds(t *testing.T) {
	if testing.Short() {
		t.Skip("deploy: image build skipped in -short mode")
	}
	docker, err := exec.LookPath("docker")
	if err != nil {
		t.Skip("deploy: no docker binary; the Dockerfile is not built here")
	}
	if out, err := exec.Command(docker, "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		t.Skipf("deploy: the Docker daemon does not answer (%v: %s); the Dockerfile is not built here", err, bytes.TrimSpace(out))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, docker, "build", "-f", "examples/deploy/Dockerfile", "-t", "mendmq:deploy-test", ".")
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("docker build: %v\n%s", err, out)
	}
	out, err := exec.CommandContext(ctx, docker, "run", "--rm", "mendmq:deploy-test", "version").CombinedOutput()
	if err != nil {
		t.Fatalf("docker run mendmq version: %v\n%s", err, out)
	}
	t.Logf("image runs: %s", bytes.TrimSpace(out))
}
