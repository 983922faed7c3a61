package plugins

import (
	"strings"
	"testing"
	"time"

	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/rawbytes"
	"github.com/knadh/koanf/v2"
)

func TestDefaultConfig(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"orders", DefaultMap, RetainedMap} {
		if p := cfg.policyOf(m); p != "latestupdate" {
			t.Errorf("map %s uses %q by default, want latestupdate", m, p)
		}
	}
}

func TestValidateNamesKeyAndFix(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(*Config)
		want   []string // substrings of the error
	}{
		{"map without the cluster", func(c *Config) { c.Maps["orders"] = MapConfig{MergePolicy: "latestupdate"} },
			[]string{"maps.orders", `no map "orders" can exist on this node`, "cluster.enabled", "remove maps.orders"}},
		{"map settings out of range", func(c *Config) {
			b, m, ttl := 4, -1, -time.Second
			c.Maps["orders"] = MapConfig{BackupCount: &b, MinClusterSize: &m, TTL: &ttl}
			c.MapsInUse = AnyMap
		}, []string{"maps.orders.backup_count", "outside 0..3", "maps.orders.min_cluster_size", "maps.orders.ttl"}},
		{"map the node does not merge", func(c *Config) {
			c.Maps["orders"] = MapConfig{MergePolicy: "latestupdate"}
			c.MapsInUse = func(m string) bool { return m == "sessions" }
		}, []string{"maps.orders", "no map"}},
		{"unknown map policy", func(c *Config) {
			c.Maps["orders"] = MapConfig{MergePolicy: "nope"}
			c.MapsInUse = AnyMap
		},
			[]string{"maps.orders.merge_policy", `unknown policy "nope"`, "policies.nope.module"}},
		{"no default", func(c *Config) { delete(c.Maps, DefaultMap) }, []string{"maps.default.merge_policy", "empty"}},
		{"retained empty", func(c *Config) { c.Retained.MergePolicy = "" }, []string{"retained.merge_policy"}},
		{"retained unknown", func(c *Config) { c.Retained.MergePolicy = "x" }, []string{"retained.merge_policy", `unknown policy "x"`}},
		{"retained under maps", func(c *Config) { c.Maps[RetainedMap] = MapConfig{MergePolicy: "discard"} },
			[]string{"maps.$retained", "retained.merge_policy"}},
		{"builtin redefined", func(c *Config) { c.Policies["discard"] = PolicyConfig{Module: "x.wasm"} },
			[]string{"policies.discard", "built-in"}},
		{"empty module", func(c *Config) { c.Policies["mine"] = PolicyConfig{} }, []string{"policies.mine.module", "empty"}},
		{"bad name", func(c *Config) { c.Policies["a b"] = PolicyConfig{Module: "x.wasm"} }, []string{"policies.a b", "letters"}},
		{"timeout", func(c *Config) { c.Host.CallTimeout = 0 }, []string{"plugins.call_timeout"}},
		{"memory", func(c *Config) { c.Host.MemoryLimitMiB = 5000 }, []string{"plugins.memory_limit_mib"}},
		{"pool", func(c *Config) { c.Host.PoolSize = -1 }, []string{"plugins.pool_size", "GOMAXPROCS"}},
		{"conflicts", func(c *Config) { c.Host.ConflictsLimit = 0 }, []string{"plugins.conflicts_limit"}},
		{"poll", func(c *Config) { c.Host.WatchPollInterval = time.Millisecond }, []string{"plugins.watch_poll_interval"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := DefaultConfig()
			c.mutate(&cfg)
			err := cfg.Validate()
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
	t.Run("several problems reported together", func(t *testing.T) {
		cfg := DefaultConfig()
		cfg.Host.CallTimeout = 0
		cfg.Host.PoolSize = -1
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), "call_timeout") || !strings.Contains(err.Error(), "pool_size") {
			t.Fatalf("error %v", err)
		}
	})
}

