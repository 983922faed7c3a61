// Package policycli implements `mendmq policy`: scaffold a policy project
// (new), run a merge policy locally on two entries or on a table of cases
// (test: the author's inner loop and unit test), and print a node's
// policies (WriteList, for `mendmq ctl policy list`, which talks to the
// node). broker/cmd/mendmq/policy.go registers it; it lives here so it is
// tested with the package it drives.
package policycli

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mendmq/mendmq/plugins"
)

// Summary is the one-line description for the command list.
const Summary = "merge policies: scaffold and test a module locally, list or reload a node's policies"

const usage = `usage: mendmq policy <command> [flags]

  new NAME --lang go|c [--dir D] [--sdk DIR]
          create a policy project in D (default ./NAME): the source with
            merge stubbed to the default (latestupdate), a Makefile
            (make: build NAME.wasm; make test: run cases.json) and
            cases.json; --sdk is the mendmq SDK (sdk/ of a checkout; default
            $MENDMQ_SDK or found above the working directory or the binary)
  test    run a policy on two entries locally and print the result as JSON,
          or run a table of cases (--cases)
            --module FILE.wasm | --builtin NAME   the policy
            --cases FILE        run the cases in FILE (JSON: {"map": M,
                                "cases": [{"name", "map", "merging", "existing",
                                "stored", "want": {"verdict", "value" | "value_b64",
                                "entry", "reason"}}]}); one line per case, a
                                diff for each mismatch, exit 1 if any fails
            --map NAME          map name passed to the policy (default "test")
            --merging JSON      the merging entry (required without --cases)
            --existing JSON     the existing entry (omit: key absent)
            --stored JSON       what a policy reading the MapStore (sdk/ABI.md
                                §9) finds for the key: an entry, or null for
                                none (omit: the map has no store); in a
                                cases file, a case's "stored"
            --timeout D         per-call deadline (default 5s)
            --memory-mib N      memory cap (default 64)
            --cache-dir DIR     compiled-module cache (default: user cache dir;
                                "" disables)
          Entry JSON: {"key":"k","value":"text" | "value_b64":"…","cost":0,
            "hits":0,"version":0,"creation_time":0,"last_access_time":0,
            "last_update_time":0,"last_stored_time":0,"expiration_time":0}
            (times in Unix ms; "key_b64" for binary keys).
          Exit status: 0 the policy decided, 1 it failed (trap, timeout,
            garbage or refusal; the reason is printed) or could not load,
            2 usage.
  list    a node's policies (mendmq ctl policy list: --admin, --json,
          credentials; see mendmq ctl)
  reload  re-read a node's config and modules (mendmq ctl policy reload)
`

// Run executes `mendmq policy` with args (after "policy") and returns the
// exit status.
func Run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	switch args[0] {
	case "new":
		return runNew(args[1:], stdout, stderr)
	case "test":
		return runTest(args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "mendmq policy: unknown command %q\n\n%s", args[0], usage)
	return 2
}

// Entry is the JSON form of an EntryView for the command line: the value as
// a string, or as base64 in value_b64 when it is not UTF-8 text.
type Entry struct {
	Key            *string `json:"key,omitempty"`
	KeyB64         *string `json:"key_b64,omitempty"`
	Value          *string `json:"value,omitempty"`
	ValueB64       *string `json:"value_b64,omitempty"`
	Cost           int64   `json:"cost"`
	Hits           int64   `json:"hits"`
	Version        int64   `json:"version"`
	CreationTime   int64   `json:"creation_time"`
	LastAccessTime int64   `json:"last_access_time"`
	LastUpdateTime int64   `json:"last_update_time"`
	LastStoredTime int64   `json:"last_stored_time"`
	ExpirationTime int64   `json:"expiration_time"`
}

func parseEntry(flagName, s string) (*plugins.EntryView, error) {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	var e Entry
	if err := dec.Decode(&e); err != nil {
		return nil, fmt.Errorf("--%s: %w", flagName, err)
	}
	return e.View(flagName)
}

// View converts e to an EntryView; errors name field (a flag, a JSON
// field) and say what is wrong with key or value.
func (e Entry) View(field string) (*plugins.EntryView, error) {
	flagName := field
	key, err := pick(flagName, "key", e.Key, e.KeyB64)
	if err != nil {
		return nil, err
	}
	value, err := pick(flagName, "value", e.Value, e.ValueB64)
	if err != nil {
		return nil, err
	}
	return &plugins.EntryView{
		Key: key, Value: value, Cost: e.Cost, Hits: e.Hits, Version: e.Version,
		CreationTime: e.CreationTime, LastAccessTime: e.LastAccessTime, LastUpdateTime: e.LastUpdateTime,
		LastStoredTime: e.LastStoredTime, ExpirationTime: e.ExpirationTime,
	}, nil
}

