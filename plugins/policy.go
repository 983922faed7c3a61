package plugins

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetratelabs/wazero"

	"github.com/mendmq/mendmq/plugins/internal/abi"
	"github.com/mendmq/mendmq/plugins/internal/builtins"
	"github.com/mendmq/mendmq/plugins/internal/wasmhost"
)

// SourceBuiltin is PolicyInfo.Source for a policy embedded in the binary.
const SourceBuiltin = "builtin"

// policy is one loaded module: compiled once, validated, with a pool of
// instances. It is shared by every policy set that uses it unchanged, and
// closed when the last set lets go (refs).
type policy struct {
	name     string
	source   string // SourceBuiltin or the module's absolute path
	sha256   string
	key      string // reuse identity: module digest + sandbox settings
	loadedAt time.Time
	loadDur  time.Duration
	pool     *wasmhost.Pool
	merges   *mergeCounters
	refs     atomic.Int32
}

func (p *policy) unref() {
	if p.refs.Add(-1) == 0 {
		p.pool.Close()
	}
}

// caches holds the process-wide compilation caches, one per directory (""
// is memory only). They live as long as the process: every Registry, and
// every node a test starts in one process, compiles a module once.
var caches = struct {
	sync.Mutex
	m map[string]wazero.CompilationCache
}{m: map[string]wazero.CompilationCache{}}

func sharedCache(dir string) (wazero.CompilationCache, error) {
	if dir != "" {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return nil, err
		}
		dir = abs
	}
	caches.Lock()
	defer caches.Unlock()
	if c := caches.m[dir]; c != nil {
		return c, nil
	}
	var c wazero.CompilationCache
	if dir == "" {
		c = wazero.NewCompilationCache()
	} else {
		var err error
		if c, err = wazero.NewCompilationCacheWithDir(dir); err != nil {
			return nil, err
		}
	}
	caches.m[dir] = c
	return c, nil
}

// compileLocks serialises compilations of the same module bytes across the
// process: wazero's cache does not, and two nodes starting together would
// both spend a second compiling the same Go module.
var compileLocks sync.Map // sha256 -> *sync.Mutex

func lockCompile(sha string) func() {
	mu, _ := compileLocks.LoadOrStore(sha, new(sync.Mutex))
	mu.(*sync.Mutex).Lock()
	return mu.(*sync.Mutex).Unlock
}

// moduleSource says where policy name comes from (SourceBuiltin or an
// absolute path) and how errors about it name it (its config key).
func moduleSource(cfg *Config, name string) (source, key string) {
	if builtins.Has(name) {
		return SourceBuiltin, "built-in policy " + name
	}
	path := cfg.Policies[name].Module
	if !filepath.IsAbs(path) && cfg.BaseDir != "" {
		path = filepath.Join(cfg.BaseDir, path)
	}
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	return path, fmt.Sprintf("policies.%s.module (%s)", name, path)
}

// readModule returns the module bytes and their sha256.
func readModule(name, source string) (bin []byte, sum string, err error) {
	if source == SourceBuiltin {
		bin, err = builtins.Module(name)
		return bin, builtins.SHA256(name), err
	}
	bin, err = os.ReadFile(source)
	if err != nil {
		return nil, "", err
	}
	s := sha256.Sum256(bin)
	return bin, hex.EncodeToString(s[:]), nil
}

// hostKey is the part of a policy's identity that comes from the sandbox
// settings: a change rebuilds the policy.
func hostKey(h HostConfig) string {
	return fmt.Sprintf("mem=%d timeout=%v pool=%d cache=%q", h.MemoryLimitMiB, h.CallTimeout, poolSize(h), h.CompilationCacheDir)
}

func poolSize(h HostConfig) int {
	if h.PoolSize > 0 {
		return h.PoolSize
	}
	return runtime.GOMAXPROCS(0)
}

// loadPolicy compiles, instantiates and self-tests a module, and returns it
// with a pool seeded with the tested instance.
func loadPolicy(ctx context.Context, name, source, sum string, bin []byte, h HostConfig, stored wasmhost.StoreLookup) (*policy, error) {
	start := time.Now()
	cache, err := sharedCache(h.CompilationCacheDir)
	if err != nil {
		return nil, fmt.Errorf("open compilation cache (plugins.compilation_cache_dir %q): %w", h.CompilationCacheDir, err)
	}
	unlock := lockCompile(sum)
	mod, err := wasmhost.Compile(ctx, bin, wasmhost.Options{
		Cache:            cache,
		MemoryLimitPages: h.MemoryLimitMiB * 16, // 16 pages of 64 KiB per MiB
		CallTimeout:      h.CallTimeout,
		Stored:           stored,
	})
	unlock()
	if err != nil {
		return nil, err
	}
	inst, err := mod.Instantiate(ctx)
	if err != nil {
		_ = mod.Close(ctx)
		return nil, err
	}
	if err := smokeTest(ctx, inst); err != nil {
		_ = inst.Close(ctx)
		_ = mod.Close(ctx)
		return nil, err
	}
	p := &policy{
		name:     name,
		source:   source,
		sha256:   sum,
		key:      sum + " " + hostKey(h),
		loadedAt: time.Now(),
		loadDur:  time.Since(start),
		pool:     wasmhost.NewPool(mod, poolSize(h), inst),
	}
	p.refs.Store(1)
	return p, nil
}

// smokeTest runs one merge and one two-entry batch (existing present and
// absent) under map name SmokeMap. Any well-formed answer passes, Fail
// included: a policy may legitimately refuse the made-up values.
func smokeTest(ctx context.Context, inst *wasmhost.Instance) error {
	merging := &EntryView{
		Key: []byte("mendmq-smoke"), Value: []byte(`{"smoke":"merging"}`),
		Cost: 31, Hits: 2, Version: 3, CreationTime: 1_700_000_000_000,
		LastAccessTime: 1_700_000_002_000, LastUpdateTime: 1_700_000_002_000,
	}
	existing := &EntryView{
		Key: []byte("mendmq-smoke"), Value: []byte(`{"smoke":"existing"}`),
		Cost: 32, Hits: 1, Version: 2, CreationTime: 1_700_000_000_000,
		LastAccessTime: 1_700_000_001_000, LastUpdateTime: 1_700_000_001_000,
	}
	items := []abi.Item{{Merging: merging, Existing: existing}, {Merging: merging}}
	if _, err := inst.Merge(ctx, SmokeMap, items[:1]); err != nil {
		return fmt.Errorf("self-test merge: %w", err)
	}
	if _, err := inst.Merge(ctx, SmokeMap, items); err != nil {
		return fmt.Errorf("self-test merge_batch: %w", err)
	}
	return nil
}
