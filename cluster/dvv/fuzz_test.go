package dvv

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// FuzzDVV runs a fuzzer-chosen history of one key on 2..4 replicas, each
// the only writer of its node id (the contract a replicated store keeps):
// writes with the replica's own context, a blind (nil) context, a context
// read earlier anywhere, or another replica's current context; floored
// writes (UpdateAtLeast, Overwrite); syncs between replicas; reads.
//
// After every step it checks the replica's set against the naive model of
// dvv_test.go (explicit version vector and dot->value map), the structural
// invariants, the codec round trip, and the documented meaning of each
// operation: Update descends from both its set and its context and holds
// the new value at the next dot; Overwrite equals UpdateAtLeast with the
// set's own context; Sync is the join of the model. Algebra steps pick
// three sets from everything produced so far (including the empty set and
// value-less context sets) and check that Sync is commutative, associative
// and idempotent, that it is an upper bound that absorbs its inputs, that
// its context is the pointwise maximum, that Less is the strict order of
// contexts and agrees with Sync, and that Equal agrees with Fingerprint
// and, dots being unique, with the values. At the end every set produced
// must be unchanged (sets are immutable values).
func FuzzDVV(f *testing.F) {
	for _, s := range dvvSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, script []byte) {
		runDVVScript(t, script)
	})
}

const (
	dvvMaxOps   = 64
	dvvMaxReads = 16
)

// Operation codes: the low 3 bits of an operation's first byte; the rest
// of it and the second byte are arguments.
const (
	dvvOpUpdate = iota
	dvvOpUpdate2
	dvvOpOverwrite
	dvvOpSync
	dvvOpRead
	dvvOpAlgebra
	dvvOpAlgebra2
	dvvOpSyncAll
)

// dvvFloors are UpdateAtLeast floors: none, small, and wall-clock-like.
// Counters near 2^64 are out of scope: the store floors at unix ms.
var dvvFloors = [4]uint64{0, 3, 40, 1_700_000_000_000}

var dvvNodes = [4]string{"a", "b", "c", "d"}

type dvvRun struct {
	t      *testing.T
	sets   []Set[string]
	models []model
	reads  []VersionVector
	pool   []Set[string] // every set produced, for the algebra checks
	copies []Set[string] // deep copies of pool, to prove it unchanged
	// held[i] is false for value-less context sets: they claim every dot
	// of their history superseded, which no replica's state does for a
	// dot a later state still holds.
	held []bool
	step int
}

func runDVVScript(t *testing.T, script []byte) {
	n := 2
	if len(script) > 0 {
		n += int(script[0] % 3)
		script = script[1:]
	}
	r := &dvvRun{t: t, sets: make([]Set[string], n), models: make([]model, n)}
	for i := range r.models {
		r.models[i] = newModel()
	}
	r.remember(Set[string]{}, true)
	for k := 0; k+1 < len(script) && k/2 < dvvMaxOps; k += 2 {
		r.step = k / 2
		r.do(script[k], script[k+1])
	}
	for i, s := range r.pool {
		if !sameSet(s, r.copies[i]) {
			t.Fatalf("set %d changed from %s to %s after later operations", i, show(r.copies[i]), show(s))
		}
	}
}

func (r *dvvRun) remember(s Set[string], held bool) {
	r.pool = append(r.pool, s)
	r.copies = append(r.copies, deepCopy(s))
	r.held = append(r.held, held)
}

// deepCopy shares no memory with s.
func deepCopy(s Set[string]) Set[string] {
	es := slices.Clone(s.entries)
	for k := range es {
		es[k].values = slices.Clone(es[k].values)
	}
	return Set[string]{entries: es}
}

