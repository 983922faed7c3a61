package main

import (
	"math"
	"math/bits"
	"time"
)

// Latency histogram: log-linear buckets (HDR-histogram style). Values below 2^subBits
// get one bucket each; above that every power-of-two range is split into 2^subBits
// equal buckets, so a bucket's width is at most 1/2^subBits (0.8%) of its value and
// the reported midpoint is within 0.4% of any value in it. Recording is one index
// computation and one increment: cheap enough for the subscriber's read loop.
const (
	subBits    = 7
	subCount   = 1 << subBits
	maxExp     = 36 // values are clamped below 2^(maxExp+subBits) ns, about 2.4 hours
	numBuckets = (maxExp + 1) * subCount
	maxValueNs = uint64(1)<<(maxExp+subBits) - 1
)

// histogram records latencies in nanoseconds. It is not safe for concurrent use: each
// subscriber owns one and the run merges them once the subscribers have stopped.
type histogram struct {
	counts [numBuckets]uint64
	n      uint64
	sum    float64
	min    uint64
	max    uint64
}

// bucketOf returns the bucket index of v (v <= maxValueNs).
func bucketOf(v uint64) int {
	if v < subCount {
		return int(v)
	}
	e := bits.Len64(v) - subBits - 1 // v>>e is in [subCount, 2*subCount)
	return (e+1)*subCount + int(v>>uint(e)) - subCount
}

// bucketRange returns the smallest value of bucket i and the bucket's width.
func bucketRange(i int) (low, width uint64) {
	if i < subCount {
		return uint64(i), 1
	}
	e := i/subCount - 1
	m := uint64(i%subCount + subCount)
	return m << uint(e), 1 << uint(e)
}

// record adds one latency. Negative values (clock reads cannot go backwards on the
// monotonic clock, but a corrupted payload can carry anything) are recorded as 0.
func (h *histogram) record(d time.Duration) {
	v := uint64(0)
	if d > 0 {
		v = uint64(d)
	}
	if v > maxValueNs {
		v = maxValueNs
	}
	h.counts[bucketOf(v)]++
	if h.n == 0 || v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.n++
	h.sum += float64(v)
}

// merge adds all of o's samples to h.
func (h *histogram) merge(o *histogram) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	if o.max > h.max {
		h.max = o.max
	}
	h.n += o.n
	h.sum += o.sum
}

// quantile returns the nearest-rank q-quantile (0 < q <= 1): the value below or at
// which ceil(q*n) samples lie, as the midpoint of its bucket, clamped to the exact
// observed min and max. It returns 0 for an empty histogram.
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	if rank < 1 {
		rank = 1
	}
	if rank > h.n {
		rank = h.n
	}
	var cum uint64
	for i, c := range h.counts {
		cum += c
		if cum < rank {
			continue
		}
		low, width := bucketRange(i)
		v := low + width/2
		if v < h.min {
			v = h.min
		}
		if v > h.max {
			v = h.max
		}
		return time.Duration(v)
	}
	return time.Duration(h.max)
}

// mean returns the exact arithmetic mean, 0 for an empty histogram.
func (h *histogram) mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.sum / float64(h.n))
}

// maxSeqTracked bounds the memory of a seqTracker: 2^27 sequence numbers per pair is
// 16 MiB of bitmap. A sequence number at or above it is treated as foreign.
const maxSeqTracked = 1 << 27

// seqTracker follows the sequence numbers that one subscriber receives from its
// publisher (numbers start at 0 and increase by one per message). It detects
// duplicates exactly (a bitmap of everything seen) and counts as out of order every
// first arrival of a number smaller than the highest seen so far. Loss is known only
// at the end, when the publisher's count is known: lost = published - unique.
// Not safe for concurrent use.
type seqTracker struct {
	seen      []uint64 // bitmap, grows as higher numbers arrive
	next      uint64   // highest number seen + 1
	unique    uint64
	dups      uint64
	reordered uint64
	foreign   uint64 // numbers out of the tracked range
}

// observe records the arrival of seq and reports whether it is the first arrival
// of that number.
func (t *seqTracker) observe(seq uint64) bool {
	if seq >= maxSeqTracked {
		t.foreign++
		return false
	}
	word, bit := seq/64, uint64(1)<<(seq%64)
	if word >= uint64(len(t.seen)) {
		n := uint64(len(t.seen)) * 2
		if n <= word {
			n = word + 1
		}
		if n < 64 {
			n = 64
		}
		grown := make([]uint64, n)
		copy(grown, t.seen)
		t.seen = grown
	}
	if t.seen[word]&bit != 0 {
		t.dups++
		return false
	}
	t.seen[word] |= bit
	t.unique++
	if seq+1 < t.next {
		t.reordered++
		return true
	}
	t.next = seq + 1
	return true
}

// lost returns how many of the published messages (numbers 0..published-1) never
// arrived. Numbers at or above published that did arrive (cannot happen with a
// correct publisher count) are not subtracted twice: only numbers below published count.
func (t *seqTracker) lost(published uint64) uint64 {
	if published > maxSeqTracked {
		published = maxSeqTracked
	}
	var have uint64
	full := published / 64
	for i := uint64(0); i < full && i < uint64(len(t.seen)); i++ {
		have += uint64(bits.OnesCount64(t.seen[i]))
	}
	if rem := published % 64; rem != 0 && full < uint64(len(t.seen)) {
		have += uint64(bits.OnesCount64(t.seen[full] & (uint64(1)<<rem - 1)))
	}
	return published - have
}
