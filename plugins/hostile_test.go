package plugins

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// hostileRegistry maps "evil" (the map the hostile modules misbehave on) and
// "fine" to the hostile module mode.
func hostileRegistry(t *testing.T, mode string, mutate func(*Config)) *Registry {
	t.Helper()
	cfg := cConfig()
	cfg.Host.CallTimeout = 50 * time.Millisecond
	cfg.Host.MemoryLimitMiB = 4
	cfg.Policies["hostile"] = PolicyConfig{Module: hostilePath(mode)}
	cfg.Maps["evil"] = MapConfig{MergePolicy: "hostile"}
	cfg.Maps["fine"] = MapConfig{MergePolicy: "hostile"}
	if mutate != nil {
		mutate(&cfg)
	}
	return newRegistry(t, cfg)
}

// TestHostileModulesAreContained: every misbehaviour keeps the existing
// entry, parks the merging one, counts it, discards the instance, and the
// policy keeps working afterwards.
func TestHostileModulesAreContained(t *testing.T) {
	cases := []struct {
		mode      string
		kind      FailureKind
		reason    string
		discarded bool
		// wholeMap: the module misbehaves for every "evil" request, not
		// only for keys starting with "boom".
		wholeMap bool
	}{
		{"loop", FailureTimeout, "timed out", true, false},
		{"trap", FailureTrap, "unreachable", true, false},
		{"hugeresult", FailureGarbage, "outside", true, true},
		{"garbage", FailureGarbage, "unknown verdict 77", true, true},
		{"wrongkey", FailureGarbage, "merging key", true, false},
		{"growbomb", FailureRefused, "memory.grow refused at", false, false},
	}
	ctx := context.Background()
	for _, c := range cases {
		t.Run(c.mode, func(t *testing.T) {
			r := hostileRegistry(t, c.mode, func(cfg *Config) {
				if c.mode != "loop" {
					// Only the loop needs the short deadline; the others
					// must not hit it on a loaded machine.
					cfg.Host.CallTimeout = 5 * time.Second
				}
			})
			merging, existing := ev("boom", 2), ev("boom", 1)
			start := time.Now()
			res, err := r.Merge(ctx, "evil", merging, existing)
			if err != nil {
				t.Fatal(err)
			}
			if res.Verdict != KeepExisting || res.ConflictID == 0 || res.Entry != nil || res.Unmerged {
				t.Fatalf("result %+v, want keep-existing with a conflict id", res)
			}
			t.Logf("contained in %v", time.Since(start))
			cs := r.Conflicts()
			if len(cs) != 1 {
				t.Fatalf("%d conflicts, want 1", len(cs))
			}
			got := cs[0]
			if got.ID != res.ConflictID || got.Kind != c.kind || got.Map != "evil" || got.Policy != "hostile" ||
				!strings.Contains(got.Reason, c.reason) {
				t.Fatalf("conflict %+v, want kind %s reason containing %q", got, c.kind, c.reason)
			}
			if string(got.Merging.Key) != "boom" || string(got.Merging.Value) != "value of boom" ||
				got.Existing == nil || got.Existing.LastUpdateTime != 1 {
				t.Fatalf("parked entries %+v / %+v", got.Merging, got.Existing)
			}
			// The parked copy does not alias the caller's buffers.
			merging.Value[0] = 'X'
			if c2, _ := r.Conflict(got.ID); c2.Merging.Value[0] != 'v' {
				t.Fatal("parked entry aliases the caller's value")
			}
			if n := counterValue(t, r, "mendmq_policy_conflicts_total", map[string]string{"policy": "hostile", "reason": string(c.kind)}); n != 1 {
				t.Errorf("conflicts_total{reason=%s} = %v, want 1", c.kind, n)
			}
			wantDiscarded := 0.0
			if c.discarded {
				wantDiscarded = 1
			}
			if n := counterValue(t, r, "mendmq_policy_instances_discarded_total", map[string]string{"policy": "hostile"}); n != wantDiscarded {
				t.Errorf("instances_discarded_total = %v, want %v", n, wantDiscarded)
			}
			if n := counterValue(t, r, "mendmq_policy_conflicts_parked", nil); n != 1 {
				t.Errorf("conflicts_parked = %v, want 1", n)
			}
			// The policy still works (on a fresh instance if needed).
			for _, m := range []struct {
				mapName string
				want    Verdict
			}{{"fine", KeepExisting}, {"evil", TakeMerging}} {
				if m.mapName == "evil" && c.wholeMap {
					continue
				}
				res, err := r.Merge(ctx, m.mapName, ev("ok", 2), ev("ok", 1))
				if err != nil || res.Verdict != m.want || res.ConflictID != 0 {
					t.Fatalf("merge on %s after the failure: %+v, %v", m.mapName, res, err)
				}
			}
		})
	}
}

