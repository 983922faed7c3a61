package partition

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

func members(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("node-%d", i+1)
	}
	return out
}

// naive is the reference assignment, written the slow obvious way: for
// every partition and rank, the members by descending score, the first
// one not already holding the partition and under the cap of that rank.
func naive(ms []string, count, backups int) [][]string {
	ms = slices.Compact(slices.Sorted(slices.Values(ms)))
	limit := int(math.Ceil(1.25 * float64(count) / float64(len(ms))))
	held := map[[2]string]int{} // (rank, member) -> count
	out := make([][]string, count)
	for p := range count {
		cand := slices.Clone(ms)
		slices.SortStableFunc(cand, func(a, b string) int {
			sa, sb := score(ID(p), a), score(ID(p), b)
			if sa != sb {
				if sa > sb {
					return -1
				}
				return 1
			}
			if a < b {
				return -1
			}
			return 1
		})
		var r []string
		for rank := range min(len(ms), backups+1) {
			key := fmt.Sprint(rank)
			var free, any []string
			for _, c := range cand {
				if slices.Contains(r, c) {
					continue
				}
				any = append(any, c)
				if held[[2]string{key, c}] < limit {
					free = append(free, c)
				}
			}
			pick := any[0]
			if len(free) > 0 {
				pick = free[0]
			}
			held[[2]string{key, pick}]++
			r = append(r, pick)
		}
		out[p] = r
	}
	return out
}

func TestComputeMatchesNaiveTwin(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 50 {
		n, b := 1+rng.IntN(9), rng.IntN(3)
		ms := members(n)
		rng.Shuffle(len(ms), func(i, j int) { ms[i], ms[j] = ms[j], ms[i] })
		got := Compute(append(ms, ms[0]), DefaultCount, b) // order and duplicates do not matter
		want := naive(ms, DefaultCount, b)
		for p := range DefaultCount {
			if !slices.Equal(got.Replicas[p], want[p]) {
				t.Fatalf("n=%d b=%d partition %d: %v, want %v", n, b, p, got.Replicas[p], want[p])
			}
		}
	}
}

// TestFewMovesOnJoinAndLeave: a member joining takes about its share of
// partitions, and (the load bound aside) nothing else changes place; a
// member leaving is the reverse.
func TestFewMovesOnJoinAndLeave(t *testing.T) {
	for _, n := range []int{2, 3, 5, 9, 20, 49} {
		for _, b := range []int{0, 1, 2} {
			before := Compute(members(n), DefaultCount, b)
			after := Compute(members(n+1), DefaultCount, b)
			joiner := fmt.Sprintf("node-%d", n+1)
			moved, elsewhere := 0, 0
			for p := range DefaultCount {
				if slices.Equal(before.Replicas[p], after.Replicas[p]) {
					continue
				}
				moved++
				if after.Role(ID(p), joiner) == None {
					elsewhere++ // a member at its load bound shifted one
				}
			}
			share := float64(DefaultCount*min(n+1, b+1)) / float64(n+1)
			if float64(moved) > 3*share+3 || elsewhere > DefaultCount/10 {
				t.Errorf("%d -> %d members, %d backups: %d partitions changed (a fair share is %.0f), %d without the joiner",
					n, n+1, b, moved, share, elsewhere)
			}
		}
	}
}

func TestBalance(t *testing.T) {
	for _, n := range []int{2, 3, 5, 10, 50} {
		tb := Compute(members(n), DefaultCount, 1)
		mean := float64(DefaultCount) / float64(n)
		limit := int(math.Ceil(1.25 * mean))
		owned := tb.Owned()
		for _, m := range tb.Members {
			if k := owned[m]; k < 1 || k > limit {
				t.Errorf("%d members: %s owns %d, mean %.1f, at most %d", n, m, k, mean, limit)
			}
		}
		for p := range DefaultCount {
			r := tb.Replicas[p]
			if len(r) != min(2, n) || (len(r) == 2 && r[0] == r[1]) {
				t.Fatalf("%d members: partition %d replicas %v", n, p, r)
			}
		}
	}
}

func TestOfIsStable(t *testing.T) {
	// Part of the protocol: these must never change.
	for key, want := range map[string]ID{"": 244, "a": 49, "user:42": 159} {
		if got := Of([]byte(key), DefaultCount); got != want {
			t.Errorf("Of(%q) = %d, want %d", key, got, want)
		}
	}
	if Compute(nil, 3, 1).Owner(0) != "" {
		t.Error("an empty cluster has an owner")
	}
}
