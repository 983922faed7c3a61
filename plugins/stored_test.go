package plugins

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mendmq/mendmq/plugins/internal/wasmhost"
	"github.com/mendmq/mendmq/sdk"
	"github.com/mendmq/mendmq/sdk/mapstore"
)

// fakeStore is a StoreReader over a map, counting reads; err, if set, is
// returned for every key.
type fakeStore struct {
	mu      sync.Mutex
	entries map[string]EntryView // "map/key"
	err     error
	block   bool // wait for ctx to end, then fail with its error
	reads   atomic.Int64
}

func (f *fakeStore) StoredEntry(ctx context.Context, mapName string, key []byte) (EntryView, bool, error) {
	f.reads.Add(1)
	if f.block {
		<-ctx.Done()
		return EntryView{}, false, ctx.Err()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return EntryView{}, false, f.err
	}
	e, ok := f.entries[mapName+"/"+string(key)]
	return e, ok, nil
}

var _ StoreReader = (*fakeStore)(nil)

// probeConfig makes testdata/stored/probe.wasm the policy of every map,
// with a write-through map store by default and none for the map "plain".
func probeConfig() Config {
	cfg := testConfig()
	through, none := "write-through", ""
	cfg.Policies["probe"] = PolicyConfig{Module: filepath.Join("testdata", "stored", "probe.wasm")}
	cfg.Maps[DefaultMap] = MapConfig{MergePolicy: "probe", MapStore: &through}
	cfg.Maps["plain"] = MapConfig{MapStore: &none}
	cfg.Retained.MergePolicy = "probe"
	return cfg
}

func storedView(key, value string) EntryView {
	return EntryView{Key: []byte(key), Value: []byte(value), Cost: int64(len(key) + len(value)), Hits: 2, Version: 9,
		CreationTime: 100, LastAccessTime: 300, LastUpdateTime: 200, LastStoredTime: 250, ExpirationTime: 5000}
}

// ints decodes the probe's little-endian int32 answers.
func ints(b []byte) []int32 {
	var out []int32
	for ; len(b) >= 4; b = b[4:] {
		out = append(out, int32(binary.LittleEndian.Uint32(b)))
	}
	return out
}