// TestBatchParksOnlyFailingEntries: a batch the policy traps on is retried
// entry by entry, so only the entries it fails on are parked.
func TestBatchParksOnlyFailingEntries(t *testing.T) {
	for _, mode := range []string{"trap", "wrongkey"} {
		t.Run(mode, func(t *testing.T) {
			r := hostileRegistry(t, mode, nil)
			var items []MergeItem
			for i := range 10 {
				key := fmt.Sprintf("k%d", i)
				if i == 3 || i == 7 {
					key = fmt.Sprintf("boom%d", i)
				}
				items = append(items, MergeItem{Merging: ev(key, 2), Existing: ev(key, 1)})
			}
			res, err := r.MergeBatch(context.Background(), "evil", items)
			if err != nil {
				t.Fatal(err)
			}
			for i, rr := range res {
				if i == 3 || i == 7 {
					if rr.Verdict != KeepExisting || rr.ConflictID == 0 {
						t.Errorf("item %d: %+v, want parked", i, rr)
					}
					continue
				}
				if rr.Verdict != TakeMerging || rr.Entry != items[i].Merging || rr.ConflictID != 0 {
					t.Errorf("item %d: %+v, want take_merging", i, rr)
				}
			}
			if n := len(r.Conflicts()); n != 2 {
				t.Fatalf("%d conflicts, want 2", n)
			}
		})
	}
}

// TestBatchTimeoutParksTheCall: a timeout is not bisected (each retry would
// cost a deadline); the call's entries are parked together.
func TestBatchTimeoutParksTheCall(t *testing.T) {
	r := hostileRegistry(t, "loop", nil)
	items := []MergeItem{{Merging: ev("a", 2)}, {Merging: ev("boom", 2)}, {Merging: ev("c", 2)}}
	start := time.Now()
	res, err := r.MergeBatch(context.Background(), "evil", items)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("took %v", d)
	}
	for i, rr := range res {
		if rr.ConflictID == 0 {
			t.Errorf("item %d not parked: %+v", i, rr)
		}
	}
}

func TestLargeBatchIsChunked(t *testing.T) {
	r := hostileRegistry(t, "trap", nil)
	items := make([]MergeItem, 3*maxBatchItems+5)
	for i := range items {
		items[i] = MergeItem{Merging: ev(fmt.Sprint(i), 1)}
	}
	res, err := r.MergeBatch(context.Background(), "evil", items)
	if err != nil {
		t.Fatal(err)
	}
	for i, rr := range res {
		if rr.Verdict != TakeMerging || rr.Entry != items[i].Merging {
			t.Fatalf("item %d: %+v", i, rr)
		}
	}
	if n := counterValue(t, r, "mendmq_policy_merges_total", map[string]string{"policy": "hostile"}); n != float64(len(items)) {
		t.Errorf("merges_total %v, want %d", n, len(items))
	}
}

