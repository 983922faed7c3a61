package pmap

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/mendmq/mendmq/cluster/partition"
)

// TestEntryMetadata: Hazelcast's EntryView rules at the owner.
func TestEntryMetadata(t *testing.T) {
	s := NewStore(partition.DefaultCount)
	e := s.Put("m", "k", []byte("a"), 0, 0, 1000)
	if e.Version != 0 || e.CreationTime != 1000 || e.LastUpdateTime != 1000 || e.Hits != 0 || e.ExpirationTime() != 0 {
		t.Fatalf("new entry %+v", e)
	}
	g, ok := s.Get("m", "k", 1500, true)
	if !ok || g.Hits != 1 || g.LastAccessTime != 1500 {
		t.Fatalf("read %+v", g)
	}
	e = s.Put("m", "k", []byte("b"), 0, 0, 2000)
	if e.Version != 1 || e.CreationTime != 1000 || e.Hits != 1 || e.LastUpdateTime != 2000 {
		t.Fatalf("update %+v", e)
	}
	if v := e.View("k"); v.Cost != 2 || v.Version != 1 || string(v.Key) != "k" {
		t.Fatalf("view %+v", v)
	}
	// TTL from the last update; max idle from the last access.
	e = s.Put("m", "t", []byte("x"), 500, 0, 3000)
	if e.ExpirationTime() != 3500 {
		t.Fatalf("ttl expiration %d", e.ExpirationTime())
	}
	if _, ok := s.Get("m", "t", 3499, false); !ok {
		t.Fatal("expired early")
	}
	if _, ok := s.Get("m", "t", 3500, false); ok {
		t.Fatal("not expired at its time")
	}
	s.Put("m", "i", []byte("x"), 0, 100, 4000)
	s.Get("m", "i", 4090, true)
	if _, ok := s.Get("m", "i", 4180, true); !ok {
		t.Fatal("max idle counted from creation, not the last access")
	}
	if _, ok := s.Get("m", "i", 4281, false); ok {
		t.Fatal("max idle not applied")
	}
	// Deleted, then created again: version 0.
	d, ok := s.Delete("m", "k")
	if !ok || d.Seq <= e.Seq {
		t.Fatalf("delete %+v %v", d, ok)
	}
	if e := s.Put("m", "k", []byte("c"), 0, 0, 5000); e.Version != 0 || e.CreationTime != 5000 {
		t.Fatalf("recreated %+v", e)
	}
}

// TestApplyBySeq: a backup applies writes in sequence order, whatever
// order they arrive in, and a full copy replaces all but newer writes.
func TestApplyBySeq(t *testing.T) {
	owner, backup := NewStore(7), NewStore(7)
	var items []Item
	for i, v := range []string{"a", "b", "c"} {
		e := owner.Put("m", "k", []byte(v), 0, 0, int64(i))
		items = append(items, Item{Map: "m", Key: "k", Entry: e})
	}
	d, _ := owner.Delete("m", "k")
	items = append(items, Item{Map: "m", Key: "k", Entry: d, Deleted: true})
	for _, i := range []int{1, 0, 2} {
		backup.Apply(items[i])
	}
	if e, _ := backup.Get("m", "k", 0, false); string(e.Value) != "c" {
		t.Fatalf("backup has %q, want c", e.Value)
	}
	if backup.Apply(items[0]) {
		t.Fatal("an older write was applied")
	}
	backup.Apply(items[3])
	if _, ok := backup.Get("m", "k", 0, false); ok {
		t.Fatal("the deletion was not applied")
	}
	// A copy of the partition replaces the backup's content.
	owner.Put("m", "x", []byte("1"), 0, 0, 10)
	p := owner.Partition("x")
	cp := owner.Copy(p)
	backup.Replace(p, cp)
	if e, ok := backup.Get("m", "x", 10, false); !ok || !bytes.Equal(e.Value, []byte("1")) {
		t.Fatal("copy not installed")
	}
	// A new owner floors its sequence: its writes win over the old
	// owner's at every backup.
	newOwner := NewStore(7)
	newOwner.Replace(p, cp)
	newOwner.Floor(p, 1<<40)
	w := newOwner.Put("m", "x", []byte("2"), 0, 0, 11)
	stale := owner.Put("m", "x", []byte("stale"), 0, 0, 12)
	backup.Apply(Item{Map: "m", Key: "x", Entry: w})
	if backup.Apply(Item{Map: "m", Key: "x", Entry: stale}) {
		t.Fatal("the former owner's later write won over the new owner's")
	}
}

func TestExpireReportsDeletions(t *testing.T) {
	s := NewStore(3)
	s.Put("m", "a", []byte("1"), 10, 0, 0)
	s.Put("m", "b", []byte("1"), 0, 0, 0)
	gone := s.Expire(100, func(partition.ID) bool { return true })
	if len(gone) != 1 || gone[0].Key != "a" || !gone[0].Deleted {
		t.Fatalf("expired %+v", gone)
	}
	if st := s.Stats(func(partition.ID) bool { return true }); st["m"][0] != 1 {
		t.Fatalf("stats %v", st)
	}
}

