package members

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/mendmq/mendmq/cluster/membership"
)

var t0 = time.Unix(1_700_000_000, 0)

func at(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }

// TestViewRecordsBothSources applies a script of membership and link
// events and checks each member's state, link, times and routability.
func TestViewRecordsBothSources(t *testing.T) {
	v := New("a", t0)
	var seen []string
	v.Watch(func(ev Event, m Member) { seen = append(seen, ev.Kind.String()+" "+m.Name) })

	steps := []struct {
		ev        Event
		name      string
		state     membership.State
		link      Link
		contact   time.Time
		routable  bool
		stateFrom time.Time
		linkFrom  time.Time
	}{
		// A link event before memberlist told about b: Dead until then.
		{Event{Kind: LinkChanged, Member: "b", At: at(1), Link: LinkUp}, "b", membership.Dead, LinkUp, at(1), false, at(1), at(1)},
		{Event{Kind: Joined, Member: "b", At: at(2), State: membership.Alive, GossipAddr: "g", DataAddr: "d"}, "b", membership.Alive, LinkUp, at(2), true, at(2), at(1)},
		// Suspect: still routable, but no contact (memberlist's probes
		// failed).
		{Event{Kind: Updated, Member: "b", At: at(3), State: membership.Suspect}, "b", membership.Suspect, LinkUp, at(2), true, at(3), at(1)},
		// The single broken link: memberlist says alive, the link is down.
		{Event{Kind: Updated, Member: "b", At: at(4), State: membership.Alive}, "b", membership.Alive, LinkUp, at(4), true, at(4), at(1)},
		{Event{Kind: LinkChanged, Member: "b", At: at(5), Link: LinkDown, Err: errors.New("cut")}, "b", membership.Alive, LinkDown, at(4), true, at(4), at(5)},
		{Event{Kind: LinkChanged, Member: "b", At: at(6), Link: LinkDown}, "b", membership.Alive, LinkDown, at(4), true, at(4), at(5)},
		{Event{Kind: Gone, Member: "b", At: at(7), State: membership.Dead}, "b", membership.Dead, LinkDown, at(4), false, at(7), at(5)},
		{Event{Kind: Joined, Member: "c", At: at(8), State: membership.Alive}, "c", membership.Alive, LinkUnknown, at(8), true, at(8), time.Time{}},
	}
	for i, s := range steps {
		v.Apply(s.ev)
		m, ok := v.Member(s.name)
		if !ok {
			t.Fatalf("step %d: %s unknown", i, s.name)
		}
		if m.State != s.state || m.Link != s.link || !m.LastContact.Equal(s.contact) || v.Routable(s.name) != s.routable ||
			!m.StateSince.Equal(s.stateFrom) || !m.LinkSince.Equal(s.linkFrom) {
			t.Fatalf("step %d: %+v routable %v", i, m, v.Routable(s.name))
		}
	}
	if m, _ := v.Member("b"); m.LinkErr != "cut" || m.GossipAddr != "g" || m.DataAddr != "d" {
		t.Fatalf("b %+v", m)
	}
	if got := v.Alive(); !slices.Equal(got, []string{"a", "c"}) {
		t.Fatalf("alive %v", got)
	}
	if got := v.AlivePeers(); !slices.Equal(got, []string{"c"}) {
		t.Fatalf("alive peers %v", got)
	}
	v.Contact("b", at(9))
	if m, _ := v.Member("b"); !m.LastContact.Equal(at(9)) {
		t.Fatalf("contact %v", m.LastContact)
	}
	v.Contact("b", at(8)) // never backwards
	if m, _ := v.Member("b"); !m.LastContact.Equal(at(9)) {
		t.Fatalf("contact went back to %v", m.LastContact)
	}
	v.Apply(Event{Kind: Removed, Member: "b", At: at(10)})
	if _, ok := v.Member("b"); ok {
		t.Fatal("b still listed after Removed")
	}
	if len(seen) != len(steps)+1 || seen[0] != "link b" || seen[len(seen)-1] != "removed b" {
		t.Fatalf("watchers saw %v", seen)
	}
}

// TestDetachAndIsolate: a leaving node ignores news of others and counts
// itself alone, but still routes to its peers until it left.
func TestDetachAndIsolate(t *testing.T) {
	v := New("a", t0)
	v.Apply(Event{Kind: Joined, Member: "b", At: at(1), State: membership.Alive})
	v.Detach()
	v.Apply(Event{Kind: Gone, Member: "b", At: at(2), State: membership.Dead})
	v.Apply(Event{Kind: Joined, Member: "c", At: at(2), State: membership.Alive})
	if !v.Routable("b") || v.Routable("c") {
		t.Fatalf("detached: b routable %v, c %v", v.Routable("b"), v.Routable("c"))
	}
	if got := v.Alive(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("detached: alive %v", got)
	}
	v.Isolate(at(3))
	if v.Routable("b") || len(v.Members()) != 1 {
		t.Fatalf("isolated: members %v", v.Members())
	}
	if s, _ := v.State("a"); s != membership.Left {
		t.Fatalf("isolated: self %v", s)
	}
}

// TestWatchersInOrder: concurrent Apply calls reach each watcher one at a
// time, each event once.
func TestWatchersInOrder(t *testing.T) {
	v := New("a", t0)
	inside := make(chan struct{}, 1)
	count := 0
	v.Watch(func(Event, Member) {
		select {
		case inside <- struct{}{}:
		default:
			t.Error("two watcher calls at once")
		}
		count++
		<-inside
	})
	done := make(chan struct{})
	for i := range 4 {
		go func() {
			for j := range 100 {
				v.Apply(Event{Kind: LinkChanged, Member: "b", At: at(i*100 + j), Link: Link(1 + j%2)})
			}
			done <- struct{}{}
		}()
	}
	for range 4 {
		<-done
	}
	if count != 400 {
		t.Fatalf("%d watcher calls, want 400", count)
	}
}