func (r *dvvRun) do(op, a byte) {
	n := len(r.sets)
	i := int(a&3) % n
	j := int(a>>2&3) % n
	node := dvvNodes[i]
	v := "w" + strconv.Itoa(r.step)
	switch op & 7 {
	case dvvOpUpdate, dvvOpUpdate2:
		var ctx VersionVector
		switch op >> 3 & 3 {
		case 0:
			ctx = r.sets[i].Context()
		case 1: // blind write
		case 2:
			if len(r.reads) > 0 {
				ctx = r.reads[int(a>>4)%len(r.reads)]
			}
		case 3:
			ctx = r.sets[j].Context()
		}
		floor := dvvFloors[op>>5&3]
		prev := r.sets[i]
		u := prev.UpdateAtLeast(ctx, node, floor, v)
		if floor == 0 && !sameSet(u, prev.Update(ctx, node, v)) {
			r.t.Fatalf("step %d: UpdateAtLeast with floor 0 differs from Update", r.step)
		}
		r.checkUpdate(prev, ctx, node, v, u)
		r.sets[i] = u
		r.models[i] = r.models[i].updateAtLeast(ctxMap(ctx), node, floor, v)
	case dvvOpOverwrite:
		floor := dvvFloors[op>>3&3]
		prev := r.sets[i]
		u := prev.Overwrite(node, floor, v)
		if want := prev.UpdateAtLeast(prev.Context(), node, floor, v); !sameSet(u, want) {
			r.t.Fatalf("step %d: Overwrite %s, UpdateAtLeast with own context %s", r.step, show(u), show(want))
		}
		if u.Len() != 1 {
			r.t.Fatalf("step %d: Overwrite left %d values: %s", r.step, u.Len(), show(u))
		}
		r.checkUpdate(prev, prev.Context(), node, v, u)
		r.sets[i] = u
		r.models[i] = r.models[i].updateAtLeast(ctxMap(prev.Context()), node, floor, v)
	case dvvOpSync:
		r.sets[i] = Sync(r.sets[i], r.sets[j])
		r.models[i] = syncModel(r.models[i], r.models[j])
	case dvvOpRead:
		if len(r.reads) < dvvMaxReads {
			ctx := r.sets[i].Context()
			r.reads = append(r.reads, ctx)
			r.remember(contextSet[string](ctx), false)
		}
		return
	case dvvOpAlgebra, dvvOpAlgebra2:
		// x anywhere, y among the latest sets, z mixed.
		p := len(r.pool)
		x, y := int(a)%p, p-1-int(op>>3)%p
		r.algebra(r.pool[x], r.pool[y], r.pool[(int(a)*7+int(op))%p], r.held[x] && r.held[y])
		return
	case dvvOpSyncAll:
		// Full exchange: everyone ends with the join of all replicas.
		all := Set[string]{}
		m := newModel()
		for k := range r.sets {
			all = Sync(all, r.sets[k])
			m = syncModel(m, r.models[k])
		}
		for k := range r.sets {
			r.sets[k], r.models[k] = all, m
		}
	}
	what := fmt.Sprintf("step %d (op %#x) replica %s", r.step, op, node)
	r.check(what, r.sets[i])
	checkModel(r.t, what, r.sets[i], r.models[i])
	r.remember(r.sets[i], true)
}

// updateAtLeast is model.update with the floor rule of UpdateAtLeast: the
// counter jumps to min when the node has no value of its own left.
func (m model) updateAtLeast(ctx map[string]uint64, node string, min uint64, v string) model {
	c := m.update(ctx, node, v)
	own := false
	for d := range c.vals {
		own = own || (d.Node == node && d.Counter != c.seen[node])
	}
	if n := c.seen[node]; !own && min > n {
		delete(c.vals, Dot{node, n})
		c.seen[node] = min
		c.vals[Dot{node, min}] = v
	}
	return c
}