func TestValidNamesAndKeys(t *testing.T) {
	for _, n := range []string{"m", "orders.v2", "a/b:c_d-e"} {
		if err := ValidName(n); err != nil {
			t.Errorf("%q: %v", n, err)
		}
	}
	for _, n := range []string{"", "$retained", "sp ace", "ctl\x01", string(make([]byte, 256))} {
		if ValidName(n) == nil {
			t.Errorf("%q accepted", n)
		}
	}
	for _, k := range []string{"", "a\x00b", "tab\tk", "\xff", string(make([]byte, MaxKeyLen+1))} {
		if ValidKey(k) == nil {
			t.Errorf("key %q accepted", k)
		}
	}
	if ValidKey("ünïcode/ok") != nil {
		t.Error("unicode key refused")
	}
}

// BenchmarkStoreStats is the cost of a metrics scrape's walk over the
// entries (Maps.LocalStats): 100k entries of two maps, half the
// partitions owned. Run: go test -run XXX -bench StoreStats ./cluster/pmap/
func BenchmarkStoreStats(b *testing.B) {
	s := NewStore(partition.DefaultCount)
	for i := range 100_000 {
		s.Write([]string{"a", "b"}[i%2], fmt.Sprint("key-", i), Entry{Value: make([]byte, 64)})
	}
	b.ResetTimer()
	for range b.N {
		st := s.Stats(func(p partition.ID) bool { return p%2 == 0 })
		if st["a"][0] == 0 {
			b.Fatal("no entries counted")
		}
	}
}

// TestStatsBytesFollowChanges: the bytes Stats reports, and the count of
// entries with a TTL or max idle Expire relies on to skip a partition,
// kept as entries change, equal a walk over the entries after every kind
// of change.
func TestStatsBytesFollowChanges(t *testing.T) {
	s := NewStore(7)
	walk := func() map[string][2]int64 {
		out := map[string][2]int64{}
		for _, p := range s.parts {
			for m, mm := range p.maps {
				st := out[m]
				for k, e := range mm {
					st[0]++
					st[1] += int64(len(k) + len(e.Value))
				}
				out[m] = st
			}
		}
		return out
	}
	all := func(partition.ID) bool { return true }
	check := func(step string) {
		t.Helper()
		got, want := s.Stats(all), walk()
		for m, w := range want {
			if got[m] != w {
				t.Fatalf("after %s: map %s: Stats %v, walk %v", step, m, got[m], w)
			}
		}
		for pid, p := range s.parts {
			n := 0
			for _, mm := range p.maps {
				for _, e := range mm {
					if e.TTL > 0 || e.MaxIdle > 0 {
						n++
					}
				}
			}
			if p.expiring != n {
				t.Fatalf("after %s: partition %d counts %d expiring entries, walk %d", step, pid, p.expiring, n)
			}
		}
	}
	for i := range 50 {
		s.Put("a", fmt.Sprint("k", i), make([]byte, i), 0, 0, 1)
	}
	check("puts")
	s.Put("a", "k3", make([]byte, 100), 0, 0, 2)
	check("an update")
	s.Put("a", "ttl", []byte("xx"), 5, 0, 2)
	s.Put("a", "idle", []byte("xx"), 0, 500, 2)
	s.Put("a", "k9", []byte("xx"), 0, 500, 2)
	check("puts with a TTL and a max idle")
	s.Put("a", "k9", []byte("xx"), 0, 0, 3)
	check("an update dropping the max idle")
	s.Expire(100, all)
	check("an expiry")
	s.Delete("a", "k4")
	check("a delete")
	e := s.Write("b", "w", Entry{Value: []byte("merged")})
	check("a write")
	s.Apply(Item{Map: "b", Key: "w", Entry: Entry{Value: []byte("longer value"), Seq: e.Seq + 1}})
	s.Apply(Item{Map: "a", Key: "k5", Entry: Entry{Seq: 1 << 40}, Deleted: true})
	s.Apply(Item{Map: "b", Key: "t", Entry: Entry{Value: []byte("ttl"), TTL: 9, Seq: 1 << 40}})
	check("backup applies")
	s.Delete("a", "idle")
	check("a delete of an expiring entry")
	pid := s.Partition("k7")
	s.Replace(pid, []Item{{Map: "a", Key: "k7", Entry: Entry{Value: []byte("replaced"), MaxIdle: 3}}})
	check("a replace")
	s.Drop(s.Partition("k8"))
	check("a drop")
	s.Put("a", "gone", []byte("v"), 1, 0, 1)
	if _, ok := s.Get("a", "gone", 10, true); ok {
		t.Fatal("expired entry read")
	}
	check("an expired read")
	s.Put("a", "late", []byte("v"), 1, 0, 1)
	// late, the applied t (updated at 0, TTL 9) and the replaced k7 (idle
	// since 0, max idle 3).
	if gone := s.Expire(10, all); len(gone) != 3 {
		t.Fatalf("expired %+v, want late, t and k7", gone)
	}
	check("an expiry after counts moved")
}
