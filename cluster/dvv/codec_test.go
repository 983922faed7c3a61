package dvv

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
)

func appendString(b []byte, v string) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

func decodeString(_ Dot, b []byte) (string, int, error) {
	l, n := binary.Uvarint(b)
	if n <= 0 || l > uint64(len(b)-n) {
		return "", 0, errors.New("bad string")
	}
	return string(b[n : n+int(l)]), n + int(l), nil
}

func TestCodecRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	sets := replicas(t, rng, 200)
	sets = append(sets, Set[string]{}, New("a", ""))
	for i, s := range sets {
		b := s.Append([]byte("prefix"), appendString)
		got, n, err := Decode(append(b[len("prefix"):], "trailer"...), decodeString)
		if err != nil {
			t.Fatalf("set %d: %v", i, err)
		}
		if n != len(b)-len("prefix") {
			t.Fatalf("set %d: consumed %d of %d", i, n, len(b)-len("prefix"))
		}
		if !Equal(got, s) || !slices.Equal(got.Values(), s.Values()) {
			t.Fatalf("set %d: got %s want %s", i, show(got), show(s))
		}
		if again := got.Append(nil, appendString); !bytes.Equal(again, b[len("prefix"):]) {
			t.Fatalf("set %d: encoding not deterministic", i)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	enc := func(parts ...any) []byte {
		var b []byte
		for _, p := range parts {
			switch p := p.(type) {
			case int:
				b = binary.AppendUvarint(b, uint64(p))
			case string:
				b = append(b, p...)
			}
		}
		return b
	}
	tests := []struct {
		name string
		in   []byte
	}{
		{"empty input", nil},
		{"truncated varint", []byte{0x80}},
		{"too many entries", enc(1000)},
		{"empty node", enc(1, 0, 1, 0, 0, 0)},
		{"node longer than input", enc(1, 9, "ab", 1, 0)},
		{"zero counter", enc(1, 1, "a", 0, 0, 0)},
		{"more values than counter", enc(1, 1, "a", 1, 2, 1, "x", 1, "y")},
		{"unsorted nodes", enc(2, 1, "b", 1, 0, 1, "a", 1, 0)},
		{"duplicate nodes", enc(2, 1, "a", 1, 0, 1, "a", 1, 0)},
		{"missing value", enc(1, 1, "a", 1, 1)},
		{"bad value", enc(1, 1, "a", 1, 1, 5, "x")},
		{"huge value count", enc(1, 1, "a", 1<<40, 1<<40)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if s, _, err := Decode(tc.in, decodeString); err == nil {
				t.Fatalf("decoded %s", show(s))
			}
		})
	}
}

// FuzzDecode checks that Decode never panics, that whatever it accepts
// satisfies the Set invariants, and that accepted input re-encodes to a
// fixed point that decodes to the same set.
func FuzzDecode(f *testing.F) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, s := range history(rng, 12, nil) {
		f.Add(s.Append(nil, appendString))
	}
	f.Add([]byte{0})
	f.Fuzz(func(t *testing.T, b []byte) {
		s, n, err := Decode(b, decodeString)
		if err != nil {
			return
		}
		if n < 1 || n > len(b) {
			t.Fatalf("consumed %d of %d", n, len(b))
		}
		for i, e := range s.entries {
			if e.node == "" || e.counter == 0 || uint64(len(e.values)) > e.counter {
				t.Fatalf("entry %d breaks invariants: %+v", i, e)
			}
			if i > 0 && s.entries[i-1].node >= e.node {
				t.Fatalf("entries not sorted: %s", show(s))
			}
		}
		enc := s.Append(nil, appendString)
		s2, n2, err := Decode(enc, decodeString)
		if err != nil || n2 != len(enc) {
			t.Fatalf("re-decode: %v (consumed %d of %d)", err, n2, len(enc))
		}
		if !Equal(s, s2) || !slices.Equal(s.Values(), s2.Values()) {
			t.Fatalf("round trip changed %s into %s", show(s), show(s2))
		}
		// Sync with itself and with a fresh write must keep invariants too.
		if !Equal(Sync(s, s), s) {
			t.Fatalf("sync not idempotent on decoded %s", show(s))
		}
		if w := s.Update(s.Context(), "z", "v"); w.Len() != 1 || !Less(s, w) {
			t.Fatalf("write over decoded %s gave %s", show(s), show(w))
		}
	})
}