// checkUpdate checks the documented meaning of a write of v by node with
// context ctx over prev: u descends strictly from prev and from ctx, holds
// v exactly once at node's new counter, keeps exactly the values of prev
// that ctx does not cover, and drops the rest.
func (r *dvvRun) checkUpdate(prev Set[string], ctx VersionVector, node, v string, u Set[string]) {
	if !Less(prev, u) {
		r.t.Fatalf("step %d: write %s over %s is not above it", r.step, show(u), show(prev))
	}
	uc := u.Context()
	for _, c := range ctx {
		if uc.Get(c.Node) < c.Counter {
			r.t.Fatalf("step %d: write %s has not seen its context %v", r.step, show(u), ctx)
		}
	}
	cover := contextSet[string](ctx).Context()
	want := []Dotted[string]{{Dot{node, uc.Get(node)}, v}}
	for _, d := range prev.Dotted() {
		if d.Dot.Counter > cover.Get(d.Dot.Node) {
			want = append(want, d)
		}
	}
	got := u.Dotted()
	sortDotted(want)
	sortDotted(got)
	if !slices.Equal(got, want) {
		r.t.Fatalf("step %d: write by %s with context %v over %s gave %s, want values %v", r.step, node, ctx, show(prev), show(u), want)
	}
}

func sortDotted(ds []Dotted[string]) {
	slices.SortFunc(ds, func(x, y Dotted[string]) int {
		return cmp.Or(strings.Compare(x.Dot.Node, y.Dot.Node), cmp.Compare(x.Dot.Counter, y.Dot.Counter))
	})
}

// check verifies what every Set must satisfy: entries sorted by unique
// non-empty node with counter >= 1 and at most counter values, accessors
// that agree with each other, and a codec round trip to the same set.
func (r *dvvRun) check(what string, s Set[string]) {
	for k, e := range s.entries {
		if e.node == "" || e.counter == 0 || uint64(len(e.values)) > e.counter {
			r.t.Fatalf("%s: entry %d breaks invariants: %s", what, k, show(s))
		}
		if k > 0 && s.entries[k-1].node >= e.node {
			r.t.Fatalf("%s: entries not sorted: %s", what, show(s))
		}
	}
	ds := s.Dotted()
	if s.Len() != len(ds) || !slices.Equal(s.Values(), dottedValues(ds)) {
		r.t.Fatalf("%s: Len %d, Values %v, Dotted %v", what, s.Len(), s.Values(), ds)
	}
	var all []Dotted[string]
	for d, v := range s.All() {
		all = append(all, Dotted[string]{d, v})
	}
	if !slices.Equal(all, ds) {
		r.t.Fatalf("%s: All %v, Dotted %v", what, all, ds)
	}
	enc := s.Append(nil, appendString)
	got, used, err := Decode(enc, decodeString)
	if err != nil || used != len(enc) || !sameSet(got, s) {
		r.t.Fatalf("%s: codec round trip of %s gave %s (%v, %d of %d bytes)", what, show(s), show(got), err, used, len(enc))
	}
}

func dottedValues(ds []Dotted[string]) []string {
	out := make([]string, 0, len(ds))
	for _, d := range ds {
		out = append(out, d.Value)
	}
	return out
}

// modelOf reads a set back into the model's terms.
func modelOf(s Set[string]) model {
	m := model{seen: ctxMap(s.Context()), vals: map[Dot]string{}}
	for _, d := range s.Dotted() {
		m.vals[d.Dot] = d.Value
	}
	return m
}

// vvLE reports whether every component of a is at most b's.
func vvLE(a, b VersionVector) bool {
	for _, c := range a {
		if b.Get(c.Node) < c.Counter {
			return false
		}
	}
	return true
}

