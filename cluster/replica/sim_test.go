package replica

import (
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// The simulation runs a few replicas over an in-memory network that
// reorders, drops and duplicates messages and splits into partitions, with
// concurrent writes on a small key space (so conflicts are frequent), then
// heals, delivers, runs anti-entropy until quiet, and requires identical
// stores and resolved values everywhere.

type simMsg struct {
	from, to int
	batch    []byte // encoded deltas: every message goes through the codec
}

type sim struct {
	t      *testing.T
	rng    *rand.Rand
	stores []*Store
	queue  []simMsg
	part   []int // partition of each node; messages only flow within one
	skew   []time.Duration
	now    time.Time
	drop   float64
	dup    float64
	sent   int
	// deferred makes "ret" a Deferred table: its conflicts are resolved
	// by resolutions that run later, interleaved with everything else,
	// as the cluster's merge worker does outside its lock.
	deferred bool
	waiting  []waitingResolution
	// Deferred resolutions installed, and refused as stale.
	resolved, stale int
	rounds          int // anti-entropy rounds stabilize needed
}

// waitingResolution is a pending key of one node: computed once its
// Conflict was read and folded, applied (Resolve) at a later step.
type waitingResolution struct {
	node     int
	key      string
	computed bool
	fp       uint64
	value    Sibling
}

// mixResolver is deterministic but neither commutative nor associative,
// and sometimes invents a value or deletes: the worst a user policy does.
var mixResolver = ResolverFunc(func(table, key string, existing, merging Sibling) Sibling {
	h := fnv.New64a()
	h.Write(existing.Value)
	h.Write([]byte{0})
	h.Write(merging.Value)
	switch h.Sum64() % 5 {
	case 0:
		return existing
	case 1, 2:
		return merging
	case 3:
		v := append(append([]byte{}, existing.Value[:min(3, len(existing.Value))]...), merging.Value[:min(3, len(merging.Value))]...)
		return Sibling{Node: merging.Node, TS: merging.TS, Value: v}
	default:
		return Sibling{Node: merging.Node, TS: merging.TS, Deleted: true}
	}
})

func newSim(t *testing.T, seed uint64, nodes int, perNodeResolver, deferred bool) *sim {
	s := &sim{t: t, rng: rand.New(rand.NewPCG(seed, seed^0x9e37)), now: t0, drop: 0.2, dup: 0.1, deferred: deferred}
	for i := 0; i < nodes; i++ {
		name := fmt.Sprintf("n%d", i)
		ret := Resolver(mixResolver)
		if perNodeResolver {
			// Each node resolves differently (a policy that is not
			// deterministic across nodes): write-back must still make
			// everyone agree.
			bias := i
			ret = ResolverFunc(func(table, key string, existing, merging Sibling) Sibling {
				if (len(existing.Value)+bias)%2 == 0 {
					return existing
				}
				return merging
			})
		}
		cfg := Config{
			Node: name, Buckets: 16, TombstoneGrace: time.Hour,
			Resolvers: map[string]Resolver{"sub": LatestWins, "ret": ret},
		}
		if deferred {
			delete(cfg.Resolvers, "ret")
			cfg.Deferred = map[string]bool{"ret": true}
		}
		st, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		s.stores = append(s.stores, st)
		s.part = append(s.part, 0)
		s.skew = append(s.skew, time.Duration(s.rng.IntN(40)-20)*time.Millisecond)
	}
	return s
}

func (s *sim) clock(i int) time.Time { return s.now.Add(s.skew[i]) }

func (s *sim) broadcast(from int, ds []Delta) {
	if len(ds) == 0 {
		return
	}
	batch := AppendDeltas(nil, ds...)
	for to := range s.stores {
		if to == from || s.part[to] != s.part[from] || s.rng.Float64() < s.drop {
			continue
		}
		s.queue = append(s.queue, simMsg{from, to, batch})
		if s.rng.Float64() < s.dup {
			s.queue = append(s.queue, simMsg{from, to, batch})
		}
		s.sent++
	}
}

// deliver delivers one random queued message; a message crossing a
// partition that formed while it was in flight is lost.
func (s *sim) deliver() {
	if len(s.queue) == 0 {
		return
	}
	k := s.rng.IntN(len(s.queue))
	m := s.queue[k]
	s.queue = slices.Delete(s.queue, k, k+1)
	if s.part[m.from] != s.part[m.to] {
		return
	}
	s.receive(m.to, m.batch)
}

func (s *sim) receive(to int, batch []byte) {
	ds, err := DecodeDeltas(batch)
	if err != nil {
		s.t.Fatalf("decoding a batch: %v", err)
	}
	for _, d := range ds {
		u := s.stores[to].Apply(d)
		s.broadcast(to, u.Out)
		if u.Pending {
			if !s.deferred || d.Table != "ret" {
				s.t.Fatalf("%s/%s pending on a table that is not deferred", d.Table, d.Key)
			}
			s.waiting = append(s.waiting, waitingResolution{node: to, key: d.Key})
		}
	}
}

// resolveOne advances one waiting resolution: the first step reads the
// conflict and folds it, the second installs the result, which the store
// refuses if the key changed in between (a later Apply queued it again).
func (s *sim) resolveOne(k int) {
	w := &s.waiting[k]
	st := s.stores[w.node]
	if !w.computed {
		c, ok := st.Conflict("ret", w.key)
		if !ok {
			s.waiting = slices.Delete(s.waiting, k, k+1)
			return
		}
		w.computed, w.fp, w.value = true, c.Fingerprint, Fold(mixResolver, "ret", w.key, c.Siblings)
		return
	}
	up, ok := st.Resolve("ret", w.key, w.fp, w.value)
	if ok {
		s.resolved++
		s.broadcast(w.node, up.Out)
	} else {
		s.stale++
	}
	s.waiting = slices.Delete(s.waiting, k, k+1)
}

var simValues = []string{"a", "b", "c", "dd", "eee", ""}

func (s *sim) step() {
	i := s.rng.IntN(len(s.stores))
	table := []string{"sub", "ret"}[s.rng.IntN(2)]
	key := fmt.Sprintf("k%d", s.rng.IntN(6))
	switch r := s.rng.IntN(20); {
	case r < 6:
		u, err := s.stores[i].Put(table, key, []byte(simValues[s.rng.IntN(len(simValues))]), s.clock(i))
		if err != nil {
			s.t.Fatal(err)
		}
		s.broadcast(i, u.Out)
	case r < 8:
		u, err := s.stores[i].Delete(table, key, s.clock(i))
		if err != nil {
			s.t.Fatal(err)
		}
		s.broadcast(i, u.Out)
	case r < 14:
		s.deliver()
	case r < 16:
		if len(s.waiting) > 0 {
			s.resolveOne(s.rng.IntN(len(s.waiting)))
		} else {
			s.deliver()
		}
	case r < 17: // split into random partitions
		for n := range s.part {
			s.part[n] = s.rng.IntN(2)
		}
	case r < 18: // heal
		clear(s.part)
	default: // time passes; sometimes not at all, to force equal timestamps
		s.now = s.now.Add(time.Duration(s.rng.IntN(3)) * time.Millisecond)
	}
}

// antiEntropy runs one digest exchange between a and b through the codecs.
func (s *sim) antiEntropy(a, b int) {
	da, err := s.stores[a].Digest().AppendBinary(nil)
	if err != nil {
		s.t.Fatal(err)
	}
	remote, err := DecodeDigest(da)
	if err != nil {
		s.t.Fatalf("decoding a digest: %v", err)
	}
	diff, err := s.stores[b].Digest().Diff(remote)
	if err != nil {
		s.t.Fatal(err)
	}
	for _, bs := range diff {
		if ds := s.stores[b].EntriesIn(bs.Table, bs.Buckets); len(ds) > 0 {
			s.receive(a, AppendDeltas(nil, ds...))
		}
		if ds := s.stores[a].EntriesIn(bs.Table, bs.Buckets); len(ds) > 0 {
			s.receive(b, AppendDeltas(nil, ds...))
		}
	}
}

func (s *sim) converged() bool {
	if len(s.queue) > 0 || len(s.waiting) > 0 {
		return false
	}
	for i := 1; i < len(s.stores); i++ {
		if !digestsEqual(s.stores[0].Digest(), s.stores[i].Digest()) {
			return false
		}
	}
	return true
}

// stabilize heals the network and repeats delivery plus anti-entropy until
// nothing is in flight and all digests agree. It returns the rounds needed.
func (s *sim) stabilize(maxRounds int) int {
	clear(s.part)
	s.drop = 0
	for round := 1; round <= maxRounds; round++ {
		for n := 0; (len(s.queue) > 0 || len(s.waiting) > 0) && n < 100000; n++ {
			if len(s.waiting) > 0 && (len(s.queue) == 0 || s.rng.IntN(2) == 0) {
				s.resolveOne(s.rng.IntN(len(s.waiting)))
			} else {
				s.deliver()
			}
		}
		a := s.rng.IntN(len(s.stores))
		for b := range s.stores {
			if a != b {
				s.antiEntropy(a, b)
			}
		}
		if s.converged() {
			return round
		}
	}
	s.t.Fatalf("not converged after %d rounds (%d messages in flight)", maxRounds, len(s.queue))
	return 0
}

// check requires identical resolved values everywhere and no unresolved
// conflict left (the designated nodes all wrote back).
func (s *sim) check() {
	ref := s.stores[0]
	for _, table := range []string{"sub", "ret"} {
		for k := 0; k < 6; k++ {
			key := fmt.Sprintf("k%d", k)
			want, wantOK := ref.Get(table, key)
			for i, st := range s.stores[1:] {
				got, ok := st.Get(table, key)
				if ok != wantOK || !samePayload(got, want) {
					s.t.Fatalf("%s/%s: node %d has %q (%v), node 0 has %q (%v)", table, key, i+1, got.Value, ok, want.Value, wantOK)
				}
			}
			if e := ref.tables[table]; e != nil {
				if en := e.get(key); en != nil {
					if distinct, _, _ := canonical(en.versions); len(distinct) > 1 {
						s.t.Fatalf("%s/%s: conflict left unresolved: %d versions", table, key, en.versions.Len())
					}
				}
			}
		}
		for i, st := range s.stores {
			if p := st.PendingKeys(table); len(p) > 0 {
				s.t.Fatalf("%s: node %d still has pending keys %q", table, i, p)
			}
		}
		if n := ref.Len(table); slices.ContainsFunc(s.stores, func(st *Store) bool { return st.Len(table) != n }) {
			s.t.Fatalf("%s: live counts differ", table)
		}
	}
}

func runSim(t *testing.T, seed uint64, perNodeResolver, deferred bool) (rounds, sent int) {
	s := runSimulation(t, seed, perNodeResolver, deferred)
	return s.rounds, s.sent
}

func runSimulation(t *testing.T, seed uint64, perNodeResolver, deferred bool) *sim {
	nodes := 3 + int(seed%3)
	s := newSim(t, seed, nodes, perNodeResolver, deferred)
	for i := 0; i < 400; i++ {
		s.step()
	}
	s.rounds = s.stabilize(20)
	s.check()
	// Garbage collection everywhere keeps the replicas identical.
	s.now = s.now.Add(2 * time.Hour)
	for i, st := range s.stores {
		st.GC(s.clock(i))
	}
	if !s.converged() {
		t.Fatalf("seed %d: GC made replicas differ", seed)
	}
	s.check()
	return s
}

func TestSimulatedConvergence(t *testing.T) {
	base := uint64(time.Now().UnixNano())
	t.Logf("base seed %d (seed = base + run)", base)
	worst, msgs := 0, 0
	for run := uint64(0); run < 150; run++ {
		seed := base + run
		ok := t.Run(fmt.Sprint(seed), func(t *testing.T) {
			r, sent := runSim(t, seed, false, false)
			worst, msgs = max(worst, r), msgs+sent
		})
		if !ok {
			t.Fatalf("seed %d failed", seed)
		}
	}
	t.Logf("worst case %d anti-entropy rounds; %d messages sent", worst, msgs)
}

func TestSimulatedConvergenceNondeterministicResolver(t *testing.T) {
	base := uint64(time.Now().UnixNano())
	t.Logf("base seed %d (seed = base + run)", base)
	for run := uint64(0); run < 50; run++ {
		seed := base + run
		if !t.Run(fmt.Sprint(seed), func(t *testing.T) { runSim(t, seed, true, false) }) {
			t.Fatalf("seed %d failed", seed)
		}
	}
}

// TestSimulatedConvergenceDeferred resolves "ret" outside the stores, late
// and interleaved with deliveries and writes (some resolutions go stale and
// are refused), as the cluster does with WASM policies: the replicas must
// converge to the same values as with a synchronous resolver.
func TestSimulatedConvergenceDeferred(t *testing.T) {
	base := uint64(time.Now().UnixNano())
	t.Logf("base seed %d (seed = base + run)", base)
	resolved, stale := 0, 0
	for run := uint64(0); run < 100; run++ {
		seed := base + run
		if !t.Run(fmt.Sprint(seed), func(t *testing.T) {
			s := runSimulation(t, seed, false, true)
			resolved, stale = resolved+s.resolved, stale+s.stale
		}) {
			t.Fatalf("seed %d failed", seed)
		}
	}
	t.Logf("%d deferred resolutions installed, %d refused as stale", resolved, stale)
	if resolved == 0 || stale == 0 {
		t.Fatalf("the simulation did not exercise deferred resolution (%d installed, %d stale)", resolved, stale)
	}
}
