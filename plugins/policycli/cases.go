package policycli

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/mendmq/mendmq/plugins"
)

// CasesFile is the table `policy test --cases FILE` runs: a policy
// author's unit test of the built module.
//
//	{
//	  "map": "orders",                       // default map of the cases (default: --map)
//	  "cases": [
//	    {"name": "existing newer: kept",
//	     "map": "$retained",                 // optional, per case
//	     "merging":  {"key": "k", "value": "old", "last_update_time": 1},
//	     "existing": {"key": "k", "value": "new", "last_update_time": 2},   // omit: key absent
//	     "stored": {"key": "k", "value": "db"},  // the MapStore copy (null: stored nothing; omit: no store)
//	     "want": {"verdict": "keep_existing", "value": "new"}}
//	  ]
//	}
type CasesFile struct {
	// Map is the map of cases that name none (default: --map, "test").
	Map   string `json:"map"`
	Cases []Case `json:"cases"`
}

// Case is one merge and what it must decide.
type Case struct {
	Name     string          `json:"name"`
	Map      string          `json:"map"`
	Merging  json.RawMessage `json:"merging"`
	Existing json.RawMessage `json:"existing"`
	// Stored is what a policy reading the MapStore (sdk/ABI.md §9) is
	// told for the merging key: an entry (the store holds it), null (the
	// map has a store without the key) or omitted (the map has no store).
	Stored json.RawMessage `json:"stored"`
	Want   Want            `json:"want"`
}

// Want is a case's expectation. Verdict is required: keep_existing,
// take_merging, put, delete or fail. The rest is checked when given:
//   - value / value_b64: the value the map holds for the key afterwards
//     (take_merging: the merging value; put: the new one; keep_existing:
//     the existing one). A case that expects the key to be absent afterwards
//     (delete, or keep_existing with no existing entry) gives no value;
//   - entry: the whole stored entry (put, take_merging), every field;
//   - reason: a substring of the failure's reason (fail).
type Want struct {
	Verdict  string          `json:"verdict"`
	Value    *string         `json:"value"`
	ValueB64 *string         `json:"value_b64"`
	Entry    json.RawMessage `json:"entry"`
	Reason   string          `json:"reason"`
}

var verdicts = []string{"keep_existing", "take_merging", "put", "delete", "fail"}

// parsedCase is a Case with its entries decoded and checked.
type parsedCase struct {
	name              string
	mapName           string
	merging, existing *plugins.EntryView
	stored            storedAnswer
	want              Want
	wantValue         []byte // nil: not checked
	wantEntry         *plugins.EntryView
}

// loadCases reads and checks a cases file; errors name the case and field.
// defaultMap is the map of cases that name none, when the file names none.
func loadCases(path, defaultMap string) ([]parsedCase, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var f CasesFile
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(f.Cases) == 0 {
		return nil, fmt.Errorf("%s: no cases (want {\"cases\": [{\"merging\": …, \"want\": {\"verdict\": …}}]})", path)
	}
	if f.Map == "" {
		f.Map = defaultMap
	}
	out := make([]parsedCase, 0, len(f.Cases))
	for i, c := range f.Cases {
		where := fmt.Sprintf("%s: case %d", path, i+1)
		if c.Name != "" {
			where += " (" + c.Name + ")"
		} else {
			c.Name = "case " + strconv.Itoa(i+1)
		}
		p := parsedCase{name: c.Name, mapName: c.Map, want: c.Want}
		if p.mapName == "" {
			p.mapName = f.Map
		}
		if len(c.Merging) == 0 {
			return nil, fmt.Errorf("%s: merging: required", where)
		}
		if p.merging, err = parseEntry("merging", string(c.Merging)); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if len(c.Existing) > 0 && string(c.Existing) != "null" {
			if p.existing, err = parseEntry("existing", string(c.Existing)); err != nil {
				return nil, fmt.Errorf("%s: %w", where, err)
			}
		}
		if len(c.Stored) > 0 {
			if p.stored, err = parseStored(string(c.Stored)); err != nil {
				return nil, fmt.Errorf("%s: %w", where, err)
			}
		}
		known := false
		for _, v := range verdicts {
			known = known || v == c.Want.Verdict
		}
		if !known {
			return nil, fmt.Errorf("%s: want.verdict %q: use one of %s", where, c.Want.Verdict, strings.Join(verdicts, ", "))
		}
		switch {
		case c.Want.Value != nil && c.Want.ValueB64 != nil:
			return nil, fmt.Errorf("%s: want: give value or value_b64, not both", where)
		case c.Want.Value != nil:
			p.wantValue = []byte(*c.Want.Value)
		case c.Want.ValueB64 != nil:
			if p.wantValue, err = base64.StdEncoding.DecodeString(*c.Want.ValueB64); err != nil {
				return nil, fmt.Errorf("%s: want.value_b64: %w", where, err)
			}
			if p.wantValue == nil {
				p.wantValue = []byte{}
			}
		}
		if len(c.Want.Entry) > 0 {
			if p.wantEntry, err = parseEntry("want.entry", string(c.Want.Entry)); err != nil {
				return nil, fmt.Errorf("%s: %w", where, err)
			}
		}
		out = append(out, p)
	}
	return out, nil
}

