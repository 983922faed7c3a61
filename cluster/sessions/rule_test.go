package sessions

import (
	"testing"
	"time"

	"github.com/mendmq/mendmq/cluster/hlc"
	"github.com/mendmq/mendmq/cluster/replica"
	"github.com/mendmq/mendmq/cluster/routes"
)

func stamp(wall int64, logical uint32) hlc.Timestamp {
	return hlc.Timestamp{Wall: wall, Logical: logical}
}

// live is a sibling holding rec, written by rec.Node at wall-clock ts.
func live(t *testing.T, rec routes.SessionRecord, ts int64) replica.Sibling {
	t.Helper()
	b, err := rec.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return replica.Sibling{Node: rec.Node, TS: ts, Value: b}
}

func tomb(node string, ts int64) replica.Sibling {
	return replica.Sibling{Node: node, TS: ts, Deleted: true}
}

func garbage(node string, ts int64) replica.Sibling {
	return replica.Sibling{Node: node, TS: ts, Value: []byte{0xff}}
}

// TestResolver is the rule, one case per line: which of two concurrent
// versions of a client id's record survives, in both argument orders.
func TestResolver(t *testing.T) {
	a := routes.SessionRecord{Node: "n1", Connect: stamp(10_000, 0)}
	aSubscribedLater := routes.SessionRecord{Node: "n1", Connect: stamp(10_000, 0), Subs: []routes.Subscription{{Filter: "t/#", QoS: 1}}}
	b := routes.SessionRecord{Node: "n2", Connect: stamp(10_000, 1)}
	bSameStamp := routes.SessionRecord{Node: "n2", Connect: stamp(10_000, 0)}
	unknown := routes.SessionRecord{Node: "n3"}
	tests := []struct {
		name     string
		x, y     replica.Sibling
		wantNode string // the winner's writer
		wantDel  bool
	}{
		// n1's record was rewritten during the split by a clock 10 s
		// ahead (a later TS), but its CONNECT is older: n2 wins.
		{"later CONNECT beats later write", live(t, aSubscribedLater, 20_000), live(t, b, 5_000), "n2", false},
		{"later CONNECT wins", live(t, a, 1), live(t, b, 2), "n2", false},
		{"same stamp: larger node", live(t, a, 9), live(t, bSameStamp, 1), "n2", false},
		{"unknown stamp loses", live(t, unknown, 99_999), live(t, a, 1), "n1", false},
		{"live beats later tombstone", live(t, a, 1), tomb("n2", 50_000), "n1", false},
		{"live beats earlier tombstone", live(t, b, 50_000), tomb("n1", 1), "n2", false},
		{"decodable beats undecodable", garbage("n3", 50_000), live(t, a, 1), "n1", false},
		{"undecodable vs tombstone: latest write", garbage("n3", 2), tomb("n1", 1), "n3", false},
		{"two tombstones: latest write", tomb("n1", 5), tomb("n2", 4), "n1", true},
		{"same CONNECT twice: latest write", live(t, a, 3), live(t, aSubscribedLater, 4), "n1", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, order := range [][2]replica.Sibling{{tc.x, tc.y}, {tc.y, tc.x}} {
				got := Resolver.Resolve(Table, "c", order[0], order[1])
				if got.Node != tc.wantNode || got.Deleted != tc.wantDel {
					t.Errorf("Resolve(%s@%d, %s@%d) = %s@%d deleted=%v, want %s deleted=%v", order[0].Node, order[0].TS,
						order[1].Node, order[1].TS, got.Node, got.TS, got.Deleted, tc.wantNode, tc.wantDel)
				}
			}
		})
	}
}

// TestStoresConvergeOnRule: two replica stores write concurrent records
// of one client id with skewed wall clocks (the store that connected
// later is 10 s behind), exchange their deltas in either order and both
// resolve to the later CONNECT.
func TestStoresConvergeOnRule(t *testing.T) {
	newStore := func(node string) *replica.Store {
		rc := replica.DefaultConfig()
		rc.Node = node
		rc.Resolvers = map[string]replica.Resolver{Table: Resolver}
		s, err := replica.New(rc)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	put := func(s *replica.Store, rec routes.SessionRecord, wall int64) []replica.Delta {
		b, err := rec.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		up, err := s.Put(Table, "c", b, time.UnixMilli(wall))
		if err != nil {
			t.Fatal(err)
		}
		return up.Out
	}
	s1, s2 := newStore("n1"), newStore("n2")
	// n1 (clock +5 s) stamped its CONNECT first and rewrote the record
	// later; n2 (clock -5 s) saw n1's stamp before the split, so its
	// CONNECT's stamp is later although its wall clock reads earlier.
	d1 := put(s1, routes.SessionRecord{Node: "n1", Connect: stamp(105_000, 0), Subs: []routes.Subscription{{Filter: "x"}}}, 130_000)
	d2 := put(s2, routes.SessionRecord{Node: "n2", Connect: stamp(105_000, 1)}, 97_000)
	for _, d := range d2 {
		s1.Apply(d)
	}
	for _, d := range d1 {
		s2.Apply(d)
	}
	for _, s := range []*replica.Store{s1, s2} {
		v, ok := s.Get(Table, "c")
		if !ok {
			t.Fatalf("%s: no record", s.Node())
		}
		rec, err := routes.DecodeRecord(v.Value)
		if err != nil || rec.Node != "n2" {
			t.Errorf("%s resolved to %+v (%v), want n2's session", s.Node(), rec, err)
		}
	}
}
