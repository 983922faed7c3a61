package abi

import (
	"testing"

	"github.com/mendmq/mendmq/sdk"
)

// FuzzDecodeRequest holds the host's and the SDK's request decoders to the
// same verdict on arbitrary bytes, and to the same values when they accept.
func FuzzDecodeRequest(f *testing.F) {
	seed, _ := AppendRequest(nil, "orders", sampleItems())
	f.Add(seed)
	f.Add([]byte{1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, buf []byte) {
		name, items, herr := DecodeRequest(buf)
		sname, sitems, serr := sdk.DecodeRequest(buf, nil)
		if (herr == nil) != (serr == nil) {
			t.Fatalf("host err %v, sdk err %v", herr, serr)
		}
		if herr != nil {
			return
		}
		if name != string(sname) || len(items) != len(sitems) {
			t.Fatalf("host %q/%d items, sdk %q/%d items", name, len(items), sname, len(sitems))
		}
		for i := range items {
			if !entryEqual(items[i].Merging, fromSDK(&sitems[i].Merging)) ||
				(items[i].Existing != nil) != sitems[i].HasExisting ||
				(items[i].Existing != nil && !entryEqual(items[i].Existing, fromSDK(&sitems[i].Existing))) {
				t.Fatalf("item %d differs", i)
			}
		}
		again, err := AppendRequest(nil, name, items)
		if err != nil || len(again) != len(buf) {
			t.Fatalf("re-encode: %d bytes from %d, %v", len(again), len(buf), err)
		}
	})
}

// FuzzDecodeResults checks the host decoder never panics on what a guest
// returns, agrees with the SDK decoder on well-formed input, and keeps the
// merging key for Put.
func FuzzDecodeResults(f *testing.F) {
	e := sdk.EntryView{Key: []byte("k1"), Value: []byte("v")}
	seed := sdk.AppendResultsHeader(nil, 2)
	seed = sdk.AppendResult(seed, sdk.Fail("why"))
	seed = sdk.AppendResult(seed, sdk.Put(&e))
	f.Add(seed, uint8(2))
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0}, uint8(1))
	f.Fuzz(func(t *testing.T, buf []byte, n uint8) {
		items := make([]Item, n%8)
		for i := range items {
			items[i] = Item{Merging: &EntryView{Key: []byte{'k', byte('0' + i)}}}
		}
		got, err := DecodeResults(buf, items, nil)
		if err != nil {
			return
		}
		if len(got) != len(items) {
			t.Fatalf("%d results for %d items", len(got), len(items))
		}
		sres, serr := sdk.DecodeResults(buf, nil)
		if serr != nil || len(sres) != len(got) {
			t.Fatalf("host accepted what the sdk rejects: %v", serr)
		}
		for i, d := range got {
			if uint32(d.Verdict) != uint32(sres[i].Verdict) || d.Reason != sres[i].Reason {
				t.Fatalf("result %d: host %+v, sdk %+v", i, d, sres[i])
			}
			if d.Verdict == Put && string(d.Entry.Key) != string(items[i].Merging.Key) {
				t.Fatalf("put for key %q accepted for item %q", d.Entry.Key, items[i].Merging.Key)
			}
		}
		if again := AppendResults(nil, got); len(again) != len(buf) {
			t.Fatalf("re-encoded %d bytes from %d", len(again), len(buf))
		}
	})
}