func pick(flagName, field string, text, b64 *string) ([]byte, error) {
	switch {
	case text != nil && b64 != nil:
		return nil, fmt.Errorf("--%s: give %s or %s_b64, not both", flagName, field, field)
	case b64 != nil:
		b, err := base64.StdEncoding.DecodeString(*b64)
		if err != nil {
			return nil, fmt.Errorf("--%s: %s_b64: %w", flagName, field, err)
		}
		return b, nil
	case text != nil:
		return []byte(*text), nil
	}
	return []byte{}, nil
}

// ToEntry is the JSON form of e (the value as text when it is UTF-8
// text, else in value_b64).
func ToEntry(e *plugins.EntryView) *Entry { return toEntry(e) }

func toEntry(e *plugins.EntryView) *Entry {
	out := &Entry{
		Cost: e.Cost, Hits: e.Hits, Version: e.Version, CreationTime: e.CreationTime,
		LastAccessTime: e.LastAccessTime, LastUpdateTime: e.LastUpdateTime,
		LastStoredTime: e.LastStoredTime, ExpirationTime: e.ExpirationTime,
	}
	out.Key, out.KeyB64 = textOrB64(e.Key)
	out.Value, out.ValueB64 = textOrB64(e.Value)
	return out
}

func textOrB64(b []byte) (text, b64 *string) {
	if isText(b) {
		s := string(b)
		return &s, nil
	}
	s := base64.StdEncoding.EncodeToString(b)
	return nil, &s
}

// isText accepts valid UTF-8 without control characters other than
// whitespace, so the printed JSON stays readable.
func isText(b []byte) bool {
	for _, r := range string(b) {
		if r == '\uFFFD' || (r < 0x20 && r != '\n' && r != '\r' && r != '\t') {
			return false
		}
	}
	return true
}

// Output is what `policy test` prints.
type Output struct {
	Policy  string `json:"policy"`
	Map     string `json:"map"`
	Verdict string `json:"verdict"`
	// Entry is the entry to store (take_merging, put).
	Entry *Entry `json:"entry,omitempty"`
	// Failed is set when the policy failed; Kind and Reason say how.
	Failed bool   `json:"failed,omitempty"`
	Kind   string `json:"kind,omitempty"`
	Reason string `json:"reason,omitempty"`
}

