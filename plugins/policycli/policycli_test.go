package policycli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mendmq/mendmq/plugins"
)

var cacheDir = filepath.Join(os.TempDir(), "mendmq-test-wazero-cache")

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := Run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestPolicyTest(t *testing.T) {
	counter := filepath.Join("..", "..", "examples", "policies", "c", "counter", "counter.wasm")
	cases := []struct {
		name    string
		args    []string
		code    int
		verdict string
		check   func(t *testing.T, o Output)
	}{
		{"builtin keeps newer existing", []string{"--builtin", "latestupdate",
			"--merging", `{"key":"k","value":"new","last_update_time":5}`,
			"--existing", `{"key":"k","value":"old","last_update_time":7}`}, 0, "keep_existing", nil},
		{"builtin takes merging into absent key", []string{"--builtin", "putifabsent", "--map", "$retained",
			"--merging", `{"key":"t/1","value":"payload","hits":3}`}, 0, "take_merging", func(t *testing.T, o Output) {
			if o.Entry == nil || *o.Entry.Value != "payload" || o.Entry.Hits != 3 || o.Map != "$retained" {
				t.Errorf("entry %+v", o.Entry)
			}
		}},
		{"module puts binary value as base64", []string{"--module", counter, "--map", "counters",
			"--merging", `{"key":"hits","value_b64":"AQAAAAAAAAAFAAAAAAAAAA=="}`,
			"--existing", `{"key":"hits","value_b64":"AgAAAAAAAAAHAAAAAAAAAA=="}`}, 0, "put", func(t *testing.T, o Output) {
			if o.Entry == nil || o.Entry.ValueB64 == nil || o.Entry.Value != nil ||
				*o.Entry.ValueB64 != "AQAAAAAAAAAFAAAAAAAAAAIAAAAAAAAABwAAAAAAAAA=" {
				t.Errorf("entry %+v", o.Entry)
			}
		}},
		{"policy failure reported with status 1", []string{"--module", counter,
			"--merging", `{"key":"hits","value":"nope"}`}, 1, "keep_existing", func(t *testing.T, o Output) {
			if !o.Failed || o.Kind != "refused" || !strings.Contains(o.Reason, "16-byte slots") {
				t.Errorf("output %+v", o)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"test", "--cache-dir", cacheDir}, c.args...)
			code, stdout, stderr := run(t, args...)
			if code != c.code {
				t.Fatalf("exit %d, want %d; stderr: %s", code, c.code, stderr)
			}
			var o Output
			if err := json.Unmarshal([]byte(stdout), &o); err != nil {
				t.Fatalf("output %q: %v", stdout, err)
			}
			if o.Verdict != c.verdict {
				t.Fatalf("verdict %s, want %s", o.Verdict, c.verdict)
			}
			if c.check != nil {
				c.check(t, o)
			}
		})
	}
}

