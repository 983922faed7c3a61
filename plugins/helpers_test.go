package plugins

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// testConfig is DefaultConfig without file watching, with a small pool, a
// deadline no loaded CI machine reaches (tests of timeouts set their own)
// and the test compilation cache.
func testConfig() Config {
	cfg := DefaultConfig()
	cfg.Host.WatchModules = false
	cfg.Host.PoolSize = 2
	cfg.Host.CallTimeout = 5 * time.Second
	cfg.Host.CompilationCacheDir = testCacheDir
	cfg.MapsInUse = AnyMap // the tests merge under made-up map names
	return cfg
}

// cConfig is testConfig with the C latestupdate module as default and
// retained policy: no Go module to load, so registries start in
// milliseconds.
func cConfig() Config {
	cfg := testConfig()
	cfg.Policies["clatest"] = PolicyConfig{Module: repoPath("examples/policies/c/latestupdate/latestupdate.wasm")}
	cfg.Maps[DefaultMap] = MapConfig{MergePolicy: "clatest"}
	cfg.Retained.MergePolicy = "clatest"
	return cfg
}

// testCacheDir keeps compiled modules across test runs, like Go's build
// cache: a Go policy takes ~1 s to compile, ~7 s under -race (the wazero
// compiler itself is instrumented), and the tests use eight of them. wazero
// keys entries by module digest, wazero version and architecture, and
// recompiles an entry that fails its checksum.
var testCacheDir = filepath.Join(os.TempDir(), "mendmq-test-wazero-cache")

// testLogger writes the registry's logs to the test log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func newRegistry(t testing.TB, cfg Config) *Registry {
	t.Helper()
	r, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

func ev(key string, update int64) *EntryView {
	return &EntryView{Key: []byte(key), Value: []byte("value of " + key), Cost: int64(9 + 2*len(key)), LastUpdateTime: update}
}

func repoPath(rel string) string { return filepath.Join("..", rel) }

// hostilePath is a checked-in hostile module (see testdata/hostile/hostile.c).
func hostilePath(mode string) string { return filepath.Join("testdata", "hostile", mode+".wasm") }

// counterValue sums the samples of a collector whose labels match labels
// (labels not given match any value).
func counterValue(t testing.TB, r *Registry, name string, labels map[string]string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(r.Collectors()...)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue metrics
				}
			}
			if c := m.GetCounter(); c != nil {
				sum += c.GetValue()
			} else {
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// waitFor polls cond until it holds or 10 s pass.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// buildC compiles a C policy with the same flags as build-policies.sh, or
// skips the test when clang cannot target wasm32 here.
func buildC(t testing.TB, src, out string, extra ...string) {
	t.Helper()
	clang, err := exec.LookPath("clang")
	if err != nil {
		t.Skip("clang not installed: cannot build C policies (apt-get install clang lld)")
	}
	args := append([]string{"--target=wasm32", "-O2", "-ffreestanding", "-nostdlib", "-mbulk-memory",
		"-Wall", "-Wextra", "-Werror", "-I", repoPath("sdk/c"),
		"-Wl,--no-entry", "-Wl,--strip-all"}, extra...)
	args = append(args, "-o", out, src)
	cmd := exec.Command(clang, args...)
	if b, err := cmd.CombinedOutput(); err != nil {
		if bytes.Contains(b, []byte("wasm-ld")) || bytes.Contains(b, []byte("unable to execute")) {
			t.Skipf("clang cannot link wasm32 (is lld installed?): %s", b)
		}
		t.Fatalf("clang %v: %v\n%s", args, err, b)
	}
}

// buildGo compiles a Go policy package with the same command as
// build-policies.sh.
func buildGo(t testing.TB, pkg, out string) {
	t.Helper()
	goBin := filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		if goBin, err = exec.LookPath("go"); err != nil {
			t.Skip("go toolchain not found: cannot build Go policies")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-buildmode=c-shared", "-trimpath", "-buildvcs=false",
		`-ldflags=-s -w`, "-o", out, pkg)
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0", "GOFLAGS=-mod=readonly")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
}
