package routes

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseFilter(t *testing.T) {
	tests := []struct {
		in, group, filter string
		ok                bool
	}{
		{"a/b", "", "a/b", true},
		{"#", "", "#", true},
		{"+", "", "+", true},
		{"a//b", "", "a//b", true},
		{"/", "", "/", true},
		{"a/+/b/#", "", "a/+/b/#", true},
		{"$SYS/#", "", "$SYS/#", true},
		{"", "", "", false},
		{"a/#/b", "", "", false},
		{"a#", "", "", false},
		{"a/b+", "", "", false},
		{"+a", "", "", false},
		{"a\x00b", "", "", false},
		{"$share/g/a/+", "g", "a/+", true},
		{"$share/g//", "g", "/", true},
		{"$share/g/#", "g", "#", true},
		{"$share/g", "", "", false},
		{"$share//a", "", "", false},
		{"$share/g+/a", "", "", false},
		{"$share/g/", "", "", false},
		{"$share/g/a/#/b", "", "", false},
		{"$shared/g/a", "", "$shared/g/a", true},
	}
	for _, tc := range tests {
		g, f, ok := ParseFilter(tc.in)
		if g != tc.group || f != tc.filter || ok != tc.ok {
			t.Errorf("ParseFilter(%q) = %q, %q, %v; want %q, %q, %v", tc.in, g, f, ok, tc.group, tc.filter, tc.ok)
		}
	}
}

// naiveMatch is the twin of the trie walk: MQTT 4.7 matching of one filter
// against one topic, level by level.
func naiveMatch(filter, topic string) bool {
	fl, tl := strings.Split(filter, "/"), strings.Split(topic, "/")
	if strings.HasPrefix(topic, "$") && (fl[0] == "+" || fl[0] == "#") {
		return false
	}
	for i, f := range fl {
		if f == "#" {
			return true
		}
		if i >= len(tl) || (f != "+" && f != tl[i]) {
			return false
		}
	}
	return len(fl) == len(tl)
}

// naive computes Match by scanning every record.
func naive(recs map[string]SessionRecord, topic string) Result {
	nodes := map[string]bool{}
	shared := map[[2]string]map[string]bool{}
	for _, rec := range recs {
		for _, s := range rec.Subs {
			g, f, ok := ParseFilter(s.Filter)
			if !ok || !naiveMatch(f, topic) {
				continue
			}
			if g == "" {
				nodes[rec.Node] = true
				continue
			}
			k := [2]string{g, f}
			if shared[k] == nil {
				shared[k] = map[string]bool{}
			}
			shared[k][rec.Node] = true
		}
	}
	var r Result
	r.Nodes = slices.Sorted(maps.Keys(nodes))
	for _, k := range slices.SortedFunc(maps.Keys(shared), func(a, b [2]string) int {
		if c := strings.Compare(a[0], b[0]); c != 0 {
			return c
		}
		return strings.Compare(a[1], b[1])
	}) {
		r.Shared = append(r.Shared, SharedMatch{Group: k[0], Filter: k[1], Nodes: slices.Sorted(maps.Keys(shared[k]))})
	}
	return r
}

func sameResult(a, b Result) bool {
	if len(a.Nodes) != len(b.Nodes) || len(a.Shared) != len(b.Shared) {
		return false
	}
	if len(a.Nodes) > 0 && !slices.Equal(a.Nodes, b.Nodes) {
		return false
	}
	for i := range a.Shared {
		x, y := a.Shared[i], b.Shared[i]
		if x.Group != y.Group || x.Filter != y.Filter || !slices.Equal(x.Nodes, y.Nodes) {
			return false
		}
	}
	return true
}

