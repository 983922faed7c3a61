package retained

import (
	"sync"
	"testing"
	"time"

	"github.com/mendmq/mendmq/cluster/replica"
)

func value(p string, version int64) []byte {
	return Encode(Message{Publish: publish(p), Created: time.UnixMilli(1000), Version: version})
}

// TestReadsCounting: hits and last access of the resolved message, reset
// by a new message, kept by a write-back of the same one, summed with the
// other nodes' counts of the same message only.
func TestReadsCounting(t *testing.T) {
	v1, v2 := value("one", 0), value("two", 1)
	at := func(ms int64) time.Time { return time.UnixMilli(ms) }
	type step struct {
		name string
		do   func(r *Reads)
		// want is the count of "t" for v1 and v2 after the step.
		want1, want2 [2]int64
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"local reads", []step{
			{"no message: not counted", func(r *Reads) { r.Hit("t", at(5)) }, [2]int64{0, 0}, [2]int64{0, 0}},
			{"set", func(r *Reads) { r.resolved("t", v1, true) }, [2]int64{0, 0}, [2]int64{0, 0}},
			{"three reads", func(r *Reads) { r.Hit("t", at(10)); r.Hit("t", at(30)); r.Hit("t", at(20)) }, [2]int64{3, 30}, [2]int64{0, 0}},
			{"write-back of the same message", func(r *Reads) { r.resolved("t", v1, true) }, [2]int64{3, 30}, [2]int64{0, 0}},
			{"another topic", func(r *Reads) { r.Hit("u", at(40)) }, [2]int64{3, 30}, [2]int64{0, 0}},
			{"replaced", func(r *Reads) { r.resolved("t", v2, true); r.Hit("t", at(50)) }, [2]int64{0, 0}, [2]int64{1, 50}},
			{"deleted", func(r *Reads) { r.resolved("t", nil, false); r.Hit("t", at(60)) }, [2]int64{0, 0}, [2]int64{0, 0}},
		}},
		{"other nodes' counts", []step{
			{"set and read", func(r *Reads) { r.resolved("t", v1, true); r.Hit("t", at(10)) }, [2]int64{1, 10}, [2]int64{0, 0}},
			{"b read it 4 times", func(r *Reads) {
				r.observe(readsKey("t", "b"), encodeCount(Count{ID: MessageID(v1), Hits: 4, Access: 70}), true, true)
			}, [2]int64{5, 70}, [2]int64{0, 0}},
			{"c read the other copy", func(r *Reads) {
				r.observe(readsKey("t", "c"), encodeCount(Count{ID: MessageID(v2), Hits: 9, Access: 90}), true, true)
			}, [2]int64{5, 70}, [2]int64{9, 90}},
			{"b counts more", func(r *Reads) {
				r.observe(readsKey("t", "b"), encodeCount(Count{ID: MessageID(v1), Hits: 6, Access: 80}), true, true)
			}, [2]int64{7, 80}, [2]int64{9, 90}},
			{"garbage from d is no count", func(r *Reads) { r.observe(readsKey("t", "d"), []byte{7, 1, 2}, true, true) }, [2]int64{7, 80}, [2]int64{9, 90}},
			{"b's count deleted", func(r *Reads) { r.observe(readsKey("t", "b"), nil, false, true) }, [2]int64{1, 10}, [2]int64{9, 90}},
			{"this node's own write is not counted twice", func(r *Reads) {
				r.observe(readsKey("t", "a"), encodeCount(Count{ID: MessageID(v1), Hits: 1, Access: 10}), true, false)
			}, [2]int64{1, 10}, [2]int64{9, 90}},
		}},
		{"an earlier incarnation's count", []step{
			{"arrives before the message", func(r *Reads) {
				r.observe(readsKey("t", "a"), encodeCount(Count{ID: MessageID(v1), Hits: 5, Access: 50}), true, true)
			}, [2]int64{0, 0}, [2]int64{0, 0}},
			{"the message: counted from there", func(r *Reads) { r.resolved("t", v1, true); r.Hit("t", at(60)) }, [2]int64{6, 60}, [2]int64{0, 0}},
			{"arrives after the message", func(r *Reads) {
				r.resolved("u", v2, true)
				r.observe(readsKey("u", "a"), encodeCount(Count{ID: MessageID(v2), Hits: 2, Access: 20}), true, true)
			}, [2]int64{6, 60}, [2]int64{0, 0}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := NewReads("a")
			for _, s := range tc.steps {
				s.do(r)
				for i, v := range [][]byte{v1, v2} {
					want := [][2]int64{s.want1, s.want2}[i]
					if h, a := r.Count("t", v); h != want[0] || a != want[1] {
						t.Fatalf("after %q: count of message %d = %d hits, access %d; want %v", s.name, i+1, h, a, want)
					}
				}
			}
		})
	}
	r := NewReads("a")
	r.resolved("u", v2, true)
	r.observe(readsKey("u", "a"), encodeCount(Count{ID: MessageID(v2), Hits: 2, Access: 20}), true, true)
	r.Hit("u", at(10))
	if h, a := r.Count("u", v2); h != 3 || a != 20 {
		t.Errorf("adopted after the message: %d hits, access %d; want 3, 20", h, a)
	}
}

