package pmap

import (
	"fmt"
	"io"
	"log/slog"
	"math"
	"reflect"
	"strings"
	"testing"
	"unsafe"

	"github.com/mendmq/mendmq/cluster/partition"
)

// TestItemsLen: appendItems and appendMerge size their buffer once (one
// allocation), itemsLen being the exact encoded size whatever the
// varints' lengths; the decoder
// gives the items back, their map name allocated once per run of it.
func TestItemsLen(t *testing.T) {
	big := Entry{Value: []byte(strings.Repeat("v", 300)), Hits: math.MaxInt64, Version: math.MinInt64, CreationTime: -1,
		LastAccessTime: 1 << 40, LastUpdateTime: -(1 << 40), LastStoredTime: 63, TTL: 64, MaxIdle: -64, Seq: math.MaxUint64}
	for _, tc := range []struct {
		name  string
		items []Item
	}{
		{name: "none"},
		{name: "zero entry", items: []Item{{}}},
		{name: "deletion", items: []Item{{Map: "m", Key: "k", Deleted: true, Entry: Entry{Seq: 1 << 30}}}},
		{name: "extreme varints", items: []Item{{Map: "m", Key: "k", Entry: big}}},
		{name: "long key and map", items: []Item{{Map: strings.Repeat("m", 200), Key: strings.Repeat("ü", 2000), Entry: Entry{Value: []byte("x")}}}},
		{name: "two maps", items: []Item{{Map: "a", Key: "1"}, {Map: "a", Key: "2"}, {Map: "b", Key: "3", Entry: big}, {Map: "a", Key: "4"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := appendItems(nil, tc.items)
			if len(b) != itemsLen(tc.items) {
				t.Fatalf("encoded %d bytes, itemsLen %d", len(b), itemsLen(tc.items))
			}
			if n := testing.AllocsPerRun(10, func() { appendItems(nil, tc.items) }); n != 1 && !raceEnabled {
				t.Fatalf("appendItems allocates %v times, want once", n)
			}
			got, err := decodeItems(b)
			if err != nil || (len(tc.items) > 0 && !reflect.DeepEqual(got, tc.items)) || len(got) != len(tc.items) {
				t.Fatalf("decoded %+v, %v", got, err)
			}
			for i := 1; i < len(got); i++ {
				if got[i].Map == got[i-1].Map && unsafe.StringData(got[i].Map) != unsafe.StringData(got[i-1].Map) {
					t.Errorf("item %d: map name %q allocated again", i, got[i].Map)
				}
			}
			if n := testing.AllocsPerRun(10, func() { appendMerge(nil, "merge", tc.items) }); n != 1 && !raceEnabled {
				t.Fatalf("appendMerge allocates %v times, want once", n)
			}
			name, mitems, err := decodeMerge(appendMerge(nil, "merge", tc.items))
			if err != nil || name != "merge" || len(mitems) != len(tc.items) {
				t.Fatalf("merge request decoded %q %+v %v", name, mitems, err)
			}
		})
	}
	// A count the bytes cannot hold is refused, without allocating for it.
	if _, err := decodeItems([]byte{0x80, 0x80, 0x40}); err == nil {
		t.Fatal("1M items in 3 bytes decoded")
	}
}

// TestMergeBatches: the sender's batches hold at most MergeBatchSize
// entries of one map with one owner, every entry once, in its order.
func TestMergeBatches(t *testing.T) {
	for _, tc := range []struct {
		name    string
		members []string
		size    int
		maps    []string
		n       int
	}{
		{name: "one owner, one map", members: []string{"a"}, size: 3, maps: []string{"m"}, n: 10},
		{name: "one owner, two maps", members: []string{"a"}, size: 4, maps: []string{"m", "n"}, n: 17},
		{name: "three owners", members: []string{"a", "b", "c"}, size: 5, maps: []string{"m", "n"}, n: 200},
		{name: "a batch bigger than the entries", members: []string{"a", "b"}, size: 1000, maps: []string{"m"}, n: 30},
		{name: "batches of one", members: []string{"a", "b"}, size: 1, maps: []string{"m"}, n: 9},
		{name: "nothing", members: []string{"a"}, size: 2, maps: []string{"m"}, n: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := New(Config{Node: "a", PartitionCount: 31, MergeBatchSize: tc.size, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, nil, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			m.table = partition.Compute(tc.members, 31, 1)
			var items []Item
			for i := range tc.n {
				items = append(items, Item{Map: tc.maps[i%len(tc.maps)], Key: fmt.Sprint("k", i), Entry: Entry{Seq: uint64(i)}})
			}
			seen := map[string]int{}
			last := map[mergeDest]uint64{}
			for _, b := range m.batchLocked(items) {
				if len(b.items) == 0 || len(b.items) > tc.size {
					t.Fatalf("batch of %d entries, size %d", len(b.items), tc.size)
				}
				for _, it := range b.items {
					if it.Map != b.m || m.table.Owner(m.store.Partition(it.Key)) != b.owner {
						t.Fatalf("%s/%s in the batch of %+v", it.Map, it.Key, b.mergeDest)
					}
					if s, ok := last[b.mergeDest]; ok && it.Entry.Seq <= s {
						t.Fatalf("%s/%s out of order", it.Map, it.Key)
					}
					last[b.mergeDest] = it.Entry.Seq
					seen[it.Key]++
				}
			}
			for _, it := range items {
				if seen[it.Key] != 1 {
					t.Fatalf("%s batched %d times", it.Key, seen[it.Key])
				}
			}
		})
	}
}
