package replica

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/mendmq/mendmq/cluster/dvv"
)

// sampleDeltas returns deltas covering values, tombstones, empty values,
// negative timestamps and sibling sets from concurrent writers.
func sampleDeltas(t testing.TB) []Delta {
	a, b := newStore(t, "node-a"), newStore(t, "node-b")
	var out []Delta
	u := mustPut(t, a, "sub", "client-1", "record", t0)
	out = append(out, u.Out...)
	u = mustPut(t, a, "ret", "a/b", "", time.UnixMilli(-5))
	out = append(out, u.Out...)
	d, _ := a.Delete("ret", "a/b", t0)
	out = append(out, d.Out...)
	ub := mustPut(t, b, "sub", "client-1", "other", t0)
	// b keeps both siblings until a writes back: a three-way set.
	b.Apply(out[0])
	out = append(out, Delta{Table: "sub", Key: "client-1", Versions: dvv.Sync(ub.Out[0].Versions, out[0].Versions)})
	return out
}

func TestDeltasRoundTrip(t *testing.T) {
	ds := sampleDeltas(t)
	for n := 0; n <= len(ds); n++ {
		b := AppendDeltas([]byte("xx"), ds[:n]...)
		got, err := DecodeDeltas(b[2:])
		if err != nil {
			t.Fatalf("%d deltas: %v", n, err)
		}
		if len(got) != n {
			t.Fatalf("decoded %d of %d", len(got), n)
		}
		for i := range got {
			if got[i].Table != ds[i].Table || got[i].Key != ds[i].Key || !sameVersions(got[i].Versions, ds[i].Versions) {
				t.Fatalf("delta %d: got %+v want %+v", i, got[i], ds[i])
			}
		}
		if again := AppendDeltas(nil, got...); !bytes.Equal(again, b[2:]) {
			t.Fatalf("%d deltas: encoding not deterministic", n)
		}
	}
}

func sameVersions(a, b dvv.Set[Sibling]) bool {
	if !dvv.Equal(a, b) {
		return false
	}
	av, bv := a.Values(), b.Values()
	for i := range av {
		x, y := av[i], bv[i]
		if x.Node != y.Node || x.TS != y.TS || x.Deleted != y.Deleted || !bytes.Equal(x.Value, y.Value) {
			return false
		}
	}
	return true
}

func TestDecodeDeltasRejects(t *testing.T) {
	valid := AppendDeltas(nil, sampleDeltas(t)[0])
	enc := func(parts ...any) []byte {
		b := []byte{deltasVersion}
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
		{"empty", nil},
		{"bad version", append([]byte{9}, valid[1:]...)},
		{"truncated", valid[:len(valid)-1]},
		{"trailing", append(bytes.Clone(valid), 0)},
		{"count too large", enc(1000)},
		{"empty table", enc(1, 0, 1, "k", 1, 1, "n", 1, 1, 0, 1)},
		{"empty key", enc(1, 1, "t", 0, 1, 1, "n", 1, 1, 0, 1)},
		{"no versions", enc(1, 1, "t", 1, "k", 1, 1, "n", 1, 0, 0, 0, 0, 0)},
		{"unknown sibling flag", enc(1, 1, "t", 1, "k", 1, 1, "n", 1, 1, 0, 2, 0)},
		{"value longer than input", enc(1, 1, "t", 1, "k", 1, 1, "n", 1, 1, 0, 0, 50)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ds, err := DecodeDeltas(tc.in)
			if err == nil {
				t.Fatalf("decoded %+v", ds)
			}
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, dvv.ErrMalformed) {
				t.Fatalf("error %v wraps neither sentinel", err)
			}
		})
	}
}

func TestDigestRoundTrip(t *testing.T) {
	s := newStore(t, "a")
	empty, _ := s.Digest().AppendBinary(nil)
	for i := 0; i < 100; i++ {
		mustPut(t, s, "sub", fmt.Sprintf("c%d", i), "v", t0)
		mustPut(t, s, "ret", fmt.Sprintf("t%d", i%3), "v", t0)
	}
	s.table("empty-table")
	for _, d := range []Digest{s.Digest(), {Buckets: 1}} {
		b, err := d.AppendBinary(nil)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeDigest(b)
		if err != nil {
			t.Fatal(err)
		}
		if diff, err := got.Diff(d); err != nil || len(diff) != 0 || len(got.Tables) != len(d.Tables) {
			t.Fatalf("round trip differs: %v %v", diff, err)
		}
	}
	if got, err := DecodeDigest(empty); err != nil || got.Buckets != 64 || len(got.Tables) != 0 {
		t.Fatalf("empty digest: %+v %v", got, err)
	}
	b, _ := s.Digest().AppendBinary(nil)
	t.Logf("digest of 2 tables, 64 buckets: %d bytes", len(b))
}