func TestMatchSpecExamples(t *testing.T) {
	// Each filter is subscribed by its own client on its own node (named
	// after the filter), so Nodes lists the matching filters.
	filters := []string{
		"sport/tennis/player1/#", "sport/#", "#", "sport/tennis/#", "+/+", "/+", "+",
		"sport/+/player1", "+/tennis/#", "$SYS/#", "$SYS/+/x", "a//b", "a/+/b", "/", "+/",
	}
	ix := NewIndex()
	for i, f := range filters {
		ix.Set(fmt.Sprintf("c%d", i), SessionRecord{Node: f, Subs: []Subscription{{Filter: f}}})
	}
	tests := []struct {
		topic string
		want  []string
	}{
		{"sport/tennis/player1", []string{"#", "+/tennis/#", "sport/#", "sport/+/player1", "sport/tennis/#", "sport/tennis/player1/#"}},
		{"sport/tennis/player1/ranking", []string{"#", "+/tennis/#", "sport/#", "sport/tennis/#", "sport/tennis/player1/#"}},
		{"sport", []string{"#", "+", "sport/#"}},
		{"sport/", []string{"#", "+/", "+/+", "sport/#"}},
		{"/finance", []string{"#", "+/+", "/+"}},
		{"/", []string{"#", "+/", "+/+", "/", "/+"}},
		{"$SYS/monitor/Clients", []string{"$SYS/#"}},
		{"$SYS/a/x", []string{"$SYS/#", "$SYS/+/x"}},
		{"$SYS", []string{"$SYS/#"}},
		{"a//b", []string{"#", "a/+/b", "a//b"}},
		{"a/x/b", []string{"#", "a/+/b"}},
		{"a/b", []string{"#", "+/+"}},
	}
	for _, tc := range tests {
		got := ix.Match(tc.topic)
		if !slices.Equal(got.Nodes, tc.want) || len(got.Shared) != 0 {
			t.Errorf("Match(%q) = %q, want %q", tc.topic, got.Nodes, tc.want)
		}
		for _, f := range filters {
			if want := slices.Contains(tc.want, f); Matches(f, tc.topic) != want || Matches("$share/g/"+f, tc.topic) != want {
				t.Errorf("Matches(%q, %q) = %v, want %v", f, tc.topic, !want, want)
			}
		}
	}
}

func TestMatchShared(t *testing.T) {
	ix := NewIndex()
	ix.Set("c1", SessionRecord{Node: "n1", Subs: []Subscription{{Filter: "$share/g1/a/+"}, {Filter: "a/b"}}})
	ix.Set("c2", SessionRecord{Node: "n2", Subs: []Subscription{{Filter: "$share/g1/a/+"}, {Filter: "$share/g2/#"}}})
	ix.Set("c3", SessionRecord{Node: "n2", Subs: []Subscription{{Filter: "$share/g1/a/+"}, {Filter: "$share/g1/a/b"}}})
	ix.Set("c4", SessionRecord{Node: "n3", Subs: []Subscription{{Filter: "$share/g2/#"}, {Filter: "bad/#/x"}}})

	want := Result{
		Nodes: []string{"n1"},
		Shared: []SharedMatch{
			{Group: "g1", Filter: "a/+", Nodes: []string{"n1", "n2"}},
			{Group: "g1", Filter: "a/b", Nodes: []string{"n2"}},
			{Group: "g2", Filter: "#", Nodes: []string{"n2", "n3"}},
		},
	}
	if got := ix.Match("a/b"); !sameResult(got, want) {
		t.Fatalf("Match = %+v\nwant    %+v", got, want)
	}
	if got := ix.Match("$x"); len(got.Nodes)+len(got.Shared) != 0 {
		t.Fatalf("$ topic matched shared wildcard: %+v", got)
	}
	wantCounts := map[string]int{"n1": 2, "n2": 4, "n3": 1}
	if got := ix.NodeCounts(); !maps.Equal(got, wantCounts) {
		t.Fatalf("NodeCounts = %v, want %v", got, wantCounts)
	}
	if rec, ok := ix.Session("c4"); !ok || len(rec.Subs) != 2 {
		t.Fatalf("Session(c4) = %+v, %v (invalid filters stay in the record)", rec, ok)
	}
}

// randomFilter and randomTopic draw from a small alphabet so that matches,
// empty levels, '$' topics and shared groups are frequent.
var levels = []string{"a", "b", "c", "", "$s"}

func randomTopic(rng *rand.Rand) string {
	n := 1 + rng.IntN(4)
	ls := make([]string, n)
	for i := range ls {
		ls[i] = levels[rng.IntN(len(levels))]
	}
	return strings.Join(ls, "/")
}

