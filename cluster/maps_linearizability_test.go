package cluster_test

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/mendmq/mendmq/cluster"
	"github.com/mendmq/mendmq/cluster/clustertest"
	"github.com/mendmq/mendmq/cluster/pmap"
)

// kvInput is one map operation of the linearizability history.
type kvInput struct {
	op    string // "put", "get", "delete"
	key   string
	value string // put
}

// kvOutput is what the operation returned; unknown: it failed, so it may
// or may not have taken effect (its return is then at the end of time,
// where a linearization can put it last: as if it had not happened).
type kvOutput struct {
	value   string // get: "" when absent
	found   bool   // get, delete
	unknown bool
}

// kvModel is a map of string keys, one partition of the history per key
// (each key is a register of its own).
var kvModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(kvInput).key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		var out [][]porcupine.Operation
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		s, in, out := state.(string), input.(kvInput), output.(kvOutput)
		switch in.op {
		case "put":
			return true, in.value
		case "get":
			return out.value == s && out.found == (s != ""), s
		default: // delete
			return out.unknown || out.found == (s != ""), ""
		}
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(kvInput), output.(kvOutput)
		if out.unknown {
			return fmt.Sprintf("%s(%s %s) -> ?", in.op, in.key, in.value)
		}
		return fmt.Sprintf("%s(%s %s) -> %q %v", in.op, in.key, in.value, out.value, out.found)
	},
}

// TestMapLinearizable: concurrent puts, gets and deletes of a few keys,
// each sent to a random member, while a member joins (partitions migrate
// to it) and another leaves (its backups are promoted), form a
// linearizable history (checked with porcupine): the map is one copy per
// key to its clients, whichever node they ask, as long as the cluster is
// not split. (During a netsplit it is not, by design: each side serves
// and the heal merges.)
func TestMapLinearizable(t *testing.T) {
	t.Parallel()
	nw := clustertest.New(t, clustertest.Config{})
	nodes, seed := startSeeded(t, nw, 3, nil)
	waitFor(t, 15*time.Second, "the maps to settle", settled(nodes...))

	var (
		mu      sync.Mutex
		history []porcupine.Operation
		live    = append([]*cluster.Node(nil), nodes...)
		seq     atomic.Int64
		stop    = make(chan struct{})
		wg      sync.WaitGroup
		start   = time.Now()
		errs    atomic.Int64
	)
	now := func() int64 { return int64(time.Since(start)) }
	pick := func(rng *rand.Rand) *cluster.Node {
		mu.Lock()
		defer mu.Unlock()
		return live[rng.IntN(len(live))]
	}
	keys := []string{"k0", "k1", "k2"}
	const clients = 6
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(c), 7))
			for ops := 0; ops < 100_000; ops++ {
				select {
				case <-stop:
					return
				default:
				}
				n := pick(rng)
				in := kvInput{key: keys[rng.IntN(len(keys))]}
				switch r := rng.IntN(10); {
				case r < 4:
					in.op, in.value = "put", fmt.Sprint("v", seq.Add(1))
				case r < 9:
					in.op = "get"
				default:
					in.op = "delete"
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				call := now()
				var out kvOutput
				var err error
				switch in.op {
				case "put":
					_, err = n.Maps().Put(ctx, "lin", in.key, []byte(in.value), 0)
				case "get":
					var got pmap.Entry
					got, out.found, err = n.Maps().Get(ctx, "lin", in.key)
					out.value = string(got.Value)
				case "delete":
					out.found, err = n.Maps().Delete(ctx, "lin", in.key)
				}
				ret := now()
				cancel()
				if err != nil {
					errs.Add(1)
					if in.op == "get" {
						continue // a failed read tells nothing
					}
					out, ret = kvOutput{unknown: true}, math.MaxInt64
				}
				mu.Lock()
				history = append(history, porcupine.Operation{ClientId: c, Input: in, Call: call, Output: out, Return: ret, Metadata: n.Name()})
				mu.Unlock()
			}
		}()
	}

	// Each phase runs until the clients recorded phaseOps more operations
	// (not for a time: a slow machine gets as much history per phase).
	const phaseOps = 2000
	recorded := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(history)
	}
	more := func(what string) {
		t.Helper()
		want := recorded() + phaseOps
		waitFor(t, 30*time.Second, what, func() (bool, string) {
			got := recorded()
			return got >= want, fmt.Sprintf("%d of %d operations", got, want)
		})
	}
	more("operations on the 3 members")
	// A member joins: partitions migrate to it while clients run.
	joined := now()
	n4, _ := startNode(t, nw, "n4", seed, nil)
	waitFor(t, 20*time.Second, "n4's partitions to migrate", settled(append(nodes, n4)...))
	mu.Lock()
	live = append(live, n4)
	mu.Unlock()
	more("operations on the 4 members")
	// A member leaves: the others promote their backups of its partitions.
	mu.Lock()
	live = []*cluster.Node{nodes[0], nodes[2], n4}
	mu.Unlock()
	left := now()
	if err := nodes[1].Stop(); err != nil {
		t.Fatalf("stop n2: %v", err)
	}
	waitFor(t, 20*time.Second, "the maps to settle without n2", settled(nodes[0], nodes[2], n4))
	more("operations after the leave")
	close(stop)
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	after := 0
	for _, op := range history {
		if op.Call > left {
			after++
		}
	}
	if len(history) < 200 || after < 20 {
		t.Fatalf("only %d operations recorded (%d after the leave, %d failed): too few to check", len(history), after, errs.Load())
	}
	res, info := porcupine.CheckOperationsVerbose(kvModel, history, time.Minute)
	t.Logf("%d operations (%d after the leave; %d failed, their effect unknown), 3 keys, 6 clients, a join and a leave: %v", len(history), after, errs.Load(), res)
	switch res {
	case porcupine.Ok:
	case porcupine.Unknown:
		t.Fatalf("linearizability check timed out on %d operations", len(history))
	default:
		// Kept after the test (not in t.TempDir): the evidence.
		f, err := os.CreateTemp("", "mendmq-map-history-*.html")
		if err == nil {
			err = porcupine.Visualize(kvModel, info, f)
			_ = f.Close()
		}
		if err != nil {
			t.Logf("visualize: %v", err)
		}
		for _, st := range staleReads(history, 5) {
			t.Log(st)
		}
		t.Logf("n4 joined at %v, n2 left at %v", time.Duration(joined), time.Duration(left))
		t.Fatalf("map history is not linearizable; see %s", f.Name())
	}
}

