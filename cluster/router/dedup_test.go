package router

import "testing"

// naive is the reference: a set of every id, and the same rule for ids
// below the window.
func TestDedupMatchesNaiveTwin(t *testing.T) {
	var d dedup
	seen := map[uint64]bool{}
	base := uint64(1_000_000)
	low := base // the window's lower bound as the naive twin tracks it
	ids := []uint64{base, base, base + 1, base + 5, base + 1, base + window - 1, base + window, base + 3, base + window + 10, base + 2}
	for i := range 3000 {
		ids = append(ids, base+uint64(i*37%(3*window)), base+uint64(i*53%window))
	}
	for _, id := range ids {
		var want bool
		switch {
		case id < low:
			want = true
		default:
			want = !seen[id]
			seen[id] = true
			if id >= low+window {
				low = id - window + 1
			}
		}
		if got := d.first("o", id); got != want {
			t.Fatalf("id %d (window from %d): first = %v, want %v", id, low, got, want)
		}
	}
	if !d.first("other", base) {
		t.Fatal("origins are not separate")
	}
}
