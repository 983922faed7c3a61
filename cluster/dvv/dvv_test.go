package dvv

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// show renders a set as dvvset.erl prints its entries, e.g.
// "[a,2,[v2]] [b,1,[]]", so expectations read like the paper's examples.
func show(s Set[string]) string {
	parts := make([]string, 0, len(s.entries))
	for _, e := range s.entries {
		parts = append(parts, fmt.Sprintf("[%s,%d,[%s]]", e.node, e.counter, strings.Join(e.values, ",")))
	}
	return strings.Join(parts, " ")
}

// The cases mirror dvvset.erl's eunit tests (update_test, sync_test,
// sync_update_test, event_test), translated to writes that are always dotted.
func TestKnownAnswers(t *testing.T) {
	a0 := New("a", "v1")
	a1 := a0.Update(a0.Context(), "a", "v2")
	a2 := a1.Update(a1.Context(), "b", "v3")
	a3 := a1.Update(a0.Context(), "b", "v4")
	a4 := a1.Update(a0.Context(), "a", "v5")
	// Mary writes v1 then v2 blind; Peter writes v3 having read v1 only.
	m0 := New("a", "v1")
	vv1 := m0.Context()
	m1 := m0.Update(nil, "a", "v2")
	m2 := m1.Update(vv1, "a", "v3")
	// dvvset's X = {[{x,1,[]}],[]}: history without values.
	x := contextSet[string](VersionVector{{"x", 1}})
	w := contextSet[string](VersionVector{{"a", 1}})
	z := Set[string]{entries: []entry[string]{{node: "a", counter: 2, values: []string{"v2", "v1"}}}}
	s3 := a1.Update(a1.Context(), "b", "v3")
	s4 := a1.Update(a1.Context(), "c", "v3")

	tests := []struct {
		name string
		got  Set[string]
		want string
	}{
		{"new", a0, "[a,1,[v1]]"},
		{"overwrite", a1, "[a,2,[v2]]"},
		{"other node overwrites", a2, "[a,2,[]] [b,1,[v3]]"},
		{"stale context keeps sibling", a3, "[a,2,[v2]] [b,1,[v4]]"},
		{"stale context same node", a4, "[a,3,[v5,v2]]"},
		{"blind write keeps sibling", m1, "[a,2,[v2,v1]]"},
		{"read v1 supersedes v1 only", m2, "[a,3,[v3,v2]]"},
		{"sync W Z", Sync(w, z), "[a,2,[v2]]"},
		{"sync Z W", Sync(z, w), "[a,2,[v2]]"},
		{"sync concurrent", Sync(s4, s3), "[a,2,[]] [b,1,[v3]] [c,1,[v3]]"},
		{"sync with history only", Sync(x, a0), "[a,1,[v1]] [x,1,[]]"},
		{"event other node", a0.Update(nil, "b", "v2"), "[a,1,[v1]] [b,1,[v2]]"},
		{"event inserted first", New("b", "v1").Update(nil, "a", "v2"), "[a,1,[v2]] [b,1,[v1]]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := show(tc.got); got != tc.want {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
		})
	}
}

func TestLessEqual(t *testing.T) {
	a := New("a", "v1")
	b := a.Update(a.Context(), "b", "v2")
	c := a.Update(nil, "c", "v3")
	tests := []struct {
		name        string
		x, y        Set[string]
		less, equal bool
	}{
		{"empty vs empty", Set[string]{}, Set[string]{}, false, true},
		{"empty < a", Set[string]{}, a, true, false},
		{"a < b", a, b, true, false},
		{"b not < a", b, a, false, false},
		{"concurrent b c", b, c, false, false},
		{"concurrent c b", c, b, false, false},
		{"equal to itself", b, b, false, true},
		{"same clock fewer values differs", contextSet[string](b.Context()), b, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Less(tc.x, tc.y); got != tc.less {
				t.Errorf("Less = %v, want %v", got, tc.less)
			}
			if got := Equal(tc.x, tc.y); got != tc.equal {
				t.Errorf("Equal = %v, want %v", got, tc.equal)
			}
			if tc.equal && tc.x.Fingerprint() != tc.y.Fingerprint() {
				t.Errorf("equal sets with different fingerprints")
			}
		})
	}
}

func TestUpdateAtLeast(t *testing.T) {
	a := New("a", "v1")
	tests := []struct {
		name string
		got  Set[string]
		want string
	}{
		{"floor on first write", Set[string]{}.UpdateAtLeast(nil, "a", 1000, "v"), "[a,1000,[v]]"},
		{"floor with full context", a.UpdateAtLeast(a.Context(), "a", 1000, "v2"), "[a,1000,[v2]]"},
		{"floor below next counter", a.UpdateAtLeast(a.Context(), "a", 1, "v2"), "[a,2,[v2]]"},
		// The node's own v1 is not covered: dots must stay consecutive.
		{"floor ignored with own sibling", a.UpdateAtLeast(nil, "a", 1000, "v2"), "[a,2,[v2,v1]]"},
		{"floor for other node", a.UpdateAtLeast(nil, "b", 50, "v2"), "[a,1,[v1]] [b,50,[v2]]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := show(tc.got); got != tc.want {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
		})
	}
}

