package pmap

import (
	"bytes"
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
