package plugins

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/mendmq/mendmq/plugins/internal/builtins"
)

// Well-known map names.
const (
	// DefaultMap is the maps.<name> entry whose merge_policy applies to every
	// map without its own.
	DefaultMap = "default"
	// RetainedMap is the map name under which retained MQTT messages are
	// merged; its policy comes from retained.merge_policy.
	RetainedMap = "$retained"
	// SmokeMap is the map name of the self-test merge run when a module is
	// loaded (sdk/ABI.md).
	SmokeMap = "$smoke"
)

// Config selects the merge policy of every map and bounds the sandbox. The
// broker unmarshals it from the root of its koanf tree; the koanf tags give
// the configuration keys. Everything in it can be changed at run time with
// Registry.Apply.
type Config struct {
	// Policies names the policy modules loaded from files:
	// policies.<name>.module. Built-in policies (passthrough, putifabsent,
	// higherhits, latestupdate, latestaccess, expirationtime, discard) need
	// no entry, and their names cannot be redefined. A policy is only
	// loaded (read, compiled, instantiated) if some map uses it.
	Policies map[string]PolicyConfig `koanf:"policies"`
	// Maps sets the policy per map: maps.<name>.merge_policy. The entry
	// "default" applies to maps without their own (required). Other keys
	// under maps.<name> belong to the cluster and are ignored here.
	Maps map[string]MapConfig `koanf:"maps"`
	// Retained sets the policy for retained messages (map "$retained"):
	// retained.merge_policy. Every node must use the same one so replicas
	// converge. Default latestupdate.
	Retained RetainedConfig `koanf:"retained"`
	// Host bounds the WebAssembly sandbox: the plugins.* keys.
	Host HostConfig `koanf:"plugins"`
	// BaseDir resolves relative module paths; the broker sets it to the
	// directory of its config file. Empty means the working directory.
	BaseDir string `koanf:"-"`
	// MapsInUse reports whether this node merges map name (other than
	// "$retained") through the registry. Validate refuses a maps.<name>
	// entry (other than maps.default) for which it reports false, naming the
	// key, so a typo or a map nothing merges is not accepted without a word.
	// nil means no map but "$retained" is merged (a node without
	// clustering), so every such entry is refused; the broker sets AnyMap
	// when clustering is on (partitioned maps are created on first use).
	// Tests and tools that merge under arbitrary map names set AnyMap.
	MapsInUse func(name string) bool `koanf:"-"`
}

// AnyMap is a Config.MapsInUse that accepts every map name.
func AnyMap(string) bool { return true }

// PolicyConfig is one file-backed policy.
type PolicyConfig struct {
	// Module is the path of the .wasm file (ABI version 1, sdk/ABI.md).
	// Relative paths resolve against Config.BaseDir. The file is watched
	// and reloaded on change when plugins.watch_modules is on.
	Module string `koanf:"module"`
}

// MapConfig is one map's settings: maps.<name>. The merge policy is this
// package's; the other keys are the partitioned map's (cluster/pmap),
// kept here so one section holds a map's configuration. A map without an
// entry uses maps.default's; an entry's unset keys take maps.default's.
type MapConfig struct {
	// MergePolicy names a built-in or a policies.<name> entry. Empty means
	// "use maps.default.merge_policy".
	MergePolicy string `koanf:"merge_policy"`
	// BackupCount is maps.<name>.backup_count: copies of each partition
	// besides the owner's, 0-3. Unset: maps.default's (default 1). The
	// cluster keeps as many backups as the largest value at start.
	BackupCount *int `koanf:"backup_count"`
	// AsyncBackups is maps.<name>.async_backups: a write is answered
	// before its backups applied it (faster; lost if the owner dies at
	// once). Default false.
	AsyncBackups *bool `koanf:"async_backups"`
	// MinClusterSize is maps.<name>.min_cluster_size: Hazelcast's
	// split-brain protection — with fewer members (on the smaller side of
	// a split) writes are refused, and reads with read_quorum. 0: off.
	MinClusterSize *int `koanf:"min_cluster_size"`
	// ReadQuorum is maps.<name>.read_quorum: min_cluster_size applies to
	// reads too. Default false.
	ReadQuorum *bool `koanf:"read_quorum"`
	// ReadFromBackup is maps.<name>.read_from_backup: a node holding a
	// backup answers reads itself (may lag one write). Default false.
	ReadFromBackup *bool `koanf:"read_from_backup"`
	// TTL and MaxIdle are maps.<name>.ttl and maps.<name>.max_idle: an
	// entry expires TTL after its last update, or MaxIdle after its last
	// access. 0: never. A write may give its own TTL.
	TTL     *time.Duration `koanf:"ttl"`
	MaxIdle *time.Duration `koanf:"max_idle"`
	// MapStore is maps.<name>.map_store: "" (none), "write-through" or
	// "write-behind" — the map's entries are also kept in the node's own
	// storage file (needs storage.path), so a restart or a side of a split
	// without a copy reloads them. Unset: maps.default's.
	MapStore *string `koanf:"map_store"`
}