// algebra checks the lattice laws on x, y, z; held says x and y are states
// of replicas, not context sets.
func (r *dvvRun) algebra(x, y, z Set[string], held bool) {
	fail := func(format string, args ...any) {
		r.t.Helper()
		r.t.Fatalf("step %d: x=%s y=%s z=%s: %s", r.step, show(x), show(y), show(z), fmt.Sprintf(format, args...))
	}
	xy, yx := Sync(x, y), Sync(y, x)
	if !sameSet(xy, yx) {
		fail("Sync not commutative: %s vs %s", show(xy), show(yx))
	}
	if l, rr := Sync(xy, z), Sync(x, Sync(y, z)); !sameSet(l, rr) {
		fail("Sync not associative: %s vs %s", show(l), show(rr))
	}
	if !sameSet(Sync(x, x), x) {
		fail("Sync not idempotent")
	}
	// Upper bound, absorbing its inputs.
	if !sameSet(Sync(xy, x), xy) || !sameSet(Sync(y, xy), xy) {
		fail("Sync(x,y) does not absorb its inputs")
	}
	if Less(xy, x) || Less(xy, y) {
		fail("Sync(x,y) below an input")
	}
	// The join of the model: context is the pointwise max, a value
	// survives iff both hold it or the other has not seen it.
	checkModel(r.t, fmt.Sprintf("step %d: Sync(x,y) vs model", r.step), xy, syncModel(modelOf(x), modelOf(y)))
	r.check(fmt.Sprintf("step %d: Sync(x,y)", r.step), xy)
	// Less is the strict order of causal histories.
	cx, cy := x.Context(), y.Context()
	if want := vvLE(cx, cy) && !vvLE(cy, cx); Less(x, y) != want {
		fail("Less = %v, contexts %v %v say %v", Less(x, y), cx, cy, want)
	}
	if Less(x, y) && Less(y, x) {
		fail("Less not antisymmetric")
	}
	// Between replica states, a later state holds no value an earlier
	// one superseded, so the join of x < y is y itself.
	if held && Less(x, y) && !sameSet(xy, y) {
		fail("x < y but Sync(x,y) = %s", show(xy))
	}
	if Less(x, y) && Less(y, z) && !Less(x, z) {
		fail("Less not transitive")
	}
	// Equal: same history and dots; with unique dots, same values.
	if Equal(x, y) != (x.Fingerprint() == y.Fingerprint()) {
		fail("Equal %v but fingerprints %#x %#x", Equal(x, y), x.Fingerprint(), y.Fingerprint())
	}
	if Equal(x, y) && !sameSet(x, y) {
		fail("equal dots with different values")
	}
	if Equal(x, y) && (Less(x, y) || Less(y, x)) {
		fail("Equal and Less at once")
	}
}

func dvvScript(replicas int, ops ...[2]byte) []byte {
	b := []byte{byte(replicas - 2)}
	for _, op := range ops {
		b = append(b, op[0], op[1])
	}
	return b
}

// dvvSeeds cover the paper's cases: concurrent writes, stale contexts,
// floors, and syncs, followed by algebra checks over the results.
func dvvSeeds() [][]byte {
	upd := func(i int, ctx, floor byte) [2]byte {
		return [2]byte{dvvOpUpdate | ctx<<3 | floor<<5, byte(i)}
	}
	sync := func(i, j int) [2]byte { return [2]byte{dvvOpSync, byte(i | j<<2)} }
	alg := func(a, b byte) [2]byte { return [2]byte{dvvOpAlgebra | b<<3, a} }
	read := func(i int) [2]byte { return [2]byte{dvvOpRead, byte(i)} }
	return [][]byte{
		// Two replicas write concurrently, sync both ways.
		dvvScript(2, upd(0, 0, 0), upd(1, 0, 0), sync(0, 1), sync(1, 0), alg(1, 2), alg(3, 4)),
		// A stale read context: the write keeps the sibling it did not see.
		dvvScript(3, upd(0, 0, 0), read(0), upd(0, 1, 0), sync(1, 0), upd(1, 2, 0), sync(2, 1), alg(5, 6), alg(2, 7)),
		// Blind writes on the same node pile up siblings; a floored
		// overwrite jumps the counter.
		dvvScript(2, upd(0, 1, 0), upd(0, 1, 0), upd(0, 1, 3), [2]byte{dvvOpOverwrite | 3<<3, 0}, sync(1, 0), alg(4, 1)),
		// Writes with another replica's context, full exchange, algebra.
		dvvScript(4, upd(0, 0, 1), upd(1, 0, 2), upd(2, 3, 0), upd(3, 3, 0), sync(3, 0), [2]byte{dvvOpSyncAll, 0},
			upd(2, 0, 0), alg(9, 3), alg(6, 1), alg(0, 8)),
	}
}
