package plugins

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func copyFile(t testing.TB, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	replaceFile(t, to, b)
}

// replaceFile writes b next to path and renames it over path, as editors and
// deploy tools do.
func replaceFile(t testing.TB, path string, b []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// loadGen runs merges on map "fine" from several goroutines and checks
// every outcome: no merge may fail, and a merge that started after the test
// declared a new expected verdict (expectFromNow) must reach it — merges
// already running when a swap happens may still finish on the old set.
type loadGen struct {
	failed, merges, stale atomic.Int64
	lastVerdict           atomic.Uint32
	epoch                 atomic.Int64
	want                  atomic.Pointer[expectation]
	stop                  chan struct{}
	wg                    sync.WaitGroup
}

type expectation struct {
	epoch   int64
	verdict Verdict
}

func startLoad(t *testing.T, r *Registry, workers int) *loadGen {
	g := &loadGen{stop: make(chan struct{})}
	for range workers {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			ctx := context.Background()
			for i := 0; ; i++ {
				select {
				case <-g.stop:
					return
				default:
				}
				started := g.epoch.Load()
				var err error
				var res Result
				if i%2 == 0 {
					res, err = r.Merge(ctx, "fine", ev("k", 2), ev("k", 1))
				} else {
					var rs []Result
					rs, err = r.MergeBatch(ctx, "fine", []MergeItem{{Merging: ev("a", 2), Existing: ev("a", 1)}, {Merging: ev("b", 2), Existing: ev("b", 1)}})
					if err == nil {
						res = rs[1]
						if rs[0].Verdict != rs[1].Verdict {
							t.Errorf("one batch saw two policies: %+v", rs)
						}
					}
				}
				g.merges.Add(1)
				if err != nil || res.ConflictID != 0 || res.Unmerged {
					g.failed.Add(1)
					t.Errorf("merge failed during reload: %+v, %v", res, err)
					continue
				}
				if w := g.want.Load(); w != nil && started >= w.epoch && res.Verdict != w.verdict {
					g.stale.Add(1)
					t.Errorf("merge started after the swap to %s ran the old policy (%s)", w.verdict, res.Verdict)
				}
				g.lastVerdict.Store(uint32(res.Verdict))
			}
		}()
	}
	t.Cleanup(g.halt)
	return g
}

func (g *loadGen) halt() {
	select {
	case <-g.stop:
	default:
		close(g.stop)
	}
	g.wg.Wait()
}

// expectFromNow declares that every merge starting from now must reach v,
// and waits until enough of them ran.
func (g *loadGen) expectFromNow(t *testing.T, v Verdict) {
	t.Helper()
	g.want.Store(&expectation{epoch: g.epoch.Add(1), verdict: v})
	n := g.merges.Load()
	waitFor(t, "merges after the swap", func() bool { return g.merges.Load() > n+50 })
	if s := g.stale.Load(); s != 0 {
		t.Fatalf("%d merges ran a stale policy set", s)
	}
}

// changing lifts the expectation before the test changes the policy.
func (g *loadGen) changing() { g.want.Store(nil) }

// waitVerdict waits until some merge reaches v (the swap happened), then
// requires every later merge to reach it.
func (g *loadGen) waitVerdict(t *testing.T, v Verdict) {
	t.Helper()
	waitFor(t, "verdict "+v.String(), func() bool { return Verdict(g.lastVerdict.Load()) == v })
	g.expectFromNow(t, v)
}

// TestHotReloadUnderLoad swaps a watched module file while merges run:
// the swap is observed, no merge fails, and an invalid replacement is
// refused with the old module kept.
func TestHotReloadUnderLoad(t *testing.T) {
	dir := t.TempDir()
	mod := filepath.Join(dir, "policy.wasm")
	// C latestupdate takes the newer merging entry; the hostile "trap"
	// module keeps the existing entry on any map but "evil".
	copyFile(t, repoPath("examples/policies/c/latestupdate/latestupdate.wasm"), mod)
	cfg := cConfig()
	cfg.Host.WatchModules = true
	cfg.Host.WatchPollInterval = 100 * time.Millisecond
	cfg.Policies["p"] = PolicyConfig{Module: mod}
	cfg.Maps["fine"] = MapConfig{MergePolicy: "p"}
	r := newRegistry(t, cfg)
	g := startLoad(t, r, 4)
	g.waitVerdict(t, TakeMerging)

	g.changing()
	copyFile(t, hostilePath("trap"), mod)
	g.waitVerdict(t, KeepExisting)

	okReloads := counterValue(t, r, "mendmq_policy_reloads_total", map[string]string{"result": "ok"})
	g.changing()
	replaceFile(t, mod, []byte("\x00asm but truncated"))
	waitFor(t, "refused reload", func() bool {
		return counterValue(t, r, "mendmq_policy_reloads_total", map[string]string{"result": "error"}) >= 1
	})
	g.expectFromNow(t, KeepExisting)
	if n := counterValue(t, r, "mendmq_policy_reloads_total", map[string]string{"result": "ok"}); n != okReloads {
		t.Fatalf("an invalid module was applied (ok reloads %v -> %v)", okReloads, n)
	}
	// Reload by hand (the admin endpoint) fails the same way and keeps it.
	if err := r.Reload(); err == nil {
		t.Fatal("Reload accepted an invalid module")
	}
	// Fixing the file is picked up again.
	g.changing()
	copyFile(t, repoPath("examples/policies/c/latestupdate/latestupdate.wasm"), mod)
	g.waitVerdict(t, TakeMerging)

	g.halt()
	if f := g.failed.Load(); f != 0 {
		t.Fatalf("%d of %d merges failed", f, g.merges.Load())
	}
	t.Logf("%d merges during the reloads, none failed", g.merges.Load())
}

// TestApplyUnderLoad changes a map's policy by configuration while merges
// run, and back; reused policies are not reloaded.
func TestApplyUnderLoad(t *testing.T) {
	cfg := testConfig()
	cfg.Maps["fine"] = MapConfig{MergePolicy: "passthrough"}
	r := newRegistry(t, cfg)
	g := startLoad(t, r, 4)
	g.waitVerdict(t, TakeMerging)
	before := r.List()

	next := testConfig()
	next.Maps["fine"] = MapConfig{MergePolicy: "discard"}
	next.Maps["other"] = MapConfig{MergePolicy: "passthrough"}
	g.changing()
	if err := r.Apply(next); err != nil {
		t.Fatal(err)
	}
	g.expectFromNow(t, KeepExisting) // Apply returned: the new set is live
	for _, p := range r.List() {
		for _, b := range before {
			if p.Name == b.Name && b.Loaded && p.Loaded && !p.LoadedAt.Equal(b.LoadedAt) {
				t.Errorf("policy %s was reloaded although unchanged", p.Name)
			}
		}
	}
	g.halt()
	if f := g.failed.Load(); f != 0 {
		t.Fatalf("%d merges failed", f)
	}
}