func TestChunkEnd(t *testing.T) {
	big := &EntryView{Key: []byte("k"), Value: make([]byte, maxBatchBytes/2)}
	small := ev("s", 1)
	cases := []struct {
		name  string
		items []MergeItem
		want  []int // successive chunk ends
	}{
		{"count bound", repeat(MergeItem{Merging: small}, maxBatchItems+1), []int{maxBatchItems, maxBatchItems + 1}},
		{"byte bound", repeat(MergeItem{Merging: big}, 3), []int{1, 2, 3}},
		{"oversized entry alone", []MergeItem{{Merging: big, Existing: big}, {Merging: small}}, []int{1, 2}},
	}
	for _, c := range cases {
		var got []int
		for start := 0; start < len(c.items); {
			start = chunkEnd(c.items, start)
			got = append(got, start)
		}
		if fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("%s: chunk ends %v, want %v", c.name, got, c.want)
		}
	}
}

func repeat(it MergeItem, n int) []MergeItem {
	out := make([]MergeItem, n)
	for i := range out {
		out[i] = it
	}
	return out
}

func TestConflictStoreLifecycle(t *testing.T) {
	r := hostileRegistry(t, "trap", func(c *Config) { c.Host.ConflictsLimit = 2 })
	ctx := context.Background()
	var ids []uint64
	for i := range 2 {
		res, err := r.Merge(ctx, "evil", ev(fmt.Sprint("boom", i), 2), nil)
		if err != nil || res.ConflictID == 0 {
			t.Fatalf("merge %d: %+v, %v", i, res, err)
		}
		ids = append(ids, res.ConflictID)
	}
	// Full: the third failure is neither merged nor parked, and says so.
	res, err := r.Merge(ctx, "evil", ev("boom-full", 2), nil)
	if !errors.Is(err, ErrConflictsFull) || !res.Unmerged || res.ConflictID != 0 {
		t.Fatalf("merge into a full store: %+v, %v", res, err)
	}
	if n := counterValue(t, r, "mendmq_policy_conflicts_rejected_total", map[string]string{"policy": "hostile"}); n != 1 {
		t.Errorf("rejected_total %v", n)
	}
	// A failed resolution keeps the conflict.
	if err := r.ResolveConflict(ids[0], func(Conflict) error { return errors.New("disk full") }); err == nil {
		t.Fatal("resolve with a failing apply succeeded")
	}
	var applied Conflict
	if err := r.ResolveConflict(ids[0], func(c Conflict) error { applied = c; return nil }); err != nil {
		t.Fatal(err)
	}
	if string(applied.Merging.Key) != "boom0" {
		t.Fatalf("applied %+v", applied)
	}
	if err := r.DropConflict(ids[1]); err != nil {
		t.Fatal(err)
	}
	if err := r.DropConflict(ids[1]); !errors.Is(err, ErrNoConflict) {
		t.Fatalf("second drop: %v", err)
	}
	if err := r.ResolveConflict(12345, func(Conflict) error { return nil }); !errors.Is(err, ErrNoConflict) {
		t.Fatalf("resolve unknown: %v", err)
	}
	if len(r.Conflicts()) != 0 {
		t.Fatalf("conflicts left: %+v", r.Conflicts())
	}
	// Room again.
	if res, err := r.Merge(ctx, "evil", ev("boom-again", 2), nil); err != nil || res.ConflictID <= ids[1] {
		t.Fatalf("after freeing: %+v, %v", res, err)
	}
}

