package replica

import (
	"bytes"
	"fmt"
	"hash/fnv"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mendmq/mendmq/cluster/dvv"
)

// FuzzConvergence drives a small cluster of Stores with a script the fuzzer
// chooses: local writes and deletes at chosen times, deliveries of broadcast
// deltas in any order (duplicated, reordered or dropped), digest
// anti-entropy between pairs, GC, time jumps and restarts with an empty
// store. Every delta and digest crosses the codecs, as on the wire.
//
// Checked after every operation: the Update reports the resolved value the
// key had before and has after, its Out deltas are the node's new state,
// re-applying a delta is a no-op (idempotence), GC changes no resolved
// payload, and the store's cached resolutions, digest sums and live counts
// match a recomputation from its version sets.
//
// Checked at the end, after a final full anti-entropy among all nodes
// (repeated until quiet, at most fzMaxRounds rounds): every node holds the
// same version sets, the same resolved values (Get, Len, Range) and no
// unresolved conflict. Fresh observer stores that replay every delta ever
// emitted in three different orders (one with duplicates) agree with each
// other (the merge is order-independent) and, when no GC or restart made
// state disappear, with the cluster (the converged state is exactly the
// join of everything written).
//
// The harness stays inside the Store's documented contract: a node's clock
// goes back at most fzMaxBackstep ms, fewer events than TombstoneGrace has
// milliseconds happen per key, and a restart takes longer than the clock
// skew plus any burst of writes (fzRestartGap), so the wall-clock counter
// floor (doc.go) is sound.
func FuzzConvergence(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, script []byte) {
		newFuzzCluster(t, script).run()
	})
}

const (
	fzHeader      = 3
	fzMaxOps      = 64
	fzKeys        = 3
	fzMaxBackstep = 3                            // ms a write's clock may lag its node's clock
	fzGraceMS     = 1_000_000                    // TombstoneGrace; far more than the events per key
	fzRestartGap  = 60_000                       // ms a restart takes
	fzMaxQueue    = 256                          // in-flight messages; more are dropped
	fzMaxRounds   = 12                           // final anti-entropy rounds before declaring divergence
	fzMaxDrain    = 20_000                       // deliveries while draining, against write-back storms
	fzGrace       = fzGraceMS * time.Millisecond // as a Duration
	fzT0          = 1_700_000_000_000            // unix ms of the script's start
	fzObserver    = "~observer"                  // sorts after every node id; never a writer
	fzTableSub    = "sub"                        // LatestWins
	fzTableRet    = "ret"                        // mixResolver: not commutative, invents and deletes
	fzDeliverTail = 4                            // header flag: deliver what is in flight before the final round
)

// Operation codes: the low nibble of an operation's first byte. The high
// nibble and the second byte are arguments.
const (
	opPut = iota
	opPut2
	opPut3
	opDelete
	opDeliver
	opDeliver2
	opDeliver3
	opDeliver4
	opDrop
	opAntiEntropy
	opTick
	opGC
	opRestart
	opJump
	opFlush
	opSelfApply
)

var fzValues = [4]string{"a", "b", "", "cc"}

var (
	fzNodeIDs = [4]string{"n0", "n1", "n2", "n3"}
	fzKeyIDs  = [fzKeys]string{"k0", "k1", "k2"}
)

func fuzzNodeID(i int) string { return fzNodeIDs[i] }

// traceLine is one line of a failing script's trace, formatted only when
// the trace is printed (most runs pass). Version sets are immutable, so
// formatting them late shows what they were when logged.
type traceLine struct {
	format string
	args   []any
}

// lazyVersions formats a version set with showVersions when printed.
type lazyVersions dvv.Set[Sibling]

func (v lazyVersions) String() string { return showVersions(dvv.Set[Sibling](v)) }

type fzMsg struct {
	from, to int
	d        Delta
}