// TestKVModel: the model accepts what a single copy does and rejects a
// stale read, so TestMapLinearizable can fail.
func TestKVModel(t *testing.T) {
	op := func(in kvInput, out kvOutput, call, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: in, Output: out, Call: call, Return: ret}
	}
	put := kvInput{op: "put", key: "k", value: "v1"}
	get := kvInput{op: "get", key: "k"}
	for _, c := range []struct {
		name    string
		history []porcupine.Operation
		want    bool
	}{
		{"read after write", []porcupine.Operation{op(put, kvOutput{}, 0, 10), op(get, kvOutput{value: "v1", found: true}, 20, 30)}, true},
		{"stale read after write", []porcupine.Operation{op(put, kvOutput{}, 0, 10), op(get, kvOutput{}, 20, 30)}, false},
		{"concurrent read may miss", []porcupine.Operation{op(put, kvOutput{}, 0, 10), op(get, kvOutput{}, 5, 30)}, true},
		{"failed put may not apply", []porcupine.Operation{op(put, kvOutput{unknown: true}, 0, math.MaxInt64), op(get, kvOutput{}, 20, 30)}, true},
		{"delete of nothing found", []porcupine.Operation{op(kvInput{op: "delete", key: "k"}, kvOutput{found: true}, 0, 10)}, false},
	} {
		if got := porcupine.CheckOperations(kvModel, c.history); got != c.want {
			t.Errorf("%s: linearizable %v, want %v", c.name, got, c.want)
		}
	}
}

// staleReads finds, to explain a failed check, up to limit reads that
// returned a value overwritten before they began (the put of the value
// returned before another write began, which returned before the read),
// or nothing though a put returned before they began and no delete
// overlapped the two.
func staleReads(history []porcupine.Operation, limit int) []string {
	type writes struct {
		ops     []porcupine.Operation // puts and deletes by Return
		maxCall []int64               // max Call of ops[:i+1]
	}
	byKey := map[string]*writes{}
	puts := map[string]porcupine.Operation{} // value -> its put
	for _, op := range history {
		in := op.Input.(kvInput)
		if in.op == "put" {
			puts[in.value] = op
		}
		if in.op != "get" && !op.Output.(kvOutput).unknown {
			w := byKey[in.key]
			if w == nil {
				w = &writes{}
				byKey[in.key] = w
			}
			w.ops = append(w.ops, op)
		}
	}
	for _, w := range byKey {
		slices.SortFunc(w.ops, func(a, b porcupine.Operation) int { return cmp.Compare(a.Return, b.Return) })
		var m int64
		for _, op := range w.ops {
			m = max(m, op.Call)
			w.maxCall = append(w.maxCall, m)
		}
	}
	describe := func(op porcupine.Operation) string {
		in := op.Input.(kvInput)
		return fmt.Sprintf("%s %s %q on %v [%v, %v]", in.op, in.key, in.value, op.Metadata, time.Duration(op.Call), time.Duration(op.Return))
	}
	var out []string
	for _, r := range history {
		in, o := r.Input.(kvInput), r.Output.(kvOutput)
		w := byKey[in.key]
		if w == nil || o.unknown || (in.op != "get" && (in.op != "delete" || o.found)) {
			continue
		}
		// The writes that returned before r began: w.ops[:k].
		k, _ := slices.BinarySearchFunc(w.ops, r.Call, func(op porcupine.Operation, t int64) int { return cmp.Compare(op.Return, t) })
		if k == 0 {
			continue
		}
		if o.found {
			src := puts[o.value]
			if w.maxCall[k-1] > src.Return {
				out = append(out, fmt.Sprintf("%s returned %q (%s), overwritten before it began", describe(r), o.value, describe(src)))
			}
		} else if last := w.ops[k-1]; last.Input.(kvInput).op == "put" {
			overlapped := false
			for _, d := range w.ops {
				if d.Input.(kvInput).op == "delete" && d.Call < r.Return && d.Return > last.Call {
					overlapped = true
					break
				}
			}
			if !overlapped {
				out = append(out, fmt.Sprintf("%s found nothing after %s", describe(r), describe(last)))
			}
		}
		if len(out) >= limit {
			break
		}
	}
	return out
}