// Settings returns map name's settings with maps.default filling what
// its entry leaves unset (and 1 backup if neither sets it).
func (c *Config) Settings(name string) MapConfig {
	def := c.Maps[DefaultMap]
	out := c.Maps[name]
	if out.MergePolicy == "" {
		out.MergePolicy = def.MergePolicy
	}
	fill := func(v *int, d *int, fallback int) *int {
		switch {
		case v != nil:
			return v
		case d != nil:
			return d
		}
		return &fallback
	}
	out.BackupCount = fill(out.BackupCount, def.BackupCount, 1)
	out.MinClusterSize = fill(out.MinClusterSize, def.MinClusterSize, 0)
	for _, f := range []struct{ v, d **bool }{{&out.AsyncBackups, &def.AsyncBackups}, {&out.ReadQuorum, &def.ReadQuorum}, {&out.ReadFromBackup, &def.ReadFromBackup}} {
		if *f.v == nil {
			if *f.d != nil {
				*f.v = *f.d
			} else {
				*f.v = new(bool)
			}
		}
	}
	if out.MapStore == nil {
		out.MapStore = def.MapStore
		if out.MapStore == nil {
			out.MapStore = new(string)
		}
	}
	for _, f := range []struct{ v, d **time.Duration }{{&out.TTL, &def.TTL}, {&out.MaxIdle, &def.MaxIdle}} {
		if *f.v == nil {
			if *f.d != nil {
				*f.v = *f.d
			} else {
				*f.v = new(time.Duration)
			}
		}
	}
	return out
}

// RetainedConfig is the policy part of the retained-message settings.
type RetainedConfig struct {
	// MergePolicy names the policy for map "$retained". Default latestupdate.
	MergePolicy string `koanf:"merge_policy"`
}

// HostConfig bounds the sandbox every policy runs in.
type HostConfig struct {
	// CallTimeout bounds one merge or merge_batch call (a batch holds up to
	// 256 entries). A call that runs longer is stopped, its instance
	// discarded and its entries parked. Default 500ms: built-ins take a few
	// µs per call (p99.9 ~1 ms, worst seen ~40 ms on an overloaded 2-core
	// machine), so only a runaway policy reaches it, while a looping policy
	// costs at most 500ms per 256 entries.
	CallTimeout time.Duration `koanf:"call_timeout"`
	// MemoryLimitMiB caps each instance's linear memory, in MiB (1–4096).
	// A Go policy starts at ~2.3 MiB and grows its heap in 4 MiB steps; a C
	// policy needs a few pages. Default 64. Worst case per policy:
	// PoolSize × MemoryLimitMiB.
	MemoryLimitMiB uint32 `koanf:"memory_limit_mib"`
	// PoolSize caps the instances per policy, i.e. the merges one policy
	// runs in parallel. Instances start on demand (a Go one in ~10-40 ms, a
	// C one in ~0.1 ms) and stay idle afterwards. 0 means GOMAXPROCS.
	// Default 0.
	PoolSize int `koanf:"pool_size"`
	// CompilationCacheDir, if set, keeps compiled modules on disk so a
	// restart skips compilation (a Go policy takes ~0.6–1.3 s to compile,
	// a cache hit ~20–50 ms). Empty keeps the cache in memory only (shared
	// by every Registry in the process). Default empty.
	CompilationCacheDir string `koanf:"compilation_cache_dir"`
	// ConflictsLimit bounds the parked merges kept for operators. When it
	// is full, a failing merge is not parked: Merge reports ErrConflictsFull
	// and the caller keeps the entry. Default 10000.
	ConflictsLimit int `koanf:"conflicts_limit"`
	// WatchModules reloads the policies when a module file changes.
	// Default true.
	WatchModules bool `koanf:"watch_modules"`
	// WatchPollInterval re-hashes watched module files this often, for
	// file systems without change notifications. Negative disables polling;
	// zero means the default, 2s.
	WatchPollInterval time.Duration `koanf:"watch_poll_interval"`
}

// DefaultConfig returns the defaults documented on each field: every map and
// retained messages use latestupdate, no file policies.
func DefaultConfig() Config {
	return Config{
		Policies: map[string]PolicyConfig{},
		Maps:     map[string]MapConfig{DefaultMap: {MergePolicy: "latestupdate"}},
		Retained: RetainedConfig{MergePolicy: "latestupdate"},
		Host: HostConfig{
			CallTimeout:       500 * time.Millisecond,
			MemoryLimitMiB:    64,
			PoolSize:          0,
			ConflictsLimit:    10000,
			WatchModules:      true,
			WatchPollInterval: 2 * time.Second,
		},
	}
}

