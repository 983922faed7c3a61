// Package plugins hosts mendmq's WebAssembly merge policies on wazero.
//
// A Registry maps every map (and "$retained") to a policy module, runs merges
// through it, and swaps the whole set atomically on configuration or module
// changes. A policy that traps, times out or answers garbage never loses
// data: the existing entry stays and the merging entry is parked in a
// bounded conflict store an operator can list and resolve.
//
// Module layout, ABI and sandbox rules: sdk/ABI.md and plugins/README.md.
package plugins

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mendmq/mendmq/cluster/merge"
	"github.com/mendmq/mendmq/plugins/filewatch"
	"github.com/mendmq/mendmq/plugins/internal/abi"
	"github.com/mendmq/mendmq/plugins/internal/builtins"
)

// EntryView is one map entry with its metadata (key, value, cost, hits,
// version, creation/last-access/last-update/last-stored/expiration times in
// Unix milliseconds; ExpirationTime 0 means never). See abi.EntryView for
// the fields.
type EntryView = abi.EntryView

// MergeItem is one entry of a batch: Existing is nil when the key is absent
// on the surviving side.
type MergeItem = abi.Item

// Verdict is what a merge decided.
type Verdict = abi.Verdict

// Verdicts found in Result.
const (
	// KeepExisting: leave the existing entry (an absent one stays absent).
	KeepExisting = abi.KeepExisting
	// TakeMerging: store the merging entry (Result.Entry points to it).
	TakeMerging = abi.TakeMerging
	// Put: store Result.Entry, a new entry built by the policy.
	Put = abi.Put
	// Delete: remove the key.
	Delete = abi.Delete
)

// Result is the outcome of one merge (see merge.Result).
type Result = merge.Result

// Registry satisfies the cluster's merge contract.
var _ merge.Merger = (*Registry)(nil)

// ErrClosed is returned after Close.
var ErrClosed = errors.New("plugins: registry closed")

// Batching: a merge_batch call carries at most this many entries or bytes,
// which bounds guest memory and the work done under one call deadline.
const (
	maxBatchItems = 256
	maxBatchBytes = 1 << 20
)

// Registry resolves the merge policy of each map and runs merges. It is safe
// for concurrent use; Merge and MergeBatch never block on Apply.
type Registry struct {
	logger    *slog.Logger
	conflicts *conflictStore
	// store reads the MapStore for policies importing
	// mendmq.stored_entry_v1 (SetStoreReader); nil: none.
	store   atomic.Pointer[storeHolder]
	metrics *metrics
	now     func() time.Time

	// cur is the live policy set; merges pin it with a reference count, so
	// a swap never pulls an instance from under a running merge.
	cur    atomic.Pointer[policySet]
	closed atomic.Bool

	applyMu sync.Mutex // serialises Apply/Reload/Close
	cfg     Config
	// loadErrs holds, per policy name, the last failure to read or load its
	// module, until the policy loads (or is kept unchanged) again. Guarded
	// by applyMu; shown by List.
	loadErrs map[string]loadError
	watcher  *filewatch.Watcher
	pollFor  time.Duration // watcher's poll interval, to notice changes

	reload       chan struct{}
	stop         chan struct{}
	reloaderDone chan struct{}
}

// loadError is a failed attempt to load one policy's module.
type loadError struct {
	err string
	at  time.Time
}

// setLoadErr records (err non-nil) or clears the load failure of policy
// name. Called with applyMu held.
func (r *Registry) setLoadErr(name string, err error) {
	if err == nil {
		delete(r.loadErrs, name)
		return
	}
	if r.loadErrs == nil {
		r.loadErrs = map[string]loadError{}
	}
	r.loadErrs[name] = loadError{err: err.Error(), at: r.now()}
}

// policySet is one immutable generation of the configuration.
type policySet struct {
	refs      atomic.Int64 // 1 for being current + 1 per running merge
	policies  map[string]*policy
	byMap     map[string]*policy
	def       *policy
	retained  *policy
	modFiles  []string // module files to watch
	appliedAt time.Time
	cfg       Config // what the set was built from (read-only)
}

