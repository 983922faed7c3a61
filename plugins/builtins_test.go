package plugins

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mendmq/mendmq/examples/policies/builtin/hazelcasttest"
	"github.com/mendmq/mendmq/plugins/internal/builtins"
	"github.com/mendmq/mendmq/sdk"
)

// TestBuiltinsHazelcastSemantics runs the shared table against the embedded
// WebAssembly modules, single and batched.
func TestBuiltinsHazelcastSemantics(t *testing.T) {
	cfg := testConfig()
	for _, name := range builtins.Names() {
		cfg.Maps["m-"+name] = MapConfig{MergePolicy: name}
	}
	r := newRegistry(t, cfg)
	ctx := context.Background()
	for _, name := range builtins.Names() {
		mapName := "m-" + name
		var items []MergeItem
		var want []Verdict
		for _, c := range hazelcasttest.Cases {
			w, ok := c.Want[name]
			if !ok {
				t.Fatalf("case %q has no verdict for %s", c.Name, name)
			}
			items = append(items, MergeItem{Merging: fromSDK(&c.Merging), Existing: fromSDK(c.Existing)})
			want = append(want, Verdict(w))
		}
		for i, it := range items {
			res, err := r.Merge(ctx, mapName, it.Merging, it.Existing)
			if err != nil {
				t.Fatal(err)
			}
			checkResult(t, name+"/"+hazelcasttest.Cases[i].Name+"/single", res, want[i], it)
		}
		res, err := r.MergeBatch(ctx, mapName, items)
		if err != nil {
			t.Fatal(err)
		}
		for i := range res {
			checkResult(t, name+"/"+hazelcasttest.Cases[i].Name+"/batch", res[i], want[i], items[i])
		}
	}
}

func checkResult(t *testing.T, what string, res Result, want Verdict, it MergeItem) {
	t.Helper()
	if res.Verdict != want || res.ConflictID != 0 || res.Unmerged {
		t.Errorf("%s: %+v, want verdict %s", what, res, want)
	}
	if want == TakeMerging && res.Entry != it.Merging {
		t.Errorf("%s: take_merging result does not point at the merging entry", what)
	}
}

func fromSDK(e *sdk.EntryView) *EntryView {
	if e == nil {
		return nil
	}
	return &EntryView{
		Key: e.Key, Value: e.Value, Cost: e.Cost, Hits: e.Hits, Version: e.Version,
		CreationTime: e.CreationTime, LastAccessTime: e.LastAccessTime, LastUpdateTime: e.LastUpdateTime,
		LastStoredTime: e.LastStoredTime, ExpirationTime: e.ExpirationTime,
	}
}

// TestBuiltinReproducible rebuilds one built-in and compares it with the
// checked-in digest, so the embedded modules provably come from
// examples/policies.
func TestBuiltinReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("rebuilds a Go module (seconds); skipped with -short")
	}
	have, err := exec.Command("go", "env", "GOVERSION").Output()
	if err != nil {
		t.Skipf("go toolchain not runnable: %v", err)
	}
	if v := strings.TrimSpace(string(have)); v != builtins.GoVersion() {
		t.Skipf("built-ins were built with %s, this toolchain is %s: the bytes legitimately differ (rebuild with plugins/build-policies.sh builtins)", builtins.GoVersion(), v)
	}
	const name = "latestupdate"
	out := filepath.Join(t.TempDir(), name+".wasm")
	buildGo(t, "./examples/policies/"+name, out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	if got, want := hex.EncodeToString(sum[:]), builtins.SHA256(name); got != want {
		t.Fatalf("rebuilt %s.wasm has sha256 %s, SHA256SUMS says %s: run plugins/build-policies.sh builtins", name, got, want)
	}
	embedded, err := builtins.Module(name)
	if err != nil {
		t.Fatal(err)
	}
	if string(embedded) != string(b) {
		t.Fatal("embedded module differs from the rebuilt one")
	}
}

func TestEmbeddedModulesMatchSums(t *testing.T) {
	for _, name := range builtins.Names() {
		if _, err := builtins.Module(name); err != nil {
			t.Error(err)
		}
	}
	if len(builtins.Names()) != 7 {
		t.Fatalf("built-ins %v, want 7", builtins.Names())
	}
}
