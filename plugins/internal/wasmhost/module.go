// Package wasmhost runs merge-policy modules on wazero: it compiles and
// checks a module, instantiates it in a sandbox (no file system, no network,
// frozen clock, fixed random seed, capped memory), calls merge/merge_batch
// under a per-call deadline (enforced by a watchdog, see watchdog.go) and
// pools instances for concurrent merges.
//
// Contract with the caller: an Instance is used by one goroutine at a time;
// after any error from Instance.Merge the instance must be discarded
// (Pool.Discard), because a guest that trapped or was stopped is unusable.
package wasmhost

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"github.com/tetratelabs/wazero/sys"

	"github.com/mendmq/mendmq/plugins/internal/abi"
)

// Export names of ABI version 1.
const (
	ExportABIVersion = "mendmq_abi_version"
	ExportAlloc      = "mendmq_alloc"
	ExportMerge      = "merge"
	ExportMergeBatch = "merge_batch"
	exportMemory     = "memory"
	exportInitialize = "_initialize"
	exportStart      = "_start"
	wasiModule       = wasi_snapshot_preview1.ModuleName
)

// Failure classes. Every error from Instance.Merge wraps exactly one.
var (
	// ErrTrap: the guest trapped (unreachable, out-of-bounds access, stack
	// overflow, …) or exited (a Go guest's fatal error).
	ErrTrap = errors.New("policy trapped")
	// ErrTimeout: the call outlived its deadline and was stopped.
	ErrTimeout = errors.New("policy call timed out")
	// ErrGarbage: the guest answered with bytes that break the ABI.
	ErrGarbage = abi.ErrGarbage
	// ErrCanceled: the caller's context ended; not the policy's fault.
	ErrCanceled = errors.New("merge canceled by the caller")
	// ErrRequest: the host could not encode the request (too large).
	ErrRequest = errors.New("merge request cannot be encoded")
)

// Options configure a compiled module.
type Options struct {
	// Cache shares compiled code between runtimes; required.
	Cache wazero.CompilationCache
	// MemoryLimitPages caps each instance's linear memory (64 KiB pages).
	MemoryLimitPages uint32
	// CallTimeout bounds one merge or merge_batch call (> 0). A call that
	// overruns it is stopped within a tenth of it (at most 100 ms) more.
	CallTimeout time.Duration
	// InitTimeout bounds instantiation (a Go guest's runtime start takes
	// milliseconds; a hostile start function must not hang the host).
	InitTimeout time.Duration
	// Stored answers the stored-entry import (stored.go) for a module that
	// imports it; nil answers StoredNoStore. Modules without the import
	// never reach it.
	Stored StoreLookup
}

// Module is a compiled, checked policy module with its own wazero runtime
// (the runtime carries the memory cap and deadline mode; compiled code comes
// from the shared cache).
type Module struct {
	rt       wazero.Runtime
	compiled wazero.CompiledModule
	hasBatch bool
	// usesStored: the module imports mendmq.stored_entry_v1.
	usesStored bool
	start      []string
	opts       Options
	wd         *watchdog
	closeMu    sync.Mutex
	closed     bool
}

