package sdk

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func sample(key, value string, n int64) EntryView {
	return EntryView{
		Key: []byte(key), Value: []byte(value), Cost: n, Hits: n + 1, Version: n + 2,
		CreationTime: n + 3, LastAccessTime: n + 4, LastUpdateTime: n + 5, LastStoredTime: n + 6,
		ExpirationTime: -n,
	}
}

// sampleItems covers: existing absent/present, empty key and value, lengths
// that do and do not need padding, negative and extreme numbers.
func sampleItems() []Item {
	return []Item{
		{Merging: sample("k", "v", 1)},
		{Merging: sample("key-7", "value of 8 bytes", 1<<40), Existing: sample("key-7", "", -5), HasExisting: true},
		{Merging: sample("", "", 0), Existing: sample("", "12345678", 1<<62), HasExisting: true},
	}
}

func TestRequestRoundTrip(t *testing.T) {
	for _, name := range []string{"", "orders", "$retained", "eight-ch"} {
		items := sampleItems()
		buf := AppendRequest(nil, name, items)
		if len(buf) != RequestSize(name, items) {
			t.Fatalf("encoded %d bytes, RequestSize says %d", len(buf), RequestSize(name, items))
		}
		if len(buf)%8 != 0 {
			t.Fatalf("request of %d bytes is not 8-aligned", len(buf))
		}
		gotName, got, err := DecodeRequest(buf, nil)
		if err != nil {
			t.Fatal(err)
		}
		if string(gotName) != name {
			t.Fatalf("map name %q, want %q", gotName, name)
		}
		if !itemsEqual(got, items) {
			t.Fatalf("decoded %+v\nwant %+v", got, items)
		}
	}
}

func itemsEqual(a, b []Item) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].HasExisting != b[i].HasExisting || !entryEqual(&a[i].Merging, &b[i].Merging) ||
			(a[i].HasExisting && !entryEqual(&a[i].Existing, &b[i].Existing)) {
			return false
		}
	}
	return true
}

func entryEqual(a, b *EntryView) bool {
	return bytes.Equal(a.Key, b.Key) && bytes.Equal(a.Value, b.Value) &&
		a.Cost == b.Cost && a.Hits == b.Hits && a.Version == b.Version &&
		a.CreationTime == b.CreationTime && a.LastAccessTime == b.LastAccessTime &&
		a.LastUpdateTime == b.LastUpdateTime && a.LastStoredTime == b.LastStoredTime &&
		a.ExpirationTime == b.ExpirationTime
}

// TestRequestLayout pins the byte layout of sdk/ABI.md's worked example.
func TestRequestLayout(t *testing.T) {
	items := []Item{{Merging: EntryView{Key: []byte("k"), Value: []byte("vv"), Cost: 3, LastUpdateTime: 0x0102030405060708}}}
	buf := AppendRequest(nil, "m", items)
	want := []byte{
		1, 0, 0, 0, // version
		1, 0, 0, 0, // count
		1, 0, 0, 0, // map_name_len
		0, 0, 0, 0, // reserved
		'm', 0, 0, 0, 0, 0, 0, 0, // map name + padding
		0, 0, 0, 0, 0, 0, 0, 0, // item flags, reserved
		3, 0, 0, 0, 0, 0, 0, 0, // cost
		0, 0, 0, 0, 0, 0, 0, 0, // hits
		0, 0, 0, 0, 0, 0, 0, 0, // version
		0, 0, 0, 0, 0, 0, 0, 0, // creation_time
		0, 0, 0, 0, 0, 0, 0, 0, // last_access_time
		8, 7, 6, 5, 4, 3, 2, 1, // last_update_time
		0, 0, 0, 0, 0, 0, 0, 0, // last_stored_time
		0, 0, 0, 0, 0, 0, 0, 0, // expiration_time
		1, 0, 0, 0, 2, 0, 0, 0, // key_len, value_len
		'k', 'v', 'v', 0, 0, 0, 0, 0, // key, value, padding
	}
	if !bytes.Equal(buf, want) {
		t.Fatalf("layout\n got % x\nwant % x", buf, want)
	}
}

