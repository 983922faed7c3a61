package pmap

import (
	"slices"
	"testing"
)

// TestPlanHeal: a table holds the members of the node's lineage only; a
// node merges into the biggest bigger side it meets and takes into its
// table that side's members and the newcomers that finished merging into
// it — not itself until its own merge is sent.
func TestPlanHeal(t *testing.T) {
	side9 := side{lineage: Lineage{Hash: 9, Size: 2}, members: []string{"n1", "n2"}}
	for _, tc := range []struct {
		name        string
		self        string
		mine        Lineage
		merging     bool
		cur, alive  []string
		sides       map[string]side
		wantWinner  *Lineage
		wantMembers []string
	}{
		{
			name: "a newcomer still merging into a bigger lineage is not a side to merge into",
			self: "n1", mine: Lineage{Hash: 2, Size: 2}, cur: []string{"n1", "n2"}, alive: []string{"n1", "n2", "n3"},
			sides:       map[string]side{"n3": {lineage: Lineage{Hash: 9, Size: 2}, members: []string{"n3"}, merging: true}},
			wantMembers: []string{"n1", "n2"},
		},
		{
			name: "a smaller newcomer is left out until it merged",
			self: "n1", mine: Lineage{Hash: 3, Size: 1}, cur: []string{"n1"}, alive: []string{"n1", "n3"},
			sides:       map[string]side{"n3": {lineage: Lineage{Hash: 1, Size: 1}, members: []string{"n3"}}},
			wantMembers: []string{"n1"},
		},
		{
			name: "a newcomer that merged into this lineage is taken in",
			self: "n1", mine: Lineage{Hash: 3, Size: 1}, cur: []string{"n1"}, alive: []string{"n1", "n2", "n3"},
			sides: map[string]side{
				"n2": {lineage: Lineage{Hash: 3, Size: 1}, members: []string{"n1", "n2"}},
				"n3": {lineage: Lineage{Hash: 1, Size: 1}, members: []string{"n3"}},
			},
			wantMembers: []string{"n1", "n2"},
		},
		{
			name: "a newcomer that does not answer is left out",
			self: "n1", mine: Lineage{Hash: 3, Size: 2}, cur: []string{"n1", "n2"}, alive: []string{"n1", "n2", "n3"},
			wantMembers: []string{"n1", "n2"},
		},
		{
			name: "members lost are gone from the table",
			self: "n1", mine: Lineage{Hash: 3, Size: 3}, cur: []string{"n1", "n2", "n3"}, alive: []string{"n1", "n3"},
			wantMembers: []string{"n1", "n3"},
		},
		{
			name: "a bigger side: its members and its merged newcomers, not this node's own side",
			self: "n3", mine: Lineage{Hash: 2, Size: 2}, cur: []string{"n3", "n4"}, alive: []string{"n1", "n2", "n3", "n4", "n5"},
			sides: map[string]side{
				"n1": side9,
				"n2": side9,
				"n5": {lineage: Lineage{Hash: 9, Size: 3}, members: []string{"n1", "n2", "n5"}},
			},
			wantWinner: &Lineage{Hash: 9, Size: 3}, wantMembers: []string{"n1", "n2", "n5"},
		},
		{
			name: "the biggest of the bigger sides: more members first, then the bigger hash",
			self: "n3", mine: Lineage{Hash: 1, Size: 1}, cur: []string{"n3"}, alive: []string{"n1", "n2", "n3"},
			sides: map[string]side{
				"n1": {lineage: Lineage{Hash: 5, Size: 1}, members: []string{"n1"}},
				"n2": {lineage: Lineage{Hash: 4, Size: 2}, members: []string{"n2", "n4"}},
			},
			wantWinner: &Lineage{Hash: 4, Size: 2}, wantMembers: []string{"n2"},
		},
		{
			name: "same size: the bigger hash",
			self: "n2", mine: Lineage{Hash: 2, Size: 1}, cur: []string{"n2"}, alive: []string{"n1", "n2"},
			sides:      map[string]side{"n1": {lineage: Lineage{Hash: 3, Size: 1}, members: []string{"n1"}}},
			wantWinner: &Lineage{Hash: 3, Size: 1}, wantMembers: []string{"n1"},
		},
		{
			name: "a member of the bigger side this node does not see is left out",
			self: "n3", mine: Lineage{Hash: 2, Size: 1}, cur: []string{"n3"}, alive: []string{"n1", "n3"},
			sides:      map[string]side{"n1": side9},
			wantWinner: &side9.lineage, wantMembers: []string{"n1"},
		},
		{
			name: "a newcomer still merging into this lineage is left out",
			self: "n1", mine: Lineage{Hash: 9, Size: 2}, cur: []string{"n1", "n2"}, alive: []string{"n1", "n2", "n3"},
			sides:       map[string]side{"n3": {lineage: Lineage{Hash: 9, Size: 2}, members: []string{"n1", "n2"}, merging: true}},
			wantMembers: []string{"n1", "n2"},
		},
		{
			name: "this node, still merging, stays out of the table it merges into",
			self: "n3", mine: Lineage{Hash: 9, Size: 2}, merging: true, cur: []string{"n1", "n2"}, alive: []string{"n1", "n2", "n3"},
			wantMembers: []string{"n1", "n2"},
		},
		{
			name: "this node, merge sent, takes itself in",
			self: "n3", mine: Lineage{Hash: 9, Size: 2}, cur: []string{"n1", "n2"}, alive: []string{"n1", "n2", "n3"},
			wantMembers: []string{"n1", "n2", "n3"},
		},
		{
			name: "a bigger side's newcomer still merging into it is not taken in by a node merging now",
			self: "n4", mine: Lineage{Hash: 2, Size: 1}, cur: []string{"n4"}, alive: []string{"n1", "n2", "n3", "n4"},
			sides: map[string]side{
				"n1": side9,
				"n3": {lineage: side9.lineage, members: []string{"n1", "n2"}, merging: true},
			},
			wantWinner: &side9.lineage, wantMembers: []string{"n1", "n2"},
		},
		{
			// The split healed before n3 saw n1 and n2 gone: its table
			// still has all three and it reports the whole cluster's
			// lineage and size, bigger than it is alone.
			name: "the side this one split from, whose table still counts this node, is not one to merge into",
			self: "n1", mine: Lineage{Hash: splitLineage(9, []string{"n1", "n2"}), Size: 2},
			cur: []string{"n1", "n2"}, alive: []string{"n1", "n2", "n3"},
			sides:       map[string]side{"n3": {lineage: Lineage{Hash: 9, Size: 3}, members: []string{"n1", "n2", "n3"}}},
			wantMembers: []string{"n1", "n2"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := planHeal(tc.self, tc.mine, tc.merging, tc.cur, tc.alive, tc.sides)
			switch {
			case (got.winner == nil) != (tc.wantWinner == nil):
				t.Fatalf("winner %+v, want %+v", got.winner, tc.wantWinner)
			case got.winner != nil && got.winner.lineage != *tc.wantWinner:
				t.Fatalf("winner %+v, want %+v", got.winner.lineage, *tc.wantWinner)
			}
			if !slices.Equal(got.members, tc.wantMembers) {
				t.Fatalf("members %v, want %v", got.members, tc.wantMembers)
			}
		})
	}
}

