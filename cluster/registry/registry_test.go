package registry

import (
	"context"
	"testing"
	"time"

	"github.com/mendmq/mendmq/cluster/hlc"
	"github.com/mendmq/mendmq/cluster/membership"
)

type fakeBroker struct{ takeovers []string }

func (b *fakeBroker) TakeoverSession(clientID, newNode string, handoff bool) ([]byte, error) {
	b.takeovers = append(b.takeovers, clientID+"->"+newNode)
	return nil, nil
}
func (b *fakeBroker) FinishTakeover(string, string) ([]byte, error) { return nil, nil }
func (b *fakeBroker) AppendSession(string, []byte) error            { return nil }

type oneMember string

func (m oneMember) Alive() []string { return []string{string(m)} }
func (m oneMember) State(name string) (membership.State, bool) {
	return membership.Alive, name == string(m)
}
func (m oneMember) Reachable(string) bool { return true }

// table is a fake session table.
type table map[string]struct {
	node string
	at   hlc.Timestamp
}

func (t table) Owner(id string) (string, hlc.Timestamp, bool) {
	o, ok := t[id]
	return o.node, o.at, ok
}

func wallAt(ms int64) func() time.Time { return func() time.Time { return time.UnixMilli(ms) } }

// TestRegistrationStamps: the leader grants each registration a stamp
// later than the session it replaces, even when the claimant's clock is
// behind (the claim's own stamp is older), and follows the table when a
// later session shows up there (Observe).
func TestRegistrationStamps(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name  string
		wall  int64 // the leader's (and claimant's) wall clock, ms
		table table
		want  hlc.Timestamp
	}{
		{"no earlier session: the claim's stamp", 5000, table{}, hlc.Timestamp{Wall: 5000}},
		// The session on a node 10 s ahead was stamped later than this
		// node's clock reads: the new one still orders after it.
		{"earlier session stamped by a faster clock", 5000,
			table{"c": {"n1", hlc.Timestamp{Wall: 15000, Logical: 3}}}, hlc.Timestamp{Wall: 15000, Logical: 4}},
		{"earlier session stamped by a slower clock", 5000,
			table{"c": {"n1", hlc.Timestamp{Wall: 100}}}, hlc.Timestamp{Wall: 5000}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := &fakeBroker{}
			clock := hlc.New(wallAt(tc.wall))
			r, err := New(Config{Node: "n1", Clock: clock}, b, oneMember("n1"), nil, tc.table, nil)
			if err != nil {
				t.Fatal(err)
			}
			tk, err := r.Register(ctx, "c", false)
			if err != nil {
				t.Fatal(err)
			}
			if tk.At != tc.want {
				t.Fatalf("stamp %v, want %v", tk.At, tc.want)
			}
			if clock.Last().Less(tk.At) {
				t.Fatalf("clock %v did not observe the grant %v", clock.Last(), tk.At)
			}
			// A second registration on the same node orders after the
			// first, whatever the wall clock does.
			tk2, err := r.Register(ctx, "c", false)
			if err != nil || !tk.At.Less(tk2.At) {
				t.Fatalf("second registration stamped %v after %v (%v)", tk2.At, tk.At, err)
			}
		})
	}
}

// TestObserveFollowsLaterSession: after a heal the table names the
// session another leader granted later; this leader's next grant takes it
// over from there, and an older record does not move it back.
func TestObserveFollowsLaterSession(t *testing.T) {
	b := &fakeBroker{}
	r, err := New(Config{Node: "n1", Clock: hlc.New(wallAt(1000))}, b, oneMember("n1"), nil, table{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tk, err := r.Register(context.Background(), "c", false)
	if err != nil {
		t.Fatal(err)
	}
	r.Observe("c", "n2", tk.At.Next())
	r.Observe("c", "n3", tk.At) // older than what it has now
	r.regMu.Lock()
	got := r.owners["c"]
	r.regMu.Unlock()
	if got.node != "n2" || got.at != tk.At.Next() {
		t.Fatalf("owner %+v, want n2 at %v", got, tk.At.Next())
	}
	r.Forget("c")
	r.Observe("c", "n4", hlc.Timestamp{Wall: 1 << 40}) // not led here: nothing to follow
	r.regMu.Lock()
	_, ok := r.owners["c"]
	r.regMu.Unlock()
	if ok {
		t.Fatal("Observe added an owner for an id this leader does not track")
	}
}

// view is a members view led by n1 in which the other members have the
// given states, some out of reach (netsplit).
type view struct {
	states      map[string]membership.State
	unreachable map[string]bool
}

func (v view) Alive() []string { return []string{"n1"} }
func (v view) State(name string) (membership.State, bool) {
	if name == "n1" {
		return membership.Alive, true
	}
	s, ok := v.states[name]
	return s, ok
}
func (v view) Reachable(name string) bool { return !v.unreachable[name] }

// calls records the takeover calls a leader makes.
type calls struct{ peers []string }

func (c *calls) Call(_ context.Context, peer string, typ uint8, _ []byte) ([]byte, error) {
	if typ == CallTakeover {
		c.peers = append(c.peers, peer)
	}
	return []byte(`{"v":5}`), nil
}

// TestRegisterPreviousOwner: a registration takes the session over from
// the node the table places it on only if that node is alive and
// reachable. One that is unreachable (a netsplit, with registration
// allowed) or gone is left alone: the client starts a session here,
// stamped later than the one it replaces, so that it wins at the heal
// (sessions.Resolver).
func TestRegisterPreviousOwner(t *testing.T) {
	prev := hlc.Timestamp{Wall: 9000, Logical: 2} // stamped by a clock ahead of n1's
	tests := []struct {
		name     string
		view     view
		wantFrom string
	}{
		{"alive and reachable: taken over", view{states: map[string]membership.State{"n2": membership.Alive}}, "n2"},
		{"unreachable: new session here", view{states: map[string]membership.State{"n2": membership.Alive},
			unreachable: map[string]bool{"n2": true}}, ""},
		{"suspect and unreachable: new session here", view{states: map[string]membership.State{"n2": membership.Suspect},
			unreachable: map[string]bool{"n2": true}}, ""},
		{"dead: new session here", view{states: map[string]membership.State{"n2": membership.Dead},
			unreachable: map[string]bool{"n2": true}}, ""},
		{"unknown: new session here", view{}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &calls{}
			tbl := table{"c": {"n2", prev}}
			r, err := New(Config{Node: "n1", Clock: hlc.New(wallAt(1000))}, &fakeBroker{}, tc.view, c, tbl, nil)
			if err != nil {
				t.Fatal(err)
			}
			tk, err := r.Register(context.Background(), "c", false)
			if err != nil {
				t.Fatal(err)
			}
			if tk.From != tc.wantFrom {
				t.Errorf("taken from %q, want %q", tk.From, tc.wantFrom)
			}
			if want := len(tc.wantFrom); (want > 0) != (len(c.peers) > 0) {
				t.Errorf("takeover calls to %v, want from %q", c.peers, tc.wantFrom)
			}
			if !prev.Less(tk.At) {
				t.Errorf("stamped %v, not later than the replaced session's %v", tk.At, prev)
			}
		})
	}
}