func TestDecodeRequestRejects(t *testing.T) {
	valid := AppendRequest(nil, "m", sampleItems())
	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte{}, valid...)) }
	cases := map[string][]byte{
		"empty":            nil,
		"short header":     valid[:10],
		"wrong version":    mutate(func(b []byte) []byte { b[0] = 2; return b }),
		"zero items":       mutate(func(b []byte) []byte { b[4] = 0; return b }),
		"too many items":   mutate(func(b []byte) []byte { b[4] = 200; return b }),
		"huge count":       mutate(func(b []byte) []byte { b[7] = 0xff; return b }),
		"reserved":         mutate(func(b []byte) []byte { b[12] = 1; return b }),
		"name too long":    mutate(func(b []byte) []byte { b[8] = 0xff; b[9] = 0xff; return b }),
		"unknown flag":     mutate(func(b []byte) []byte { b[24] = 2; return b }),
		"item reserved":    mutate(func(b []byte) []byte { b[28] = 1; return b }),
		"truncated":        valid[:len(valid)-8],
		"trailing bytes":   append(append([]byte{}, valid...), 0, 0, 0, 0, 0, 0, 0, 0),
		"value past end":   mutate(func(b []byte) []byte { b[24+8+68+3] = 0x7f; return b }),
		"key length wraps": mutate(func(b []byte) []byte { copy(b[24+8+64:], []byte{0xff, 0xff, 0xff, 0xff}); return b }),
	}
	for name, buf := range cases {
		if _, _, err := DecodeRequest(buf, nil); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err %v, want ErrMalformed", name, err)
		}
	}
}

func TestResultsRoundTrip(t *testing.T) {
	e := sample("k", "merged", 9)
	results := []Result{KeepExisting(), TakeMerging(), Put(&e), Delete(), Fail("bad input"), Fail("")}
	buf := AppendResultsHeader(nil, len(results))
	for _, r := range results {
		before := len(buf)
		buf = AppendResult(buf, r)
		if len(buf)-before != ResultSize(&r) {
			t.Fatalf("%s: wrote %d bytes, ResultSize says %d", r.Verdict, len(buf)-before, ResultSize(&r))
		}
	}
	got, err := DecodeResults(buf, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(results) {
		t.Fatalf("%d results", len(got))
	}
	for i := range results {
		if got[i].Verdict != results[i].Verdict || got[i].Reason != results[i].Reason {
			t.Errorf("result %d: %+v, want %+v", i, got[i], results[i])
		}
	}
	if !entryEqual(got[2].Entry, &e) {
		t.Errorf("put entry %+v", got[2].Entry)
	}
}

func TestAppendResultGuardsMistakes(t *testing.T) {
	long := strings.Repeat("x", MaxReasonLen+10)
	cases := []struct {
		name   string
		r      Result
		reason string
	}{
		{"put nil", Result{Verdict: VerdictPut}, "policy returned Put(nil)"},
		{"unknown verdict", Result{Verdict: 42}, "policy returned an unknown verdict"},
		{"long reason cut", Fail(long), long[:MaxReasonLen]},
	}
	for _, c := range cases {
		buf := AppendResult(AppendResultsHeader(nil, 1), c.r)
		got, err := DecodeResults(buf, nil)
		if err != nil || len(got) != 1 || got[0].Verdict != VerdictFail || got[0].Reason != c.reason {
			t.Errorf("%s: %+v, %v", c.name, got, err)
		}
	}
}

func TestVerdictNames(t *testing.T) {
	want := map[Verdict]string{VerdictKeepExisting: "keep_existing", VerdictTakeMerging: "take_merging",
		VerdictPut: "put", VerdictDelete: "delete", VerdictFail: "fail", 9: "invalid"}
	for v, s := range want {
		if v.String() != s {
			t.Errorf("%d.String() = %q, want %q", v, v.String(), s)
		}
	}
}

func TestMalformedMessage(t *testing.T) {
	err := malformed("a %d b %d c", 0, 1234567890123)
	if err.Error() != "sdk: malformed ABI buffer: a 0 b 1234567890123 c" {
		t.Fatalf("%q", err)
	}
	if !reflect.DeepEqual(errors.Unwrap(err), ErrMalformed) {
		t.Fatal("does not unwrap to ErrMalformed")
	}
}
