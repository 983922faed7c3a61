package main

import (
	"errors"
	"testing"

	"github.com/mendmq/mendmq/sdk"
	"github.com/mendmq/mendmq/sdk/mapstore"
)

// TestMerge runs the policy natively, with mapstore.SetTest as the store.
func TestMerge(t *testing.T) {
	t.Cleanup(func() { mapstore.SetTest(nil) })
	entry := func(value string, version, update int64) *sdk.EntryView {
		return &sdk.EntryView{Key: []byte("k"), Value: []byte(value), Version: version, LastUpdateTime: update}
	}
	for _, tc := range []struct {
		name              string
		stored            *sdk.EntryView
		storeErr          error
		merging, existing *sdk.EntryView
		want              sdk.Verdict
		wantValue         string
		wantVersion       int64
	}{
		{"stored differs from both: put", entry("db", 3, 5), nil, entry("a", 4, 9), entry("b", 7, 8), sdk.VerdictPut, "db", 8},
		{"stored equals existing", entry("b", 3, 5), nil, entry("a", 4, 9), entry("b", 7, 8), sdk.VerdictKeepExisting, "", 0},
		{"stored equals merging", entry("a", 3, 5), nil, entry("a", 4, 9), entry("b", 7, 8), sdk.VerdictTakeMerging, "", 0},
		{"stored, absent existing", entry("db", 9, 5), nil, entry("a", 4, 9), nil, sdk.VerdictPut, "db", 10},
		{"not stored: latest update, merging later", nil, mapstore.ErrNotFound, entry("a", 4, 9), entry("b", 7, 8), sdk.VerdictTakeMerging, "", 0},
		{"not stored: latest update, existing later", nil, mapstore.ErrNotFound, entry("a", 4, 7), entry("b", 7, 8), sdk.VerdictKeepExisting, "", 0},
		{"no store: latest update, tie to merging", nil, mapstore.ErrNoStore, entry("a", 4, 8), entry("b", 7, 8), sdk.VerdictTakeMerging, "", 0},
		{"store fails: fail", nil, errors.New("disk"), entry("a", 4, 9), entry("b", 7, 8), sdk.VerdictFail, "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mapstore.SetTest(func([]byte) (*sdk.EntryView, error) { return tc.stored, tc.storeErr })
			r := Merge("orders", tc.merging, tc.existing)
			if r.Verdict != tc.want {
				t.Fatalf("verdict %s (%s), want %s", r.Verdict, r.Reason, tc.want)
			}
			if tc.want == sdk.VerdictPut && (string(r.Entry.Value) != tc.wantValue || r.Entry.Version != tc.wantVersion || string(r.Entry.Key) != "k") {
				t.Fatalf("put %+v, want value %q version %d", r.Entry, tc.wantValue, tc.wantVersion)
			}
		})
	}
}
