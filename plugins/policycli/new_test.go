package policycli

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func sdkDir(t *testing.T) string {
	t.Helper()
	d, err := filepath.Abs(filepath.Join("..", "..", "sdk"))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// scaffoldProject runs `policy new` into a fresh directory outside the
// repository and returns it.
func scaffoldProject(t *testing.T, name, lang string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	code, out, stderr := run(t, "new", name, "--lang", lang, "--dir", dir, "--sdk", sdkDir(t))
	if code != 0 {
		t.Fatalf("policy new: exit %d: %s", code, stderr)
	}
	if !strings.Contains(out, "make && make test") {
		t.Errorf("output does not say what to do next:\n%s", out)
	}
	return dir
}

// runIn runs a command in dir with env added, failing the test on error.
func runIn(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s in %s: %v\n%s", name, strings.Join(args, " "), dir, err, out)
	}
	return string(out)
}

// passesItsCases runs the project's cases.json against its module through
// `policy test --cases`, as `make test` does.
func passesItsCases(t *testing.T, dir, wasm string) {
	t.Helper()
	code, out, stderr := run(t, "test", "--cache-dir", cacheDir, "--module", filepath.Join(dir, wasm),
		"--cases", filepath.Join(dir, "cases.json"))
	if code != 0 || !strings.Contains(out, "4 passed, 0 failed") {
		t.Fatalf("policy test --cases: exit %d\n%s%s", code, out, stderr)
	}
}

// TestNewGoProject: a scaffolded Go policy builds outside the repository,
// offline (GOPROXY=off: the replace directive points at the SDK, which has
// no dependencies), passes its own go test and its cases unchanged.
func TestNewGoProject(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a Go module (seconds); skipped with -short")
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command on PATH")
	}
	dir := scaffoldProject(t, "mypolicy", "go")
	for _, f := range []string{"go.mod", "policy.go", "policy_test.go", "Makefile", "cases.json", "README.md", ".gitignore"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("scaffold lacks %s", f)
		}
	}
	mod, _ := os.ReadFile(filepath.Join(dir, "go.mod"))
	for _, want := range []string{"go 1.24", "require github.com/mendmq/mendmq/sdk v0.0.0",
		"replace github.com/mendmq/mendmq/sdk => " + sdkDir(t)} {
		if !strings.Contains(string(mod), want) {
			t.Errorf("go.mod lacks %q:\n%s", want, mod)
		}
	}
	env := []string{"GOFLAGS=-mod=mod", "GOPROXY=off", "GOTOOLCHAIN=local", "GOWORK=off"}
	runIn(t, dir, env, "go", "test", "./...")
	if _, err := exec.LookPath("make"); err == nil {
		runIn(t, dir, env, "make", "mypolicy.wasm")
	} else {
		runIn(t, dir, append(env, "GOOS=wasip1", "GOARCH=wasm"), "go", "build", "-buildmode=c-shared",
			"-trimpath", "-ldflags=-s -w", "-o", "mypolicy.wasm", ".")
	}
	passesItsCases(t, dir, "mypolicy.wasm")
}

// TestNewCProject: a scaffolded C policy builds with its Makefile and
// passes its cases unchanged.
func TestNewCProject(t *testing.T) {
	for _, tool := range []string{"clang", "wasm-ld", "make"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed: cannot build the C scaffold (apt-get install clang lld make)", tool)
		}
	}
	dir := scaffoldProject(t, "cpolicy", "c")
	for _, f := range []string{"policy.c", "Makefile", "cases.json", "README.md", ".gitignore"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("scaffold lacks %s", f)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
		t.Error("C scaffold has a go.mod")
	}
	runIn(t, dir, nil, "make", "cpolicy.wasm")
	passesItsCases(t, dir, "cpolicy.wasm")
}

func TestNewRefuses(t *testing.T) {
	full := t.TempDir()
	if err := os.WriteFile(filepath.Join(full, "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	notSDK := t.TempDir()
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no name", []string{"new", "--lang", "go"}, 2, "name"},
		{"bad name", []string{"new", "my policy", "--lang", "go"}, 2, `name "my policy"`},
		{"no lang", []string{"new", "p"}, 2, "--lang"},
		{"bad lang", []string{"new", "p", "--lang", "rust"}, 2, `--lang "rust"`},
		{"two names", []string{"new", "p", "q", "--lang", "go"}, 2, "one NAME"},
		{"dir not empty", []string{"new", "p", "--lang", "c", "--dir", full, "--sdk", sdkDir(t)}, 1, "not empty"},
		{"not the SDK", []string{"new", "p", "--lang", "c", "--dir", filepath.Join(notSDK, "p"), "--sdk", notSDK}, 1, "is not the mendmq SDK"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, _, stderr := run(t, c.args...)
			if code != c.code || !strings.Contains(stderr, c.want) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, stderr, c.code, c.want)
			}
		})
	}
}

