// Package hazelcasttest holds the expected behaviour of the built-in merge
// policies (Hazelcast's semantics) as one table, shared by the native tests
// of package builtin and the tests that run the compiled modules in plugins.
package hazelcasttest

import "github.com/mendmq/mendmq/sdk"

// Case is one merge and the verdict every built-in policy must reach.
type Case struct {
	Name     string
	Merging  sdk.EntryView
	Existing *sdk.EntryView // nil: key absent on the surviving side
	Want     map[string]sdk.Verdict
}

const (
	take = sdk.VerdictTakeMerging
	keep = sdk.VerdictKeepExisting
)

func entry(hits, update, access, expiration int64) sdk.EntryView {
	return sdk.EntryView{
		Key: []byte("k"), Value: []byte("v"), Cost: 2, Hits: hits, Version: 1,
		CreationTime: 1, LastUpdateTime: update, LastAccessTime: access, ExpirationTime: expiration,
	}
}

func ptr(e sdk.EntryView) *sdk.EntryView { return &e }

// Cases: hits, last update, last access and expiration time vary; ties go to
// the merging entry; an ExpirationTime of 0 means "never" (the latest).
var Cases = []Case{
	{
		Name:    "existing absent",
		Merging: entry(1, 10, 10, 100),
		Want: map[string]sdk.Verdict{"passthrough": take, "putifabsent": take, "higherhits": take,
			"latestupdate": take, "latestaccess": take, "expirationtime": take, "discard": keep},
	},
	{
		Name:    "merging greater everywhere",
		Merging: entry(5, 20, 20, 200), Existing: ptr(entry(3, 10, 10, 100)),
		Want: map[string]sdk.Verdict{"passthrough": take, "putifabsent": keep, "higherhits": take,
			"latestupdate": take, "latestaccess": take, "expirationtime": take, "discard": keep},
	},
	{
		Name:    "merging smaller everywhere",
		Merging: entry(3, 10, 10, 100), Existing: ptr(entry(5, 20, 20, 200)),
		Want: map[string]sdk.Verdict{"passthrough": take, "putifabsent": keep, "higherhits": keep,
			"latestupdate": keep, "latestaccess": keep, "expirationtime": keep, "discard": keep},
	},
	{
		Name:    "ties go to merging",
		Merging: entry(4, 15, 15, 150), Existing: ptr(entry(4, 15, 15, 150)),
		Want: map[string]sdk.Verdict{"passthrough": take, "putifabsent": keep, "higherhits": take,
			"latestupdate": take, "latestaccess": take, "expirationtime": take, "discard": keep},
	},
	{
		Name:    "mixed metrics",
		Merging: entry(9, 10, 30, 50), Existing: ptr(entry(2, 20, 25, 60)),
		Want: map[string]sdk.Verdict{"passthrough": take, "putifabsent": keep, "higherhits": take,
			"latestupdate": keep, "latestaccess": take, "expirationtime": keep, "discard": keep},
	},
	{
		Name:    "merging never expires",
		Merging: entry(1, 1, 1, 0), Existing: ptr(entry(1, 1, 1, 1<<62)),
		Want: map[string]sdk.Verdict{"passthrough": take, "putifabsent": keep, "higherhits": take,
			"latestupdate": take, "latestaccess": take, "expirationtime": take, "discard": keep},
	},
	{
		Name:    "existing never expires",
		Merging: entry(1, 1, 1, 1<<62), Existing: ptr(entry(1, 1, 1, 0)),
		Want: map[string]sdk.Verdict{"passthrough": take, "putifabsent": keep, "higherhits": take,
			"latestupdate": take, "latestaccess": take, "expirationtime": keep, "discard": keep},
	},
	{
		Name:    "both never expire",
		Merging: entry(1, 1, 1, 0), Existing: ptr(entry(1, 1, 1, 0)),
		Want: map[string]sdk.Verdict{"passthrough": take, "putifabsent": keep, "higherhits": take,
			"latestupdate": take, "latestaccess": take, "expirationtime": take, "discard": keep},
	},
}
