package rendezvous

import (
	"fmt"
	"math"
	"slices"
	"testing"
)

func nodeNames(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("node-%d", i)
	}
	return out
}

// TestGolden pins concrete answers: every node of a cluster must compute the
// same leader, so these values are part of the wire protocol.
func TestGolden(t *testing.T) {
	nodes := []string{"alpha", "bravo", "charlie", "delta"}
	tests := []struct {
		key  string
		want []string
	}{
		{"client-1", []string{"delta", "alpha", "charlie", "bravo"}},
		{"", []string{"charlie", "alpha", "bravo", "delta"}},
		{"sensor/42", []string{"charlie", "delta", "alpha", "bravo"}},
	}
	for _, tc := range tests {
		if got := Rank(tc.key, nodes); !slices.Equal(got, tc.want) {
			t.Errorf("Rank(%q) = %q, want %q", tc.key, got, tc.want)
		}
	}
	if got, want := Weight("client-1", "alpha"), uint64(0x59002b9be9ae08d3); got != want {
		t.Errorf("Weight = %#x, want %#x", got, want)
	}
}

func TestPickEdgeCases(t *testing.T) {
	if got := Pick("k", nil); got != "" {
		t.Fatalf("Pick on no nodes = %q", got)
	}
	if got := Pick("k", []string{"only"}); got != "only" {
		t.Fatalf("Pick on one node = %q", got)
	}
	if got := Rank("k", nil); len(got) != 0 {
		t.Fatalf("Rank on no nodes = %q", got)
	}
	// Order and duplicates of the input do not change the answer.
	nodes := nodeNames(7)
	for i := 0; i < 200; i++ {
		key := fmt.Sprintf("k%d", i)
		want := Pick(key, nodes)
		rev := slices.Clone(nodes)
		slices.Reverse(rev)
		if got := Pick(key, append(rev, rev...)); got != want {
			t.Fatalf("Pick(%q) depends on order: %q vs %q", key, got, want)
		}
		if r := Rank(key, nodes); r[0] != want || len(r) != len(nodes) {
			t.Fatalf("Rank(%q)[0] = %q, Pick = %q", key, r[0], want)
		}
	}
}

func TestSeparatorAvoidsConcatCollisions(t *testing.T) {
	if Weight("bc", "a") == Weight("c", "ab") {
		t.Fatal("node/key boundary not part of the hash")
	}
}

func TestBalance(t *testing.T) {
	const keys = 60000
	for _, n := range []int{3, 5, 10} {
		nodes := nodeNames(n)
		counts := map[string]int{}
		for i := 0; i < keys; i++ {
			counts[Pick(fmt.Sprintf("client-%d", i), nodes)]++
		}
		mean := float64(keys) / float64(n)
		// Binomial std dev is sqrt(keys*p*(1-p)) ~ 1% of mean here; allow 5%.
		for node, c := range counts {
			if dev := math.Abs(float64(c)-mean) / mean; dev > 0.05 {
				t.Errorf("%d nodes: %s got %d keys, %.1f%% off the mean %.0f", n, node, c, dev*100, mean)
			}
		}
		if len(counts) != n {
			t.Errorf("%d nodes: only %d received keys", n, len(counts))
		}
	}
}

func TestMinimalDisruption(t *testing.T) {
	const keys = 20000
	nodes := nodeNames(6)
	before := make([]string, keys)
	for i := range before {
		before[i] = Pick(fmt.Sprintf("k%d", i), nodes)
	}

	t.Run("remove", func(t *testing.T) {
		gone := nodes[2]
		rest := slices.Delete(slices.Clone(nodes), 2, 3)
		for i, was := range before {
			key := fmt.Sprintf("k%d", i)
			now := Pick(key, rest)
			if was != gone && now != was {
				t.Fatalf("key %s moved from surviving %s to %s", key, was, now)
			}
			if was == gone && now != Rank(key, nodes)[1] {
				t.Fatalf("key %s of removed node went to %s, not its runner-up", key, now)
			}
		}
	})

	t.Run("add", func(t *testing.T) {
		added := append(slices.Clone(nodes), "node-new")
		moved := 0
		for i, was := range before {
			now := Pick(fmt.Sprintf("k%d", i), added)
			if now != was {
				if now != "node-new" {
					t.Fatalf("key k%d moved between old nodes %s -> %s", i, was, now)
				}
				moved++
			}
		}
		frac, want := float64(moved)/keys, 1.0/7
		if math.Abs(frac-want) > 0.02 {
			t.Fatalf("adding 1 of 7 nodes moved %.3f of keys, want about %.3f", frac, want)
		}
	})
}

func BenchmarkPick5(b *testing.B) {
	nodes := nodeNames(5)
	for i := 0; b.Loop(); i++ {
		Pick("client-123456", nodes)
	}
}