func TestUpdateUnsortedContext(t *testing.T) {
	s := New("a", "v1").Update(nil, "b", "v2")
	ctx := VersionVector{{"b", 1}, {"a", 1}, {"b", 0}, {"", 3}}
	if got := show(s.Update(ctx, "c", "v3")); got != "[a,1,[]] [b,1,[]] [c,1,[v3]]" {
		t.Fatalf("got %s", got)
	}
}

func TestImmutability(t *testing.T) {
	a := New("a", "v1").Update(nil, "a", "v2")
	before := show(a)
	_ = a.Update(a.Context(), "a", "v3")
	_ = a.Update(nil, "b", "v4")
	_ = Sync(a, New("a", "x"))
	vals := a.Values()
	vals[0] = "mutated"
	if got := show(a); got != before {
		t.Fatalf("set changed from %s to %s", before, got)
	}
}

// model is the naive twin of a Set: an explicit history (version vector as
// a map) and an explicit map from dot to value. Its operations follow the
// definitions in the paper directly.
type model struct {
	seen map[string]uint64
	vals map[Dot]string
}

func newModel() model { return model{seen: map[string]uint64{}, vals: map[Dot]string{}} }

func (m model) update(ctx map[string]uint64, node string, v string) model {
	c := newModel()
	for k, n := range m.seen {
		c.seen[k] = n
	}
	for k, n := range ctx {
		c.seen[k] = max(c.seen[k], n)
	}
	for d, val := range m.vals {
		if d.Counter > ctx[d.Node] {
			c.vals[d] = val
		}
	}
	c.seen[node]++
	c.vals[Dot{node, c.seen[node]}] = v
	return c
}

func syncModel(a, b model) model {
	c := newModel()
	for k, n := range a.seen {
		c.seen[k] = n
	}
	for k, n := range b.seen {
		c.seen[k] = max(c.seen[k], n)
	}
	for d, v := range a.vals {
		if _, both := b.vals[d]; both || d.Counter > b.seen[d.Node] {
			c.vals[d] = v
		}
	}
	for d, v := range b.vals {
		if _, both := a.vals[d]; both || d.Counter > a.seen[d.Node] {
			c.vals[d] = v
		}
	}
	return c
}

func checkModel(t *testing.T, what string, s Set[string], m model) {
	t.Helper()
	vv := s.Context()
	if len(vv) != len(m.seen) {
		t.Fatalf("%s: context %v, model %v", what, vv, m.seen)
	}
	for _, c := range vv {
		if m.seen[c.Node] != c.Counter {
			t.Fatalf("%s: context %v, model %v", what, vv, m.seen)
		}
	}
	ds := s.Dotted()
	if len(ds) != len(m.vals) {
		t.Fatalf("%s: values %v, model %v", what, ds, m.vals)
	}
	for _, d := range ds {
		if v, ok := m.vals[d.Dot]; !ok || v != d.Value {
			t.Fatalf("%s: values %v, model %v", what, ds, m.vals)
		}
	}
}

func ctxMap(vv VersionVector) map[string]uint64 {
	m := map[string]uint64{}
	for _, c := range vv {
		m[c.Node] = c.Counter
	}
	return m
}

// replicas runs a random history of one key on a few replicas (writes with
// fresh or stale contexts, pairwise syncs) and checks every state against
// the model. It returns the sets produced so property tests can combine them.
func replicas(t *testing.T, rng *rand.Rand, steps int) []Set[string] {
	t.Helper()
	return history(rng, steps, func(what string, s Set[string], m model) { checkModel(t, what, s, m) })
}

// history is replicas without checks; check may be nil.
func history(rng *rand.Rand, steps int, check func(what string, s Set[string], m model)) []Set[string] {
	nodes := []string{"a", "b", "c", "d"}
	sets := make([]Set[string], len(nodes))
	models := make([]model, len(nodes))
	for i := range models {
		models[i] = newModel()
	}
	var reads []VersionVector // contexts read earlier, reused as stale contexts
	var all []Set[string]
	for step := 0; step < steps; step++ {
		i := rng.IntN(len(nodes))
		switch rng.IntN(4) {
		case 0, 1: // write
			var ctx VersionVector
			switch rng.IntN(3) {
			case 0:
				ctx = sets[i].Context()
			case 1:
				if len(reads) > 0 {
					ctx = reads[rng.IntN(len(reads))]
				}
			}
			v := fmt.Sprintf("w%d", step)
			sets[i] = sets[i].Update(ctx, nodes[i], v)
			models[i] = models[i].update(ctxMap(ctx), nodes[i], v)
		case 2: // read: remember a context
			reads = append(reads, sets[i].Context())
		case 3: // sync from j
			j := rng.IntN(len(nodes))
			sets[i] = Sync(sets[i], sets[j])
			models[i] = syncModel(models[i], models[j])
		}
		if check != nil {
			check(fmt.Sprintf("step %d replica %s", step, nodes[i]), sets[i], models[i])
		}
		all = append(all, sets[i])
	}
	return all
}