func (s *policySet) tryRef() bool {
	for {
		n := s.refs.Load()
		if n <= 0 {
			return false
		}
		if s.refs.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (s *policySet) release() {
	if s.refs.Add(-1) == 0 {
		for _, p := range s.policies {
			p.unref()
		}
	}
}

func (s *policySet) policyFor(mapName string) *policy {
	if p := s.byMap[mapName]; p != nil {
		return p
	}
	if mapName == RetainedMap {
		return s.retained
	}
	return s.def
}

// New validates cfg, loads the policies it references (only those) and
// starts watching their module files if cfg.Host.WatchModules. logger may be
// nil (logs are discarded).
func New(cfg Config, logger *slog.Logger) (*Registry, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &Registry{
		logger:       logger,
		now:          time.Now,
		reload:       make(chan struct{}, 1),
		stop:         make(chan struct{}),
		reloaderDone: make(chan struct{}),
	}
	r.conflicts = newConflictStore(max(cfg.Host.ConflictsLimit, 1))
	r.metrics = newMetrics(func() float64 { return float64(r.conflicts.len()) })
	if err := r.Apply(cfg); err != nil {
		close(r.reloaderDone)
		return nil, err
	}
	go r.reloader()
	return r, nil
}

// reloader turns module-file change notifications into Reloads, off the
// watcher's goroutine so closing the watcher never waits on a reload.
func (r *Registry) reloader() {
	defer close(r.reloaderDone)
	for {
		select {
		case <-r.stop:
			return
		case <-r.reload:
			// Apply logs and counts a failure; the old set stays.
			_ = r.Reload()
		}
	}
}

// Apply makes cfg the running configuration: it builds the new policy set
// aside (reusing loaded policies whose module and sandbox settings did not
// change, loading the others: compile, instantiate, ABI check, self-test),
// then swaps it in atomically. Merges already running finish on the old set.
// On any error nothing changes and the error names the key or file.
func (r *Registry) Apply(cfg Config) error {
	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	return r.applyLocked(cfg)
}

// Reload re-reads every referenced module file and re-applies the current
// configuration; unchanged modules are kept as they are.
func (r *Registry) Reload() error {
	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	return r.applyLocked(r.cfg)
}

func (r *Registry) applyLocked(cfg Config) error {
	if r.closed.Load() {
		return ErrClosed
	}
	start := r.now()
	next, err := r.build(cfg)
	if err != nil {
		r.metrics.reloads.WithLabelValues("error").Inc()
		if r.cur.Load() != nil {
			r.logger.Error("merge policies not applied; keeping the running ones", "err", err)
		}
		return err
	}
	for name := range r.loadErrs {
		if next.policies[name] == nil { // no longer used: nothing to report
			delete(r.loadErrs, name)
		}
	}
	cfg = cfg.clone()
	r.watch(cfg.Host, next.modFiles)
	r.conflicts.setLimit(cfg.Host.ConflictsLimit)
	r.cfg = cfg
	if old := r.cur.Swap(next); old != nil {
		old.release()
	}
	r.metrics.reloads.WithLabelValues("ok").Inc()
	names := make([]string, 0, len(next.policies))
	for n := range next.policies {
		names = append(names, n)
	}
	slices.Sort(names)
	r.logger.Info("merge policies applied", "policies", names,
		"default", cfg.Maps[DefaultMap].MergePolicy, "retained", cfg.Retained.MergePolicy,
		"took", r.now().Sub(start))
	return nil
}

// build loads the policy set for cfg, reusing policies of the current set.
func (r *Registry) build(cfg Config) (_ *policySet, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	old := r.cur.Load()
	next := &policySet{
		policies:  map[string]*policy{},
		byMap:     map[string]*policy{},
		appliedAt: r.now(),
	}
	defer func() {
		if err != nil {
			for _, p := range next.policies {
				p.unref()
			}
		}
	}()
	ctx := context.Background()
	refs := cfg.referenced()
	type loadJob struct {
		name, source, key, sum string
		bin                    []byte
		p                      *policy
		err                    error
	}
	var jobs []*loadJob
	for _, name := range sortedKeys(refs) {
		source, key := moduleSource(&cfg, name)
		hk := hostKey(cfg.Host)
		if old != nil && source == SourceBuiltin {
			// A built-in's digest is known without decompressing it.
			if p := old.policies[name]; p != nil && p.key == builtins.SHA256(name)+" "+hk {
				p.refs.Add(1)
				next.policies[name] = p
				r.setLoadErr(name, nil)
				continue
			}
		}
		bin, sum, err := readModule(name, source)
		if err != nil {
			err = fmt.Errorf("plugins: %s: read module: %w", key, err)
			r.setLoadErr(name, err)
			return nil, err
		}
		if source != SourceBuiltin {
			next.modFiles = append(next.modFiles, source)
		}
		if old != nil {
			if p := old.policies[name]; p != nil && p.key == sum+" "+hk && p.source == source {
				p.refs.Add(1)
				next.policies[name] = p
				r.setLoadErr(name, nil)
				continue
			}
		}
		jobs = append(jobs, &loadJob{name: name, source: source, key: key, sum: sum, bin: bin})
	}
	// Load (compile, start, self-test) the new modules in parallel: a Go
	// module takes about a second to compile, and startup with several
	// should not add them up on a multi-core machine.
	sem := make(chan struct{}, max(runtime.GOMAXPROCS(0), 1))
	var wg sync.WaitGroup
	for _, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			j.p, j.err = loadPolicy(ctx, j.name, j.source, j.sum, j.bin, cfg.Host, r.storedEntry)
		}()
	}
	wg.Wait()
	var loadErr error
	for _, j := range jobs {
		if j.err != nil {
			err := fmt.Errorf("plugins: %s: %w", j.key, j.err)
			r.setLoadErr(j.name, err)
			if loadErr == nil {
				loadErr = err
			}
			continue
		}
		r.setLoadErr(j.name, nil)
		p, name := j.p, j.name
		p.merges = newMergeCounters(r.metrics.merges, name)
		p.pool.OnDiscard = func() { r.metrics.discarded.WithLabelValues(name).Inc() }
		next.policies[name] = p // released by the deferred cleanup on error
		r.logger.Info("merge policy loaded", "policy", name, "source", j.source, "sha256", j.sum,
			"bytes", len(j.bin), "batch", p.pool.Module().HasBatch(), "reads_map_store", p.pool.Module().UsesStored(),
			"took", p.loadDur)
	}
	if loadErr != nil {
		return nil, loadErr
	}
	for m, mc := range cfg.Maps {
		if mc.MergePolicy != "" && m != DefaultMap {
			next.byMap[m] = next.policies[mc.MergePolicy]
		}
	}
	next.def = next.policies[cfg.Maps[DefaultMap].MergePolicy]
	next.retained = next.policies[cfg.Retained.MergePolicy]
	next.cfg = cfg.clone()
	next.refs.Store(1)
	return next, nil
}