// Compile compiles bin and checks its imports and exports against ABI
// version 1. It does not run guest code; Instantiate does.
func Compile(ctx context.Context, bin []byte, o Options) (_ *Module, err error) {
	if o.Cache == nil {
		return nil, errors.New("wasmhost: Options.Cache is nil")
	}
	if o.CallTimeout <= 0 {
		return nil, fmt.Errorf("wasmhost: Options.CallTimeout is %v, want > 0", o.CallTimeout)
	}
	if o.InitTimeout <= 0 {
		o.InitTimeout = 10 * time.Second
	}
	rt := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfig().
		WithCompilationCache(o.Cache).
		WithCloseOnContextDone(true).
		WithMemoryLimitPages(o.MemoryLimitPages))
	defer func() {
		if err != nil {
			_ = rt.Close(ctx)
		}
	}()
	compiled, err := rt.CompileModule(ctx, bin)
	if err != nil {
		return nil, fmt.Errorf("compile module: %w", err)
	}
	m := &Module{rt: rt, compiled: compiled, opts: o, wd: newWatchdog(o.CallTimeout)}
	needWASI, err := checkImports(compiled)
	if err != nil {
		return nil, err
	}
	if m.usesStored, err = importsStored(compiled); err != nil {
		return nil, err
	}
	if err := m.checkExports(); err != nil {
		return nil, err
	}
	if needWASI {
		// The full preview1 set is linked because Go's syscall package
		// imports all of it; without preopens or sockets every file and
		// network call fails (EBADF), so only args/env/clock/random/stdio
		// do anything.
		if _, err := wasi_snapshot_preview1.Instantiate(ctx, rt); err != nil {
			return nil, fmt.Errorf("link WASI: %w", err)
		}
	}
	if m.usesStored {
		if err := linkStored(ctx, rt); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// checkImports allows functions from wasi_snapshot_preview1 and the
// stored-entry function (checked by importsStored) only.
func checkImports(c wazero.CompiledModule) (needWASI bool, err error) {
	for _, f := range c.ImportedFunctions() {
		mod, name, _ := f.Import()
		switch mod {
		case wasiModule:
			needWASI = true
		case HostModule:
		default:
			return false, fmt.Errorf("module imports %s.%s: only %s functions and %s.%s are provided",
				mod, name, wasiModule, HostModule, ImportStoredEntry)
		}
	}
	for _, m := range c.ImportedMemories() {
		mod, name, _ := m.Import()
		return false, fmt.Errorf("module imports memory %s.%s: a policy must define and export its own memory", mod, name)
	}
	return needWASI, nil
}

func (m *Module) checkExports() error {
	fns := m.compiled.ExportedFunctions()
	want := []struct {
		name     string
		params   []api.ValueType
		results  []api.ValueType
		optional bool
	}{
		{ExportABIVersion, nil, []api.ValueType{api.ValueTypeI32}, false},
		{ExportAlloc, []api.ValueType{api.ValueTypeI32}, []api.ValueType{api.ValueTypeI32}, false},
		{ExportMerge, []api.ValueType{api.ValueTypeI32, api.ValueTypeI32}, []api.ValueType{api.ValueTypeI64}, false},
		{ExportMergeBatch, []api.ValueType{api.ValueTypeI32, api.ValueTypeI32}, []api.ValueType{api.ValueTypeI64}, true},
	}
	for _, w := range want {
		def, ok := fns[w.name]
		if !ok {
			if w.optional {
				continue
			}
			return fmt.Errorf("module does not export function %q (ABI version %d needs %s, %s, %s)",
				w.name, abi.Version, ExportABIVersion, ExportAlloc, ExportMerge)
		}
		if !slices.Equal(def.ParamTypes(), w.params) || !slices.Equal(def.ResultTypes(), w.results) {
			return fmt.Errorf("export %q has signature %s, want %s",
				w.name, signature(def.ParamTypes(), def.ResultTypes()), signature(w.params, w.results))
		}
		if w.name == ExportMergeBatch {
			m.hasBatch = true
		}
	}
	if _, ok := m.compiled.ExportedMemories()[exportMemory]; !ok {
		return fmt.Errorf("module does not export its memory as %q", exportMemory)
	}
	_, hasInit := fns[exportInitialize]
	_, hasStart := fns[exportStart]
	switch {
	case hasInit:
		m.start = []string{exportInitialize}
	case hasStart:
		return errors.New("module is a WASI command (exports _start, not _initialize): " +
			"build Go policies with -buildmode=c-shared and C policies with -Wl,--no-entry")
	default:
		m.start = []string{}
	}
	return nil
}

func signature(params, results []api.ValueType) string {
	name := func(ts []api.ValueType) string {
		s := make([]string, len(ts))
		for i, t := range ts {
			s[i] = api.ValueTypeName(t)
		}
		return strings.Join(s, ", ")
	}
	return "(" + name(params) + ") -> (" + name(results) + ")"
}

// HasBatch reports whether the module exports merge_batch.
func (m *Module) HasBatch() bool { return m.hasBatch }

// UsesStored reports whether the module imports mendmq.stored_entry_v1.
func (m *Module) UsesStored() bool { return m.usesStored }

// Close releases the runtime and every instance still open in it. Callers
// close a module only once no instance is in use (Pool does this).
func (m *Module) Close(ctx context.Context) error {
	m.closeMu.Lock()
	defer m.closeMu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	m.wd.close()
	return m.rt.Close(ctx)
}

// Instantiate starts a new sandboxed instance, runs _initialize if
// exported, and checks mendmq_abi_version.
func (m *Module) Instantiate(ctx context.Context) (*Instance, error) {
	ictx, cancel := context.WithTimeout(ctx, m.opts.InitTimeout)
	defer cancel()
	out := &tail{}
	// Defaults are the sandbox: no FS preopens, no sockets, no args/env,
	// a fake clock and a deterministic random source. Every node must
	// compute the same merge, so a policy gets no real time or entropy.
	cfg := wazero.NewModuleConfig().
		WithName("").
		WithStartFunctions(m.start...).
		WithStdout(out).
		WithStderr(out)
	mod, err := m.rt.InstantiateModule(ictx, m.compiled, cfg)
	if err != nil {
		return nil, fmt.Errorf("instantiate: %w", classify(ctx, err, out))
	}
	in := &Instance{
		mod:   mod,
		mem:   mod.Memory(),
		alloc: mod.ExportedFunction(ExportAlloc),
		merge: mod.ExportedFunction(ExportMerge),
		out:   out,
		ctx:   newCallCtx(),
		wd:    m.wd,
	}
	if m.hasBatch {
		in.batch = mod.ExportedFunction(ExportMergeBatch)
	}
	if m.usesStored {
		in.usesStored, in.stored, in.ctx.inst = true, m.opts.Stored, in
	}
	if in.mem == nil {
		_ = mod.Close(ctx)
		return nil, fmt.Errorf("instance has no memory")
	}
	stack := []uint64{0}
	if err := mod.ExportedFunction(ExportABIVersion).CallWithStack(ictx, stack); err != nil {
		_ = mod.Close(ctx)
		return nil, fmt.Errorf("call %s: %w", ExportABIVersion, classify(ctx, err, out))
	}
	if v := uint32(stack[0]); v != abi.Version {
		_ = mod.Close(ctx)
		return nil, fmt.Errorf("module speaks ABI version %d, this host speaks %d: rebuild it with the current sdk", v, abi.Version)
	}
	if !m.wd.add(in) {
		_ = mod.Close(ctx)
		return nil, errors.New("instantiate: module closed")
	}
	return in, nil
}

// classify maps a wazero call error to one of the failure classes and adds
// what the guest printed (a Go guest prints its fatal error to stderr).
func classify(parent context.Context, err error, out *tail) error {
	if parent.Err() != nil {
		return fmt.Errorf("%w: %w", ErrCanceled, parent.Err())
	}
	var exit *sys.ExitError
	if errors.As(err, &exit) {
		switch exit.ExitCode() {
		case sys.ExitCodeDeadlineExceeded:
			return ErrTimeout
		case sys.ExitCodeContextCanceled:
			return fmt.Errorf("%w: %w", ErrCanceled, context.Canceled)
		}
		return fmt.Errorf("%w: exited with code %d%s", ErrTrap, exit.ExitCode(), out.suffix())
	}
	msg, _, _ := strings.Cut(err.Error(), "\n") // drop wazero's stack trace
	return fmt.Errorf("%w: %s%s", ErrTrap, msg, out.suffix())
}

// tail keeps the last bytes a guest wrote to stdout/stderr.
type tail struct {
	mu  sync.Mutex
	buf []byte
}

const tailMax = 512

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > tailMax {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-tailMax:]...)
	}
	return len(p), nil
}

func (t *tail) suffix() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := strings.TrimSpace(string(t.buf))
	if s == "" {
		return ""
	}
	return " (guest output: " + strings.ReplaceAll(s, "\n", " | ") + ")"
}