// TestRefusedAtLoad: New and Apply refuse modules that fail validation, name
// the key and file, and Apply keeps the running set.
func TestRefusedAtLoad(t *testing.T) {
	notWasm := filepath.Join(t.TempDir(), "text.wasm")
	if err := os.WriteFile(notWasm, []byte("this is not wasm"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, module, want string
	}{
		{"missing export", hostilePath("noexport"), `does not export function "merge"`},
		{"wrong ABI version", hostilePath("badversion"), "ABI version 99"},
		{"self-test traps", hostilePath("failing"), "self-test merge"},
		{"missing file", filepath.Join(t.TempDir(), "nope.wasm"), "no such file"},
		{"not wasm", notWasm, "compile module"},
	}
	good := cConfig()
	good.Policies["p"] = PolicyConfig{Module: repoPath("examples/policies/c/latestupdate/latestupdate.wasm")}
	good.Maps["orders"] = MapConfig{MergePolicy: "p"}
	running := newRegistry(t, good)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := cConfig()
			cfg.Policies["p"] = PolicyConfig{Module: c.module}
			cfg.Maps["orders"] = MapConfig{MergePolicy: "p"}
			_, err := New(cfg, testLogger(t))
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "policies.p.module") {
				t.Fatalf("New: %v; want it to name policies.p.module and contain %q", err, c.want)
			}
			before := running.List()
			if err := running.Apply(cfg); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Apply: %v", err)
			}
			after := running.List()
			if p := policyInfo(t, running, "p"); !strings.Contains(p.LastReloadError, c.want) {
				t.Errorf("List does not show the refused load of p: %q", p.LastReloadError)
			}
			for _, l := range [][]PolicyInfo{before, after} {
				for i := range l {
					l[i].LastReloadError, l[i].LastReloadErrorAt = "", time.Time{}
				}
			}
			if fmt.Sprint(after) != fmt.Sprint(before) {
				t.Fatalf("running set changed:\n%v\n%v", before, after)
			}
			res, err := running.Merge(context.Background(), "orders", ev("k", 2), ev("k", 1))
			if err != nil || res.Verdict != TakeMerging {
				t.Fatalf("merge after refused Apply: %+v, %v", res, err)
			}
		})
	}
	if n := counterValue(t, running, "mendmq_policy_reloads_total", map[string]string{"result": "error"}); n != float64(len(cases)) {
		t.Errorf("reloads_total{error} = %v, want %d", n, len(cases))
	}
}

func TestRetainedAndDefaultResolution(t *testing.T) {
	cfg := testConfig()
	cfg.Maps[DefaultMap] = MapConfig{MergePolicy: "passthrough"}
	cfg.Maps["orders"] = MapConfig{MergePolicy: "discard"}
	cfg.Maps["sessions"] = MapConfig{} // no policy of its own
	cfg.Retained.MergePolicy = "putifabsent"
	r := newRegistry(t, cfg)
	ctx := context.Background()
	cases := []struct {
		mapName string
		policy  string
		want    Verdict
	}{
		{"orders", "discard", KeepExisting},
		{"sessions", "passthrough", TakeMerging},
		{"never-configured", "passthrough", TakeMerging},
		{RetainedMap, "putifabsent", KeepExisting},
	}
	for _, c := range cases {
		if p := r.PolicyFor(c.mapName); p != c.policy {
			t.Errorf("PolicyFor(%s) = %s, want %s", c.mapName, p, c.policy)
		}
		res, err := r.Merge(ctx, c.mapName, ev("t/1", 2), ev("t/1", 1))
		if err != nil || res.Verdict != c.want {
			t.Errorf("%s: %+v, %v; want %s", c.mapName, res, err, c.want)
		}
	}
	list := r.List()
	byName := map[string]PolicyInfo{}
	for _, p := range list {
		byName[p.Name] = p
	}
	if p := byName["putifabsent"]; !p.Loaded || fmt.Sprint(p.Maps) != "[$retained]" || p.Source != SourceBuiltin || len(p.SHA256) != 64 {
		t.Errorf("putifabsent info %+v", p)
	}
	if p := byName["discard"]; !p.Loaded || fmt.Sprint(p.Maps) != "[orders]" {
		t.Errorf("discard info %+v", p)
	}
	if p := byName["latestupdate"]; p.Loaded || p.Instances != 0 {
		t.Errorf("unused built-in reported loaded: %+v", p)
	}
}