// TestStoredEntry runs the probe policy through the registry with a fake
// store: a stored entry found (value and metadata as stored, the key asked
// for), not found, maps without a store, a registry without a reader, a
// reader without a store or failing, an entry past the size bound,
// $retained, and a caller canceling while the store blocks.
func TestStoredEntry(t *testing.T) {
	big := storedView("huge", "")
	big.Value = bytes.Repeat([]byte{'x'}, wasmhost.MaxStoredEntry)
	noKey := storedView("", "db-nokey")
	noKey.Key = nil // a reader need not fill Key: the host uses the key asked for
	store := &fakeStore{entries: map[string]EntryView{
		"db/k1":        storedView("k1", "db-value"),
		"db/empty":     storedView("empty", ""),
		"db/nokey":     noKey,
		"db/huge":      big,
		"plain/k1":     storedView("k1", "never read"),
		"$retained/k1": storedView("k1", "never read"),
	}}
	r := newRegistry(t, probeConfig())
	r.SetStoreReader(store)
	ctx := context.Background()
	merging := func(key string) *EntryView { return ev(key, 10) }
	for _, tc := range []struct {
		name, mapName, key string
		wantValue          string        // Put value; "" with a reason: parked
		wantMeta           *EntryView    // metadata of the put entry, if checked
		wantReason         string        // parked conflict's reason
		wantKind           FailureKind   // parked conflict's kind
		reads              int64         // store reads the merge makes
		setup              func() func() // returns the undo
	}{
		{name: "found", mapName: "db", key: "k1", wantValue: "stored:db-value", reads: 1,
			wantMeta: &EntryView{Cost: 10, Hits: 2, Version: 9, CreationTime: 100, LastAccessTime: 300, LastUpdateTime: 200, LastStoredTime: 250, ExpirationTime: 5000}},
		{name: "found, empty value", mapName: "db", key: "empty", wantValue: "stored:", reads: 1},
		{name: "found, reader leaves Key empty", mapName: "db", key: "nokey", wantValue: "stored:db-nokey", reads: 1},
		{name: "not found", mapName: "db", key: "k2", wantValue: "notfound:value of k2", reads: 1},
		{name: "map without a store", mapName: "plain", key: "k1", wantValue: "nostore:value of k1"},
		{name: "$retained", mapName: RetainedMap, key: "k1", wantValue: "nostore:value of k1"},
		{name: "no reader", mapName: "db", key: "k1", wantValue: "nostore:value of k1",
			setup: func() func() { r.SetStoreReader(nil); return func() { r.SetStoreReader(store) } }},
		{name: "node without a store", mapName: "db", key: "k1", wantValue: "nostore:value of k1", reads: 1,
			setup: func() func() { store.err = ErrNoMapStore; return func() { store.err = nil } }},
		{name: "store fails", mapName: "db", key: "k1", reads: 1, wantReason: "mapstore: map store unavailable", wantKind: FailureRefused,
			setup: func() func() { store.err = errors.New("disk on fire"); return func() { store.err = nil } }},
		{name: "oversized", mapName: "db", key: "huge", reads: 1, wantReason: "mapstore: stored entry larger than 16 MiB", wantKind: FailureRefused},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				defer tc.setup()()
			}
			before := store.reads.Load()
			res, err := r.Merge(ctx, tc.mapName, merging(tc.key), ev(tc.key, 5))
			if err != nil {
				t.Fatal(err)
			}
			if got := store.reads.Load() - before; got != tc.reads {
				t.Errorf("store read %d times, want %d", got, tc.reads)
			}
			if tc.wantReason != "" {
				c, ok := r.Conflict(res.ConflictID)
				if res.ConflictID == 0 || !ok || c.Kind != tc.wantKind || !strings.Contains(c.Reason, tc.wantReason) {
					t.Fatalf("result %+v, conflict %+v: want parked (%s) with %q", res, c, tc.wantKind, tc.wantReason)
				}
				return
			}
			if res.Verdict != Put || string(res.Entry.Value) != tc.wantValue || string(res.Entry.Key) != tc.key {
				t.Fatalf("result %+v (%q), want put %q", res, entryValue(res.Entry), tc.wantValue)
			}
			if m := tc.wantMeta; m != nil {
				e := res.Entry
				if e.Cost != m.Cost || e.Hits != m.Hits || e.Version != m.Version || e.CreationTime != m.CreationTime ||
					e.LastAccessTime != m.LastAccessTime || e.LastUpdateTime != m.LastUpdateTime ||
					e.LastStoredTime != m.LastStoredTime || e.ExpirationTime != m.ExpirationTime {
					t.Fatalf("put %+v, want the stored metadata %+v", e, m)
				}
			}
		})
	}

	t.Run("store blocks past the call deadline", func(t *testing.T) {
		cfg := probeConfig()
		cfg.Host.CallTimeout = 50 * time.Millisecond
		r := newRegistry(t, cfg)
		slow := &fakeStore{block: true}
		r.SetStoreReader(slow)
		start := time.Now()
		res, err := r.Merge(ctx, "db", merging("k1"), nil)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := r.Conflict(res.ConflictID)
		if res.ConflictID == 0 || c.Kind != FailureTimeout {
			t.Fatalf("result %+v, conflict %+v: want parked as a timeout", res, c)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("merge took %v: the store's context did not end with the call", d)
		}
	})
	t.Run("caller cancels while the store blocks", func(t *testing.T) {
		r := newRegistry(t, probeConfig())
		slow := &fakeStore{block: true}
		r.SetStoreReader(slow)
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		var res Result
		go func() {
			var err error
			res, err = r.Merge(cctx, "db", merging("k1"), nil)
			done <- err
		}()
		waitFor(t, "the store read", func() bool { return slow.reads.Load() == 1 })
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) || !res.Unmerged || res.ConflictID != 0 {
				t.Fatalf("%+v, %v: want unmerged, canceled, nothing parked", res, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("merge did not return after its caller canceled")
		}
	})
}

