package main

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// naiveQuantile is the nearest-rank quantile of a sorted copy: the twin the
// histogram is checked against.
func naiveQuantile(xs []uint64, q float64) uint64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	rank := int(math.Ceil(q * float64(len(s))))
	rank = max(1, min(rank, len(s)))
	return s[rank-1]
}

func TestBucketRoundTrip(t *testing.T) {
	// Every value falls inside the range of its own bucket, and buckets are ordered.
	rng := rand.New(rand.NewPCG(1, 2))
	vals := []uint64{0, 1, 127, 128, 129, 255, 256, 257, 1000, 1 << 20, maxValueNs}
	for i := 0; i < 10000; i++ {
		vals = append(vals, rng.Uint64N(maxValueNs+1)>>rng.UintN(40))
	}
	prevIdx, prevVal := -1, uint64(0)
	slices.Sort(vals)
	for _, v := range vals {
		i := bucketOf(v)
		if i < 0 || i >= numBuckets {
			t.Fatalf("bucketOf(%d) = %d, out of [0,%d)", v, i, numBuckets)
		}
		low, width := bucketRange(i)
		if v < low || v >= low+width {
			t.Fatalf("value %d in bucket %d = [%d,%d)", v, i, low, low+width)
		}
		if v >= 128 && float64(width) > float64(low)/float64(subCount)+1 {
			t.Fatalf("bucket %d width %d too coarse for %d", i, width, low)
		}
		if i < prevIdx {
			t.Fatalf("bucketOf not monotonic: %d -> %d, %d -> %d", prevVal, prevIdx, v, i)
		}
		prevIdx, prevVal = i, v
	}
}

func TestHistogramQuantilesMatchSort(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	tests := []struct {
		name string
		gen  func() uint64
		n    int
	}{
		{"uniform-us", func() uint64 { return 1000 + rng.Uint64N(9000) }, 5000},
		{"lognormal-ms", func() uint64 { return uint64(math.Exp(rng.NormFloat64()*1.5+14)) + 1 }, 20000},
		{"tiny", func() uint64 { return rng.Uint64N(300) }, 1000},
		{"single", func() uint64 { return 123456 }, 1},
		{"two-modes", func() uint64 {
			if rng.IntN(100) < 95 {
				return 200_000 + rng.Uint64N(10_000)
			}
			return 50_000_000 + rng.Uint64N(1_000_000)
		}, 10000},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var h histogram
			xs := make([]uint64, tc.n)
			for i := range xs {
				xs[i] = tc.gen()
				h.record(time.Duration(xs[i]))
			}
			for _, q := range []float64{0.01, 0.5, 0.9, 0.99, 0.999, 1} {
				want := float64(naiveQuantile(xs, q))
				got := float64(h.quantile(q))
				if math.Abs(got-want) > want/float64(subCount)+1 {
					t.Errorf("q%.3f = %.0f, sorted says %.0f (more than 1/%d off)", q, got, want, subCount)
				}
			}
			if h.max != slices.Max(xs) || h.min != slices.Min(xs) {
				t.Errorf("min/max = %d/%d, want %d/%d", h.min, h.max, slices.Min(xs), slices.Max(xs))
			}
		})
	}
}

func TestHistogramEdges(t *testing.T) {
	var h histogram
	if h.quantile(0.5) != 0 || h.mean() != 0 {
		t.Fatal("empty histogram must report 0")
	}
	h.record(-5 * time.Second) // a corrupt timestamp must not panic or wrap
	h.record(100 * 24 * time.Hour)
	if h.min != 0 || h.max != maxValueNs {
		t.Fatalf("clamping: min %d max %d", h.min, h.max)
	}
	var a, b histogram
	for i := 1; i <= 100; i++ {
		a.record(time.Duration(i) * time.Microsecond)
		b.record(time.Duration(i+100) * time.Microsecond)
	}
	a.merge(&b)
	a.merge(&histogram{}) // merging an empty one changes nothing
	if a.n != 200 || a.min != 1000 || a.max != 200_000 {
		t.Fatalf("merged n=%d min=%d max=%d", a.n, a.min, a.max)
	}
	if got := a.quantile(0.5); got < 99*time.Microsecond || got > 101*time.Microsecond {
		t.Fatalf("merged median %s, want ~100µs", got)
	}
	if got := a.mean(); got != time.Duration(100.5*1000) {
		t.Fatalf("merged mean %s", got)
	}
}

