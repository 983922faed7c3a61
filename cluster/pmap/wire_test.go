package pmap

import (
	"reflect"
	"testing"
)

func TestWireRoundTrips(t *testing.T) {
	items := []Item{{Map: "m", Key: "k", Entry: Entry{Value: []byte("v"), Hits: 3, Version: 2, CreationTime: -1, TTL: 5, Seq: 9}},
		{Map: "m", Key: "d", Deleted: true, Entry: Entry{Seq: 10}}}
	got, err := decodeItems(appendItems(nil, items))
	if err != nil || !reflect.DeepEqual(got, items) {
		t.Fatalf("items: %+v %v", got, err)
	}
	q := request{op: opPut, m: "m", key: "k", value: []byte("v"), ttl: 7, maxIdle: 8}
	if g, err := decodeRequest(q.append(nil)); err != nil || !reflect.DeepEqual(g, q) {
		t.Fatalf("request: %+v %v", g, err)
	}
	e := Entry{Value: []byte("x"), Seq: 1}
	for _, st := range []uint8{stNotFound, stFound, stRetry, stRefused} {
		s, ge, reason, err := decodeReply(appendReply(nil, st, &e, "why"))
		if err != nil || s != st || (st == stFound && !reflect.DeepEqual(ge, e)) || ((st == stRetry || st == stRefused) && reason != "why") {
			t.Fatalf("reply %d: %d %+v %q %v", st, s, ge, reason, err)
		}
	}
	for _, flags := range [][2]bool{{false, false}, {true, false}, {false, true}, {true, true}} {
		l, side, data, merging, err := decodeSide(appendSide(nil, Lineage{Hash: 1 << 60, Size: 3}, []string{"a", "b"}, flags[0], flags[1]))
		if err != nil || l.Hash != 1<<60 || l.Size != 3 || len(side) != 2 || data != flags[0] || merging != flags[1] {
			t.Fatalf("side %v: %+v %v %v %v %v", flags, l, side, data, merging, err)
		}
	}
	if _, _, _, _, err := decodeSide(append(appendSide(nil, Lineage{Hash: 1, Size: 1}, nil, false, false)[:3], 0x80)); err == nil {
		t.Fatal("side with unknown flags decoded")
	}
	mname, mitems, err := decodeMerge(appendMerge(nil, "m", items))
	if err != nil || mname != "m" || !reflect.DeepEqual(mitems, items) {
		t.Fatalf("merge: %q %+v %v", mname, mitems, err)
	}
}

// The decoders read what peers send: never panic, round-trip what they
// accept.
func FuzzDecodeItems(f *testing.F) {
	f.Add(appendItems(nil, []Item{{Map: "m", Key: "k", Entry: Entry{Value: []byte("v")}}}))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f})
	// Maps alternating and repeating (the decoder reuses a repeated
	// name), negative and long varints.
	f.Add(appendItems(nil, []Item{{Map: "a", Key: "1"}, {Map: "a", Key: "2", Deleted: true}, {Map: "b", Key: "3", Entry: Entry{Hits: -1, Seq: 1 << 63}},
		{Map: "a", Key: "4", Entry: Entry{Value: []byte("vv"), TTL: 1 << 50}}, {Map: "", Key: ""}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		items, err := decodeItems(b)
		if err != nil {
			return
		}
		enc := appendItems(nil, items)
		if len(enc) != itemsLen(items) {
			t.Fatalf("encoded %d bytes, itemsLen %d", len(enc), itemsLen(items))
		}
		again, err := decodeItems(enc)
		if err != nil || !reflect.DeepEqual(again, items) {
			t.Fatalf("items do not round-trip: %v", err)
		}
	})
}

func FuzzDecodeRequest(f *testing.F) {
	f.Add(request{op: opGet, m: "m", key: "k"}.append(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := decodeRequest(b)
		if err != nil {
			return
		}
		if g, err := decodeRequest(q.append(nil)); err != nil || g.op != q.op || g.key != q.key {
			t.Fatalf("request does not round-trip: %v", err)
		}
	})
}

func FuzzDecodeReplyAndSide(f *testing.F) {
	f.Add(appendReply(nil, stFound, &Entry{Value: []byte("x")}, ""))
	f.Add(appendSide(nil, Lineage{Hash: 1, Size: 2}, []string{"a"}, true, true))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _, _, _ = decodeReply(b)
		_, _, _, _, _ = decodeSide(b)
		_, _, _ = decodeMerge(b)
		_, _, _ = decodePartition(b, 271)
	})
}