func randomFilter(rng *rand.Rand) string {
	n := 1 + rng.IntN(4)
	ls := make([]string, n)
	for i := range ls {
		switch rng.IntN(6) {
		case 0:
			ls[i] = "+"
		case 1:
			ls[i] = "#"
			if rng.IntN(4) != 0 { // mostly valid: '#' last
				ls = ls[:i+1]
			}
		default:
			ls[i] = levels[rng.IntN(len(levels))]
		}
		if ls[len(ls)-1] == "#" && len(ls) == i+1 {
			break
		}
	}
	f := strings.Join(ls, "/")
	if rng.IntN(4) == 0 {
		f = fmt.Sprintf("$share/g%d/%s", rng.IntN(3), f)
	}
	return f
}

func randomRecord(rng *rand.Rand, nodes []string) SessionRecord {
	rec := SessionRecord{Node: nodes[rng.IntN(len(nodes))]}
	for k := rng.IntN(5); k > 0; k-- {
		rec.Subs = append(rec.Subs, Subscription{Filter: randomFilter(rng), QoS: byte(rng.IntN(3))})
	}
	return rec
}

// TestMatchAgainstNaive applies random Set/Delete sequences and compares
// every Match with a scan of all records, then removes everything and checks
// that the trie is pruned back to an empty root.
func TestMatchAgainstNaive(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	nodes := []string{"n1", "n2", "n3"}
	for run := 0; run < 30; run++ {
		ix := NewIndex()
		recs := map[string]SessionRecord{}
		for step := 0; step < 200; step++ {
			c := fmt.Sprintf("c%d", rng.IntN(20))
			switch rng.IntN(5) {
			case 0:
				ix.Delete(c)
				delete(recs, c)
			case 1: // same node, one subscription more or less
				rec := recs[c]
				if rec.Node == "" {
					rec.Node = nodes[0]
				}
				subs := slices.Clone(rec.Subs)
				if len(subs) > 0 && rng.IntN(2) == 0 {
					subs = slices.Delete(subs, 0, 1)
				} else {
					subs = append(subs, Subscription{Filter: randomFilter(rng)})
				}
				rec.Subs = subs
				ix.Set(c, rec)
				recs[c] = rec
			default:
				rec := randomRecord(rng, nodes)
				ix.Set(c, rec)
				recs[c] = rec
			}
			for k := 0; k < 5; k++ {
				topic := randomTopic(rng)
				got, want := ix.Match(topic), naive(recs, topic)
				if !sameResult(got, want) {
					t.Fatalf("run %d step %d: Match(%q) = %+v, want %+v", run, step, topic, got, want)
				}
			}
		}
		for c := range recs {
			ix.Delete(c)
		}
		if !ix.root.empty() || len(ix.perNode) != 0 || ix.Sessions() != 0 {
			t.Fatalf("run %d: index not empty after deleting all: root %+v counts %v", run, ix.root, ix.perNode)
		}
	}
}

func TestMatchIntoReuse(t *testing.T) {
	ix := NewIndex()
	ix.Set("c1", SessionRecord{Node: "n1", Subs: []Subscription{{Filter: "$share/g/a"}, {Filter: "$share/h/#"}, {Filter: "a"}}})
	ix.Set("c2", SessionRecord{Node: "n2", Subs: []Subscription{{Filter: "$share/g/a"}}})
	var r Result
	ix.MatchInto("a", &r)
	if len(r.Shared) != 2 || len(r.Nodes) != 1 {
		t.Fatalf("first match %+v", r)
	}
	ix.MatchInto("b", &r)
	want := Result{Shared: []SharedMatch{{Group: "h", Filter: "#", Nodes: []string{"n1"}}}}
	if !sameResult(r, want) {
		t.Fatalf("reused match %+v, want %+v", r, want)
	}
	ix.MatchInto("a", &r)
	if !sameResult(r, naive(map[string]SessionRecord{"c1": ix.clients["c1"], "c2": ix.clients["c2"]}, "a")) {
		t.Fatalf("third match %+v", r)
	}
}

// TestConcurrentMatch runs publishers against an updater; -race checks the
// locking, and every answer must be one the index could give at some point.
func TestConcurrentMatch(t *testing.T) {
	ix := NewIndex()
	ix.Set("stable", SessionRecord{Node: "n0", Subs: []Subscription{{Filter: "t/#"}}})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := 0; w < 3; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var r Result
			for i := 0; i < 20000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ix.MatchInto("t/x", &r)
				if !slices.Contains(r.Nodes, "n0") {
					t.Errorf("stable subscription missing: %+v", r)
					return
				}
			}
		}()
	}
	rng := rand.New(rand.NewPCG(3, 3))
	for i := 0; i < 3000; i++ {
		c := fmt.Sprintf("c%d", rng.IntN(50))
		if rng.IntN(3) == 0 {
			ix.Delete(c)
		} else {
			ix.Set(c, SessionRecord{Node: fmt.Sprintf("n%d", 1+rng.IntN(3)), Subs: []Subscription{{Filter: "t/+"}, {Filter: "$share/g/t/#"}}})
		}
	}
	close(stop)
	wg.Wait()
}