// watch starts, retargets or stops the module-file watcher. Called with
// applyMu held; never waits on a reload (the callback only signals).
func (r *Registry) watch(h HostConfig, files []string) {
	poll := h.WatchPollInterval
	if !h.WatchModules || len(files) == 0 || (r.watcher != nil && poll != r.pollFor) {
		if r.watcher != nil {
			_ = r.watcher.Close()
			r.watcher = nil
		}
		if !h.WatchModules || len(files) == 0 {
			return
		}
	}
	if r.watcher != nil {
		if err := r.watcher.SetPaths(files); err != nil {
			r.logger.Warn("cannot watch policy modules; reload them with `mendmq policy reload`", "err", err)
		}
		return
	}
	w, err := filewatch.New(filewatch.Config{PollInterval: poll, Logger: r.logger}, files, func(changed []string) {
		r.logger.Info("policy module changed; reloading", "files", changed)
		select {
		case r.reload <- struct{}{}:
		default: // a reload is already pending
		}
	})
	if err != nil {
		r.logger.Warn("cannot watch policy modules; reload them with `mendmq policy reload`", "err", err)
		return
	}
	r.watcher, r.pollFor = w, poll
}

// PolicyFor returns the policy name mapName currently uses.
func (r *Registry) PolicyFor(mapName string) string {
	s, err := r.acquire()
	if err != nil {
		return ""
	}
	defer s.release()
	return s.policyFor(mapName).name
}

