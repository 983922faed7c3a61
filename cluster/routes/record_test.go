package routes

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/mendmq/mendmq/cluster/hlc"
)

var sampleRecords = []SessionRecord{
	{Node: "n"},
	{Node: "node-a", Clean: true, CleanStart: true},
	{Node: "node-c", Connect: hlc.Timestamp{Wall: 1730000000000, Logical: 7}},
	{Node: "node-b", ExpiryInterval: 0xFFFFFFFF, Connect: hlc.Timestamp{Wall: hlc.MaxWall, Logical: 0xFFFFFFFF}, Subs: []Subscription{
		{Filter: "a/+/b", QoS: 2, NoLocal: true, RetainAsPublished: true, RetainHandling: 2, Identifier: MaxIdentifier},
		{Filter: "$share/g/#", QoS: 1, RetainHandling: 1},
		{Filter: "ünïcode/#"},
	}},
}

func TestRecordRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 11))
	recs := append([]SessionRecord{}, sampleRecords...)
	for i := 0; i < 200; i++ {
		rec := randomRecord(rng, []string{"n1", "n2"})
		rec.Clean = rng.IntN(2) == 0
		rec.CleanStart = rng.IntN(2) == 0
		rec.ExpiryInterval = rng.Uint32()
		rec.Connect = hlc.Timestamp{Wall: rng.Int64N(hlc.MaxWall + 1), Logical: rng.Uint32()}
		for j := range rec.Subs {
			s := &rec.Subs[j]
			if s.Filter == "" {
				s.Filter = "/"
			}
			s.NoLocal, s.RetainAsPublished = rng.IntN(2) == 0, rng.IntN(2) == 0
			s.RetainHandling, s.Identifier = byte(rng.IntN(3)), rng.IntN(MaxIdentifier+1)
		}
		recs = append(recs, rec)
	}
	for i, rec := range recs {
		b, err := rec.MarshalBinary()
		if err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		var got SessionRecord
		if err := got.UnmarshalBinary(b); err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		if !reflect.DeepEqual(got, rec) {
			t.Fatalf("record %d: got %+v, want %+v", i, got, rec)
		}
		again, _ := got.AppendBinary([]byte{9})
		if !bytes.Equal(again[1:], b) {
			t.Fatalf("record %d: encoding not deterministic", i)
		}
	}
}

func TestRecordRejects(t *testing.T) {
	valid, err := sampleRecords[3].MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(valid)) }
	tests := []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"version 1 (no connect stamp)", mutate(func(b []byte) []byte { b[0] = 1; return b })},
		{"version 3", mutate(func(b []byte) []byte { b[0] = 3; return b })},
		{"truncated", valid[:len(valid)-1]},
		{"trailing byte", append(bytes.Clone(valid), 0)},
		{"empty node", []byte{2, 0, 0, 0, 0, 0, 0}},
		{"unknown flag", []byte{2, 1, 'n', 4, 0, 0, 0, 0}},
		{"expiry over 32 bits", []byte{2, 1, 'n', 0, 0x80, 0x80, 0x80, 0x80, 0x10, 0, 0, 0}},
		{"missing connect stamp", []byte{2, 1, 'n', 0, 0}},
		{"connect wall beyond year 10000", []byte{2, 1, 'n', 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0, 0}},
		{"connect logical over 32 bits", []byte{2, 1, 'n', 0, 0, 1, 0x80, 0x80, 0x80, 0x80, 0x10, 0}},
		{"too many subs", []byte{2, 1, 'n', 0, 0, 0, 0, 100, 1, 'a', 0, 0}},
		{"qos 3", []byte{2, 1, 'n', 0, 0, 0, 0, 1, 1, 'a', 3, 0}},
		{"retain handling 3", []byte{2, 1, 'n', 0, 0, 0, 0, 1, 1, 'a', 0x30, 0}},
		{"reserved option bit", []byte{2, 1, 'n', 0, 0, 0, 0, 1, 1, 'a', 0x40, 0}},
		{"empty filter", []byte{2, 1, 'n', 0, 0, 0, 0, 1, 0, 0, 0, 0}},
		{"invalid utf8 filter", []byte{2, 1, 'n', 0, 0, 0, 0, 1, 1, 0xff, 0, 0}},
		{"identifier too big", []byte{2, 1, 'n', 0, 0, 0, 0, 1, 1, 'a', 0, 0x80, 0x80, 0x80, 0x80, 0x01}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec, err := DecodeRecord(tc.in)
			if err == nil {
				t.Fatalf("decoded %+v", rec)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
		})
	}
}

func TestRecordEncodeValidates(t *testing.T) {
	bad := []SessionRecord{
		{},
		{Node: "n", Subs: []Subscription{{Filter: "a", QoS: 3}}},
		{Node: "n", Subs: []Subscription{{Filter: "a", Identifier: -1}}},
		{Node: "n", Subs: []Subscription{{Filter: ""}}},
		{Node: "n", Connect: hlc.Timestamp{Wall: -1}},
		{Node: "n", Connect: hlc.Timestamp{Wall: hlc.MaxWall + 1}},
	}
	for i, rec := range bad {
		if _, err := rec.MarshalBinary(); err == nil {
			t.Errorf("record %d encoded: %+v", i, rec)
		}
	}
}

// FuzzDecodeRecord checks that the decoder never panics and that what it
// accepts re-encodes to exactly the same bytes (the encoding is canonical
// except for non-minimal varints, which must still round-trip by value).
func FuzzDecodeRecord(f *testing.F) {
	for _, rec := range sampleRecords {
		b, _ := rec.MarshalBinary()
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		rec, err := DecodeRecord(b)
		if err != nil {
			return
		}
		enc, err := rec.MarshalBinary()
		if err != nil {
			t.Fatalf("decoded record does not encode: %v (%+v)", err, rec)
		}
		again, err := DecodeRecord(enc)
		if err != nil || !reflect.DeepEqual(again, rec) {
			t.Fatalf("round trip: %v: %+v vs %+v", err, again, rec)
		}
	})
}

// TestCompare is the survival rule of two sessions of one client id: the
// later CONNECT by hybrid logical clock, ties to the larger node name.
func TestCompare(t *testing.T) {
	at := func(wall int64, logical uint32) hlc.Timestamp { return hlc.Timestamp{Wall: wall, Logical: logical} }
	tests := []struct {
		name string
		a, b SessionRecord
		want int
	}{
		{"later wall wins", SessionRecord{Node: "a", Connect: at(2000, 0)}, SessionRecord{Node: "z", Connect: at(1000, 9)}, 1},
		{"same wall, later logical wins", SessionRecord{Node: "z", Connect: at(1000, 1)}, SessionRecord{Node: "a", Connect: at(1000, 2)}, -1},
		{"tie goes to the larger node", SessionRecord{Node: "n2", Connect: at(1000, 1)}, SessionRecord{Node: "n1", Connect: at(1000, 1)}, 1},
		{"unknown stamp loses", SessionRecord{Node: "z"}, SessionRecord{Node: "a", Connect: at(0, 1)}, -1},
		{"subscriptions do not count", SessionRecord{Node: "n", Connect: at(5, 0), Subs: []Subscription{{Filter: "x"}}}, SessionRecord{Node: "n", Connect: at(5, 0)}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Compare(tc.a, tc.b); got != tc.want {
				t.Errorf("Compare = %d, want %d", got, tc.want)
			}
			if got := Compare(tc.b, tc.a); got != -tc.want {
				t.Errorf("Compare reversed = %d, want %d", got, -tc.want)
			}
		})
	}
}
