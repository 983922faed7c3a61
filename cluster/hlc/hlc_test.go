package hlc

import (
	"bytes"
	"errors"
	"math"
	"sync"
	"testing"
	"time"
)

// fakeWall is a settable wall clock.
type fakeWall struct {
	mu sync.Mutex
	t  time.Time
}

func (f *fakeWall) now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

func (f *fakeWall) set(ms int64) {
	f.mu.Lock()
	f.t = time.UnixMilli(ms)
	f.mu.Unlock()
}

func TestCompare(t *testing.T) {
	tests := []struct {
		a, b Timestamp
		want int
	}{
		{Timestamp{}, Timestamp{}, 0},
		{Timestamp{}, Timestamp{Logical: 1}, -1},
		{Timestamp{Wall: 5}, Timestamp{Wall: 4, Logical: 9}, 1},
		{Timestamp{Wall: 5, Logical: 2}, Timestamp{Wall: 5, Logical: 3}, -1},
		{Timestamp{Wall: 5, Logical: 3}, Timestamp{Wall: 5, Logical: 3}, 0},
	}
	for _, tc := range tests {
		if got := tc.a.Compare(tc.b); got != tc.want {
			t.Errorf("%v.Compare(%v) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
		if got := tc.b.Compare(tc.a); got != -tc.want {
			t.Errorf("%v.Compare(%v) = %d, want %d", tc.b, tc.a, got, -tc.want)
		}
		if tc.a.Less(tc.b) != (tc.want < 0) {
			t.Errorf("%v.Less(%v) wrong", tc.a, tc.b)
		}
	}
	if got := (Timestamp{Wall: 1, Logical: math.MaxUint32}).Next(); got != (Timestamp{Wall: 2}) {
		t.Errorf("Next at the logical limit = %v", got)
	}
	if !(Timestamp{}).IsZero() || (Timestamp{Logical: 1}).IsZero() {
		t.Error("IsZero")
	}
}

// TestClock drives one clock through a script of wall readings and
// observations; each step names what Now must return.
func TestClock(t *testing.T) {
	type step struct {
		wall    int64     // wall clock before the step
		observe Timestamp // observed before Now, if not zero
		want    Timestamp // what Now returns
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"wall advances", []step{
			{wall: 100, want: Timestamp{100, 0}},
			{wall: 101, want: Timestamp{101, 0}},
			{wall: 250, want: Timestamp{250, 0}},
		}},
		{"same millisecond counts", []step{
			{wall: 100, want: Timestamp{100, 0}},
			{wall: 100, want: Timestamp{100, 1}},
			{wall: 100, want: Timestamp{100, 2}},
			{wall: 101, want: Timestamp{101, 0}},
		}},
		{"wall steps back", []step{
			{wall: 100, want: Timestamp{100, 0}},
			{wall: 40, want: Timestamp{100, 1}},
			{wall: 99, want: Timestamp{100, 2}},
			{wall: 101, want: Timestamp{101, 0}},
		}},
		// A node 5 s behind that saw a stamp of a node 5 s ahead orders
		// its next event after it: the reason for the clock.
		{"observed from a faster clock", []step{
			{wall: 1000, want: Timestamp{1000, 0}},
			{wall: 1001, observe: Timestamp{11000, 0}, want: Timestamp{11000, 1}},
			{wall: 2000, want: Timestamp{11000, 2}},
			{wall: 11001, want: Timestamp{11001, 0}},
		}},
		{"observed from a slower clock", []step{
			{wall: 5000, observe: Timestamp{10, 7}, want: Timestamp{5000, 0}},
		}},
		{"observed equal wall", []step{
			{wall: 5000, observe: Timestamp{5000, 7}, want: Timestamp{5000, 8}},
		}},
		// Never the zero ("unknown") stamp.
		{"wall before 1970", []step{
			{wall: -5, want: Timestamp{0, 1}},
			{wall: -5, want: Timestamp{0, 2}},
		}},
		{"observed stamp beyond MaxWall is ignored", []step{
			{wall: 7, observe: Timestamp{MaxWall + 1, 0}, want: Timestamp{7, 0}},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := &fakeWall{}
			c := New(w.now)
			var prev Timestamp
			for i, s := range tc.steps {
				w.set(s.wall)
				if !s.observe.IsZero() {
					c.Observe(s.observe)
				}
				got := c.Now()
				if got != s.want {
					t.Fatalf("step %d: Now() = %v, want %v", i, got, s.want)
				}
				if !prev.Less(got) {
					t.Fatalf("step %d: %v does not follow %v", i, got, prev)
				}
				if c.Last() != got {
					t.Fatalf("step %d: Last() = %v, want %v", i, c.Last(), got)
				}
				prev = got
			}
		})
	}
}

// TestClockConcurrent: stamps issued concurrently are all distinct.
func TestClockConcurrent(t *testing.T) {
	c := New(func() time.Time { return time.UnixMilli(42) })
	const workers, each = 4, 500
	var mu sync.Mutex
	seen := map[Timestamp]bool{}
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				ts := c.Now()
				mu.Lock()
				if seen[ts] {
					t.Errorf("stamp %v issued twice", ts)
				}
				seen[ts] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(seen) != workers*each {
		t.Fatalf("%d distinct stamps, want %d", len(seen), workers*each)
	}
}

func TestCodec(t *testing.T) {
	for _, ts := range []Timestamp{{}, {1, 0}, {1730000000000, 3}, {MaxWall, math.MaxUint32}} {
		b := ts.AppendBinary([]byte{0xAA})
		got, n, err := Decode(b[1:])
		if err != nil || got != ts || n != len(b)-1 {
			t.Fatalf("%v: decoded %v, %d bytes, %v", ts, got, n, err)
		}
	}
	bad := map[string][]byte{
		"empty":            nil,
		"truncated wall":   {0x80},
		"no logical":       {0x01},
		"wall too large":   binaryOf(MaxWall+1, 0),
		"logical too wide": binaryOf(1, math.MaxUint32+1),
	}
	for name, b := range bad {
		if ts, _, err := Decode(b); err == nil || !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: decoded %v, err %v", name, ts, err)
		}
	}
}

func binaryOf(wall, logical uint64) []byte {
	var b []byte
	b = appendUvarint(b, wall)
	return appendUvarint(b, logical)
}

func appendUvarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

// FuzzDecode: Decode never panics, and what it accepts re-encodes to a
// prefix that decodes to the same value (non-minimal varints round-trip
// by value).
func FuzzDecode(f *testing.F) {
	f.Add(Timestamp{1730000000000, 3}.AppendBinary(nil))
	f.Add([]byte{0, 0})
	f.Add([]byte{0x80, 0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		ts, n, err := Decode(b)
		if err != nil {
			return
		}
		if n <= 0 || n > len(b) {
			t.Fatalf("read %d of %d bytes", n, len(b))
		}
		enc := ts.AppendBinary(nil)
		again, m, err := Decode(enc)
		if err != nil || again != ts || m != len(enc) {
			t.Fatalf("round trip of %v: %v, %d, %v", ts, again, m, err)
		}
		if len(enc) == n && !bytes.Equal(enc, b[:n]) {
			t.Fatalf("minimal encoding differs: %x vs %x", enc, b[:n])
		}
	})
}
