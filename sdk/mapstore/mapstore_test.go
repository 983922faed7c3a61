package mapstore

import (
	"bytes"
	"encoding/hex"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/mendmq/mendmq/sdk"
)

func entry(key, value string) *sdk.EntryView {
	return &sdk.EntryView{Key: []byte(key), Value: []byte(value), Cost: int64(len(key) + len(value)), Hits: 4, Version: 7,
		CreationTime: 1000, LastAccessTime: 3000, LastUpdateTime: 2000, LastStoredTime: 2500, ExpirationTime: 9000}
}

// TestGet goes through every answer of the host contract with SetTest,
// which encodes entries as the host does: found (first into an empty
// buffer, so the size-then-copy exchange runs), each status, and an
// entry past the size bound.
func TestGet(t *testing.T) {
	t.Cleanup(func() { SetTest(nil) })
	big := entry("k", strings.Repeat("x", MaxEntrySize))
	for _, tc := range []struct {
		name   string
		store  func(key []byte) (*sdk.EntryView, error)
		want   *sdk.EntryView
		err    error
		before func()
	}{
		{name: "found", store: func(key []byte) (*sdk.EntryView, error) { return entry(string(key), "from the db"), nil },
			want: entry("k", "from the db"), before: func() { std.buf = nil }},
		{name: "found into the grown buffer", store: func(key []byte) (*sdk.EntryView, error) { return entry(string(key), "v2"), nil },
			want: entry("k", "v2")},
		{name: "empty value", store: func(key []byte) (*sdk.EntryView, error) { return entry(string(key), ""), nil },
			want: entry("k", "")},
		{name: "not found", store: func([]byte) (*sdk.EntryView, error) { return nil, ErrNotFound }, err: ErrNotFound},
		{name: "no store", store: func([]byte) (*sdk.EntryView, error) { return nil, ErrNoStore }, err: ErrNoStore},
		{name: "default: no store", err: ErrNoStore},
		{name: "denied", store: func([]byte) (*sdk.EntryView, error) { return nil, ErrDenied }, err: ErrDenied},
		{name: "store error", store: func([]byte) (*sdk.EntryView, error) { return nil, errors.New("disk on fire") }, err: ErrUnavailable},
		{name: "nil entry", store: func([]byte) (*sdk.EntryView, error) { return nil, nil }, err: ErrUnavailable},
		{name: "too large", store: func([]byte) (*sdk.EntryView, error) { return big, nil }, err: ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.before != nil {
				tc.before()
			}
			SetTest(tc.store)
			got, err := Get([]byte("k"))
			if !errors.Is(err, tc.err) || (tc.err == nil && err != nil) {
				t.Fatalf("err %v, want %v", err, tc.err)
			}
			if tc.want != nil && !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v\nwant %+v", got, tc.want)
			}
			if tc.want == nil && got != nil {
				t.Fatalf("got %+v with error %v", got, err)
			}
		})
	}
}

// TestGetHostAnswers drives get with host answers a real host never
// gives: sizes too small for a header or past the bound, a size that keeps
// growing, an unknown status, bytes that break the layout.
func TestGetHostAnswers(t *testing.T) {
	for _, tc := range []struct {
		name string
		host func(key, buf []byte) int32
		err  error
	}{
		{"size below the header", func([]byte, []byte) int32 { return 8 }, ErrUnavailable},
		{"size past the bound", func([]byte, []byte) int32 { return MaxEntrySize + 8 }, ErrUnavailable},
		{"always larger", func(_, buf []byte) int32 { return int32(len(buf) + 80) }, ErrUnavailable},
		{"unknown status", func([]byte, []byte) int32 { return -99 }, ErrUnavailable},
		{"bad pointer", func([]byte, []byte) int32 { return StatusBadPointer }, ErrUnavailable},
		{"garbage bytes", func(_, buf []byte) int32 {
			if len(buf) < 80 {
				return 80
			}
			copy(buf, bytes.Repeat([]byte{0xff}, 80)) // key_len 2^32-1
			return 80
		}, ErrUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := reader{host: tc.host}
			if e, err := r.get([]byte("k")); !errors.Is(err, tc.err) || e != nil {
				t.Fatalf("got %+v, %v; want %v", e, err, tc.err)
			}
		})
	}
}

// TestDecodeLayout pins the bytes of sdk/ABI.md §9's worked example.
func TestDecodeLayout(t *testing.T) {
	want := &sdk.EntryView{Key: []byte("k"), Value: []byte("db"), Cost: 3, Hits: 0, Version: 2,
		CreationTime: 0, LastAccessTime: 0, LastUpdateTime: 0x0102030405060708, LastStoredTime: 0x0102030405060709}
	hexBytes := "03000000000000000000000000000000" + "0200000000000000" + "0000000000000000" + "0000000000000000" +
		"0807060504030201" + "0907060504030201" + "0000000000000000" + "0100000002000000" + "6b64620000000000"
	buf, err := hex.DecodeString(hexBytes)
	if err != nil {
		t.Fatal(err)
	}
	if len(buf) != 80 {
		t.Fatalf("example is %d bytes", len(buf))
	}
	var got sdk.EntryView
	if err := Decode(buf, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&got, want) {
		t.Fatalf("decoded %+v\nwant %+v", got, want)
	}
	if enc := sdk.AppendEntry(nil, want); !bytes.Equal(enc, buf) {
		t.Fatalf("sdk.AppendEntry writes\n%x\nwant\n%x", enc, buf)
	}
	for _, bad := range []struct {
		name string
		buf  []byte
	}{
		{"short", buf[:71]},
		{"truncated body", buf[:79]},
		{"trailing bytes", append(bytes.Clone(buf), make([]byte, 8)...)},
		{"header only", buf[:72]},
	} {
		if err := Decode(bad.buf, &got); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", bad.name, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(sdk.AppendEntry(nil, entry("k", "v")))
	f.Add(sdk.AppendEntry(nil, entry("", "")))
	f.Add(sdk.AppendEntry(nil, entry("key-8ch", "value of eight")))
	f.Add(make([]byte, 72))
	f.Fuzz(func(t *testing.T, buf []byte) {
		var e sdk.EntryView
		if err := Decode(buf, &e); err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		// What decodes re-encodes to the same length and the same values
		// (the padding bytes may differ).
		again := sdk.AppendEntry(nil, &e)
		if len(again) != len(buf) {
			t.Fatalf("re-encoded %d bytes from %d", len(again), len(buf))
		}
		var e2 sdk.EntryView
		if err := Decode(again, &e2); err != nil || !reflect.DeepEqual(e, e2) {
			t.Fatalf("re-decode: %+v vs %+v, %v", e, e2, err)
		}
		if !bytes.Equal(again[:72], buf[:72]) {
			t.Fatalf("header changed in a round trip")
		}
	})
}