type fuzzCluster struct {
	t      *testing.T
	script []byte
	cfgs   []Config
	stores []*Store
	skew   []int64
	now    int64 // unix ms, the cluster's true time
	queue  []fzMsg
	log    []Delta // every delta ever emitted (writes and write-backs)
	lossy  bool    // a GC or restart may have made state disappear
	// noClock marks nodes that applied a delta before reading a clock
	// since their (re)start: they skip write-backs (Store.Apply), so
	// conflicts they are designated for may stay.
	noClock []bool
	gcUsed  bool
	trace   []traceLine
	deliver bool
}

// newFuzzCluster decodes the header: byte 0 the node count (2..4), byte 1
// the nodes' clock skews (2 bits each, 0..3 ms), byte 2 the bucket count
// (bits 0-1: 1, 2, 4 or 8 buckets) and flags.
func newFuzzCluster(t *testing.T, script []byte) *fuzzCluster {
	var h [fzHeader]byte
	copy(h[:], script)
	c := &fuzzCluster{t: t, script: script, now: fzT0, deliver: h[2]&fzDeliverTail != 0}
	n := 2 + int(h[0]%3)
	for i := 0; i < n; i++ {
		c.cfgs = append(c.cfgs, Config{
			Node:           fuzzNodeID(i),
			Buckets:        1 << (h[2] & 3),
			TombstoneGrace: fzGrace,
			Resolvers:      map[string]Resolver{fzTableSub: LatestWins, fzTableRet: mixResolver},
		})
		c.stores = append(c.stores, c.newStore(c.cfgs[i]))
		c.noClock = append(c.noClock, false)
		c.skew = append(c.skew, int64(h[1]>>(2*i)&3))
	}
	return c
}

