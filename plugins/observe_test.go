package plugins

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// syncBuffer is a bytes.Buffer safe for a logger shared by goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestMergesObservable: every merged entry is counted by policy, map and
// verdict, and logged at debug with map, key, verdict, policy and sha256.
func TestMergesObservable(t *testing.T) {
	var logs syncBuffer
	cfg := cConfig()
	cfg.Policies["hostile"] = PolicyConfig{Module: hostilePath("trap")}
	cfg.Maps["evil"] = MapConfig{MergePolicy: "hostile"}
	r, err := New(cfg, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	ctx := context.Background()

	// clatest (C latestupdate) on map "orders": one take_merging (absent),
	// then a batch of two keep_existing and one take_merging.
	if _, err := r.Merge(ctx, "orders", ev("a", 5), nil); err != nil {
		t.Fatal(err)
	}
	batch := []MergeItem{
		{Merging: ev("b", 1), Existing: ev("b", 2)},
		{Merging: ev("c", 1), Existing: ev("c", 2)},
		{Merging: ev("d", 3), Existing: ev("d", 2)},
	}
	if _, err := r.MergeBatch(ctx, "orders", batch); err != nil {
		t.Fatal(err)
	}
	// The trap module on "evil": "boom" traps (parked: verdict fail), the
	// other key is taken.
	if _, err := r.MergeBatch(ctx, "evil", []MergeItem{{Merging: ev("boom", 1)}, {Merging: ev("x", 1)}}); err != nil {
		t.Fatal(err)
	}

	const name = "mendmq_policy_merges_total"
	want := []struct {
		policy, mapName, verdict string
		n                        float64
	}{
		{"clatest", "orders", "take_merging", 2},
		{"clatest", "orders", "keep_existing", 2},
		{"clatest", "orders", "put", 0},
		{"hostile", "evil", "fail", 1},
		{"hostile", "evil", "take_merging", 1},
	}
	for _, w := range want {
		got := counterValue(t, r, name, map[string]string{"policy": w.policy, "map": w.mapName, "verdict": w.verdict})
		if got != w.n {
			t.Errorf("%s{policy=%s,map=%s,verdict=%s} = %v, want %v", name, w.policy, w.mapName, w.verdict, got, w.n)
		}
	}

	sum := diskSHA(t, repoPath("examples/policies/c/latestupdate/latestupdate.wasm"))
	out := logs.String()
	for _, line := range []string{
		`msg="merge decided" map=orders key=a verdict=take_merging existing=false policy=clatest sha256=` + sum,
		`msg="merge decided" map=orders key=b verdict=keep_existing existing=true policy=clatest sha256=` + sum,
		`msg="merge decided" map=evil key=boom verdict=fail existing=false policy=hostile`,
	} {
		if !strings.Contains(out, line) {
			t.Errorf("log lacks %q:\n%s", line, out)
		}
	}
	if !strings.Contains(out, "conflict=1") {
		t.Errorf("the failed merge's debug line does not name its conflict:\n%s", out)
	}
}

// TestNoMergeLogAboveDebug: with the logger at info, merges log nothing.
func TestNoMergeLogAboveDebug(t *testing.T) {
	var logs syncBuffer
	r, err := New(cConfig(), slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	if _, err := r.Merge(context.Background(), "orders", ev("a", 5), nil); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), "merge decided") {
		t.Fatalf("merge logged at info level:\n%s", logs.String())
	}
}

func diskSHA(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func policyInfo(t testing.TB, r *Registry, name string) PolicyInfo {
	t.Helper()
	for _, p := range r.List() {
		if p.Name == name {
			return p
		}
	}
	t.Fatalf("policy %s not listed", name)
	return PolicyInfo{}
}

// TestListShowsDiskAndReloadError: a module file that fails to reload is
// visible in List (GET /api/v1/policies): the running digest, the digest on
// disk and the error; a good file clears the error.
func TestListShowsDiskAndReloadError(t *testing.T) {
	dir := t.TempDir()
	mod := filepath.Join(dir, "p.wasm")
	copyFile(t, repoPath("examples/policies/c/latestupdate/latestupdate.wasm"), mod)
	cfg := cConfig()
	cfg.Policies["p"] = PolicyConfig{Module: mod}
	cfg.Maps["m"] = MapConfig{MergePolicy: "p"}
	r := newRegistry(t, cfg)
	running := diskSHA(t, mod)

	info := policyInfo(t, r, "p")
	if info.SHA256 != running || info.DiskSHA256 != running || info.LastReloadError != "" {
		t.Fatalf("fresh: %+v", info)
	}
	if b := policyInfo(t, r, "latestupdate"); b.DiskSHA256 != "" || b.DiskError != "" {
		t.Fatalf("built-in has a disk digest: %+v", b)
	}

	replaceFile(t, mod, []byte("not a wasm module"))
	if err := r.Reload(); err == nil {
		t.Fatal("reload of a broken module succeeded")
	}
	info = policyInfo(t, r, "p")
	if info.SHA256 != running || info.DiskSHA256 != diskSHA(t, mod) || info.DiskSHA256 == running {
		t.Fatalf("after a failed reload: running %s disk %s", info.SHA256, info.DiskSHA256)
	}
	if !strings.Contains(info.LastReloadError, "policies.p.module") || !strings.Contains(info.LastReloadError, mod) ||
		info.LastReloadErrorAt.IsZero() {
		t.Fatalf("last reload error %q at %v: want the key and the file", info.LastReloadError, info.LastReloadErrorAt)
	}

	if err := os.Remove(mod); err != nil {
		t.Fatal(err)
	}
	if err := r.Reload(); err == nil {
		t.Fatal("reload of a missing module succeeded")
	}
	info = policyInfo(t, r, "p")
	if info.DiskError == "" || info.DiskSHA256 != "" || !strings.Contains(info.LastReloadError, "read module") {
		t.Fatalf("missing file: %+v", info)
	}

	copyFile(t, repoPath("examples/policies/c/counter/counter.wasm"), mod)
	if err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	info = policyInfo(t, r, "p")
	if info.LastReloadError != "" || info.DiskError != "" || info.SHA256 != info.DiskSHA256 || info.SHA256 == running {
		t.Fatalf("after a good reload: %+v", info)
	}
}