// PolicyInfo describes one policy for operators (GET /api/v1/policies).
type PolicyInfo struct {
	// Name is the policy name used in merge_policy keys.
	Name string `json:"name"`
	// Source is "builtin" or the module file's absolute path.
	Source string `json:"source"`
	// SHA256 is the hex digest of the module (of the uncompressed module for
	// built-ins); empty for a file policy not loaded.
	SHA256 string `json:"sha256,omitempty"`
	// DiskSHA256 is the hex digest of a file policy's module as it is on
	// disk now. It differs from SHA256 while a changed file has not been
	// loaded yet, or could not be (see LastReloadError). Empty for
	// built-ins and when the file cannot be read (DiskError).
	DiskSHA256 string `json:"disk_sha256,omitempty"`
	// DiskError says why the module file could not be read for DiskSHA256.
	DiskError string `json:"disk_error,omitempty"`
	// LastReloadError is the last failure to read or load this policy's
	// module (compile, imports and exports, ABI version, self-test), with
	// the file and the cause; the running module (SHA256), if any, stays in
	// use. It is cleared once the policy loads again.
	LastReloadError string `json:"last_reload_error,omitempty"`
	// LastReloadErrorAt is when LastReloadError happened.
	LastReloadErrorAt time.Time `json:"last_reload_error_at,omitzero"`
	// Loaded says whether some map uses it (only those are compiled).
	Loaded bool `json:"loaded"`
	// LoadedAt is when the running module was loaded.
	LoadedAt time.Time `json:"loaded_at,omitzero"`
	// LoadMillis is how long loading took (read, compile, start, self-test).
	LoadMillis float64 `json:"load_ms,omitzero"`
	// Maps lists the maps using it: "default" for every map without its own
	// policy, "$retained" for retained messages.
	Maps []string `json:"maps"`
	// Batch says whether the module exports merge_batch.
	Batch bool `json:"batch"`
	// Instances is the number of live instances.
	Instances int `json:"instances"`
}

// List describes every policy: loaded ones, file policies defined but not
// used, and the built-ins, sorted by name.
func (r *Registry) List() []PolicyInfo {
	r.applyMu.Lock()
	cfg := r.cfg
	loadErrs := make(map[string]loadError, len(r.loadErrs))
	for k, v := range r.loadErrs {
		loadErrs[k] = v
	}
	r.applyMu.Unlock()
	s, err := r.acquire()
	if err != nil {
		return nil
	}
	defer s.release()
	refs := cfg.referenced()
	var out []PolicyInfo
	add := func(name string) {
		info := PolicyInfo{Name: name, Maps: refs[name]}
		if info.Maps == nil {
			info.Maps = []string{}
		}
		if p := s.policies[name]; p != nil {
			info.Source, info.SHA256, info.Loaded = p.source, p.sha256, true
			info.LoadedAt = p.loadedAt
			info.LoadMillis = float64(p.loadDur.Microseconds()) / 1000
			info.Batch = p.pool.Module().HasBatch()
			info.Instances = p.pool.Live()
		} else {
			info.Source, _ = moduleSource(&cfg, name)
			if info.Source == SourceBuiltin {
				info.SHA256 = builtins.SHA256(name)
			}
		}
		if info.Source != SourceBuiltin {
			if _, sum, err := readModule(name, info.Source); err != nil {
				info.DiskError = err.Error()
			} else {
				info.DiskSHA256 = sum
			}
		}
		if e, ok := loadErrs[name]; ok {
			info.LastReloadError, info.LastReloadErrorAt = e.err, e.at
		}
		out = append(out, info)
	}
	for _, name := range builtins.Names() {
		add(name)
	}
	for _, name := range sortedKeys(cfg.Policies) {
		add(name)
	}
	slices.SortFunc(out, func(a, b PolicyInfo) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	return out
}

// Config returns a copy of the running configuration.
func (r *Registry) Config() Config {
	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	return r.cfg.clone()
}

// Collectors returns the registry's Prometheus collectors for the caller to
// register (nothing is registered globally): mendmq_policy_merges_total,
// mendmq_policy_conflicts_total, mendmq_policy_conflicts_rejected_total,
// mendmq_policy_conflicts_parked, mendmq_policy_instances_discarded_total,
// mendmq_policy_reloads_total.
func (r *Registry) Collectors() []prometheus.Collector { return r.metrics.collectors() }

// Close stops the watcher and releases every policy; merges still running
// finish first on their instances. Later calls return ErrClosed.
func (r *Registry) Close() error {
	if r.closed.Swap(true) {
		return nil
	}
	close(r.stop)
	<-r.reloaderDone
	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	var err error
	if r.watcher != nil {
		err = r.watcher.Close()
		r.watcher = nil
	}
	if s := r.cur.Swap(nil); s != nil {
		s.release()
	}
	return err
}