func (c *fuzzCluster) newStore(cfg Config) *Store {
	s, err := New(cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	return s
}

func (c *fuzzCluster) fail(format string, args ...any) {
	c.t.Helper()
	lines := make([]string, len(c.trace))
	for k, l := range c.trace {
		lines[k] = fmt.Sprintf(l.format, l.args...)
	}
	c.t.Fatalf("%s\nscript %q\ntrace:\n  %s", fmt.Sprintf(format, args...), c.script, strings.Join(lines, "\n  "))
}

func (c *fuzzCluster) logf(format string, args ...any) {
	if len(c.trace) < 400 {
		c.trace = append(c.trace, traceLine{format, args})
	}
}

// clock is node i's wall clock, back ms behind its usual reading.
func (c *fuzzCluster) clock(i int, back int64) time.Time {
	return time.UnixMilli(c.now + c.skew[i] - back)
}

func (c *fuzzCluster) run() {
	ops := c.script[min(len(c.script), fzHeader):]
	for k := 0; k+1 < len(ops) && k/2 < fzMaxOps; k += 2 {
		c.step(ops[k], ops[k+1])
	}
	c.stabilize()
	c.checkConverged()
	c.checkObservers()
}

func (c *fuzzCluster) step(op, a byte) {
	n := len(c.stores)
	i := int(a&3) % n
	table := [2]string{fzTableSub, fzTableRet}[a>>2&1]
	key := fzKeyIDs[int(a>>3)%fzKeys]
	switch op & 15 {
	case opPut, opPut2, opPut3:
		v, back := fzValues[op>>4&3], min(int64(op>>6), fzMaxBackstep)
		c.logf("put %s %s/%s=%q at %+d", fuzzNodeID(i), table, key, v, c.now+c.skew[i]-back-fzT0)
		c.write(i, table, key, false, []byte(v), back)
	case opDelete:
		back := min(int64(op>>6), fzMaxBackstep)
		c.logf("delete %s %s/%s at %+d", fuzzNodeID(i), table, key, c.now+c.skew[i]-back-fzT0)
		c.write(i, table, key, true, nil, back)
	case opDeliver, opDeliver2, opDeliver3, opDeliver4:
		if len(c.queue) == 0 {
			return
		}
		k := int(a) % len(c.queue)
		m := c.queue[k]
		dup := op&16 != 0
		if !dup {
			c.queue = slices.Delete(c.queue, k, k+1)
		}
		c.logf("deliver %s->%s %s/%s %s (dup %v)", fuzzNodeID(m.from), fuzzNodeID(m.to), m.d.Table, m.d.Key, lazyVersions(m.d.Versions), dup)
		c.apply(m.to, m.d)
	case opDrop:
		if len(c.queue) > 0 {
			k := int(a) % len(c.queue)
			c.logf("drop %s->%s %s/%s", fuzzNodeID(c.queue[k].from), fuzzNodeID(c.queue[k].to), c.queue[k].d.Table, c.queue[k].d.Key)
			c.queue = slices.Delete(c.queue, k, k+1)
		}
	case opAntiEntropy:
		j := int(a>>2&3) % n
		if i != j {
			c.logf("anti-entropy %s %s", fuzzNodeID(i), fuzzNodeID(j))
			c.antiEntropy(i, j)
		}
	case opTick:
		c.now += int64(a % 16)
		c.logf("tick to %+d", c.now-fzT0)
	case opGC:
		if op&16 != 0 {
			c.now += fzGraceMS + 1 + int64(a%8)
		}
		c.logf("gc %s at %+d", fuzzNodeID(i), c.now+c.skew[i]-fzT0)
		c.gc(i, c.clock(i, 0))
	case opRestart:
		c.now += fzRestartGap
		c.logf("restart %s at %+d", fuzzNodeID(i), c.now-fzT0)
		c.stores[i] = c.newStore(c.cfgs[i])
		c.lossy = true
	case opJump:
		c.now += fzGraceMS/2 + int64(a)
		c.logf("jump to %+d", c.now-fzT0)
	case opFlush:
		c.logf("flush %d messages (reverse %v)", len(c.queue), a&1 != 0)
		q := c.queue
		c.queue = nil
		if a&1 != 0 {
			slices.Reverse(q)
		}
		for _, m := range q {
			c.apply(m.to, m.d)
		}
	case opSelfApply:
		// A node hearing its own state back (a peer echoing it, or a
		// snapshot of itself) changes nothing.
		if e := c.entry(i, table, key); e != nil {
			c.logf("self-apply %s %s/%s", fuzzNodeID(i), table, key)
			c.applyNoop(i, Delta{Table: table, Key: key, Versions: e.versions}, "own state")
		}
	}
	c.checkStore(i)
}

func (c *fuzzCluster) write(i int, table, key string, deleted bool, v []byte, back int64) {
	st := c.stores[i]
	before := c.resolved(i, table, key)
	hadLive := c.entry(i, table, key) != nil && !c.entry(i, table, key).tomb
	var u Update
	var err error
	if deleted {
		u, err = st.Delete(table, key, c.clock(i, back))
	} else {
		u, err = st.Put(table, key, v, c.clock(i, back))
	}
	if err != nil {
		c.fail("write: %v", err)
	}
	if deleted && hadLive != (len(u.Out) == 1) {
		c.fail("delete of a key with a live version (%v) broadcast %d deltas", hadLive, len(u.Out))
	}
	if !deleted && len(u.Out) != 1 {
		c.fail("put broadcast %d deltas", len(u.Out))
	}
	c.checkUpdate(i, u, before)
	c.send(i, u.Out)
}

// send logs ds and queues them to every other node.
func (c *fuzzCluster) send(from int, ds []Delta) {
	for _, d := range ds {
		c.log = append(c.log, d)
		for to := range c.stores {
			if to != from && len(c.queue) < fzMaxQueue {
				c.queue = append(c.queue, fzMsg{from, to, d})
			}
		}
	}
}

// wire round-trips deltas through the codec, as every transfer does.
func (c *fuzzCluster) wire(ds ...Delta) []Delta {
	out, err := DecodeDeltas(AppendDeltas(nil, ds...))
	if err != nil || len(out) != len(ds) {
		c.fail("codec round trip of %d deltas: %d, %v", len(ds), len(out), err)
	}
	return out
}

// apply delivers d to node to, checks the Update, broadcasts a write-back,
// and checks that delivering it again changes nothing.
func (c *fuzzCluster) apply(to int, d Delta) {
	d = c.wire(d)[0]
	before := c.resolved(to, d.Table, d.Key)
	if c.stores[to].clock == minInt64 {
		c.noClock[to] = true
	}
	u := c.stores[to].Apply(d)
	if len(u.Out) > 0 {
		c.logf("  %s writes back %s", fuzzNodeID(to), lazyVersions(u.Out[0].Versions))
	}
	c.checkUpdate(to, u, before)
	c.send(to, u.Out)
	c.applyNoop(to, d, "duplicate delta")
}

// applyNoop applies d to node i and requires nothing to change.
func (c *fuzzCluster) applyNoop(i int, d Delta, what string) {
	e := c.entry(i, d.Table, d.Key)
	digest := c.stores[i].Digest()
	u := c.stores[i].Apply(d)
	if u.Changed() || len(u.Out) != 0 {
		c.fail("%s on %s %s/%s: changed %v, %d deltas out", what, fuzzNodeID(i), d.Table, d.Key, u.Changed(), len(u.Out))
	}
	if e2 := c.entry(i, d.Table, d.Key); e2 != e || !digestsEqual(digest, c.stores[i].Digest()) {
		c.fail("%s on %s %s/%s changed the entry or the digest", what, fuzzNodeID(i), d.Table, d.Key)
	}
}

func (c *fuzzCluster) antiEntropy(a, b int) {
	da, err := c.stores[a].Digest().AppendBinary(nil)
	if err != nil {
		c.fail("digest: %v", err)
	}
	remote, err := DecodeDigest(da)
	if err != nil {
		c.fail("decoding a digest: %v", err)
	}
	diff, err := c.stores[b].Digest().Diff(remote)
	if err != nil {
		c.fail("diff: %v", err)
	}
	for _, bs := range diff {
		// Collect both sides before applying: each side answers the
		// diff with what it held when the digests were compared.
		fromB := c.stores[b].EntriesIn(bs.Table, bs.Buckets)
		fromA := c.stores[a].EntriesIn(bs.Table, bs.Buckets)
		for _, d := range fromB {
			c.apply(a, d)
		}
		for _, d := range fromA {
			c.apply(b, d)
		}
	}
}

func (c *fuzzCluster) gc(i int, now time.Time) {
	st := c.stores[i]
	before := map[string]Sibling{}
	for _, table := range st.Tables() {
		for key := range c.keys(i, table) {
			before[table+"/"+key] = c.resolved(i, table, key)
		}
	}
	if n := st.GC(now); n > 0 {
		c.lossy = true
		c.logf("  %s collected %d", fuzzNodeID(i), n)
	}
	c.gcUsed = true
	for tk, old := range before {
		table, key, _ := strings.Cut(tk, "/")
		if now := c.resolved(i, table, key); !samePayload(old, now) {
			c.fail("GC on %s changed %s from %q (deleted %v) to %q (deleted %v)", fuzzNodeID(i), tk, old.Value, old.Deleted, now.Value, now.Deleted)
		}
	}
}

// stabilize ends the script: the network heals, in-flight messages are
// delivered or lost (header flag), and full anti-entropy rounds run, with
// write-backs delivered reliably, until every digest agrees. When GC was
// used every node collects at the same final time, so that tombstones
// some nodes refuse as expired are gone everywhere.
func (c *fuzzCluster) stabilize() {
	c.logf("stabilize (deliver in-flight %v)", c.deliver)
	if c.deliver {
		c.drain()
	}
	c.queue = nil
	final := time.UnixMilli(c.now + 4) // after every node's clock
	for round := 1; round <= fzMaxRounds; round++ {
		if c.gcUsed {
			for i := range c.stores {
				c.gc(i, final)
			}
		}
		for i := range c.stores {
			for j := i + 1; j < len(c.stores); j++ {
				c.antiEntropy(i, j)
			}
		}
		c.drain()
		if c.gcUsed {
			for i := range c.stores {
				c.gc(i, final)
			}
		}
		if c.converged() {
			return
		}
	}
	c.fail("not converged after %d anti-entropy rounds", fzMaxRounds)
}

func (c *fuzzCluster) drain() {
	for n := 0; len(c.queue) > 0; n++ {
		if n == fzMaxDrain {
			c.fail("write-backs did not quiesce after %d deliveries", n)
		}
		m := c.queue[0]
		c.queue = c.queue[1:]
		c.apply(m.to, m.d)
	}
}

func (c *fuzzCluster) converged() bool {
	for i := 1; i < len(c.stores); i++ {
		if !digestsEqual(c.stores[0].Digest(), c.stores[i].Digest()) {
			return false
		}
	}
	return true
}

// checkConverged requires every node to expose the same state.
func (c *fuzzCluster) checkConverged() {
	for i := range c.stores {
		c.checkStore(i)
	}
	ref := c.stores[0]
	refSnap := snapshotMap(ref)
	for i, st := range c.stores[1:] {
		if err := sameSnapshots(refSnap, snapshotMap(st)); err != "" {
			c.fail("%s and %s differ after convergence: %s", fuzzNodeID(0), fuzzNodeID(i+1), err)
		}
		if err := sameResolved(ref, st); err != "" {
			c.fail("%s and %s resolve differently: %s", fuzzNodeID(0), fuzzNodeID(i+1), err)
		}
	}
	for tk, v := range refSnap {
		table, key, _ := strings.Cut(tk, "/")
		r := resolve(ref.resolver(table), table, key, v)
		if r.conflict && !c.noClock[slices.IndexFunc(c.cfgs, func(cfg Config) bool { return cfg.Node == r.last })] {
			c.fail("%s left unresolved after convergence (designated %s): %s", tk, r.last, showVersions(v))
		}
	}
}

// checkObservers replays every delta ever emitted, in three orders, on
// fresh stores that wrote nothing (so they never write back).
func (c *fuzzCluster) checkObservers() {
	h := fnv.New64a()
	h.Write(c.script)
	rng := rand.New(rand.NewPCG(h.Sum64(), 0x0b5e))
	perm := rng.Perm(len(c.log))
	orders := [][]int{make([]int, len(c.log)), perm, nil}
	for k := range c.log {
		orders[0][k] = k
		orders[2] = append(orders[2], len(c.log)-1-k, len(c.log)-1-k)
	}
	var obs []*Store
	for _, order := range orders {
		cfg := c.cfgs[0]
		cfg.Node = fzObserver
		o := c.newStore(cfg)
		for _, k := range order {
			if u := o.Apply(c.log[k]); len(u.Out) != 0 {
				c.fail("observer wrote back %s for %s/%s", showVersions(u.Out[0].Versions), c.log[k].Table, c.log[k].Key)
			}
		}
		obs = append(obs, o)
	}
	ref := snapshotMap(obs[0])
	for k, o := range obs[1:] {
		if err := sameSnapshots(ref, snapshotMap(o)); err != "" {
			c.fail("replaying %d deltas in order %d differs from emission order: %s", len(c.log), k+1, err)
		}
		if err := sameResolved(obs[0], o); err != "" {
			c.fail("replaying %d deltas in order %d resolves differently: %s", len(c.log), k+1, err)
		}
	}
	if c.lossy {
		return
	}
	if err := sameSnapshots(ref, snapshotMap(c.stores[0])); err != "" {
		c.fail("cluster state is not the join of every delta: %s", err)
	}
	if err := sameResolved(obs[0], c.stores[0]); err != "" {
		c.fail("cluster resolves unlike the join of every delta: %s", err)
	}
}

// checkUpdate checks u against the node's state: Old is the resolved value
// before, New the one now, and Out the node's new version set.
func (c *fuzzCluster) checkUpdate(i int, u Update, before Sibling) {
	after := c.resolved(i, u.Table, u.Key)
	if !samePayload(u.Old, before) || (before.Live() && !sameSibling(u.Old, before)) {
		c.fail("%s %s/%s: Update.Old %+v, resolved value before %+v", fuzzNodeID(i), u.Table, u.Key, u.Old, before)
	}
	if !samePayload(u.New, after) || (after.Live() && !sameSibling(u.New, after)) {
		c.fail("%s %s/%s: Update.New %+v, resolved value now %+v", fuzzNodeID(i), u.Table, u.Key, u.New, after)
	}
	for _, d := range u.Out {
		e := c.entry(i, d.Table, d.Key)
		if e == nil || !sameVersions(e.versions, d.Versions) {
			c.fail("%s %s/%s: Out delta is not the node's state", fuzzNodeID(i), d.Table, d.Key)
		}
	}
}

// checkStore recomputes what the store maintains incrementally: bucket
// placement and sums, cached resolutions, GC flags and live counts.
func (c *fuzzCluster) checkStore(i int) {
	st := c.stores[i]
	for name, t := range st.tables {
		live := 0
		for b := range t.buckets {
			var sum uint64
			for k, e := range t.buckets[b].entries {
				if keyHash(k)&uint64(len(t.buckets)-1) != uint64(b) {
					c.fail("%s %s/%s in bucket %d", fuzzNodeID(i), name, k, b)
				}
				if e.versions.Len() == 0 || e.hash != entryHash(k, e.versions) {
					c.fail("%s %s/%s: %d versions, stale hash", fuzzNodeID(i), name, k, e.versions.Len())
				}
				sum ^= e.hash
				tomb, maxTS := true, int64(minInt64)
				for _, v := range e.versions.All() {
					tomb = tomb && v.Deleted
					maxTS = max(maxTS, v.TS)
					if v.Deleted && len(v.Value) != 0 {
						c.fail("%s %s/%s: tombstone with a value", fuzzNodeID(i), name, k)
					}
				}
				if tomb != e.tomb || maxTS != e.maxTS {
					c.fail("%s %s/%s: tomb %v maxTS %d cached as %v %d", fuzzNodeID(i), name, k, tomb, maxTS, e.tomb, e.maxTS)
				}
				if r := resolve(st.resolver(name), name, k, e.versions); !sameSibling(r.value, e.res) {
					c.fail("%s %s/%s: cached resolution %+v, recomputed %+v from %s", fuzzNodeID(i), name, k, e.res, r.value, showVersions(e.versions))
				}
				if e.res.Live() {
					live++
				}
			}
			if sum != t.buckets[b].sum {
				c.fail("%s %s: bucket %d sum %#x, entries XOR to %#x", fuzzNodeID(i), name, b, t.buckets[b].sum, sum)
			}
		}
		if live != t.live || st.Len(name) != live {
			c.fail("%s %s: %d live keys, counted %d", fuzzNodeID(i), name, live, t.live)
		}
	}
}

func (c *fuzzCluster) entry(i int, table, key string) *entry {
	if t := c.stores[i].tables[table]; t != nil {
		return t.get(key)
	}
	return nil
}

// resolved is the key's cached resolution, absent if the key is.
func (c *fuzzCluster) resolved(i int, table, key string) Sibling {
	if e := c.entry(i, table, key); e != nil {
		return e.res
	}
	return absent
}

func (c *fuzzCluster) keys(i int, table string) map[string]bool {
	out := map[string]bool{}
	if t := c.stores[i].tables[table]; t != nil {
		for b := range t.buckets {
			for k := range t.buckets[b].entries {
				out[k] = true
			}
		}
	}
	return out
}

func sameSibling(a, b Sibling) bool {
	return a.Node == b.Node && a.TS == b.TS && a.Deleted == b.Deleted && bytes.Equal(a.Value, b.Value)
}

// snapshotMap is a store's Snapshot keyed by table/key.
func snapshotMap(s *Store) map[string]dvv.Set[Sibling] {
	out := map[string]dvv.Set[Sibling]{}
	for _, d := range s.Snapshot() {
		out[d.Table+"/"+d.Key] = d.Versions
	}
	return out
}

// sameSnapshots describes the first difference between two snapshots, or
// returns "".
func sameSnapshots(a, b map[string]dvv.Set[Sibling]) string {
	for k, va := range a {
		vb, ok := b[k]
		if !ok {
			return fmt.Sprintf("%s only on the first: %s", k, showVersions(va))
		}
		if !sameVersions(va, vb) {
			return fmt.Sprintf("%s: %s vs %s", k, showVersions(va), showVersions(vb))
		}
	}
	for k, vb := range b {
		if _, ok := a[k]; !ok {
			return fmt.Sprintf("%s only on the second: %s", k, showVersions(vb))
		}
	}
	return ""
}

// sameResolved compares what the read API exposes: Get of every key of the
// fuzz key space, Len and Range of both tables.
func sameResolved(a, b *Store) string {
	for _, table := range []string{fzTableSub, fzTableRet} {
		for _, key := range fzKeyIDs {
			va, oka := a.Get(table, key)
			vb, okb := b.Get(table, key)
			if oka != okb || !sameSibling(va, vb) {
				return fmt.Sprintf("Get(%s, %s): %+v %v vs %+v %v", table, key, va, oka, vb, okb)
			}
		}
		if a.Len(table) != b.Len(table) {
			return fmt.Sprintf("Len(%s): %d vs %d", table, a.Len(table), b.Len(table))
		}
		ra, rb := map[string]string{}, map[string]string{}
		a.Range(table, func(k string, v Sibling) bool { ra[k] = string(v.Value); return true })
		b.Range(table, func(k string, v Sibling) bool { rb[k] = string(v.Value); return true })
		if !maps.Equal(ra, rb) {
			return fmt.Sprintf("Range(%s): %v vs %v", table, ra, rb)
		}
	}
	return ""
}

// showVersions renders a version set for failure messages, one
// node:counter=value@ts per sibling and the context.
func showVersions(s dvv.Set[Sibling]) string {
	var parts []string
	for d, v := range s.All() {
		val := fmt.Sprintf("%q", v.Value)
		if v.Deleted {
			val = "<tomb>"
		}
		parts = append(parts, fmt.Sprintf("%s:%d=%s@%+d", d.Node, d.Counter, val, v.TS-fzT0))
	}
	return fmt.Sprintf("{%s | ctx %v}", strings.Join(parts, " "), s.Context())
}

// fuzzScript builds a script: header bytes, then operations.
func fuzzScript(nodes int, skews [4]byte, flags byte, ops ...[2]byte) []byte {
	b := []byte{byte(nodes - 2), skews[0] | skews[1]<<2 | skews[2]<<4 | skews[3]<<6, flags}
	for _, op := range ops {
		b = append(b, op[0], op[1])
	}
	return b
}

// fzArg packs an operation's node, table (0 sub, 1 ret) and key into its
// second byte; for anti-entropy, j is the peer.
func fzArg(node, table, key int) byte { return byte(node | table<<2 | key<<3) }

func fzPut(node, table, key, value int) [2]byte {
	return [2]byte{byte(opPut | value<<4), fzArg(node, table, key)}
}

func fzDel(node, table, key int) [2]byte { return [2]byte{opDelete, fzArg(node, table, key)} }

func fzDeliverOp(k int, dup bool) [2]byte {
	op := byte(opDeliver)
	if dup {
		op |= 16
	}
	return [2]byte{op, byte(k)}
}

func fzAE(i, j int) [2]byte   { return [2]byte{opAntiEntropy, byte(i | j<<2)} }
func fzTickOp(ms int) [2]byte { return [2]byte{opTick, byte(ms)} }
func fzFlushOp(rev bool) [2]byte {
	if rev {
		return [2]byte{opFlush, 1}
	}
	return [2]byte{opFlush, 0}
}

// fuzzSeeds are scripts for the interesting cases; the fuzzer mutates from
// there.
func fuzzSeeds() [][]byte {
	return [][]byte{
		// Concurrent writes to one key at the same millisecond, crossed
		// deliveries: siblings, LatestWins, one write-back.
		fuzzScript(2, [4]byte{}, 0, fzPut(0, 0, 0, 0), fzPut(1, 0, 0, 1), fzDeliverOp(0, false), fzDeliverOp(0, false)),
		// Three concurrent writers on the "ret" table (non-commutative
		// resolver), deliveries duplicated and reordered.
		fuzzScript(3, [4]byte{1, 0, 3}, 0, fzPut(0, 1, 1, 0), fzPut(1, 1, 1, 1), fzPut(2, 1, 1, 3),
			fzDeliverOp(5, true), fzDeliverOp(3, false), fzDeliverOp(1, true), fzFlushOp(true)),
		// Delete concurrent with a put, then anti-entropy only.
		fuzzScript(3, [4]byte{}, 0, fzPut(0, 0, 2, 0), fzFlushOp(false), fzDel(1, 0, 2), fzPut(2, 0, 2, 1),
			fzTickOp(1), fzAE(1, 2), fzAE(0, 1)),
		// Identical concurrent payloads: they collapse, nothing is
		// written back.
		fuzzScript(4, [4]byte{0, 1, 2, 3}, fzDeliverTail, fzPut(0, 1, 0, 2), fzPut(1, 1, 0, 2), fzPut(2, 1, 0, 2), fzPut(3, 1, 0, 2)),
		// Write, delete, GC after the grace period on one node, while a
		// peer still holds the value (the documented resurrection).
		fuzzScript(2, [4]byte{}, 0, fzPut(0, 0, 0, 0), fzFlushOp(false), fzDel(0, 0, 0),
			[2]byte{opGC | 16, 0}, fzPut(0, 0, 0, 1), fzAE(0, 1)),
		// A node restarts with an empty store and writes a key it wrote
		// before (the counter floor); its old value is still in flight.
		fuzzScript(3, [4]byte{2, 0, 0}, fzDeliverTail, fzPut(0, 0, 1, 0), fzPut(0, 0, 1, 1), fzDeliverOp(0, false),
			[2]byte{opRestart, 0}, fzPut(0, 0, 1, 3), fzAE(0, 2)),
		// Restart, then the restarted node hears a conflict it is
		// designated to resolve.
		fuzzScript(3, [4]byte{}, fzDeliverTail, fzPut(0, 1, 0, 0), fzDel(0, 1, 0), fzPut(1, 1, 0, 1),
			fzDeliverOp(0, false), [2]byte{opRestart, 0}, fzAE(2, 0)),
		// Many writes in one millisecond on one node, lost broadcasts,
		// one bucket for all keys.
		fuzzScript(2, [4]byte{}, 0, fzPut(0, 0, 0, 0), fzPut(0, 0, 1, 1), fzPut(0, 1, 2, 2), fzPut(1, 0, 0, 3),
			[2]byte{opDrop, 0}, [2]byte{opDrop, 1}, [2]byte{opSelfApply, fzArg(0, 0, 0)}),
	}
}
