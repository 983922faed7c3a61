package main

import (
	"errors"
	"testing"
)

func TestStampRoundTrip(t *testing.T) {
	buf := make([]byte, 64)
	for i := range buf {
		buf[i] = 0xEE // padding must survive untouched
	}
	want := stamp{Kind: kindData, RunID: 0xDEADBEEF, Pair: 49, Seq: 1<<40 + 7, SentNs: -12345}
	encodeStamp(buf, want)
	got, err := decodeStamp(buf)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if buf[minPayloadSize] != 0xEE || buf[63] != 0xEE {
		t.Fatal("encodeStamp wrote past the header")
	}
}

func TestDecodeStampRejects(t *testing.T) {
	good := make([]byte, minPayloadSize)
	encodeStamp(good, stamp{Kind: kindProbe, RunID: 1, Pair: 2, Seq: 3, SentNs: 4})
	mut := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	tests := map[string][]byte{
		"empty":       nil,
		"short":       good[:minPayloadSize-1],
		"bad magic":   mut(func(b []byte) []byte { b[0] ^= 0xFF; return b }),
		"bad version": mut(func(b []byte) []byte { b[3] = 9; return b }),
		"bad kind":    mut(func(b []byte) []byte { b[2] = 7; return b }),
	}
	for name, b := range tests {
		if _, err := decodeStamp(b); !errors.Is(err, errPayload) {
			t.Errorf("%s: err = %v, want errPayload", name, err)
		}
	}
}

func FuzzDecodeStamp(f *testing.F) {
	b := make([]byte, 64)
	encodeStamp(b, stamp{Kind: kindData, RunID: 9, Pair: 1, Seq: 2, SentNs: 3})
	f.Add(b)
	f.Add([]byte{})
	f.Add(b[:minPayloadSize])
	f.Fuzz(func(t *testing.T, in []byte) {
		s, err := decodeStamp(in)
		if err != nil {
			return
		}
		// Whatever decodes must re-encode to the same header.
		out := make([]byte, minPayloadSize)
		encodeStamp(out, s)
		if string(out) != string(in[:minPayloadSize]) {
			t.Fatalf("re-encoded %x, input %x", out, in[:minPayloadSize])
		}
	})
}
