package replica

import (
	"fmt"
	"runtime"
	"testing"
	"time"
)

// subValue is about the size of an encoded session record with two
// subscriptions.
var subValue = make([]byte, 60)

func benchStore(b *testing.B, node string, keys int) *Store {
	b.Helper()
	cfg := DefaultConfig()
	cfg.Node = node
	s, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < keys; i++ {
		if _, err := s.Put("sub", fmt.Sprintf("client-%d", i), subValue, t0); err != nil {
			b.Fatal(err)
		}
	}
	return s
}

// BenchmarkPutApply100k: one local write on a node and its application on a
// peer, over a table of 100k keys.
func BenchmarkPutApply100k(b *testing.B) {
	const keys = 100000
	a, c := benchStore(b, "node-a", keys), benchStore(b, "node-c", 0)
	for _, d := range a.Snapshot() {
		c.Apply(d)
	}
	names := make([]string, keys)
	for i := range names {
		names[i] = fmt.Sprintf("client-%d", i)
	}
	now := t0
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		now = now.Add(time.Microsecond)
		u, _ := a.Put("sub", names[i%keys], subValue, now)
		c.Apply(u.Out[0])
	}
}

// BenchmarkPutApplyEncoded100k adds the wire codec on the way.
func BenchmarkPutApplyEncoded100k(b *testing.B) {
	const keys = 100000
	a, c := benchStore(b, "node-a", keys), benchStore(b, "node-c", 0)
	for _, d := range a.Snapshot() {
		c.Apply(d)
	}
	now := t0
	var buf []byte
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		now = now.Add(time.Microsecond)
		u, _ := a.Put("sub", fmt.Sprintf("client-%d", i%keys), subValue, now)
		buf = AppendDeltas(buf[:0], u.Out...)
		ds, err := DecodeDeltas(buf)
		if err != nil {
			b.Fatal(err)
		}
		c.Apply(ds[0])
	}
}

// BenchmarkDigest100k: building and encoding the digest of 100k keys, and
// comparing it with a peer's.
func BenchmarkDigest100k(b *testing.B) {
	a := benchStore(b, "node-a", 100000)
	peer := a.Digest()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		d := a.Digest()
		if _, err := d.AppendBinary(nil); err != nil {
			b.Fatal(err)
		}
		if diff, _ := d.Diff(peer); len(diff) != 0 {
			b.Fatal("digest differs")
		}
	}
}

// BenchmarkJoin100k: a joining node receives the snapshot of 100k keys in
// batches of 1000 through the codec and applies it.
func BenchmarkJoin100k(b *testing.B) {
	a := benchStore(b, "node-a", 100000)
	snap := a.Snapshot()
	var batches [][]byte
	for i := 0; i < len(snap); i += 1000 {
		batches = append(batches, AppendDeltas(nil, snap[i:min(i+1000, len(snap))]...))
	}
	bytesTotal := 0
	for _, bt := range batches {
		bytesTotal += len(bt)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		j := benchStore(b, "joiner", 0)
		for _, bt := range batches {
			ds, err := DecodeDeltas(bt)
			if err != nil {
				b.Fatal(err)
			}
			for _, d := range ds {
				j.Apply(d)
			}
		}
		if j.Len("sub") != 100000 {
			b.Fatal("join incomplete")
		}
	}
	b.ReportMetric(float64(bytesTotal)/float64(len(snap)), "wire-B/key")
}

// BenchmarkMemory100k reports the heap held by a store of 100k keys.
func BenchmarkMemory100k(b *testing.B) {
	heapPerKey(b, "heap-B/key", func() *Store { return benchStore(b, "node-a", 100000) })
}

// BenchmarkTombstoneMemory100k reports the heap held per tombstone: 100k
// keys written and deleted, as the session table keeps a disconnected
// client's record until cluster.tombstone_grace.
func BenchmarkTombstoneMemory100k(b *testing.B) {
	heapPerKey(b, "heap-B/tombstone", func() *Store {
		s := benchStore(b, "node-a", 100000)
		for i := 0; i < 100000; i++ {
			if _, err := s.Delete("sub", fmt.Sprintf("client-%d", i), t0.Add(time.Millisecond)); err != nil {
				b.Fatal(err)
			}
		}
		if s.Len("sub") != 0 {
			b.Fatal("keys left")
		}
		return s
	})
}

// heapPerKey reports the heap that the store build returns holds, per
// one of its 100k keys, as metric unit.
func heapPerKey(b *testing.B, unit string, build func() *Store) {
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		s := build()
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/100000, unit)
		runtime.KeepAlive(s)
	}
}