// FuzzMatch compares the trie with the naive matcher for one filter and one
// topic at a time.
func FuzzMatch(f *testing.F) {
	for _, s := range [][2]string{{"a/#", "a"}, {"+/+", "/"}, {"$share/g/+", "$x"}, {"#", "$SYS/x"}, {"a//b", "a//b"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, filter, topic string) {
		if topic == "" || strings.ContainsAny(topic, "+#\x00") {
			return // not a valid topic name
		}
		ix := NewIndex()
		ix.Set("c", SessionRecord{Node: "n", Subs: []Subscription{{Filter: filter}}})
		recs := map[string]SessionRecord{"c": ix.clients["c"]}
		if got, want := ix.Match(topic), naive(recs, topic); !sameResult(got, want) {
			t.Fatalf("Match(%q) with %q = %+v, want %+v", topic, filter, got, want)
		}
		_, f, valid := ParseFilter(filter)
		if got, want := Matches(filter, topic), valid && naiveMatch(f, topic); got != want {
			t.Fatalf("Matches(%q, %q) = %v, want %v", filter, topic, got, want)
		}
		ix.Delete("c")
		if !ix.root.empty() {
			t.Fatalf("trie not pruned for %q", filter)
		}
	})
}

func TestResultIsDeterministic(t *testing.T) {
	ix := NewIndex()
	for i := 0; i < 30; i++ {
		ix.Set(fmt.Sprintf("c%d", i), SessionRecord{Node: fmt.Sprintf("n%d", i%7), Subs: []Subscription{
			{Filter: fmt.Sprintf("$share/g%d/x/#", i%4)}, {Filter: "x/+"},
		}})
	}
	first := ix.Match("x/y")
	for i := 0; i < 20; i++ {
		if got := ix.Match("x/y"); !reflect.DeepEqual(got, first) {
			t.Fatalf("Match differs between calls: %+v vs %+v", got, first)
		}
	}
}

// benchIndex builds 100k subscriptions over 5 nodes shaped like a device
// fleet: each client one private command filter, plus a few hundred
// wildcard and shared subscriptions from back-end services.
func benchIndex(b *testing.B) *Index {
	ix := NewIndex()
	for i := 0; i < 100000; i++ {
		node := fmt.Sprintf("node-%d", i%5)
		subs := []Subscription{{Filter: fmt.Sprintf("devices/%d/cmd/#", i)}}
		switch {
		case i%1000 == 0:
			subs = append(subs, Subscription{Filter: "devices/+/telemetry"})
		case i%997 == 0:
			subs = append(subs, Subscription{Filter: fmt.Sprintf("$share/svc%d/devices/+/telemetry", i%3)})
		case i%991 == 0:
			subs = append(subs, Subscription{Filter: "#"})
		}
		ix.Set(fmt.Sprintf("client-%d", i), SessionRecord{Node: node, Subs: subs})
	}
	return ix
}

func BenchmarkMatch100k(b *testing.B) {
	ix := benchIndex(b)
	topics := make([]string, 1024)
	for i := range topics {
		if i%2 == 0 {
			topics[i] = fmt.Sprintf("devices/%d/telemetry", i*97)
		} else {
			topics[i] = fmt.Sprintf("devices/%d/cmd/reboot", i*97)
		}
	}
	var r Result
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		ix.MatchInto(topics[i&1023], &r)
	}
}

func BenchmarkMatch100kParallel(b *testing.B) {
	ix := benchIndex(b)
	topics := make([]string, 1024)
	for i := range topics {
		topics[i] = fmt.Sprintf("devices/%d/telemetry", i*97)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var r Result
		i := 0
		for pb.Next() {
			ix.MatchInto(topics[i&1023], &r)
			i++
		}
	})
}

func BenchmarkSet100k(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		benchIndex(b)
	}
}