// runCases runs every case through r and prints one line per case, a
// readable difference under each failing one, and a summary. It returns
// the number of failures.
func runCases(r *plugins.Registry, store *cliStore, cases []parsedCase, stdout io.Writer) (failed int, err error) {
	for _, c := range cases {
		store.answer = c.stored
		res, err := r.Merge(context.Background(), c.mapName, c.merging, c.existing)
		if err != nil {
			return failed, fmt.Errorf("case %q: %w", c.name, err)
		}
		got := caseOutcome{verdict: res.Verdict.String()}
		switch {
		case res.ConflictID != 0:
			got.verdict = "fail"
			if cf, ok := r.Conflict(res.ConflictID); ok {
				got.reason = string(cf.Kind) + ": " + cf.Reason
			}
			_ = r.DropConflict(res.ConflictID)
		case res.Verdict == plugins.TakeMerging || res.Verdict == plugins.Put:
			got.entry = res.Entry
		case res.Verdict == plugins.KeepExisting:
			got.entry = c.existing
		}
		diffs := c.check(got)
		if len(diffs) == 0 {
			fmt.Fprintf(stdout, "ok   %s\n", c.name)
			continue
		}
		failed++
		fmt.Fprintf(stdout, "FAIL %s  (map %s)\n", c.name, c.mapName)
		for _, d := range diffs {
			fmt.Fprintf(stdout, "       %s\n", d)
		}
	}
	fmt.Fprintf(stdout, "%d passed, %d failed\n", len(cases)-failed, failed)
	return failed, nil
}

// caseOutcome is what the policy did: the verdict, the entry the map holds
// afterwards (nil: key absent) and a failure's reason.
type caseOutcome struct {
	verdict string
	entry   *plugins.EntryView
	reason  string
}

// check compares the outcome with the case's expectation; each difference
// is one line "what: got …, want …".
func (c *parsedCase) check(got caseOutcome) []string {
	var diffs []string
	if got.verdict != c.want.Verdict {
		d := fmt.Sprintf("verdict: got %s, want %s", got.verdict, c.want.Verdict)
		if got.reason != "" {
			d += " (" + got.reason + ")"
		}
		diffs = append(diffs, d)
	}
	if c.want.Reason != "" && !strings.Contains(got.reason, c.want.Reason) {
		diffs = append(diffs, fmt.Sprintf("reason: got %q, want it to contain %q", got.reason, c.want.Reason))
	}
	if c.wantValue != nil {
		switch {
		case got.verdict == "fail" || got.verdict == "delete" || got.entry == nil:
			diffs = append(diffs, fmt.Sprintf("value: got none (key absent or policy failed), want %s", showBytes(c.wantValue)))
		case !bytes.Equal(got.entry.Value, c.wantValue):
			diffs = append(diffs, fmt.Sprintf("value: got %s, want %s", showBytes(got.entry.Value), showBytes(c.wantValue)))
		}
	}
	if c.wantEntry != nil {
		if got.entry == nil {
			diffs = append(diffs, "entry: got none, want one")
		} else {
			diffs = append(diffs, entryDiff(got.entry, c.wantEntry)...)
		}
	}
	return diffs
}

func entryDiff(got, want *plugins.EntryView) []string {
	var d []string
	cmp := func(field string, g, w int64) {
		if g != w {
			d = append(d, fmt.Sprintf("entry.%s: got %d, want %d", field, g, w))
		}
	}
	if !bytes.Equal(got.Key, want.Key) {
		d = append(d, fmt.Sprintf("entry.key: got %s, want %s", showBytes(got.Key), showBytes(want.Key)))
	}
	if !bytes.Equal(got.Value, want.Value) {
		d = append(d, fmt.Sprintf("entry.value: got %s, want %s", showBytes(got.Value), showBytes(want.Value)))
	}
	cmp("cost", got.Cost, want.Cost)
	cmp("hits", got.Hits, want.Hits)
	cmp("version", got.Version, want.Version)
	cmp("creation_time", got.CreationTime, want.CreationTime)
	cmp("last_access_time", got.LastAccessTime, want.LastAccessTime)
	cmp("last_update_time", got.LastUpdateTime, want.LastUpdateTime)
	cmp("last_stored_time", got.LastStoredTime, want.LastStoredTime)
	cmp("expiration_time", got.ExpirationTime, want.ExpirationTime)
	return d
}

// showBytes prints text quoted and anything else as base64.
func showBytes(b []byte) string {
	if isText(b) {
		return strconv.Quote(string(b))
	}
	return "base64:" + base64.StdEncoding.EncodeToString(b)
}

// storedAnswer is what the MapStore holds for the key under test.
type storedAnswer struct {
	store bool               // the map has a store
	entry *plugins.EntryView // what it holds for the key; nil: nothing
}

// parseStored reads --stored or a case's "stored": an entry, or null for
// a store without the key.
func parseStored(s string) (storedAnswer, error) {
	if strings.TrimSpace(s) == "null" {
		return storedAnswer{store: true}, nil
	}
	e, err := parseEntry("stored", s)
	if err != nil {
		return storedAnswer{}, err
	}
	return storedAnswer{store: true, entry: e}, nil
}

// cliStore is the MapStore `policy test` shows a policy: the answer of the
// merge under way (merges run one at a time).
type cliStore struct{ answer storedAnswer }

var _ plugins.StoreReader = (*cliStore)(nil)

func (s *cliStore) StoredEntry(_ context.Context, _ string, key []byte) (plugins.EntryView, bool, error) {
	switch {
	case !s.answer.store:
		return plugins.EntryView{}, false, plugins.ErrNoMapStore
	case s.answer.entry == nil:
		return plugins.EntryView{}, false, nil
	}
	e := *s.answer.entry
	e.Key = key
	return e, true, nil
}