func TestClosed(t *testing.T) {
	r, err := New(cConfig(), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if res, err := r.Merge(context.Background(), "m", ev("k", 1), nil); !errors.Is(err, ErrClosed) || !res.Unmerged {
		t.Fatalf("Merge after Close: %+v, %v", res, err)
	}
	if err := r.Apply(cConfig()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Apply after Close: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestCallerCancelDoesNotPark(t *testing.T) {
	r := hostileRegistry(t, "loop", func(c *Config) { c.Host.CallTimeout = 10 * time.Second })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	res, err := r.Merge(ctx, "evil", ev("boom", 2), nil)
	if !errors.Is(err, context.DeadlineExceeded) || !res.Unmerged {
		t.Fatalf("%+v, %v", res, err)
	}
	if len(r.Conflicts()) != 0 {
		t.Fatal("a canceled merge was parked")
	}
}

// memConflicts is a ConflictStore in memory, shared by the registries of
// one test as a file is by a node's lifetimes; fail makes its writes fail.
type memConflicts struct {
	mu   sync.Mutex
	byID map[uint64]Conflict
	next uint64
	fail error
}

func (m *memConflicts) SaveConflicts(cs []Conflict, next uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	for _, c := range cs {
		m.byID[c.ID] = c
	}
	m.next = next
	return nil
}

func (m *memConflicts) DeleteConflict(id uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	delete(m.byID, id)
	return nil
}

func (m *memConflicts) LoadConflicts() ([]Conflict, uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Conflict
	for _, c := range m.byID {
		out = append(out, c)
	}
	return out, m.next, nil
}

// TestConflictsSurviveRestart: conflicts parked with a ConflictStore are
// there again in the next registry on it, with their ids; a conflict
// parked before the store was attached is stored then; ids are not
// reused after a restart; a conflict that cannot be deleted from storage
// stays parked.
func TestConflictsSurviveRestart(t *testing.T) {
	store := &memConflicts{byID: map[uint64]Conflict{}}
	ctx := context.Background()
	r1 := hostileRegistry(t, "trap", nil)
	early, err := r1.Merge(ctx, "evil", ev("boom-before-attach", 2), nil)
	if err != nil || early.ConflictID == 0 {
		t.Fatalf("park before attach: %+v %v", early, err)
	}
	if n, err := r1.SetConflictStore(store); err != nil || n != 0 {
		t.Fatalf("attach an empty store: %d %v", n, err)
	}
	res, err := r1.Merge(ctx, "evil", ev("boom-after-attach", 2), nil)
	if err != nil || res.ConflictID == 0 {
		t.Fatalf("park: %+v %v", res, err)
	}
	if len(store.byID) != 2 {
		t.Fatalf("stored %d conflicts, want 2: %+v", len(store.byID), store.byID)
	}
	// The node restarts.
	r2 := hostileRegistry(t, "trap", nil)
	if n, err := r2.SetConflictStore(store); err != nil || n != 2 {
		t.Fatalf("attach after restart: %d %v", n, err)
	}
	got := r2.Conflicts()
	if len(got) != 2 || string(got[0].Merging.Key) != "boom-before-attach" || got[1].ID != res.ConflictID ||
		string(got[1].Merging.Value) != "value of boom-after-attach" || got[1].Kind != FailureTrap {
		t.Fatalf("conflicts after restart: %+v", got)
	}
	if err := r2.DropConflict(got[1].ID); err != nil {
		t.Fatal(err)
	}
	next, err := r2.Merge(ctx, "evil", ev("boom-after-restart", 2), nil)
	if err != nil || next.ConflictID <= res.ConflictID {
		t.Fatalf("an id after a restart must be new: %+v (last was %d) %v", next, res.ConflictID, err)
	}
	store.fail = errors.New("disk gone")
	if err := r2.DropConflict(got[0].ID); err == nil {
		t.Fatal("drop with a failing store succeeded")
	}
	if _, ok := r2.Conflict(got[0].ID); !ok {
		t.Fatal("a conflict that could not be deleted from storage was dropped")
	}
	// Parking still works when storage fails: kept in memory.
	if res, err := r2.Merge(ctx, "evil", ev("boom-disk-gone", 2), nil); err != nil || res.ConflictID == 0 {
		t.Fatalf("park with failing storage: %+v %v", res, err)
	}
}