func TestSeqTracker(t *testing.T) {
	tests := []struct {
		name                              string
		arrivals                          []uint64
		published                         uint64
		unique, dups, reordered, lost, fg uint64
	}{
		{"in order", []uint64{0, 1, 2, 3}, 4, 4, 0, 0, 0, 0},
		{"nothing arrived", nil, 3, 0, 0, 0, 3, 0},
		{"tail lost", []uint64{0, 1}, 4, 2, 0, 0, 2, 0},
		{"gap lost", []uint64{0, 2, 3}, 4, 3, 0, 0, 1, 0},
		{"duplicate", []uint64{0, 1, 1, 2}, 3, 3, 1, 0, 0, 0},
		{"duplicate of old", []uint64{0, 1, 2, 0}, 3, 3, 1, 0, 0, 0},
		{"reordered", []uint64{0, 2, 1, 3}, 4, 4, 0, 1, 0, 0},
		{"late and dup", []uint64{1, 0, 0}, 2, 2, 1, 1, 0, 0},
		{"foreign huge seq", []uint64{0, maxSeqTracked, 1}, 2, 2, 0, 0, 0, 1},
		{"beyond word boundary", []uint64{63, 64, 65, 200}, 201, 4, 0, 0, 197, 0},
		{"published exactly 64", seqRange(0, 64), 64, 64, 0, 0, 0, 0},
		{"arrival above published not subtracted", []uint64{0, 5}, 2, 2, 0, 0, 1, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var s seqTracker
			for _, a := range tc.arrivals {
				s.observe(a)
			}
			if s.unique != tc.unique || s.dups != tc.dups || s.reordered != tc.reordered || s.foreign != tc.fg {
				t.Errorf("unique %d dups %d reordered %d foreign %d, want %d %d %d %d",
					s.unique, s.dups, s.reordered, s.foreign, tc.unique, tc.dups, tc.reordered, tc.fg)
			}
			if got := s.lost(tc.published); got != tc.lost {
				t.Errorf("lost(%d) = %d, want %d", tc.published, got, tc.lost)
			}
		})
	}
}

func seqRange(from, to uint64) []uint64 {
	var s []uint64
	for i := from; i < to; i++ {
		s = append(s, i)
	}
	return s
}

// TestSeqTrackerMatchesNaive replays random arrival streams (drops, duplicates,
// swaps) through the tracker and a map-based twin.
func TestSeqTrackerMatchesNaive(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 5))
	for round := 0; round < 200; round++ {
		published := uint64(rng.IntN(3000))
		var arrivals []uint64
		for i := uint64(0); i < published; i++ {
			switch r := rng.IntN(100); {
			case r < 5: // dropped
			case r < 10:
				arrivals = append(arrivals, i, i)
			default:
				arrivals = append(arrivals, i)
			}
		}
		for i := 0; i+1 < len(arrivals); i++ {
			if rng.IntN(100) < 3 {
				arrivals[i], arrivals[i+1] = arrivals[i+1], arrivals[i]
			}
		}
		var s seqTracker
		seen := map[uint64]bool{}
		var dups, reordered, high uint64
		for _, a := range arrivals {
			s.observe(a)
			switch {
			case seen[a]:
				dups++
			case a+1 < high:
				reordered++
				seen[a] = true
			default:
				seen[a] = true
				high = a + 1
			}
		}
		if s.unique != uint64(len(seen)) || s.dups != dups || s.reordered != reordered {
			t.Fatalf("round %d: tracker %d/%d/%d, naive %d/%d/%d", round, s.unique, s.dups, s.reordered, len(seen), dups, reordered)
		}
		if got, want := s.lost(published), published-uint64(len(seen)); got != want {
			t.Fatalf("round %d: lost %d, naive %d", round, got, want)
		}
	}
}
