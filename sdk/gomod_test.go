package sdk

import (
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// goLine is the go directive of sdk/go.mod: the oldest Go an author may
// build a policy with. Why 1.24 and not lower:
//
//   - the module's exports (exports_wasip1.go) use //go:wasmexport, and
//     GOOS=wasip1 -buildmode=c-shared builds a WASI reactor; both arrived
//     in Go 1.24 (its release notes, "WebAssembly"). That is a toolchain
//     feature the compiler does not gate by -lang, so it is asserted here
//     by reading the source, not by a build;
//   - the language features used (min/max built-ins: 1.21) and the standard
//     library APIs used are older: TestBuildsAtGoLine compiles with
//     -lang=go<goLine> and runs go vet, whose stdversion analyzer reports
//     any standard-library symbol newer than the go directive.
//
// Raising it is a breaking change for authors: say why here first.
const goLine = "1.24"

func TestGoDirective(t *testing.T) {
	b, err := os.ReadFile("go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(b)
	if m == nil || string(m[1]) != goLine {
		t.Fatalf("sdk/go.mod go directive %q, want %q (see goLine)", m, goLine)
	}
	if !regexp.MustCompile(`(?m)^module github\.com/mendmq/mendmq/sdk$`).Match(b) {
		t.Fatal("sdk/go.mod must declare module github.com/mendmq/mendmq/sdk")
	}
	if regexp.MustCompile(`(?m)^(require|replace|toolchain)\b`).Match(b) {
		t.Fatal("sdk/go.mod must stay free of requirements and toolchain lines: authors build it offline")
	}
	src, err := os.ReadFile("exports_wasip1.go")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(src), "//go:wasmexport merge_batch") {
		t.Fatal("exports_wasip1.go no longer uses //go:wasmexport: revisit goLine, which it pins to 1.24")
	}
}

// TestBuildsAtGoLine builds and vets the package natively and for wasip1
// with the language version pinned to goLine. It uses the local toolchain
// only (GOTOOLCHAIN=local, GOPROXY=off): the module has
// no dependencies.
func TestBuildsAtGoLine(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the go command (seconds); skipped with -short")
	}
	gobin, err := exec.LookPath("go") // go test puts its GOROOT/bin first on PATH
	if err != nil {
		t.Skip("no go command on PATH")
	}
	for _, target := range []struct{ goos, goarch string }{{runtime.GOOS, runtime.GOARCH}, {"wasip1", "wasm"}} {
		env := append(os.Environ(), "GOOS="+target.goos, "GOARCH="+target.goarch,
			"GOTOOLCHAIN=local", "GOPROXY=off", "GOFLAGS=-mod=mod", "CGO_ENABLED=0")
		for _, args := range [][]string{
			{"build", "-gcflags=-lang=go" + goLine, "-o", os.DevNull, "."},
			{"vet", "."},
		} {
			cmd := exec.Command(gobin, args...)
			cmd.Env = env
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("GOOS=%s go %s: %v\n%s", target.goos, strings.Join(args, " "), err, out)
			}
		}
	}
}

func TestVersionFollowsABI(t *testing.T) {
	m := regexp.MustCompile(`^v(\d+)\.\d+\.\d+$`).FindStringSubmatch(Version)
	if m == nil || m[1] != strconv.Itoa(ABIVersion) {
		t.Fatalf("Version %q: want v%d.x.y (the SDK's major version is the ABI version it speaks)", Version, ABIVersion)
	}
}
