package sdk

import (
	"errors"
	"strings"
	"testing"
)

// run drives a private dispatcher as the wasip1 exports drive std.
func run(t *testing.T, p Policy, mapName string, items []Item, batch bool) []Result {
	t.Helper()
	d := &dispatcher{policy: p}
	req := AppendRequest(nil, mapName, items)
	in := d.alloc(uint32(len(req)))
	copy(in, req)
	out, err := d.handle(in[:len(req)], batch)
	if err != nil {
		t.Fatal(err)
	}
	res, err := DecodeResults(out, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != len(items) {
		t.Fatalf("%d results for %d items", len(res), len(items))
	}
	return res
}

func TestDispatchCallsPolicy(t *testing.T) {
	var seen []string
	p := func(mapName string, merging, existing *EntryView) Result {
		seen = append(seen, mapName+":"+string(merging.Key))
		switch {
		case existing == nil:
			return TakeMerging()
		case string(merging.Key) == "rewrite":
			e := *merging
			e.Value = append([]byte("new-"), existing.Value...)
			return Put(&e)
		}
		return KeepExisting()
	}
	items := sampleItems()
	items = append(items, Item{Merging: sample("rewrite", "m", 1), Existing: sample("rewrite", "e", 2), HasExisting: true})
	res := run(t, p, "orders", items, true)
	want := []Verdict{VerdictTakeMerging, VerdictKeepExisting, VerdictKeepExisting, VerdictPut}
	for i := range want {
		if res[i].Verdict != want[i] {
			t.Errorf("item %d: %s, want %s", i, res[i].Verdict, want[i])
		}
	}
	if string(res[3].Entry.Value) != "new-e" {
		t.Errorf("put value %q", res[3].Entry.Value)
	}
	if strings.Join(seen, ",") != "orders:k,orders:key-7,orders:,orders:rewrite" {
		t.Errorf("calls %v", seen)
	}
}

func TestDispatchRecoversPanics(t *testing.T) {
	var nilMap map[string]int
	cases := map[string]Policy{
		"string":        func(string, *EntryView, *EntryView) Result { panic("boom") },
		"runtime error": func(string, *EntryView, *EntryView) Result { nilMap["x"] = 1; return TakeMerging() },
		"error":         func(string, *EntryView, *EntryView) Result { panic(errors.New("bad")) },
		"other":         func(string, *EntryView, *EntryView) Result { panic(42) },
	}
	for name, p := range cases {
		res := run(t, p, "m", sampleItems()[:2], true)
		for _, r := range res {
			if r.Verdict != VerdictFail || !strings.HasPrefix(r.Reason, "policy panicked: ") {
				t.Errorf("%s: %+v", name, r)
			}
		}
	}
}

func TestDispatchWithoutPolicy(t *testing.T) {
	res := run(t, nil, "m", sampleItems()[:1], false)
	if res[0].Verdict != VerdictFail || !strings.Contains(res[0].Reason, "sdk.Register") {
		t.Fatalf("%+v", res[0])
	}
}

func TestDispatchMergeNeedsOneItem(t *testing.T) {
	d := &dispatcher{policy: func(string, *EntryView, *EntryView) Result { return TakeMerging() }}
	req := AppendRequest(nil, "m", sampleItems())
	if _, err := d.handle(req, false); !errors.Is(err, ErrMalformed) {
		t.Fatalf("merge with 3 items: %v", err)
	}
	if _, err := d.handle([]byte("garbage"), true); !errors.Is(err, ErrMalformed) {
		t.Fatalf("garbage: %v", err)
	}
}

func TestAllocGrowsAndKeeps(t *testing.T) {
	var d dispatcher
	a := d.alloc(10)
	if len(a) < 10 || len(a) < minInput {
		t.Fatalf("alloc(10) gave %d bytes", len(a))
	}
	if b := d.alloc(100); &b[0] != &a[0] {
		t.Fatal("alloc within capacity moved the buffer")
	}
	if c := d.alloc(minInput * 3); len(c) < minInput*3 {
		t.Fatalf("alloc grew to %d", len(c))
	}
}

func TestMapNameCached(t *testing.T) {
	d := &dispatcher{policy: func(string, *EntryView, *EntryView) Result { return KeepExisting() }}
	req := AppendRequest(nil, "orders", sampleItems()[:1])
	if _, err := d.handle(req, false); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := d.handle(req, false); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per merge on the steady path, want 0", allocs)
	}
}

func TestRegister(t *testing.T) {
	defer func() { std.policy = nil }()
	p := func(string, *EntryView, *EntryView) Result { return KeepExisting() }
	Register(p)
	for name, f := range map[string]func(){"twice": func() { Register(p) }, "nil": func() { Register(nil) }} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Register %s did not panic", name)
				}
			}()
			f()
		}()
	}
}
