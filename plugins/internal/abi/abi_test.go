package abi

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/mendmq/mendmq/sdk"
)

// The host codec (this package) and the guest codec (package sdk) are two
// independent implementations of sdk/ABI.md; these tests hold them to the
// same bytes.

func entry(key, value string, n int64) *EntryView {
	return &EntryView{
		Key: []byte(key), Value: []byte(value), Cost: n, Hits: n + 1, Version: n + 2,
		CreationTime: n + 3, LastAccessTime: n + 4, LastUpdateTime: n + 5, LastStoredTime: n + 6,
		ExpirationTime: -n,
	}
}

func sampleItems() []Item {
	return []Item{
		{Merging: entry("k", "v", 1)},
		{Merging: entry("key-7", "value of 8 bytes", 1<<40), Existing: entry("key-7", "", -5)},
		{Merging: entry("", "", 0), Existing: entry("", "12345678", 1<<62)},
	}
}

func toSDK(it Item) sdk.Item {
	conv := func(e *EntryView) sdk.EntryView {
		return sdk.EntryView{Key: e.Key, Value: e.Value, Cost: e.Cost, Hits: e.Hits, Version: e.Version,
			CreationTime: e.CreationTime, LastAccessTime: e.LastAccessTime, LastUpdateTime: e.LastUpdateTime,
			LastStoredTime: e.LastStoredTime, ExpirationTime: e.ExpirationTime}
	}
	out := sdk.Item{Merging: conv(it.Merging)}
	if it.Existing != nil {
		out.Existing, out.HasExisting = conv(it.Existing), true
	}
	return out
}

func fromSDK(e *sdk.EntryView) *EntryView {
	return &EntryView{Key: e.Key, Value: e.Value, Cost: e.Cost, Hits: e.Hits, Version: e.Version,
		CreationTime: e.CreationTime, LastAccessTime: e.LastAccessTime, LastUpdateTime: e.LastUpdateTime,
		LastStoredTime: e.LastStoredTime, ExpirationTime: e.ExpirationTime}
}

func entryEqual(a, b *EntryView) bool {
	if a == nil || b == nil {
		return a == b
	}
	return bytes.Equal(a.Key, b.Key) && bytes.Equal(a.Value, b.Value) &&
		a.Cost == b.Cost && a.Hits == b.Hits && a.Version == b.Version &&
		a.CreationTime == b.CreationTime && a.LastAccessTime == b.LastAccessTime &&
		a.LastUpdateTime == b.LastUpdateTime && a.LastStoredTime == b.LastStoredTime &&
		a.ExpirationTime == b.ExpirationTime
}

func TestRequestMatchesSDK(t *testing.T) {
	items := sampleItems()
	host, err := AppendRequest(nil, "orders", items)
	if err != nil {
		t.Fatal(err)
	}
	var sitems []sdk.Item
	for _, it := range items {
		sitems = append(sitems, toSDK(it))
	}
	guest := sdk.AppendRequest(nil, "orders", sitems)
	if !bytes.Equal(host, guest) {
		t.Fatalf("host and SDK encode differently:\nhost % x\nsdk  % x", host, guest)
	}
}

func TestEncodeInPlaceClearsPadding(t *testing.T) {
	items := sampleItems()
	n, err := RequestSize("m", items)
	if err != nil {
		t.Fatal(err)
	}
	dirty := bytes.Repeat([]byte{0xAA}, n)
	EncodeRequest(dirty, "m", items)
	clean, _ := AppendRequest(nil, "m", items)
	if !bytes.Equal(dirty, clean) {
		t.Fatal("encoding over an old buffer left stale bytes")
	}
}

func TestDecodeResultsFromSDK(t *testing.T) {
	items := []Item{{Merging: entry("a", "1", 1)}, {Merging: entry("b", "2", 2)}, {Merging: entry("c", "3", 3)},
		{Merging: entry("d", "4", 4)}, {Merging: entry("e", "5", 5)}}
	put := toSDK(Item{Merging: entry("c", "merged", 9)}).Merging
	buf := sdk.AppendResultsHeader(nil, 5)
	for _, r := range []sdk.Result{sdk.KeepExisting(), sdk.TakeMerging(), sdk.Put(&put), sdk.Delete(), sdk.Fail("nope")} {
		buf = sdk.AppendResult(buf, r)
	}
	got, err := DecodeResults(buf, items, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []Verdict{KeepExisting, TakeMerging, Put, Delete, Fail}
	for i, v := range want {
		if got[i].Verdict != v {
			t.Errorf("result %d: %s, want %s", i, got[i].Verdict, v)
		}
	}
	if !entryEqual(got[2].Entry, fromSDK(&put)) || got[4].Reason != "nope" {
		t.Fatalf("put %+v, reason %q", got[2].Entry, got[4].Reason)
	}
	// The Put entry is a copy: the guest buffer may be reused.
	for i := range buf {
		buf[i] = 0
	}
	if string(got[2].Entry.Value) != "merged" || string(got[2].Entry.Key) != "c" {
		t.Fatal("decoded entry aliases the results buffer")
	}
}

func TestDecodeResultsRejects(t *testing.T) {
	items := []Item{{Merging: entry("k", "v", 1)}}
	good := func() []byte {
		e := toSDK(Item{Merging: entry("k", "x", 1)}).Merging
		return sdk.AppendResult(sdk.AppendResultsHeader(nil, 1), sdk.Put(&e))
	}
	other := toSDK(Item{Merging: entry("other", "x", 1)}).Merging
	cases := map[string][]byte{
		"empty":           nil,
		"count mismatch":  sdk.AppendResult(sdk.AppendResultsHeader(nil, 2), sdk.KeepExisting()),
		"reserved":        func() []byte { b := good(); b[4] = 1; return b }(),
		"unknown verdict": func() []byte { b := good(); b[8] = 9; return b }(),
		"aux on keep": func() []byte {
			b := sdk.AppendResult(sdk.AppendResultsHeader(nil, 1), sdk.KeepExisting())
			b[12] = 1
			return b
		}(),
		"other key":      sdk.AppendResult(sdk.AppendResultsHeader(nil, 1), sdk.Put(&other)),
		"truncated put":  func() []byte { b := good(); return b[:len(b)-8] }(),
		"value past end": func() []byte { b := good(); b[16+68+2] = 0x10; return b }(),
		"trailing":       append(good(), make([]byte, 8)...),
		"reason too long": func() []byte {
			b := sdk.AppendResult(sdk.AppendResultsHeader(nil, 1), sdk.Fail("x"))
			b[12], b[13] = 0xff, 0xff
			return b
		}(),
	}
	for name, buf := range cases {
		if _, err := DecodeResults(buf, items, nil); !errors.Is(err, ErrGarbage) {
			t.Errorf("%s: %v, want ErrGarbage", name, err)
		}
	}
	if _, err := DecodeResults(good(), items, nil); err != nil {
		t.Fatalf("good buffer rejected: %v", err)
	}
}

func TestRequestSizeRejectsNil(t *testing.T) {
	if _, err := RequestSize("m", []Item{{}}); err == nil || !strings.Contains(err.Error(), "no merging entry") {
		t.Fatalf("%v", err)
	}
}

func TestVerdictString(t *testing.T) {
	if Put.String() != "put" || Verdict(9).String() != "verdict(9)" {
		t.Fatal(Put.String(), Verdict(9).String())
	}
}