// TestStaleMembers: the members of a node's table that left its lineage
// without the node seeing them go report another lineage and a table
// without the node.
func TestStaleMembers(t *testing.T) {
	whole := Lineage{Hash: 9, Size: 3}
	side12 := side{lineage: Lineage{Hash: splitLineage(9, []string{"n1", "n2"}), Size: 2}, members: []string{"n1", "n2"}}
	for _, tc := range []struct {
		name  string
		sides map[string]side
		want  []string
	}{
		{"the other side of a split this node did not see", map[string]side{"n1": side12, "n2": side12}, []string{"n1", "n2"}},
		{"members still of this lineage", map[string]side{
			"n1": {lineage: whole, members: []string{"n1", "n2", "n3"}},
			"n2": {lineage: whole, members: []string{"n1", "n2"}},
		}, nil},
		{"a member that merged into a lineage this node has not met", map[string]side{
			"n1": {lineage: Lineage{Hash: 7, Size: 2}, members: []string{"n1", "n4"}},
		}, nil},
		{"a member in another lineage that still counts this node drops it itself", map[string]side{
			"n1": {lineage: Lineage{Hash: 7, Size: 3}, members: []string{"n1", "n2", "n3"}},
		}, nil},
		{"a member that did not answer", map[string]side{"n1": side12}, []string{"n1"}},
		{"this node's own answer", map[string]side{"n3": side12}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := staleMembers("n3", whole, []string{"n1", "n2", "n3"}, tc.sides)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("stale %v, want %v", got, tc.want)
			}
		})
	}
}
