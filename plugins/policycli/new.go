package policycli

import (
	"bytes"
	"embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"text/template"
)

// scaffold holds the project templates of `mendmq policy new`: per
// language, the files of go/ or c/, plus the shared ones at the top. A
// template's name is the file it writes, less ".tmpl" (gitignore.tmpl
// writes .gitignore, policy.c.tmpl policy.c, …).
//
//go:embed scaffold
var scaffold embed.FS

// sdkModule is the module path of the SDK, as sdk/go.mod declares it.
const sdkModule = "github.com/mendmq/mendmq/sdk"

var projectName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]{0,63}$`)

// scaffoldData fills the templates.
type scaffoldData struct {
	Name     string // policy name: the .wasm file and the policies.<name> key
	Lang     string // go or c
	LangName string // Go or C
	SDK      string // absolute path of the SDK directory (sdk/ of a mendmq checkout)
}

func runNew(args []string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("policy new", flag.ContinueOnError)
	flags.SetOutput(stderr)
	lang := flags.String("lang", "", "go or c")
	dir := flags.String("dir", "", "directory to create (default ./NAME)")
	sdkDir := flags.String("sdk", "", "the mendmq SDK directory (sdk/ of a mendmq checkout); default: $MENDMQ_SDK, "+
		"else found above the working directory or the mendmq binary")
	flags.Usage = func() { fmt.Fprint(stderr, usage) }
	// The name comes first (`policy new NAME --lang go`); flags may follow.
	var name string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, args = args[0], args[1:]
	}
	if err := flags.Parse(args); err != nil {
		return 2
	}
	if name == "" && flags.NArg() == 1 {
		name = flags.Arg(0)
	} else if flags.NArg() != 0 {
		fmt.Fprintln(stderr, "mendmq policy new: one NAME, flags after it: mendmq policy new NAME --lang go|c [--dir D]")
		return 2
	}
	if !projectName.MatchString(name) {
		fmt.Fprintf(stderr, "mendmq policy new: name %q: use 1-64 letters, digits, '_' or '-', starting with a letter "+
			"(it names the .wasm file and the policies.<name> key)\n", name)
		return 2
	}
	if *lang != "go" && *lang != "c" {
		fmt.Fprintf(stderr, "mendmq policy new: --lang %q: want go or c\n", *lang)
		return 2
	}
	if *dir == "" {
		*dir = name
	}
	sdk, err := findSDK(*sdkDir)
	if err != nil {
		fmt.Fprintln(stderr, "mendmq policy new:", err)
		return 1
	}
	data := scaffoldData{Name: name, Lang: *lang, LangName: map[string]string{"go": "Go", "c": "C"}[*lang], SDK: sdk}
	files, err := writeProject(*dir, data)
	if err != nil {
		fmt.Fprintln(stderr, "mendmq policy new:", err)
		return 1
	}
	fmt.Fprintf(stdout, "created %s (%s policy %q, SDK %s):\n", *dir, data.LangName, name, sdk)
	for _, f := range files {
		fmt.Fprintln(stdout, "  "+f)
	}
	fmt.Fprintf(stdout, "next: cd %s && make && make test\n", *dir)
	return 0
}

// writeProject renders the templates for data.Lang into dir, which must not
// exist or be empty. It returns the files written, relative to dir.
func writeProject(dir string, data scaffoldData) ([]string, error) {
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		return nil, fmt.Errorf("--dir %s: exists and is not empty; choose another directory", dir)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("--dir %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("--dir %s: %w", dir, err)
	}
	var written []string
	for _, sub := range []string{"scaffold", "scaffold/" + data.Lang} {
		entries, err := scaffold.ReadDir(sub)
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			if e.IsDir() {
				continue
			}
			src, err := scaffold.ReadFile(sub + "/" + e.Name())
			if err != nil {
				return nil, err
			}
			t, err := template.New(e.Name()).Option("missingkey=error").Parse(string(src))
			if err != nil {
				return nil, fmt.Errorf("template %s: %w", e.Name(), err)
			}
			var out bytes.Buffer
			if err := t.Execute(&out, data); err != nil {
				return nil, fmt.Errorf("template %s: %w", e.Name(), err)
			}
			name := strings.TrimSuffix(e.Name(), ".tmpl")
			if name == "gitignore" {
				name = ".gitignore"
			}
			if err := os.WriteFile(filepath.Join(dir, name), out.Bytes(), 0o644); err != nil {
				return nil, err
			}
			written = append(written, name)
		}
	}
	return written, nil
}

// findSDK returns the absolute path of the SDK directory: flag, else
// $MENDMQ_SDK, else the first sdk/ holding the SDK's go.mod above the
// working directory or the running binary (bin/mendmq of a checkout).
func findSDK(flagValue string) (string, error) {
	check := func(dir, from string) (string, error) {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return "", err
		}
		if !isSDK(abs) {
			return "", fmt.Errorf("%s %s is not the mendmq SDK (no go.mod declaring %s); "+
				"point it at the sdk/ directory of a mendmq checkout", from, dir, sdkModule)
		}
		return abs, nil
	}
	if flagValue != "" {
		return check(flagValue, "--sdk")
	}
	if env := os.Getenv("MENDMQ_SDK"); env != "" {
		return check(env, "$MENDMQ_SDK")
	}
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if exe, err := os.Executable(); err == nil {
		if real, err := filepath.EvalSymlinks(exe); err == nil {
			exe = real
		}
		starts = append(starts, filepath.Dir(exe))
	}
	for _, d := range starts {
		for {
			if cand := filepath.Join(d, "sdk"); isSDK(cand) {
				return cand, nil
			}
			if isSDK(d) {
				return d, nil
			}
			parent := filepath.Dir(d)
			if parent == d {
				break
			}
			d = parent
		}
	}
	return "", errors.New("cannot find the mendmq SDK: pass --sdk /path/to/mendmq/sdk " +
		"(or set MENDMQ_SDK); it is the sdk/ directory of a mendmq checkout")
}

var sdkModuleLine = regexp.MustCompile(`(?m)^module\s+` + regexp.QuoteMeta(sdkModule) + `\s*$`)

func isSDK(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	return err == nil && sdkModuleLine.Match(b)
}