// TestKoanfUnmarshal decodes the keys the broker's config file uses, the way
// the broker does (koanf.Unmarshal over the defaults).
func TestKoanfUnmarshal(t *testing.T) {
	const doc = `
policies:
  counter:
    module: policies/counter.wasm
maps:
  default:
    merge_policy: higherhits
  orders:
    merge_policy: counter
    backup_count: 2
  sessions:
    backup_count: 1
retained:
  merge_policy: passthrough
plugins:
  call_timeout: 250ms
  memory_limit_mib: 32
  pool_size: 4
  compilation_cache_dir: /var/cache/mendmq
  conflicts_limit: 50
  watch_modules: false
  watch_poll_interval: 5s
`
	k := koanf.New(".")
	if err := k.Load(rawbytes.Provider([]byte(doc)), yaml.Parser()); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.MapsInUse = AnyMap
	if err := k.Unmarshal("", &cfg); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		key       string
		got, want any
	}{
		{"policies.counter.module", cfg.Policies["counter"].Module, "policies/counter.wasm"},
		{"maps.default.merge_policy", cfg.policyOf("anything"), "higherhits"},
		{"maps.orders.merge_policy", cfg.policyOf("orders"), "counter"},
		{"maps.sessions (no policy)", cfg.policyOf("sessions"), "higherhits"},
		{"retained.merge_policy", cfg.policyOf(RetainedMap), "passthrough"},
		{"plugins.call_timeout", cfg.Host.CallTimeout, 250 * time.Millisecond},
		{"plugins.memory_limit_mib", cfg.Host.MemoryLimitMiB, uint32(32)},
		{"plugins.pool_size", cfg.Host.PoolSize, 4},
		{"plugins.compilation_cache_dir", cfg.Host.CompilationCacheDir, "/var/cache/mendmq"},
		{"plugins.conflicts_limit", cfg.Host.ConflictsLimit, 50},
		{"plugins.watch_modules", cfg.Host.WatchModules, false},
		{"plugins.watch_poll_interval", cfg.Host.WatchPollInterval, 5 * time.Second},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.key, c.got, c.want)
		}
	}
}

// TestKoanfKeepsDefaults: keys the file does not set keep DefaultConfig's
// values (koanf decodes over the struct, merging into its maps).
func TestKoanfKeepsDefaults(t *testing.T) {
	k := koanf.New(".")
	if err := k.Load(rawbytes.Provider([]byte("maps:\n  orders:\n    merge_policy: discard\n")), yaml.Parser()); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.MapsInUse = AnyMap
	if err := k.Unmarshal("", &cfg); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := cfg.policyOf("other"); got != "latestupdate" {
		t.Errorf("maps.default.merge_policy = %q after decoding, want the default latestupdate", got)
	}
	if got := cfg.policyOf("orders"); got != "discard" {
		t.Errorf("maps.orders.merge_policy = %q", got)
	}
	if cfg.Host != DefaultConfig().Host {
		t.Errorf("host settings changed: %+v", cfg.Host)
	}
}

// TestSettingsFallBackToDefault: a map's unset keys take maps.default's,
// and 1 backup when neither sets it; a key set to zero stays zero.
func TestSettingsFallBackToDefault(t *testing.T) {
	c := DefaultConfig()
	if s := c.Settings("any"); *s.BackupCount != 1 || *s.MinClusterSize != 0 || *s.TTL != 0 || *s.AsyncBackups || s.MergePolicy != "latestupdate" {
		t.Fatalf("defaults %+v", s)
	}
	two, zero, ttl, yes := 2, 0, time.Minute, true
	c.Maps[DefaultMap] = MapConfig{MergePolicy: "latestupdate", BackupCount: &two, TTL: &ttl, ReadFromBackup: &yes}
	c.Maps["orders"] = MapConfig{MergePolicy: "putifabsent", BackupCount: &zero}
	s := c.Settings("orders")
	if *s.BackupCount != 0 || *s.TTL != time.Minute || !*s.ReadFromBackup || s.MergePolicy != "putifabsent" {
		t.Fatalf("orders %+v", s)
	}
	if s := c.Settings("other"); *s.BackupCount != 2 || s.MergePolicy != "latestupdate" {
		t.Fatalf("other %+v", s)
	}
}