// TestFindSDK: without --sdk, the SDK is found above the working directory
// (a checkout) and through $MENDMQ_SDK.
func TestFindSDK(t *testing.T) {
	t.Setenv("MENDMQ_SDK", "")
	got, err := findSDK("")
	if err != nil || got != sdkDir(t) {
		t.Fatalf("from the working directory: %q, %v", got, err)
	}
	t.Setenv("MENDMQ_SDK", t.TempDir())
	if _, err := findSDK(""); err == nil || !strings.Contains(err.Error(), "$MENDMQ_SDK") {
		t.Fatalf("a wrong $MENDMQ_SDK: %v", err)
	}
}

func writeCases(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cases.json")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestCasesReportMismatches: a wrong expectation fails with exit 1 and says
// what differs; the other cases still run.
func TestCasesReportMismatches(t *testing.T) {
	counter := filepath.Join("..", "..", "examples", "policies", "c", "counter", "counter.wasm")
	file := writeCases(t, `{"map": "counters", "cases": [
	  {"name": "kept", "merging": {"key": "k", "value": "a", "last_update_time": 1},
	   "existing": {"key": "k", "value": "b", "last_update_time": 2},
	   "want": {"verdict": "keep_existing", "value": "b"}},
	  {"name": "wrong verdict and value", "merging": {"key": "k", "value": "a", "last_update_time": 1},
	   "existing": {"key": "k", "value": "b", "last_update_time": 2},
	   "want": {"verdict": "take_merging", "value": "a"}},
	  {"name": "absent stays absent", "merging": {"key": "k", "value": "a"}, "map": "$retained",
	   "want": {"verdict": "keep_existing", "value": "a"}},
	  {"name": "entry fields", "merging": {"key": "k", "value": "a", "hits": 3, "last_update_time": 5},
	   "want": {"verdict": "take_merging", "entry": {"key": "k", "value": "a", "hits": 4, "last_update_time": 5}}}
	]}`)
	code, out, stderr := run(t, "test", "--cache-dir", cacheDir, "--builtin", "latestupdate", "--cases", file)
	if code != 1 {
		t.Fatalf("exit %d, want 1\n%s%s", code, out, stderr)
	}
	for _, want := range []string{
		"ok   kept\n",
		"FAIL wrong verdict and value  (map counters)\n       verdict: got keep_existing, want take_merging\n" +
			`       value: got "b", want "a"`,
		"FAIL absent stays absent  (map $retained)\n       verdict: got take_merging, want keep_existing\n",
		"FAIL entry fields  (map counters)\n       entry.hits: got 3, want 4\n",
		"1 passed, 3 failed\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	// A policy failure is verdict "fail" with its reason.
	file = writeCases(t, `{"map": "counters", "cases": [
	  {"merging": {"key": "hits", "value": "nope"}, "want": {"verdict": "fail", "reason": "16-byte slots"}},
	  {"merging": {"key": "hits", "value": "nope"}, "want": {"verdict": "take_merging"}}]}`)
	code, out, _ = run(t, "test", "--cache-dir", cacheDir, "--module", counter, "--cases", file)
	if code != 1 || !strings.Contains(out, "ok   case 1\n") ||
		!strings.Contains(out, "FAIL case 2  (map counters)\n       verdict: got fail, want take_merging (refused: policy refused:") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
}

func TestCasesFileErrors(t *testing.T) {
	cases := []struct {
		name, body, want string
	}{
		{"not JSON", `{`, "unexpected EOF"},
		{"unknown field", `{"cases": [], "extra": 1}`, `unknown field "extra"`},
		{"no cases", `{"cases": []}`, "no cases"},
		{"no merging", `{"cases": [{"name": "x", "want": {"verdict": "delete"}}]}`, "case 1 (x): merging: required"},
		{"bad verdict", `{"cases": [{"merging": {"key": "k"}, "want": {"verdict": "keep"}}]}`, `want.verdict "keep"`},
		{"bad entry", `{"cases": [{"merging": {"key": "k", "hitz": 1}, "want": {"verdict": "delete"}}]}`, `unknown field "hitz"`},
		{"value twice", `{"cases": [{"merging": {}, "want": {"verdict": "put", "value": "a", "value_b64": "YQ=="}}]}`, "not both"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, _, stderr := run(t, "test", "--builtin", "discard", "--cases", writeCases(t, c.body))
			if code != 2 || !strings.Contains(stderr, c.want) {
				t.Fatalf("exit %d, stderr %q; want 2 and %q", code, stderr, c.want)
			}
		})
	}
	if code, _, stderr := run(t, "test", "--builtin", "discard", "--cases", "x.json", "--merging", "{}"); code != 2 || !strings.Contains(stderr, "--merging or --cases") {
		t.Fatalf("both --cases and --merging: %d %s", code, stderr)
	}
}
