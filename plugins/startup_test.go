package plugins

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// startupChildEnv, when set to a directory, makes TestStartupChild measure
// one registry start with that compilation cache directory.
const startupChildEnv = "MENDMQ_PLUGINS_STARTUP_CHILD"

func TestStartupChild(t *testing.T) {
	dir := os.Getenv(startupChildEnv)
	if dir == "" {
		t.Skip("helper for TestStartupCost")
	}
	cfg := DefaultConfig() // latestupdate (Go) for maps and $retained
	cfg.Host.WatchModules = false
	cfg.Host.CompilationCacheDir = dir
	start := time.Now()
	r, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	first := time.Since(start)
	_ = r.Close()
	start = time.Now()
	r, err = New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	second := time.Since(start)
	_ = r.Close()
	fmt.Printf("startup first_ms=%.1f second_ms=%.1f\n", ms(first), ms(second))
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// TestStartupCost measures registry start with the default configuration in
// fresh processes: cold (compiles latestupdate, fills the on-disk cache),
// then warm from the on-disk cache; and within one process, a second
// registry (the in-memory cache every Registry shares).
func TestStartupCost(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("starts child processes that compile a Go module cold; skipped with -short and -race (compilation is ~7× slower under -race)")
	}
	dir := t.TempDir()
	run := func() (first, second float64) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestStartupChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), startupChildEnv+"="+dir)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		m := regexp.MustCompile(`first_ms=([\d.]+) second_ms=([\d.]+)`).FindSubmatch(out)
		if m == nil {
			t.Fatalf("child output %s", out)
		}
		first, _ = strconv.ParseFloat(string(m[1]), 64)
		second, _ = strconv.ParseFloat(string(m[2]), 64)
		return first, second
	}
	cold, inProcess := run()
	warm, _ := run()
	t.Logf("registry start, default config (latestupdate, Go module): cold %.0f ms, restart with on-disk cache %.0f ms, second registry in the same process %.0f ms", cold, warm, inProcess)
	if warm >= cold || inProcess >= cold {
		t.Errorf("caches did not help: cold %.0f ms, disk-warm %.0f ms, in-process %.0f ms", cold, warm, inProcess)
	}
}