// TestReadsView: what the $retained policy sees of each copy.
func TestReadsView(t *testing.T) {
	r := NewReads("a")
	read, unread := value("read", 0), value("unread", 0)
	r.resolved("t", read, true)
	for range 3 {
		r.Hit("t", time.UnixMilli(9000))
	}
	r.observe(readsKey("t", "b"), encodeCount(Count{ID: MessageID(read), Hits: 2, Access: 8000}), true, true)
	v := r.View("t", replica.Sibling{Node: "a", TS: 5000, Value: read})
	if v.Hits != 5 || v.LastAccessTime != 9000 || v.LastUpdateTime != 5000 || v.Version != 0 {
		t.Errorf("read copy: hits %d, last access %d, last update %d", v.Hits, v.LastAccessTime, v.LastUpdateTime)
	}
	// Never read: the last access is the write.
	v = r.View("t", replica.Sibling{Node: "b", TS: 7000, Value: unread})
	if v.Hits != 0 || v.LastAccessTime != 7000 {
		t.Errorf("unread copy: hits %d, last access %d; want 0, 7000", v.Hits, v.LastAccessTime)
	}
	var none *Reads
	if v := none.View("t", replica.Sibling{Node: "a", TS: 5000, Value: read}); v.Hits != 0 || v.LastAccessTime != 0 {
		t.Errorf("without reads: hits %d, last access %d", v.Hits, v.LastAccessTime)
	}
}

// TestReadsFlush: counts are written only when asked (in a netsplit) and
// only when they changed; counts of messages gone or replaced are deleted.
func TestReadsFlush(t *testing.T) {
	r := NewReads("a")
	v1, v2 := value("one", 0), value("two", 1)
	r.resolved("t", v1, true)
	r.resolved("u", v1, true)
	r.resolved("unread", v1, true)
	r.Hit("t", time.UnixMilli(10))
	r.Hit("u", time.UnixMilli(20))
	keys := func(ws []ReadsWrite) map[string]string {
		out := map[string]string{}
		for _, w := range ws {
			topic, node, _ := splitReadsKey(w.Key)
			if node != "a" {
				t.Errorf("flush writes %q, another node's key", w.Key)
			}
			if w.Value == nil {
				out[topic] = "delete"
				continue
			}
			c, err := decodeCount(w.Value)
			if err != nil {
				t.Fatal(err)
			}
			out[topic] = string(rune('0' + c.Hits))
		}
		return out
	}
	for _, step := range []struct {
		name   string
		do     func()
		counts bool
		want   map[string]string
	}{
		{"not split: nothing", func() {}, false, map[string]string{}},
		{"split: every read count", func() {}, true, map[string]string{"t": "1", "u": "1"}},
		{"unchanged: nothing", func() {}, true, map[string]string{}},
		{"one more read", func() { r.Hit("t", time.UnixMilli(30)) }, true, map[string]string{"t": "2"}},
		{"read, not split: kept for later", func() { r.Hit("u", time.UnixMilli(40)) }, false, map[string]string{}},
		{"deleted topic, replaced unread message", func() { r.resolved("t", nil, false); r.resolved("u", v2, true) }, false,
			map[string]string{"t": "delete", "u": "delete"}},
		{"the new message read", func() { r.Hit("u", time.UnixMilli(50)) }, true, map[string]string{"u": "1"}},
	} {
		step.do()
		got := keys(r.Flush(step.counts))
		if len(got) != len(step.want) {
			t.Fatalf("%s: flush %v, want %v", step.name, got, step.want)
		}
		for k, v := range step.want {
			if got[k] != v {
				t.Fatalf("%s: flush %v, want %v", step.name, got, step.want)
			}
		}
	}
}

// TestReadsConcurrentHits: the hot path loses no count under contention
// (run with -race).
func TestReadsConcurrentHits(t *testing.T) {
	r := NewReads("a")
	v := value("x", 0)
	r.resolved("t", v, true)
	const goroutines, each = 8, 1000
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range each {
				r.Hit("t", time.UnixMilli(int64(g*each+k)))
			}
		}()
	}
	wg.Wait()
	if h, a := r.Count("t", v); h != goroutines*each || a != goroutines*each-1 {
		t.Fatalf("%d hits, last access %d; want %d, %d", h, a, goroutines*each, goroutines*each-1)
	}
}

// FuzzDecodeCount: counts come from peers: never panic, and what decodes
// re-encodes to the same count.
func FuzzDecodeCount(f *testing.F) {
	f.Add(encodeCount(Count{ID: 42, Hits: 3, Access: 1_700_000_000_000}))
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeCount(b)
		if err != nil {
			return
		}
		if c2, err := decodeCount(encodeCount(c)); err != nil || c2 != c {
			t.Fatalf("does not round-trip: %+v vs %+v (%v)", c, c2, err)
		}
	})
}

func BenchmarkReadsHit(b *testing.B) {
	r := NewReads("a")
	r.resolved("t", value("x", 0), true)
	now := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r.Hit("t", now)
		}
	})
}
