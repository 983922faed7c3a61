package plugins

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// slots encodes a G-Counter value for examples/policies/c/counter.
func slots(pairs ...uint64) []byte {
	var b []byte
	for i := 0; i+1 < len(pairs); i += 2 {
		b = binary.LittleEndian.AppendUint64(b, pairs[i])
		b = binary.LittleEndian.AppendUint64(b, pairs[i+1])
	}
	return b
}

func total(b []byte) uint64 {
	var n uint64
	for i := 8; i+8 <= len(b); i += 16 {
		n += binary.LittleEndian.Uint64(b[i:])
	}
	return n
}

// TestExampleCounterC builds the C counter example from source and runs it.
func TestExampleCounterC(t *testing.T) {
	out := filepath.Join(t.TempDir(), "counter.wasm")
	buildC(t, repoPath("examples/policies/c/counter/counter.c"), out)
	cfg := cConfig()
	cfg.Policies["counter"] = PolicyConfig{Module: out}
	cfg.Maps["counters"] = MapConfig{MergePolicy: "counter"}
	r := newRegistry(t, cfg)
	ctx := context.Background()

	// Before the split both sides had writer 1 at 4 (total 4). The merging
	// side then added 1 (writer 1 -> 5) and 3 (new writer 2); the existing
	// side added 7 (new writer 3). Every increment counts once: 4+1+3+7.
	merging := &EntryView{Key: []byte("hits"), Value: slots(1, 5, 2, 3), Version: 3, LastUpdateTime: 20, CreationTime: 5}
	existing := &EntryView{Key: []byte("hits"), Value: slots(1, 4, 3, 7), Version: 6, LastUpdateTime: 30, CreationTime: 2}
	res, err := r.Merge(ctx, "counters", merging, existing)
	if err != nil {
		t.Fatal(err)
	}
	if res.Verdict != Put || res.Entry == nil {
		t.Fatalf("result %+v", res)
	}
	e := res.Entry
	if string(e.Value) != string(slots(1, 5, 2, 3, 3, 7)) || total(e.Value) != 15 {
		t.Fatalf("merged value %x (total %d), want slots 1:5 2:3 3:7 (total 15)", e.Value, total(e.Value))
	}
	if e.Version != 7 || e.LastUpdateTime != 30 || e.CreationTime != 2 || e.Cost != int64(4+48) || string(e.Key) != "hits" {
		t.Fatalf("metadata %+v", e)
	}
	// Merge order does not matter.
	back, err := r.Merge(ctx, "counters", existing, merging)
	if err != nil || string(back.Entry.Value) != string(e.Value) {
		t.Fatalf("reverse merge %+v, %v", back, err)
	}
	// Absent: taken as is.
	if res, _ := r.Merge(ctx, "counters", merging, nil); res.Verdict != TakeMerging {
		t.Fatalf("absent: %+v", res)
	}
	// Not a counter: refused and parked, existing kept.
	res, err = r.Merge(ctx, "counters", &EntryView{Key: []byte("hits"), Value: []byte("seven")}, existing)
	if err != nil || res.ConflictID == 0 {
		t.Fatalf("invalid value: %+v, %v", res, err)
	}
	if c, _ := r.Conflict(res.ConflictID); c.Kind != FailureRefused || !strings.Contains(c.Reason, "16-byte slots") {
		t.Fatalf("conflict %+v", c)
	}
}

// TestCModulesReproducible rebuilds every checked-in C module (examples and
// hostile test modules) and compares the bytes, so the .wasm files provably
// come from the sources next to them.
func TestCModulesReproducible(t *testing.T) {
	type mod struct{ src, wasm, define, fix string }
	var mods []mod
	for _, name := range []string{"counter", "latestupdate", "fromstore"} {
		dir := "examples/policies/c/" + name + "/"
		mods = append(mods, mod{dir + name + ".c", dir + name + ".wasm", "", "c"})
	}
	for _, mode := range []string{"loop", "trap", "growbomb", "noexport", "badversion", "hugeresult", "garbage", "wrongkey", "failing", "sandbox"} {
		mods = append(mods, mod{"plugins/testdata/hostile/hostile.c", "plugins/testdata/hostile/" + mode + ".wasm",
			"-DHOSTILE_" + strings.ToUpper(mode), "hostile"})
	}
	mods = append(mods, mod{"plugins/testdata/stored/probe.c", "plugins/testdata/stored/probe.wasm", "", "hostile"})
	for _, m := range mods {
		out := filepath.Join(t.TempDir(), "out.wasm")
		var extra []string
		if m.define != "" {
			extra = append(extra, m.define)
		}
		buildC(t, repoPath(m.src), out, extra...)
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(repoPath(m.wasm))
		if err != nil {
			t.Fatal(err)
		}
		if sha256.Sum256(got) != sha256.Sum256(want) {
			t.Errorf("%s differs from a fresh build of %s %s (different clang?): run plugins/build-policies.sh %s", m.wasm, m.src, m.define, m.fix)
		}
	}
}

// TestExampleJSONMergeGo builds the Go jsonmerge example and runs it.
func TestExampleJSONMergeGo(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and compiles a Go module (seconds); skipped with -short")
	}
	out := filepath.Join(t.TempDir(), "jsonmerge.wasm")
	abs, err := filepath.Abs(out)
	if err != nil {
		t.Fatal(err)
	}
	buildGo(t, "./examples/policies/jsonmerge", abs)
	cfg := cConfig()
	cfg.Policies["jsonmerge"] = PolicyConfig{Module: abs}
	cfg.Maps["profiles"] = MapConfig{MergePolicy: "jsonmerge"}
	r := newRegistry(t, cfg)
	ctx := context.Background()
	merging := &EntryView{Key: []byte("u1"), Value: []byte(`{"name":{"v":"Bo","ts":2}}`), Version: 1, LastUpdateTime: 2}
	existing := &EntryView{Key: []byte("u1"), Value: []byte(`{"name":{"v":"Al","ts":1},"age":{"v":3,"ts":1}}`), Version: 4, LastUpdateTime: 1}
	res, err := r.Merge(ctx, "profiles", merging, existing)
	if err != nil || res.Verdict != Put {
		t.Fatalf("%+v, %v", res, err)
	}
	if got, want := string(res.Entry.Value), `{"age":{"v":3,"ts":1},"name":{"v":"Bo","ts":2}}`; got != want {
		t.Fatalf("merged %s, want %s", got, want)
	}
	if res.Entry.Version != 5 {
		t.Fatalf("version %d", res.Entry.Version)
	}
	res, err = r.Merge(ctx, "profiles", &EntryView{Key: []byte("u1"), Value: []byte("{broken")}, existing)
	if err != nil || res.ConflictID == 0 {
		t.Fatalf("invalid JSON: %+v, %v", res, err)
	}
	if c, _ := r.Conflict(res.ConflictID); !strings.Contains(c.Reason, "jsonmerge: merging value") {
		t.Fatalf("reason %q", c.Reason)
	}
}