var policyName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// Validate checks the whole configuration and returns every problem, each
// naming its key and the fix.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("plugins: %s: %s", key, fmt.Sprintf(format, args...)))
	}
	for _, name := range sortedKeys(c.Policies) {
		key := "policies." + name
		switch {
		case !policyName.MatchString(name):
			bad(key, "policy name must be 1-64 letters, digits, '_' or '-'")
		case builtins.Has(name):
			bad(key, "%q is a built-in policy; give the module another name", name)
		case strings.TrimSpace(c.Policies[name].Module) == "":
			bad(key+".module", "empty; set it to the path of a .wasm file")
		}
	}
	known := func(key, policy string) {
		if policy == "" {
			return
		}
		if _, ok := c.Policies[policy]; ok || builtins.Has(policy) {
			return
		}
		bad(key, "unknown policy %q; use a built-in (%s) or define policies.%s.module",
			policy, strings.Join(builtins.Names(), ", "), policy)
	}
	if c.Maps[DefaultMap].MergePolicy == "" {
		bad("maps.default.merge_policy", "empty; set the policy for maps without their own (e.g. latestupdate)")
	}
	for _, m := range sortedKeys(c.Maps) {
		if m == RetainedMap {
			bad("maps."+m, "retained messages take their policy from retained.merge_policy; move it there")
			continue
		}
		if m != DefaultMap && (c.MapsInUse == nil || !c.MapsInUse(m)) {
			bad("maps."+m, "no map %q can exist on this node: the partitioned maps run with the cluster "+
				"(cluster.enabled: true; a cluster of one node is fine). Enable it, or remove maps.%s", m, m)
			continue
		}
		mc := c.Maps[m]
		known("maps."+m+".merge_policy", mc.MergePolicy)
		if v := mc.BackupCount; v != nil && (*v < 0 || *v > 3) {
			bad("maps."+m+".backup_count", "%d is outside 0..3", *v)
		}
		if v := mc.MapStore; v != nil && *v != "" && *v != "write-through" && *v != "write-behind" {
			bad("maps."+m+".map_store", "%q is not a mode; use write-through, write-behind or \"\" (none)", *v)
		}
		if v := mc.MinClusterSize; v != nil && *v < 0 {
			bad("maps."+m+".min_cluster_size", "%d is negative; 0 turns split-brain protection off", *v)
		}
		for _, d := range []struct {
			k string
			v *time.Duration
		}{{"ttl", mc.TTL}, {"max_idle", mc.MaxIdle}} {
			if d.v != nil && *d.v < 0 {
				bad("maps."+m+"."+d.k, "%v is negative; 0 means never", *d.v)
			}
		}
	}
	if c.Retained.MergePolicy == "" {
		bad("retained.merge_policy", "empty; set it (e.g. latestupdate) — every node must use the same")
	}
	known("retained.merge_policy", c.Retained.MergePolicy)

	h := c.Host
	if h.CallTimeout <= 0 || h.CallTimeout > time.Minute {
		bad("plugins.call_timeout", "%v is outside (0, 1m]; use e.g. 500ms", h.CallTimeout)
	}
	if h.MemoryLimitMiB < 1 || h.MemoryLimitMiB > 4096 {
		bad("plugins.memory_limit_mib", "%d is outside [1, 4096]; use e.g. 64", h.MemoryLimitMiB)
	}
	if h.PoolSize < 0 || h.PoolSize > 1024 {
		bad("plugins.pool_size", "%d is outside [0, 1024]; use 0 for GOMAXPROCS", h.PoolSize)
	}
	if h.ConflictsLimit < 1 {
		bad("plugins.conflicts_limit", "%d must be at least 1; use e.g. 10000", h.ConflictsLimit)
	}
	if h.WatchPollInterval > 0 && h.WatchPollInterval < 10*time.Millisecond {
		bad("plugins.watch_poll_interval", "%v is below 10ms; use e.g. 2s, or a negative value to disable polling", h.WatchPollInterval)
	}
	return errors.Join(errs...)
}

// policyOf returns the policy name map mapName uses.
func (c *Config) policyOf(mapName string) string {
	if mapName == RetainedMap {
		return c.Retained.MergePolicy
	}
	if p := c.Maps[mapName].MergePolicy; p != "" {
		return p
	}
	return c.Maps[DefaultMap].MergePolicy
}

// referenced returns the policy names some map uses, with the maps using
// each ("default" stands for every map without its own policy).
func (c *Config) referenced() map[string][]string {
	refs := map[string][]string{}
	for _, m := range sortedKeys(c.Maps) {
		if p := c.Maps[m].MergePolicy; p != "" {
			refs[p] = append(refs[p], m)
		}
	}
	refs[c.Retained.MergePolicy] = append(refs[c.Retained.MergePolicy], RetainedMap)
	return refs
}

// clone deep-copies the maps so a stored Config cannot be changed by the
// caller afterwards.
func (c Config) clone() Config {
	out := c
	out.Policies = make(map[string]PolicyConfig, len(c.Policies))
	for k, v := range c.Policies {
		out.Policies[k] = v
	}
	out.Maps = make(map[string]MapConfig, len(c.Maps))
	for k, v := range c.Maps {
		out.Maps[k] = v
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