func entryValue(e *EntryView) string {
	if e == nil {
		return "<nil>"
	}
	return string(e.Value)
}

// TestStoredEntrySandbox: the import answers "denied" outside a merge call
// (from _initialize and from mendmq_alloc) and for a key the call does not
// merge, "bad pointer" for a key or buffer outside memory, and lets a call
// read any key it merges.
func TestStoredEntrySandbox(t *testing.T) {
	store := &fakeStore{entries: map[string]EntryView{}}
	for _, m := range []string{"init", "badptr", "peek:k2"} {
		store.entries[m+"/k1"] = storedView("k1", "db-1")
		store.entries[m+"/k2"] = storedView("k2", "db-2")
	}
	r := newRegistry(t, probeConfig())
	r.SetStoreReader(store)
	ctx := context.Background()
	put := func(t *testing.T, res Result) []byte {
		t.Helper()
		if res.Verdict != Put {
			c, _ := r.Conflict(res.ConflictID)
			t.Fatalf("result %+v (%s)", res, c.Reason)
		}
		return res.Entry.Value
	}
	t.Run("outside a merge", func(t *testing.T) {
		res, err := r.Merge(ctx, "init", ev("k1", 1), nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := ints(put(t, res)); len(got) != 2 || got[0] != wasmhost.StoredDenied || got[1] != wasmhost.StoredDenied {
			t.Fatalf("statuses from _initialize and mendmq_alloc: %v, want [-3 -3]", got)
		}
	})
	t.Run("bad pointers", func(t *testing.T) {
		res, err := r.Merge(ctx, "badptr", ev("k1", 1), nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := ints(put(t, res)); len(got) != 2 || got[0] != wasmhost.StoredBadPointer || got[1] != wasmhost.StoredBadPointer {
			t.Fatalf("statuses for a key and a buffer outside memory: %v, want [-6 -6]", got)
		}
	})
	t.Run("a key the call does not merge", func(t *testing.T) {
		res, err := r.Merge(ctx, "peek:k2", ev("k1", 1), nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := ints(put(t, res)); len(got) != 1 || got[0] != wasmhost.StoredDenied {
			t.Fatalf("status %v, want [-3]", got)
		}
	})
	t.Run("another key of the same batch", func(t *testing.T) {
		out, err := r.MergeBatch(ctx, "peek:k2", []MergeItem{{Merging: ev("k1", 1)}, {Merging: ev("k2", 1)}})
		if err != nil {
			t.Fatal(err)
		}
		for i, res := range out {
			v := put(t, res)
			if st := ints(v[:4]); st[0] != 0 || string(v[4:]) != "db-2" {
				t.Fatalf("item %d: status %v value %q, want k2's stored value", i, st, v[4:])
			}
		}
	})
}

// TestStoredEntryBatch: MergeBatch through a module reading the store, with
// found, missing and growing entries in one call (the guest's buffer grows
// mid-batch), splits into merge_batch calls, and gives every item its own
// stored copy.
func TestStoredEntryBatch(t *testing.T) {
	store := &fakeStore{entries: map[string]EntryView{}}
	items := make([]MergeItem, 600) // three merge_batch calls
	for i := range items {
		key := []byte{'k', byte('0' + i%10), byte('a' + i/10%26), byte('A' + i/260)}
		items[i] = MergeItem{Merging: &EntryView{Key: key, Value: []byte("m")}}
		if i%3 != 0 {
			store.entries["db/"+string(key)] = storedView(string(key), strings.Repeat("s", i*37))
		}
	}
	r := newRegistry(t, probeConfig())
	r.SetStoreReader(store)
	out, err := r.MergeBatch(context.Background(), "db", items)
	if err != nil {
		t.Fatal(err)
	}
	for i, res := range out {
		want := "notfound:m"
		if i%3 != 0 {
			want = "stored:" + strings.Repeat("s", i*37)
		}
		if res.Verdict != Put || string(res.Entry.Value) != want || !bytes.Equal(res.Entry.Key, items[i].Merging.Key) {
			t.Fatalf("item %d: %+v (%d bytes), want %d bytes", i, res, len(entryValue(res.Entry)), len(want))
		}
	}
	if n := store.reads.Load(); n != int64(len(items)) {
		t.Fatalf("store read %d times for %d entries", n, len(items))
	}
}

// TestStoredImportLoadsWithoutStore: a module importing the function loads
// (its self-test is told "no store") and merges on a registry no reader
// was given, and a reload keeps it.
func TestStoredImportLoadsWithoutStore(t *testing.T) {
	r := newRegistry(t, probeConfig())
	res, err := r.Merge(context.Background(), "db", ev("k1", 1), nil)
	if err != nil || res.Verdict != Put || string(res.Entry.Value) != "nostore:value of k1" {
		t.Fatalf("%+v, %v", res, err)
	}
	if err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	for _, p := range r.List() {
		if p.Name == "probe" && (!p.Loaded || p.LastReloadError != "") {
			t.Fatalf("probe: %+v", p)
		}
	}
}

// TestExampleFromStoreC runs examples/policies/c/fromstore (checked in):
// the stored copy wins, by keeping a copy equal to it or by putting it with
// a newer version; without one, latestupdate.
func TestExampleFromStoreC(t *testing.T) {
	testFromStore(t, repoPath("examples/policies/c/fromstore/fromstore.wasm"))
}

// TestExampleFromStoreGo builds the Go fromstore example (sdk/mapstore in
// a module: the Go side of the import) and runs the same cases.
func TestExampleFromStoreGo(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and compiles a Go module (seconds); skipped with -short")
	}
	out, err := filepath.Abs(filepath.Join(t.TempDir(), "fromstore.wasm"))
	if err != nil {
		t.Fatal(err)
	}
	buildGo(t, "./examples/policies/fromstore", out)
	testFromStore(t, out)
}

func testFromStore(t *testing.T, module string) {
	cfg := testConfig()
	through := "write-through"
	cfg.Policies["fromstore"] = PolicyConfig{Module: module}
	cfg.Maps["orders"] = MapConfig{MergePolicy: "fromstore", MapStore: &through}
	cfg.Maps["plain"] = MapConfig{MergePolicy: "fromstore"}
	r := newRegistry(t, cfg)
	stored := storedView("k", "db")
	large := storedView("big", strings.Repeat("L", 100_000))
	r.SetStoreReader(&fakeStore{entries: map[string]EntryView{
		"orders/k": stored, "orders/same-e": storedView("same-e", "existing"), "orders/same-m": storedView("same-m", "merging"),
		"orders/big": large, "plain/k": stored,
	}})
	e := func(key, value string, version, update int64) *EntryView {
		return &EntryView{Key: []byte(key), Value: []byte(value), Version: version, LastUpdateTime: update}
	}
	for _, tc := range []struct {
		name, mapName     string
		merging, existing *EntryView
		want              Verdict
		value             string
		version           int64
	}{
		{"stored differs: put, newer version", "orders", e("k", "merging", 12, 9), e("k", "existing", 4, 8), Put, "db", 13},
		{"stored equals existing", "orders", e("same-e", "merging", 1, 9), e("same-e", "existing", 1, 8), KeepExisting, "", 0},
		{"stored equals merging", "orders", e("same-m", "merging", 1, 9), e("same-m", "existing", 1, 8), TakeMerging, "", 0},
		{"large stored entry", "orders", e("big", "m", 1, 9), nil, Put, string(large.Value), 10},
		{"not stored: latest update", "orders", e("k2", "merging", 1, 7), e("k2", "existing", 1, 8), KeepExisting, "", 0},
		{"no store: latest update", "plain", e("k", "merging", 1, 9), e("k", "existing", 1, 8), TakeMerging, "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := r.Merge(context.Background(), tc.mapName, tc.merging, tc.existing)
			if err != nil {
				t.Fatal(err)
			}
			if res.Verdict != tc.want {
				c, _ := r.Conflict(res.ConflictID)
				t.Fatalf("verdict %s (%s), want %s", res.Verdict, c.Reason, tc.want)
			}
			if tc.want == Put && (string(res.Entry.Value) != tc.value || res.Entry.Version != tc.version ||
				res.Entry.LastStoredTime != stored.LastStoredTime || !bytes.Equal(res.Entry.Key, tc.merging.Key)) {
				t.Fatalf("put %q v%d (stored %d), want %q v%d", clip(res.Entry.Value), res.Entry.Version, res.Entry.LastStoredTime, clip([]byte(tc.value)), tc.version)
			}
		})
	}
}

// checkCStoredDecode holds the C header's mendmq_stored_decode (inside the
// probe module, map "decode") to mapstore.Decode: both refuse buf, or
// both read the same entry.
func checkCStoredDecode(t *testing.T, r *Registry, buf []byte) {
	t.Helper()
	res, err := r.Merge(context.Background(), "decode", &EntryView{Key: []byte("d"), Value: buf}, nil)
	if err != nil || res.ConflictID != 0 {
		t.Fatalf("merge: %+v, %v", res, err)
	}
	var want sdk.EntryView
	gerr := mapstore.Decode(buf, &want)
	switch {
	case gerr != nil && res.Verdict != Delete:
		t.Fatalf("C accepted what Go refuses (%v):\n% x", gerr, buf)
	case gerr == nil && res.Verdict != Put:
		t.Fatalf("C refused (%s) what Go accepts:\n% x", res.Verdict, buf)
	case gerr == nil:
		got := res.Entry
		dump := binary.LittleEndian.AppendUint32(nil, uint32(len(want.Key)))
		dump = append(append(dump, want.Key...), want.Value...)
		if !bytes.Equal(got.Value, dump) || got.Cost != want.Cost || got.Hits != want.Hits || got.Version != want.Version ||
			got.CreationTime != want.CreationTime || got.LastAccessTime != want.LastAccessTime ||
			got.LastUpdateTime != want.LastUpdateTime || got.LastStoredTime != want.LastStoredTime ||
			got.ExpirationTime != want.ExpirationTime {
			t.Fatalf("C and Go decode differently:\nC  %+v\nGo %+v\nbuf % x", got, want, buf)
		}
	}
}

func storedSeeds() [][]byte {
	enc := func(e EntryView) []byte {
		return sdk.AppendEntry(nil, &sdk.EntryView{Key: e.Key, Value: e.Value, Cost: e.Cost, Hits: e.Hits, Version: e.Version,
			CreationTime: e.CreationTime, LastAccessTime: e.LastAccessTime, LastUpdateTime: e.LastUpdateTime,
			LastStoredTime: e.LastStoredTime, ExpirationTime: e.ExpirationTime})
	}
	ok := enc(storedView("key", "value"))
	return [][]byte{
		ok,
		enc(storedView("", "")),
		enc(storedView("eight-ch", "8 bytes!")),
		ok[:len(ok)-1],                 // truncated
		append(bytes.Clone(ok), 0),     // trailing byte
		ok[:72],                        // header only
		bytes.Repeat([]byte{0xff}, 80), // lengths past the buffer
		{},
	}
}

// TestCStoredDecode: mendmq_stored.h decodes the seeds as mapstore.Decode.
func TestCStoredDecode(t *testing.T) {
	r := newRegistry(t, probeConfig())
	for _, b := range storedSeeds() {
		checkCStoredDecode(t, r, b)
	}
}

// FuzzCStoredDecodeMatchesGo: on any bytes, the C and Go decoders of a
// stored entry accept the same buffers and read the same fields.
func FuzzCStoredDecodeMatchesGo(f *testing.F) {
	for _, b := range storedSeeds() {
		f.Add(b)
	}
	cfg := probeConfig()
	r, err := New(cfg, nil) // no test logger: the fuzz target may not log through f
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = r.Close() })
	f.Fuzz(func(t *testing.T, b []byte) { checkCStoredDecode(t, r, b) })
}
