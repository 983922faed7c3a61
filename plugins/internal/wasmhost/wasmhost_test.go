package wasmhost

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetratelabs/wazero"

	"github.com/mendmq/mendmq/plugins/internal/abi"
	"github.com/mendmq/mendmq/plugins/internal/builtins"
)

// cache is shared by every test in the package, as the registry shares one
// per process, and kept on disk across runs like Go's build cache (a Go
// module compiles in ~1 s, ~7 s under -race).
var cache = func() wazero.CompilationCache {
	c, err := wazero.NewCompilationCacheWithDir(filepath.Join(os.TempDir(), "mendmq-test-wazero-cache"))
	if err != nil {
		return wazero.NewCompilationCache()
	}
	return c
}()

func repoFile(t testing.TB, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "..", rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func opts() Options {
	return Options{Cache: cache, MemoryLimitPages: 256, CallTimeout: 2 * time.Second}
}

func compile(t testing.TB, bin []byte, o Options) *Module {
	t.Helper()
	m, err := Compile(context.Background(), bin, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close(context.Background()) })
	return m
}

func instantiate(t testing.TB, m *Module) *Instance {
	t.Helper()
	in, err := m.Instantiate(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func entry(key string, update int64) *abi.EntryView {
	return &abi.EntryView{Key: []byte(key), Value: []byte("value-" + key), LastUpdateTime: update}
}

var goLatestUpdate = sync.OnceValues(func() ([]byte, error) { return builtins.Module("latestupdate") })

func TestMergeLatestUpdateGoAndC(t *testing.T) {
	goBin, err := goLatestUpdate()
	if err != nil {
		t.Fatal(err)
	}
	mods := map[string][]byte{
		"go": goBin,
		"c":  repoFile(t, "examples/policies/c/latestupdate/latestupdate.wasm"),
	}
	items := []abi.Item{
		{Merging: entry("a", 10), Existing: entry("a", 5)}, // newer merging wins
		{Merging: entry("b", 5), Existing: entry("b", 10)}, // older merging loses
		{Merging: entry("c", 7), Existing: entry("c", 7)},  // tie: merging wins
		{Merging: entry("d", 1)},                           // absent: merging taken
	}
	want := []abi.Verdict{abi.TakeMerging, abi.KeepExisting, abi.TakeMerging, abi.TakeMerging}
	for lang, bin := range mods {
		t.Run(lang, func(t *testing.T) {
			m := compile(t, bin, opts())
			if !m.HasBatch() {
				t.Fatal("module has no merge_batch")
			}
			in := instantiate(t, m)
			defer in.Close(context.Background())
			for _, batch := range []bool{false, true} {
				var got []abi.Decoded
				if batch {
					got, err = in.Merge(context.Background(), "orders", items)
					if err != nil {
						t.Fatal(err)
					}
				} else {
					for i := range items {
						r, err := in.Merge(context.Background(), "orders", items[i:i+1])
						if err != nil {
							t.Fatal(err)
						}
						got = append(got, r...)
					}
				}
				if len(got) != len(want) {
					t.Fatalf("batch=%v: %d results, want %d", batch, len(got), len(want))
				}
				for i := range want {
					if got[i].Verdict != want[i] {
						t.Errorf("batch=%v item %d: verdict %s, want %s", batch, i, got[i].Verdict, want[i])
					}
				}
			}
		})
	}
}

func hostile(t testing.TB, mode string) []byte {
	return repoFile(t, "plugins/testdata/hostile/"+mode+".wasm")
}

func TestRefusedAtLoad(t *testing.T) {
	cases := []struct {
		mode, want string
		atCompile  bool
	}{
		{"noexport", `does not export function "merge"`, true},
		{"badversion", "ABI version 99", false},
	}
	for _, c := range cases {
		t.Run(c.mode, func(t *testing.T) {
			m, err := Compile(context.Background(), hostile(t, c.mode), opts())
			if c.atCompile {
				if err == nil || !strings.Contains(err.Error(), c.want) {
					t.Fatalf("Compile error %v, want it to contain %q", err, c.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close(context.Background())
			if _, err := m.Instantiate(context.Background()); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Instantiate error %v, want it to contain %q", err, c.want)
			}
		})
	}
}

func TestHostileContained(t *testing.T) {
	o := opts()
	o.CallTimeout = 50 * time.Millisecond
	o.MemoryLimitPages = 64
	cases := []struct {
		mode    string
		wantErr error
		check   func(t *testing.T, res []abi.Decoded)
	}{
		{mode: "loop", wantErr: ErrTimeout},
		{mode: "trap", wantErr: ErrTrap},
		{mode: "hugeresult", wantErr: ErrGarbage},
		{mode: "garbage", wantErr: ErrGarbage},
		{mode: "wrongkey", wantErr: ErrGarbage},
		{mode: "growbomb", check: func(t *testing.T, res []abi.Decoded) {
			if len(res) != 1 || res[0].Verdict != abi.Fail {
				t.Fatalf("results %+v, want one fail", res)
			}
			m := regexp.MustCompile(`refused at (\d+) pages`).FindStringSubmatch(res[0].Reason)
			if m == nil {
				t.Fatalf("reason %q", res[0].Reason)
			}
			if n, _ := strconv.Atoi(m[1]); n > 64 {
				t.Fatalf("memory grew to %d pages, limit 64", n)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.mode, func(t *testing.T) {
			o := o
			if c.mode != "loop" {
				// Only the loop needs the short deadline (growbomb copies
				// 4 MiB 64 times, slow under -race).
				o.CallTimeout = 10 * time.Second
			}
			m := compile(t, hostile(t, c.mode), o)
			in := instantiate(t, m)
			defer in.Close(context.Background())
			// Not evil: behaves.
			res, err := in.Merge(context.Background(), "fine", []abi.Item{{Merging: entry("k", 1)}})
			if err != nil || len(res) != 1 || res[0].Verdict != abi.KeepExisting {
				t.Fatalf("benign merge: %+v, %v", res, err)
			}
			start := time.Now()
			res, err = in.Merge(context.Background(), "evil", []abi.Item{{Merging: entry("boom", 1), Existing: entry("boom", 0)}})
			if c.wantErr != nil {
				if !errors.Is(err, c.wantErr) {
					t.Fatalf("error %v, want %v", err, c.wantErr)
				}
				t.Logf("contained after %v: %v", time.Since(start), err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c.check(t, res)
		})
	}
}

func TestCallerCancelIsNotAPolicyFault(t *testing.T) {
	o := opts()
	o.CallTimeout = 10 * time.Second
	m := compile(t, hostile(t, "loop"), o)
	in := instantiate(t, m)
	defer in.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := in.Merge(ctx, "evil", []abi.Item{{Merging: entry("boom", 1)}})
	if !errors.Is(err, ErrCanceled) {
		t.Fatalf("error %v, want ErrCanceled", err)
	}
}

func TestPoolReusesAndReplaces(t *testing.T) {
	m := compile(t, hostile(t, "trap"), opts())
	p := NewPool(m, 2, nil)
	defer p.Close()
	ctx := context.Background()
	a, err := p.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if p.Live() != 2 {
		t.Fatalf("live %d, want 2", p.Live())
	}
	// Full: a third Get waits, and gets b once it is returned.
	got := make(chan *Instance)
	go func() {
		in, err := p.Get(ctx)
		if err != nil {
			t.Error(err)
		}
		got <- in
	}()
	p.Put(b)
	if in := <-got; in != b {
		t.Fatal("waiting Get did not receive the returned instance")
	}
	// A discarded instance frees its slot for a new one.
	p.Discard(a)
	c, err := p.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c == a || p.Live() != 2 {
		t.Fatalf("after discard: got old instance or live %d", p.Live())
	}
	p.Put(c)
	p.Put(b)
	// Closing with nothing in use closes everything.
	p.Close()
	if p.Live() != 0 {
		t.Fatalf("live %d after close", p.Live())
	}
	if _, err := p.Get(ctx); !errors.Is(err, ErrPoolClosed) {
		t.Fatalf("Get after close: %v", err)
	}
}

func TestPoolCloseWhileInUse(t *testing.T) {
	m := compile(t, repoFile(t, "examples/policies/c/latestupdate/latestupdate.wasm"), opts())
	p := NewPool(m, 1, nil)
	in, err := p.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	// The in-flight merge finishes on its instance.
	if _, err := in.Merge(context.Background(), "m", []abi.Item{{Merging: entry("k", 1)}}); err != nil {
		t.Fatalf("merge on an instance of a closed pool: %v", err)
	}
	p.Put(in)
	if p.Live() != 0 {
		t.Fatalf("live %d", p.Live())
	}
}

// TestSandboxGrantsNothing: the WASI environment has no pre-opened
// directories and no sockets (EBADF = 8 for both probes).
func TestSandboxGrantsNothing(t *testing.T) {
	m := compile(t, hostile(t, "sandbox"), opts())
	in := instantiate(t, m)
	defer in.Close(context.Background())
	res, err := in.Merge(context.Background(), "evil", []abi.Item{{Merging: entry("boom", 1)}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || res[0].Reason != "sandbox: prestat=8 accept=8" {
		t.Fatalf("sandbox probe: %+v", res)
	}
}