func TestAgainstModel(t *testing.T) {
	seed := uint64(0x5eed)
	for run := 0; run < 200; run++ {
		rng := rand.New(rand.NewPCG(seed, uint64(run)))
		t.Logf("seed %#x run %d", seed, run)
		replicas(t, rng, 60)
	}
}

func sameSet(a, b Set[string]) bool {
	if !Equal(a, b) {
		return false
	}
	return slices.Equal(a.Values(), b.Values())
}

func TestSyncProperties(t *testing.T) {
	seed := uint64(0xd0750)
	rng := rand.New(rand.NewPCG(seed, 1))
	t.Logf("seed %#x", seed)
	for run := 0; run < 100; run++ {
		sets := replicas(t, rng, 40)
		sets = append(sets, Set[string]{})
		for k := 0; k < 50; k++ {
			a := sets[rng.IntN(len(sets))]
			b := sets[rng.IntN(len(sets))]
			c := sets[rng.IntN(len(sets))]
			if ab, ba := Sync(a, b), Sync(b, a); !sameSet(ab, ba) {
				t.Fatalf("run %d: not commutative: %s vs %s", run, show(ab), show(ba))
			}
			if l, r := Sync(Sync(a, b), c), Sync(a, Sync(b, c)); !sameSet(l, r) {
				t.Fatalf("run %d: not associative: %s vs %s", run, show(l), show(r))
			}
			if aa := Sync(a, a); !sameSet(aa, a) {
				t.Fatalf("run %d: not idempotent: %s vs %s", run, show(aa), show(a))
			}
			ab := Sync(a, b)
			if Less(ab, a) || Less(ab, b) {
				t.Fatalf("run %d: join below an input", run)
			}
			if Less(a, b) && Less(b, a) {
				t.Fatalf("run %d: Less not antisymmetric", run)
			}
			if Less(a, b) && !sameSet(Sync(a, b), b) {
				t.Fatalf("run %d: a < b but a ⊔ b != b", run)
			}
			if Equal(a, b) != (a.Fingerprint() == b.Fingerprint()) {
				t.Fatalf("run %d: fingerprint disagrees with Equal", run)
			}
		}
	}
}

func TestValuesOrderAndLen(t *testing.T) {
	s := New("b", "b1").Update(nil, "a", "a1").Update(nil, "a", "a2")
	if got, want := s.Values(), []string{"a2", "a1", "b1"}; !slices.Equal(got, want) {
		t.Fatalf("Values = %v, want %v", got, want)
	}
	if s.Len() != 3 {
		t.Fatalf("Len = %d", s.Len())
	}
	ds := s.Dotted()
	if ds[0].Dot != (Dot{"a", 2}) || ds[1].Dot != (Dot{"a", 1}) || ds[2].Dot != (Dot{"b", 1}) {
		t.Fatalf("Dotted = %v", ds)
	}
	if got := s.Context(); got.Get("a") != 2 || got.Get("b") != 1 || got.Get("z") != 0 {
		t.Fatalf("Context = %v", got)
	}
}

func TestEmptyNodePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("Update with empty node did not panic")
		}
	}()
	New("", "v")
}

// TestFingerprintStable pins the fingerprint: digests are compared across
// nodes, so a change here breaks mixed-version clusters.
func TestFingerprintStable(t *testing.T) {
	s := New("node-a", "x").Update(nil, "node-b", "y")
	if got, want := s.Fingerprint(), uint64(0xbaae9beb40fcb018); got != want {
		t.Fatalf("Fingerprint = %#x, want %#x", got, want)
	}
	if (Set[string]{}).Fingerprint() == s.Fingerprint() {
		t.Fatal("empty and non-empty sets share a fingerprint")
	}
}

func TestOverwriteAndAll(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	sets := history(rng, 300, nil)
	sets = append(sets, Set[string]{})
	for i, s := range sets {
		for _, node := range []string{"a", "c", "e", "0"} {
			for _, floor := range []uint64{0, 3, 1000} {
				want := s.UpdateAtLeast(s.Context(), node, floor, "new")
				got := s.Overwrite(node, floor, "new")
				if !sameSet(got, want) {
					t.Fatalf("set %d node %s floor %d: Overwrite %s, UpdateAtLeast %s", i, node, floor, show(got), show(want))
				}
			}
		}
		var dotted []Dotted[string]
		for d, v := range s.All() {
			dotted = append(dotted, Dotted[string]{d, v})
		}
		if !slices.Equal(dotted, s.Dotted()) {
			t.Fatalf("set %d: All %v, Dotted %v", i, dotted, s.Dotted())
		}
	}
	s := New("a", "x").Update(nil, "b", "y")
	n := 0
	for range s.All() {
		n++
		break
	}
	if n != 1 {
		t.Fatal("All ignored an early break")
	}
}