func TestDecodeDigestRejects(t *testing.T) {
	s := newStore(t, "a")
	mustPut(t, s, "sub", "c", "v", t0)
	valid, _ := s.Digest().AppendBinary(nil)
	tests := []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"bad version", append([]byte{2}, valid[1:]...)},
		{"truncated", valid[:len(valid)-1]},
		{"trailing", append(bytes.Clone(valid), 0)},
		{"zero buckets", []byte{1, 0, 0}},
		{"buckets not power of two", []byte{1, 3, 0}},
		{"unsorted tables", []byte{1, 1, 2, 1, 'b', 0, 1, 'a', 0}},
		{"duplicate tables", []byte{1, 1, 2, 1, 'a', 0, 1, 'a', 0}},
		{"index out of range", []byte{1, 2, 1, 1, 'a', 1, 2, 1, 0, 0, 0, 0, 0, 0, 0}},
		{"too many non-empty", []byte{1, 1, 1, 1, 'a', 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0}},
		{"explicit zero sum", []byte{1, 1, 1, 1, 'a', 1, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
		// Found by FuzzDecodeDigest: a truncated gap after the last bucket
		// used to advance the index past the end.
		{"truncated after last bucket", []byte("\x01 \x03\x0200 \x1f00000000")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if d, err := DecodeDigest(tc.in); err == nil || !errors.Is(err, ErrMalformed) {
				t.Fatalf("decoded %+v, err %v", d, err)
			}
		})
	}
}

// FuzzDecodeDeltas: never panic; accepted input re-encodes to a fixed point
// and can be applied to a store without breaking its invariants.
func FuzzDecodeDeltas(f *testing.F) {
	f.Add(AppendDeltas(nil, sampleDeltas(f)...))
	f.Add(AppendDeltas(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		ds, err := DecodeDeltas(b)
		if err != nil {
			return
		}
		enc := AppendDeltas(nil, ds...)
		again, err := DecodeDeltas(enc)
		if err != nil || len(again) != len(ds) {
			t.Fatalf("re-decode: %v", err)
		}
		for i := range ds {
			if !sameVersions(ds[i].Versions, again[i].Versions) {
				t.Fatalf("delta %d changed in round trip", i)
			}
			for _, v := range ds[i].Versions.Values() {
				if v.Deleted && v.Value != nil {
					t.Fatalf("tombstone with a value")
				}
			}
		}
		s := newStore(t, "fuzz")
		for _, d := range ds {
			s.Apply(d)
			s.Apply(d)
		}
		snap := s.Snapshot()
		other := newStore(t, "other")
		for _, d := range snap {
			other.Apply(d)
		}
		if !digestsEqual(s.Digest(), other.Digest()) {
			t.Fatalf("snapshot of fuzzed state does not reproduce it")
		}
	})
}

// FuzzDecodeDigest: never panic; accepted digests re-encode to the same
// bytes (the encoding is canonical apart from non-minimal varints, which
// must still survive by value) and compare equal to themselves.
func FuzzDecodeDigest(f *testing.F) {
	s := newStore(f, "a")
	for i := 0; i < 20; i++ {
		mustPut(f, s, fmt.Sprintf("t%d", i%3), fmt.Sprint(i), "v", t0)
	}
	b, _ := s.Digest().AppendBinary(nil)
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := DecodeDigest(b)
		if err != nil {
			return
		}
		enc, _ := d.AppendBinary(nil)
		d2, err := DecodeDigest(enc)
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if diff, err := d.Diff(d2); err != nil || len(diff) != 0 {
			t.Fatalf("round trip differs: %v %v", diff, err)
		}
		for _, td := range d.Tables {
			if len(td.Sums) != d.Buckets {
				t.Fatalf("table %q has %d sums for %d buckets", td.Name, len(td.Sums), d.Buckets)
			}
		}
	})
}
