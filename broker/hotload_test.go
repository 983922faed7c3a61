package broker_test

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/plugins"
)

// TestPolicyHotLoadByConfigMapSwap updates a policy module the way the
// kubelet updates a mounted ConfigMap (the README's hot-load recipe): the
// file is a symlink through "..data" to a timestamped directory, and an
// update writes a new directory and renames a new "..data" symlink over
// the old one. The node loads the new module without a restart, and the
// admin API shows its sha256.
func TestPolicyHotLoadByConfigMapSwap(t *testing.T) {
	t.Parallel()
	v1, err := os.ReadFile("../examples/policies/c/counter/counter.wasm")
	if err != nil {
		t.Fatal(err)
	}
	v2, err := os.ReadFile("../examples/policies/c/latestupdate/latestupdate.wasm")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	writeVersion := func(name string, module []byte) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "counter.wasm"), module, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeVersion("..2026_01_01_v1", v1)
	if err := os.Symlink("..2026_01_01_v1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	module := filepath.Join(dir, "counter.wasm")
	if err := os.Symlink(filepath.Join("..data", "counter.wasm"), module); err != nil {
		t.Fatal(err)
	}

	cfg := brokertest.Config()
	cfg.Plugins.Policies["counter"] = plugins.PolicyConfig{Module: module}
	cfg.Plugins.Retained.MergePolicy = "counter" // referenced, so loaded
	cfg.Plugins.Host.WatchPollInterval = 200 * time.Millisecond
	n := brokertest.Start(t, cfg)
	sha := func() string {
		var ps []plugins.PolicyInfo
		mustCall(t, n, "GET", "/api/v1/policies", "", 200, &ps)
		for _, p := range ps {
			if p.Name == "counter" {
				return p.SHA256
			}
		}
		return ""
	}
	sum := func(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }
	if got := sha(); got != sum(v1) {
		t.Fatalf("counter sha256 %s, want the first module's %s", got, sum(v1))
	}

	// The kubelet's update: new directory, new ..data symlink renamed over.
	writeVersion("..2026_01_02_v2", v2)
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink("..2026_01_02_v2", tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "..2026_01_01_v1")); err != nil {
		t.Fatal(err)
	}
	brokertest.Eventually(t, "the new module to be loaded", func() bool { return sha() == sum(v2) })
}