func TestPolicyTestUsageAndLoadErrors(t *testing.T) {
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no policy", []string{"test", "--merging", `{"key":"k"}`}, 2, "exactly one of --module and --builtin"},
		{"both policies", []string{"test", "--builtin", "discard", "--module", "x.wasm", "--merging", `{}`}, 2, "exactly one"},
		{"no merging", []string{"test", "--builtin", "discard"}, 2, "--merging"},
		{"bad JSON", []string{"test", "--builtin", "discard", "--merging", `{"key":`}, 2, "--merging"},
		{"unknown field", []string{"test", "--builtin", "discard", "--merging", `{"keyy":"k"}`}, 2, "unknown field"},
		{"value twice", []string{"test", "--builtin", "discard", "--merging", `{"value":"a","value_b64":"YQ=="}`}, 2, "not both"},
		{"unknown builtin", []string{"test", "--builtin", "nope", "--merging", `{}`}, 1, `unknown policy "nope"`},
		{"missing module", []string{"test", "--module", "/nonexistent.wasm", "--merging", `{}`}, 1, "policies.under-test.module"},
		{"unknown command", []string{"frobnicate"}, 2, "unknown command"},
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

// TestWriteList: the table `mendmq ctl policy list` prints, with the ON
// DISK column and the reload problems under it.
func TestWriteList(t *testing.T) {
	infos := []plugins.PolicyInfo{
		{Name: "latestupdate", Source: plugins.SourceBuiltin, SHA256: strings.Repeat("ab", 32), Loaded: true,
			LoadedAt: time.Unix(1700000000, 0), Maps: []string{"default", "$retained"}, Instances: 2, Batch: true},
		{Name: "discard", Source: plugins.SourceBuiltin, Maps: []string{}},
		{Name: "mine", Source: "/etc/p.wasm", SHA256: strings.Repeat("cd", 32), DiskSHA256: strings.Repeat("ef", 32),
			Loaded: true, Maps: []string{"orders"}, LastReloadError: "plugins: policies.mine.module (/etc/p.wasm): compile module: invalid magic number",
			LastReloadErrorAt: time.Unix(1700000000, 0)},
		{Name: "same", Source: "/etc/s.wasm", SHA256: strings.Repeat("12", 32), DiskSHA256: strings.Repeat("12", 32), Loaded: true, Maps: []string{"x"}},
		{Name: "gone", Source: "/etc/g.wasm", SHA256: strings.Repeat("34", 32), DiskError: "open /etc/g.wasm: no such file", Loaded: true},
	}
	var buf strings.Builder
	WriteList(&buf, infos)
	out := buf.String()
	for _, want := range []string{"NAME", "ON DISK", "latestupdate", "yes", "default,$retained", "abababababab", "discard", "no",
		"cdcdcdcdcdcd  efefefefefef", "121212121212  =", "343434343434  unreadable",
		"gone: module file unreadable: open /etc/g.wasm: no such file",
		"mine: last reload failed at " + time.Unix(1700000000, 0).Local().Format(time.DateTime) + ": plugins: policies.mine.module (/etc/p.wasm): compile module: invalid magic number"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestTextOrB64(t *testing.T) {
	cases := map[string]bool{"plain": true, "tab\tnewline\n": true, "héllo": true, "\x00bin": false, "\xff\xfe": false}
	for in, text := range cases {
		tx, b := textOrB64([]byte(in))
		if (tx != nil) != text || (b != nil) == text {
			t.Errorf("%q: text %v b64 %v", in, tx, b)
		}
	}
}

// TestPolicyTestStored: --stored and a case's "stored" give a policy that
// reads the MapStore (examples/policies/c/fromstore) its answer: an entry
// (it wins), null (nothing stored: latestupdate) or nothing (no store:
// latestupdate).
func TestPolicyTestStored(t *testing.T) {
	fromstore := filepath.Join("..", "..", "examples", "policies", "c", "fromstore", "fromstore.wasm")
	merging := `{"key":"k","value":"new","version":3,"last_update_time":5}`
	existing := `{"key":"k","value":"old","version":4,"last_update_time":7}`
	for _, c := range []struct {
		name    string
		stored  []string
		verdict string
		value   string
	}{
		{"stored entry wins", []string{"--stored", `{"key":"ignored","value":"db","version":9,"last_stored_time":6}`}, "put", "db"},
		{"nothing stored", []string{"--stored", "null"}, "keep_existing", ""},
		{"no store", nil, "keep_existing", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"test", "--cache-dir", cacheDir, "--module", fromstore, "--map", "orders",
				"--merging", merging, "--existing", existing}, c.stored...)
			code, stdout, stderr := run(t, args...)
			var o Output
			if err := json.Unmarshal([]byte(stdout), &o); code != 0 || err != nil {
				t.Fatalf("exit %d, %v; stdout %s stderr %s", code, err, stdout, stderr)
			}
			if o.Verdict != c.verdict || (c.value != "" && (o.Entry == nil || *o.Entry.Value != c.value || o.Entry.Key == nil ||
				*o.Entry.Key != "k" || o.Entry.Version != 10 || o.Entry.LastStoredTime != 6)) {
				t.Fatalf("output %s, want %s %q (key k, version 10)", stdout, c.verdict, c.value)
			}
		})
	}
	file := writeCases(t, `{"map": "orders", "cases": [
	  {"name": "stored", "merging": {"key": "k", "value": "new"}, "stored": {"key": "k", "value": "db"},
	   "want": {"verdict": "put", "value": "db"}},
	  {"name": "stored nothing", "merging": {"key": "k", "value": "new"}, "stored": null,
	   "want": {"verdict": "take_merging", "value": "new"}},
	  {"name": "no store", "merging": {"key": "k", "value": "new"}, "existing": {"key": "k", "value": "old", "last_update_time": 9},
	   "want": {"verdict": "keep_existing", "value": "old"}}]}`)
	if code, stdout, stderr := run(t, "test", "--cache-dir", cacheDir, "--module", fromstore, "--cases", file); code != 0 ||
		!strings.Contains(stdout, "3 passed, 0 failed") {
		t.Fatalf("exit %d\n%s%s", code, stdout, stderr)
	}
	if code, _, stderr := run(t, "test", "--builtin", "discard", "--cases", file, "--stored", "null"); code != 2 ||
		!strings.Contains(stderr, "--stored go with --merging") {
		t.Fatalf("--stored with --cases: exit %d, %s", code, stderr)
	}
}
