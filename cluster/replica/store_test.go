package replica

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mendmq/mendmq/cluster/dvv"
)

var t0 = time.UnixMilli(1_700_000_000_000)

func newStore(t testing.TB, node string, mod ...func(*Config)) *Store {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Node = node
	cfg.Buckets = 64
	for _, m := range mod {
		m(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustPut(t testing.TB, s *Store, table, key, value string, now time.Time) Update {
	t.Helper()
	u, err := s.Put(table, key, []byte(value), now)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func getString(s *Store, table, key string) string {
	v, ok := s.Get(table, key)
	if !ok {
		return "<absent>"
	}
	return string(v.Value)
}

func applyAll(s *Store, ds []Delta) []Update {
	var out []Update
	for _, d := range ds {
		out = append(out, s.Apply(d))
	}
	return out
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Config)
		want string // substring of the error, "" for valid
	}{
		{"defaults with node", func(c *Config) {}, ""},
		{"no node", func(c *Config) { c.Node = "" }, "Node is empty"},
		{"long node", func(c *Config) { c.Node = strings.Repeat("n", 2000) }, "Node is 2000 bytes"},
		{"zero buckets", func(c *Config) { c.Buckets = 0 }, "Buckets is 0"},
		{"buckets not power of two", func(c *Config) { c.Buckets = 100 }, "power of two"},
		{"too many buckets", func(c *Config) { c.Buckets = 1 << 17 }, "Buckets"},
		{"no grace", func(c *Config) { c.TombstoneGrace = 0 }, "TombstoneGrace"},
		{"nil resolver", func(c *Config) { c.Resolvers = map[string]Resolver{"ret": nil} }, `Resolvers["ret"] is nil`},
		{"empty table resolver", func(c *Config) { c.Resolvers = map[string]Resolver{"": LatestWins} }, "table name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Node = "n1"
			tc.mod(&cfg)
			err := cfg.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				if _, err := New(cfg); err != nil {
					t.Fatalf("New: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to mention %q", err, tc.want)
			}
			if _, err := New(cfg); err == nil {
				t.Fatal("New accepted an invalid config")
			}
		})
	}
}

func TestPutGetDelete(t *testing.T) {
	s := newStore(t, "a")
	u := mustPut(t, s, "sub", "c1", "v1", t0)
	if !u.Changed() || u.Old.Live() || string(u.New.Value) != "v1" || len(u.Out) != 1 {
		t.Fatalf("first put: %+v", u)
	}
	if u.New.Node != "a" || u.New.TS != t0.UnixMilli() {
		t.Fatalf("metadata %+v", u.New)
	}
	u = mustPut(t, s, "sub", "c1", "v2", t0.Add(time.Second))
	if !u.Changed() || string(u.Old.Value) != "v1" || string(u.New.Value) != "v2" {
		t.Fatalf("second put: %+v", u)
	}
	if got := u.Out[0].Versions.Len(); got != 1 {
		t.Fatalf("overwrite kept %d versions", got)
	}
	if getString(s, "sub", "c1") != "v2" || s.Len("sub") != 1 || s.Len("ret") != 0 {
		t.Fatalf("get %q len %d", getString(s, "sub", "c1"), s.Len("sub"))
	}
	u, _ = s.Delete("sub", "c1", t0.Add(2*time.Second))
	if !u.Changed() || u.New.Live() || len(u.Out) != 1 {
		t.Fatalf("delete: %+v", u)
	}
	if _, ok := s.Get("sub", "c1"); ok || s.Len("sub") != 0 {
		t.Fatal("deleted key still visible")
	}
	// Deleting again, or deleting what never existed, broadcasts nothing.
	for _, key := range []string{"c1", "never"} {
		if u, _ := s.Delete("sub", key, t0.Add(3*time.Second)); len(u.Out) != 0 || u.Changed() {
			t.Fatalf("delete of %s: %+v", key, u)
		}
	}
	if _, err := s.Put("", "k", nil, t0); err == nil {
		t.Fatal("empty table accepted")
	}
	if _, err := s.Put("t", "", nil, t0); err == nil {
		t.Fatal("empty key accepted")
	}
}

func TestTimestampsNeverGoBack(t *testing.T) {
	a, b := newStore(t, "a"), newStore(t, "b")
	u := mustPut(t, a, "t", "k", "from a", t0.Add(time.Hour)) // a's clock is ahead
	applyAll(b, u.Out)
	u = mustPut(t, b, "t", "k", "from b", t0)
	if u.New.TS != t0.Add(time.Hour).UnixMilli() {
		t.Fatalf("overwrite has TS %d, below the version it overwrote", u.New.TS)
	}
}

func TestApplyReplicates(t *testing.T) {
	a, b := newStore(t, "a"), newStore(t, "b")
	u := mustPut(t, a, "ret", "x/y", "hello", t0)
	ups := applyAll(b, u.Out)
	if !ups[0].Changed() || string(ups[0].New.Value) != "hello" || len(ups[0].Out) != 0 {
		t.Fatalf("apply: %+v", ups[0])
	}
	// Idempotent: the same delta again changes nothing.
	if again := applyAll(b, u.Out); again[0].Changed() || len(again[0].Out) != 0 {
		t.Fatalf("re-apply: %+v", again[0])
	}
	// An older delta after a newer one changes nothing either.
	u2 := mustPut(t, a, "ret", "x/y", "bye", t0.Add(time.Second))
	applyAll(b, u2.Out)
	if old := applyAll(b, u.Out); old[0].Changed() || getString(b, "ret", "x/y") != "bye" {
		t.Fatalf("stale delta applied: %q", getString(b, "ret", "x/y"))
	}
	del, _ := a.Delete("ret", "x/y", t0.Add(2*time.Second))
	if ups := applyAll(b, del.Out); !ups[0].Changed() || ups[0].New.Live() {
		t.Fatalf("delete apply: %+v", ups[0])
	}
	if a.Digest().Tables[0].Sums == nil || !digestsEqual(a.Digest(), b.Digest()) {
		t.Fatal("digests differ after full replication")
	}
}

func TestApplyIgnoresInvalid(t *testing.T) {
	s := newStore(t, "a")
	for _, d := range []Delta{
		{Table: "", Key: "k", Versions: dvv.New("b", Sibling{Node: "b"})},
		{Table: "t", Key: "", Versions: dvv.New("b", Sibling{Node: "b"})},
		{Table: "t", Key: "k"},
	} {
		if u := s.Apply(d); u.Changed() || len(u.Out) != 0 {
			t.Fatalf("invalid delta %+v applied: %+v", d, u)
		}
	}
	if len(s.Tables()) != 0 {
		t.Fatalf("tables created: %v", s.Tables())
	}
}

// TestConcurrentWritesResolve: two nodes write the same key concurrently.
// Both must show the same resolved value before the write-back arrives,
// exactly one of them (the designated one) writes back, and afterwards one
// version remains everywhere.
func TestConcurrentWritesResolve(t *testing.T) {
	a, b := newStore(t, "a"), newStore(t, "b")
	ua := mustPut(t, a, "sub", "c", "on a", t0)
	ub := mustPut(t, b, "sub", "c", "on b", t0.Add(5*time.Millisecond))
	ra := applyAll(a, ub.Out)[0]
	rb := applyAll(b, ua.Out)[0]
	// LatestWins: b's later write wins on both nodes.
	if string(ra.New.Value) != "on b" || string(rb.New.Value) != "on b" {
		t.Fatalf("resolved a=%q b=%q", ra.New.Value, rb.New.Value)
	}
	// b wrote the canonically last sibling: b writes back, a does not.
	if len(ra.Out) != 0 || len(rb.Out) != 1 {
		t.Fatalf("write-backs: a %d, b %d", len(ra.Out), len(rb.Out))
	}
	if rb.Out[0].Versions.Len() != 1 || rb.Changed() {
		t.Fatalf("write-back %d versions, changed %v", rb.Out[0].Versions.Len(), rb.Changed())
	}
	final := applyAll(a, rb.Out)[0]
	if final.Changed() || len(final.Out) != 0 {
		t.Fatalf("applying the write-back: %+v", final)
	}
	if !digestsEqual(a.Digest(), b.Digest()) || getString(a, "sub", "c") != "on b" {
		t.Fatal("not converged")
	}
}

// TestConcurrentIdenticalWriteBacks: two nodes resolve the same conflict
// concurrently (they saw different partial sets and both were designated);
// equal resolutions must collapse without further writes.
func TestConcurrentIdenticalWriteBacks(t *testing.T) {
	a, b := newStore(t, "a"), newStore(t, "b")
	// Concurrent versions with identical payloads are one value: no
	// resolver call, no write-back.
	ua := mustPut(t, a, "t", "k", "same", t0)
	ub := mustPut(t, b, "t", "k", "same", t0.Add(time.Millisecond))
	ra, rb := applyAll(a, ub.Out)[0], applyAll(b, ua.Out)[0]
	if len(ra.Out)+len(rb.Out) != 0 || ra.Changed() || rb.Changed() {
		t.Fatalf("identical payloads wrote back: %+v %+v", ra, rb)
	}
	if !digestsEqual(a.Digest(), b.Digest()) {
		t.Fatal("not converged")
	}
}

// TestResolutionOrderIndependent delivers the same concurrent versions in
// every order to fresh nodes, with a resolver that is neither commutative
// nor associative, and requires the same resolved value each time.
func TestResolutionOrderIndependent(t *testing.T) {
	var writes []Delta
	for i, n := range []string{"w1", "w2", "w3", "w4"} {
		w := newStore(t, n)
		u := mustPut(t, w, "ret", "topic", fmt.Sprintf("value-%d", i), t0.Add(time.Duration(i%2)*time.Millisecond))
		writes = append(writes, u.Out...)
	}
	var want string
	perm := []int{0, 1, 2, 3}
	count := 0
	for {
		s := newStore(t, "observer", func(c *Config) { c.Resolvers = map[string]Resolver{"ret": concatResolver} })
		for _, i := range perm {
			s.Apply(writes[i])
		}
		got := getString(s, "ret", "topic")
		if want == "" {
			want = got
			t.Logf("resolved %q", got)
		} else if got != want {
			t.Fatalf("order %v resolved %q, want %q", perm, got, want)
		}
		count++
		if !nextPerm(perm) {
			break
		}
	}
	if count != 24 || !strings.Contains(want, "+") {
		t.Fatalf("%d orders, result %q", count, want)
	}
}

// concatResolver is order-sensitive: it concatenates, so any difference in
// fold order shows in the result.
var concatResolver = ResolverFunc(func(_, _ string, existing, merging Sibling) Sibling {
	return Sibling{Node: merging.Node, TS: merging.TS, Value: []byte(string(existing.Value) + "+" + string(merging.Value))}
})

func nextPerm(p []int) bool {
	i := len(p) - 2
	for i >= 0 && p[i] >= p[i+1] {
		i--
	}
	if i < 0 {
		return false
	}
	j := len(p) - 1
	for p[j] <= p[i] {
		j--
	}
	p[i], p[j] = p[j], p[i]
	slices.Reverse(p[i+1:])
	return true
}

func TestResolverCanDelete(t *testing.T) {
	deleteAll := ResolverFunc(func(_, _ string, existing, merging Sibling) Sibling {
		return Sibling{Node: merging.Node, TS: merging.TS, Deleted: true, Value: []byte("ignored")}
	})
	mod := func(c *Config) { c.DefaultResolver = deleteAll }
	a, b := newStore(t, "a", mod), newStore(t, "b", mod)
	ua := mustPut(t, a, "t", "k", "x", t0)
	ub := mustPut(t, b, "t", "k", "y", t0)
	ra := applyAll(a, ub.Out)[0]
	rb := applyAll(b, ua.Out)[0]
	if ra.New.Live() || rb.New.Live() || ra.New.Value != nil || a.Len("t") != 0 {
		t.Fatalf("resolver delete not honoured: %+v %+v", ra.New, rb.New)
	}
	wb := append(ra.Out, rb.Out...)
	if len(wb) != 1 {
		t.Fatalf("%d write-backs", len(wb))
	}
	applyAll(a, wb)
	applyAll(b, wb)
	if !digestsEqual(a.Digest(), b.Digest()) {
		t.Fatal("not converged")
	}
	// The write-back is a tombstone: GC may collect it once old enough.
	if n := a.GC(t0.Add(25 * time.Hour)); n != 1 {
		t.Fatalf("GC collected %d", n)
	}
}

func TestGC(t *testing.T) {
	a, b := newStore(t, "a"), newStore(t, "b")
	mustPut(t, a, "t", "live", "v", t0)
	up := mustPut(t, a, "t", "gone", "v", t0)
	del, _ := a.Delete("t", "gone", t0.Add(time.Minute))
	applyAll(b, up.Out)
	if n := a.GC(t0.Add(time.Hour)); n != 0 {
		t.Fatalf("GC within grace collected %d", n)
	}
	if n := a.GC(t0.Add(25 * time.Hour)); n != 1 {
		t.Fatalf("GC after grace collected %d, want 1", n)
	}
	if _, ok := a.Get("t", "live"); !ok {
		t.Fatal("live key collected")
	}
	// A late copy of the collected tombstone does not come back...
	if u := applyAll(a, del.Out)[0]; u.Changed() || len(a.EntriesIn("t", allBuckets(a))) != 1 {
		t.Fatalf("expired tombstone re-applied: %+v", u)
	}
	// ...but a peer that missed the delete still holds the value and
	// resurrects it: the documented cost of partitions longer than the
	// grace period.
	for _, d := range b.Snapshot() {
		a.Apply(d)
	}
	if getString(a, "t", "gone") != "v" {
		t.Fatal("expected the documented resurrection")
	}
}

// TestCounterFloorAfterGC: a key written, deleted and collected on one node
// and written again must not be lost to a peer that still holds the old
// tombstone (the re-write must not reuse the old dots).
func TestCounterFloorAfterGC(t *testing.T) {
	a, b := newStore(t, "a"), newStore(t, "b")
	var old []Delta
	for i := 0; i < 5; i++ {
		u := mustPut(t, a, "t", "k", fmt.Sprint(i), t0.Add(time.Duration(i)*time.Millisecond))
		old = u.Out
	}
	del, _ := a.Delete("t", "k", t0.Add(10*time.Millisecond))
	applyAll(b, old)
	applyAll(b, del.Out)
	a.GC(t0.Add(25 * time.Hour)) // b has not collected yet
	fresh := mustPut(t, a, "t", "k", "new", t0.Add(25*time.Hour))
	applyAll(b, fresh.Out)
	for _, d := range b.Snapshot() {
		a.Apply(d)
	}
	if getString(a, "t", "k") != "new" || getString(b, "t", "k") != "new" {
		t.Fatalf("re-write lost: a=%q b=%q", getString(a, "t", "k"), getString(b, "t", "k"))
	}
}

func allBuckets(s *Store) []int {
	out := make([]int, s.cfg.Buckets)
	for i := range out {
		out[i] = i
	}
	return out
}

func digestsEqual(a, b Digest) bool {
	d, err := a.Diff(b)
	return err == nil && len(d) == 0
}

func TestDigestDiffAndEntriesIn(t *testing.T) {
	a, b := newStore(t, "a"), newStore(t, "b")
	for i := 0; i < 200; i++ {
		u := mustPut(t, a, "sub", fmt.Sprintf("c%d", i), "v", t0)
		applyAll(b, u.Out)
	}
	if !digestsEqual(a.Digest(), b.Digest()) {
		t.Fatal("digests differ")
	}
	// b misses two updates and one new table.
	mustPut(t, a, "sub", "c7", "changed", t0.Add(time.Second))
	mustPut(t, a, "sub", "new", "v", t0.Add(time.Second))
	mustPut(t, a, "ret", "r", "v", t0.Add(time.Second))
	diff, err := b.Digest().Diff(a.Digest())
	if err != nil {
		t.Fatal(err)
	}
	if len(diff) != 2 || diff[0].Table != "ret" || diff[1].Table != "sub" || len(diff[1].Buckets) > 2 {
		t.Fatalf("diff %+v", diff)
	}
	var sent int
	for _, bs := range diff {
		ds := a.EntriesIn(bs.Table, bs.Buckets)
		sent += len(ds)
		applyAll(b, ds)
	}
	if !digestsEqual(a.Digest(), b.Digest()) {
		t.Fatal("not repaired")
	}
	if sent > 3+2*200/64+20 {
		t.Fatalf("repair sent %d entries", sent)
	}
	if getString(b, "sub", "c7") != "changed" {
		t.Fatal("c7 not repaired")
	}
	other := newStore(t, "x", func(c *Config) { c.Buckets = 128 })
	if _, err := a.Digest().Diff(other.Digest()); err == nil {
		t.Fatal("diff of different bucket counts accepted")
	}
	if got := a.EntriesIn("nope", []int{0}); got != nil {
		t.Fatalf("entries of unknown table: %v", got)
	}
	if got := a.EntriesIn("sub", []int{-1, 1 << 20}); len(got) != 0 {
		t.Fatalf("entries of out-of-range buckets: %v", got)
	}
}

func TestSnapshotJoin(t *testing.T) {
	a := newStore(t, "a")
	for i := 0; i < 100; i++ {
		mustPut(t, a, "sub", fmt.Sprintf("c%d", i), fmt.Sprint(i), t0)
		mustPut(t, a, "ret", fmt.Sprintf("t/%d", i), fmt.Sprint(i), t0)
	}
	a.Delete("ret", "t/5", t0.Add(time.Second))
	j := newStore(t, "joiner")
	var changed int
	for _, u := range applyAll(j, a.Snapshot()) {
		if u.Changed() {
			changed++
		}
	}
	if changed != 199 || j.Len("sub") != 100 || j.Len("ret") != 99 {
		t.Fatalf("changed %d, sub %d, ret %d", changed, j.Len("sub"), j.Len("ret"))
	}
	if !digestsEqual(a.Digest(), j.Digest()) {
		t.Fatal("snapshot did not converge")
	}
	var keys []string
	j.Range("sub", func(k string, v Sibling) bool {
		keys = append(keys, k)
		return len(keys) < 10
	})
	if len(keys) != 10 {
		t.Fatalf("Range stopped after %d", len(keys))
	}
	if !slices.Equal(j.Tables(), []string{"ret", "sub"}) {
		t.Fatalf("tables %v", j.Tables())
	}
}

func TestValuesAreCopiedOnDecode(t *testing.T) {
	a, b := newStore(t, "a"), newStore(t, "b")
	u := mustPut(t, a, "t", "k", "payload", t0)
	buf := AppendDeltas(nil, u.Out...)
	ds, err := DecodeDeltas(buf)
	if err != nil {
		t.Fatal(err)
	}
	applyAll(b, ds)
	for i := range buf {
		buf[i] = 'X'
	}
	if v, _ := b.Get("t", "k"); !bytes.Equal(v.Value, []byte("payload")) || v.Node != "a" {
		t.Fatalf("decoded value aliased the buffer: %+v", v)
	}
}

// TestCollapseLargeSets checks the map path of collapse against the
// pairwise one.
func TestCollapseLargeSets(t *testing.T) {
	for n := 1; n < 60; n += 7 {
		var ds []dvv.Dotted[Sibling]
		for i := 0; i < n; i++ {
			s := Sibling{TS: int64(i), Value: []byte{byte(i % 5)}, Deleted: i%7 == 3}
			if s.Deleted {
				s.Value = nil
			}
			ds = append(ds, dvv.Dotted[Sibling]{Dot: dvv.Dot{Node: "n", Counter: uint64(i + 1)}, Value: s})
		}
		got := collapse(slices.Clone(ds))
		var want []dvv.Dotted[Sibling]
		for i, d := range ds {
			if !slices.ContainsFunc(ds[i+1:], func(l dvv.Dotted[Sibling]) bool { return samePayload(d.Value, l.Value) }) {
				want = append(want, d)
			}
		}
		if len(got) != len(want) {
			t.Fatalf("n=%d: %d survivors, want %d", n, len(got), len(want))
		}
		for i := range got {
			if got[i].Dot != want[i].Dot {
				t.Fatalf("n=%d: survivor %d is %v, want %v", n, i, got[i].Dot, want[i].Dot)
			}
		}
	}
}

// TestWriteBackAfterRestartKeepsDotsUnique: a node wrote a key twice in
// one millisecond (a put and a delete), restarted with an empty store, and
// then resolves a conflict it is designated for. Its write-back must not
// reuse the dot of its earlier delete, which a peer still holds: equal dots
// with different values look equal to Sync and to the digests, so the
// nodes would disagree for ever. Found by FuzzConvergence.
func TestWriteBackAfterRestartKeepsDotsUnique(t *testing.T) {
	n0, n1, n2 := newStore(t, "n0"), newStore(t, "n1"), newStore(t, "n2")
	put := mustPut(t, n2, "sub", "k", "x", t0.Add(3*time.Millisecond))
	del, _ := n2.Delete("sub", "k", t0.Add(2*time.Millisecond)) // same TS, next counter
	a := mustPut(t, n0, "sub", "k", "a", t0.Add(-time.Millisecond))
	applyAll(n0, put.Out) // n0: {a, x}, n2 designated
	applyAll(n1, a.Out)
	applyAll(n1, del.Out)  // n1: {a, tombstone}, n2 designated
	n2 = newStore(t, "n2") // restart: the delete's dot lives only on n1
	nodes := []*Store{n0, n1, n2}
	for round := 0; round < 3; round++ { // full exchanges, write-backs broadcast
		for i, from := range nodes {
			for j, to := range nodes {
				if i == j {
					continue
				}
				for _, d := range from.Snapshot() {
					wb := to.Apply(d).Out
					for _, s := range nodes {
						applyAll(s, wb)
					}
				}
			}
		}
	}
	want := getString(n0, "sub", "k")
	for i, s := range nodes {
		if got := getString(s, "sub", "k"); got != want {
			t.Errorf("n%d resolves %q, n0 %q (digests equal: %v)", i, got, want, digestsEqual(s.Digest(), n0.Digest()))
		}
	}
}

// TestDeferredResolution walks a Deferred table's conflict through
// Conflict and Resolve: the key keeps its old value while pending, a stale
// resolution is refused, the designated node writes back, a local write
// ends the conflict, and the result equals a synchronous resolver's.
func TestDeferredResolution(t *testing.T) {
	deferred := func(c *Config) { c.Deferred = map[string]bool{"ret": true} }
	pick := ResolverFunc(func(_, _ string, existing, merging Sibling) Sibling {
		if bytes.Compare(existing.Value, merging.Value) > 0 {
			return existing
		}
		return merging
	})
	a, b := newStore(t, "a", deferred), newStore(t, "b", deferred)
	ua := mustPut(t, a, "ret", "k", "zz on a", t0)
	ub := mustPut(t, b, "ret", "k", "aa on b", t0.Add(5*time.Millisecond))

	// On a the key had a value: it keeps it while pending.
	ra := a.Apply(ub.Out[0])
	if !ra.Pending || ra.Changed() || len(ra.Out) != 0 || getString(a, "ret", "k") != "zz on a" {
		t.Fatalf("pending apply on a: %+v, value %q", ra, getString(a, "ret", "k"))
	}
	if got := a.PendingKeys("ret"); !slices.Equal(got, []string{"k"}) {
		t.Fatalf("pending keys %q", got)
	}
	c, ok := a.Conflict("ret", "k")
	if !ok || len(c.Siblings) != 2 || string(c.Siblings[0].Value) != "zz on a" || string(c.Siblings[1].Value) != "aa on b" {
		t.Fatalf("conflict %+v %v", c, ok)
	}
	value := Fold(pick, "ret", "k", c.Siblings)
	if _, ok := a.Resolve("ret", "k", c.Fingerprint+1, value); ok {
		t.Fatal("a resolution for another version set was installed")
	}
	up, ok := a.Resolve("ret", "k", c.Fingerprint, value)
	// b wrote the canonically last sibling, so a does not write back.
	if !ok || string(up.Old.Value) != "zz on a" || string(up.New.Value) != "zz on a" || len(up.Out) != 0 {
		t.Fatalf("resolve on a: %+v %v", up, ok)
	}
	if _, ok := a.Conflict("ret", "k"); ok || len(a.PendingKeys("ret")) != 0 {
		t.Fatal("still pending after Resolve")
	}
	if _, ok := a.Resolve("ret", "k", c.Fingerprint, value); ok {
		t.Fatal("a second Resolve was installed")
	}

	// On b, the designated node, the resolution is written back.
	rb := b.Apply(ua.Out[0])
	cb, _ := b.Conflict("ret", "k")
	if !rb.Pending || cb.Fingerprint != c.Fingerprint {
		t.Fatalf("b: %+v, fingerprint %d vs %d", rb, cb.Fingerprint, c.Fingerprint)
	}
	wb, ok := b.Resolve("ret", "k", cb.Fingerprint, Fold(pick, "ret", "k", cb.Siblings))
	if !ok || len(wb.Out) != 1 || wb.Out[0].Versions.Len() != 1 || string(wb.New.Value) != "zz on a" {
		t.Fatalf("write-back on b: %+v %v", wb, ok)
	}
	if u := a.Apply(wb.Out[0]); u.Pending || u.Changed() {
		t.Fatalf("applying the write-back on a: %+v", u)
	}
	if !digestsEqual(a.Digest(), b.Digest()) {
		t.Fatal("not converged")
	}

	// A synchronous store with the same resolver agrees.
	s := newStore(t, "s", func(c *Config) { c.Resolvers = map[string]Resolver{"ret": pick} })
	applyAll(s, ua.Out)
	applyAll(s, ub.Out)
	if getString(s, "ret", "k") != "zz on a" {
		t.Fatalf("synchronous resolution %q", getString(s, "ret", "k"))
	}

	// A local write supersedes a pending conflict.
	c1, c2 := newStore(t, "c1", deferred), newStore(t, "c2", deferred)
	u1 := mustPut(t, c1, "ret", "x", "one", t0)
	u2 := mustPut(t, c2, "ret", "x", "two", t0)
	if !c1.Apply(u2.Out[0]).Pending {
		t.Fatal("no conflict")
	}
	fp, _ := c1.Conflict("ret", "x")
	w := mustPut(t, c1, "ret", "x", "three", t0.Add(time.Millisecond))
	if w.Pending || getString(c1, "ret", "x") != "three" || len(c1.PendingKeys("ret")) != 0 {
		t.Fatalf("local write over a conflict: %+v", w)
	}
	if _, ok := c1.Resolve("ret", "x", fp.Fingerprint, u1.New); ok {
		t.Fatal("a stale resolution overwrote a local write")
	}
}

func TestDeferredConfig(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Node = "n"
	cfg.Resolvers = map[string]Resolver{"ret": LatestWins}
	cfg.Deferred = map[string]bool{"ret": true}
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "both Resolvers and Deferred") {
		t.Fatalf("error %v", err)
	}
}