func runTest(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("policy test", flag.ContinueOnError)
	fs.SetOutput(stderr)
	module := fs.String("module", "", "policy module file (.wasm)")
	builtin := fs.String("builtin", "", "built-in policy name")
	mapName := fs.String("map", "test", "map name passed to the policy")
	merging := fs.String("merging", "", "merging entry (JSON)")
	existing := fs.String("existing", "", "existing entry (JSON); omit when the key is absent")
	stored := fs.String("stored", "", "the MapStore copy of the key (JSON entry, or null: none); omit: no store")
	timeout := fs.Duration("timeout", 5*time.Second, "per-call deadline")
	memory := fs.Uint("memory-mib", 64, "memory cap in MiB")
	cacheDir := fs.String("cache-dir", defaultCacheDir(), `compiled-module cache directory ("" disables)`)
	casesFile := fs.String("cases", "", "run the cases in this JSON file")
	fs.Usage = func() { fmt.Fprint(stderr, usage) }
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if (*module == "") == (*builtin == "") || (*merging == "") == (*casesFile == "") || fs.NArg() != 0 {
		fmt.Fprintln(stderr, "mendmq policy test: give exactly one of --module and --builtin, and --merging or --cases")
		return 2
	}
	var (
		m, e  *plugins.EntryView
		cases []parsedCase
		err   error
		store cliStore
	)
	if *casesFile != "" {
		if *existing != "" || *stored != "" {
			fmt.Fprintln(stderr, "mendmq policy test: --existing and --stored go with --merging; cases carry their own entries")
			return 2
		}
		if cases, err = loadCases(*casesFile, *mapName); err != nil {
			fmt.Fprintln(stderr, "mendmq policy test: --cases", err)
			return 2
		}
	} else {
		if m, err = parseEntry("merging", *merging); err != nil {
			fmt.Fprintln(stderr, "mendmq policy test:", err)
			return 2
		}
		if *existing != "" && *existing != "null" {
			if e, err = parseEntry("existing", *existing); err != nil {
				fmt.Fprintln(stderr, "mendmq policy test:", err)
				return 2
			}
		}
		if *stored != "" {
			if store.answer, err = parseStored(*stored); err != nil {
				fmt.Fprintln(stderr, "mendmq policy test:", err)
				return 2
			}
		}
	}

	cfg := plugins.DefaultConfig()
	name := *builtin
	if *module != "" {
		name = "under-test"
		cfg.Policies[name] = plugins.PolicyConfig{Module: *module}
	}
	// Every map (and $retained) uses the policy under test, so nothing
	// else is loaded. Every map has a store mode, so that store answers
	// what --stored (or the case) says: no store, nothing, an entry.
	through := "write-through"
	cfg.Maps[plugins.DefaultMap] = plugins.MapConfig{MergePolicy: name, MapStore: &through}
	cfg.Retained.MergePolicy = name
	cfg.Host.WatchModules = false
	cfg.Host.PoolSize = 1
	cfg.Host.CallTimeout = *timeout
	cfg.Host.MemoryLimitMiB = uint32(*memory)
	cfg.Host.CompilationCacheDir = *cacheDir
	r, err := plugins.New(cfg, nil)
	if err != nil {
		fmt.Fprintln(stderr, "mendmq policy test:", err)
		return 1
	}
	defer r.Close()
	r.SetStoreReader(&store)

	if cases != nil {
		failed, err := runCases(r, &store, cases, stdout)
		if err != nil {
			fmt.Fprintln(stderr, "mendmq policy test:", err)
			return 1
		}
		if failed > 0 {
			return 1
		}
		return 0
	}
	res, err := r.Merge(context.Background(), *mapName, m, e)
	if err != nil {
		fmt.Fprintln(stderr, "mendmq policy test:", err)
		return 1
	}
	out := Output{Policy: name, Map: *mapName, Verdict: res.Verdict.String()}
	if *module != "" {
		out.Policy = *module
	}
	if res.Entry != nil {
		out.Entry = toEntry(res.Entry)
	}
	status := 0
	if res.ConflictID != 0 {
		c, _ := r.Conflict(res.ConflictID)
		out.Failed, out.Kind, out.Reason = true, string(c.Kind), c.Reason
		status = 1
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		fmt.Fprintln(stderr, "mendmq policy test:", err)
		return 1
	}
	return status
}

// defaultCacheDir keeps compiled modules between runs so the inner loop
// does not pay a Go module's compilation (about a second) every time.
func defaultCacheDir() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "mendmq", "wazero")
}

// WriteList prints policies as `mendmq ctl policy list` shows them: a
// table (ON DISK: "=" when the module file is what runs, its digest when
// it differs, "-" for built-ins), then one line per module whose file is
// unreadable or whose last reload failed.
func WriteList(w io.Writer, infos []plugins.PolicyInfo) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tLOADED\tMAPS\tINSTANCES\tSHA256\tON DISK\tLOADED AT\tSOURCE")
	var problems []string
	for _, p := range infos {
		loaded, at := "no", "-"
		if p.Loaded {
			loaded = "yes"
			at = p.LoadedAt.Local().Format(time.DateTime)
		}
		maps := strings.Join(p.Maps, ",")
		if maps == "" {
			maps = "-"
		}
		// ON DISK: "=" when the file is what runs, its digest when it
		// differs (changed, not loaded yet or refused), "-" for built-ins.
		disk := "-"
		switch {
		case p.DiskError != "":
			disk = "unreadable"
			problems = append(problems, fmt.Sprintf("%s: module file unreadable: %s", p.Name, p.DiskError))
		case p.DiskSHA256 != "" && p.DiskSHA256 == p.SHA256:
			disk = "="
		case p.DiskSHA256 != "":
			disk = short(p.DiskSHA256)
		}
		if p.LastReloadError != "" {
			problems = append(problems, fmt.Sprintf("%s: last reload failed at %s: %s",
				p.Name, p.LastReloadErrorAt.Local().Format(time.DateTime), p.LastReloadError))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", p.Name, loaded, maps, p.Instances, short(p.SHA256), disk, at, p.Source)
	}
	_ = tw.Flush()
	for _, p := range problems {
		fmt.Fprintln(w, p)
	}
}

// short abbreviates a sha256 for the table ("-" when empty).
func short(sum string) string {
	if sum == "" {
		return "-"
	}
	return sum[:min(len(sum), 12)]
}
