package netsplit

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mendmq/mendmq/cluster/members"
	"github.com/mendmq/mendmq/cluster/membership"
)

var t0 = time.Unix(1_700_000_000, 0)

func ms(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }

// harness feeds a Detector through a real members.View, as the driver
// does, and records the transitions as text.
type harness struct {
	t    *testing.T
	view *members.View
	d    *Detector
	log  []string
}

func newHarness(t *testing.T, mode Mode, peers ...string) *harness {
	h := &harness{t: t, view: members.New("a", t0)}
	cfg := DefaultConfig()
	cfg.Mode = mode
	h.d = New("a", cfg, t0)
	h.view.Watch(h.d.Observe)
	for _, p := range peers {
		h.join(0, p)
		h.link(0, p, true)
	}
	h.drain()
	return h
}

func (h *harness) join(at int, name string) {
	h.view.Apply(members.Event{Kind: members.Joined, Member: name, At: ms(at), State: membership.Alive})
}

func (h *harness) state(at int, name string, s membership.State) {
	kind := members.Updated
	if s == membership.Dead || s == membership.Left {
		kind = members.Gone
	}
	h.view.Apply(members.Event{Kind: kind, Member: name, At: ms(at), State: s})
}

func (h *harness) link(at int, name string, up bool) {
	l := members.LinkDown
	if up {
		l = members.LinkUp
	}
	h.view.Apply(members.Event{Kind: members.LinkChanged, Member: name, At: ms(at), Link: l})
}

func (h *harness) remove(at int, name string) {
	h.view.Apply(members.Event{Kind: members.Removed, Member: name, At: ms(at)})
}

func (h *harness) tick(at int) { h.d.Tick(ms(at)) }

// drain renders the transitions since the last call.
func (h *harness) drain() []string {
	var out []string
	for _, tr := range h.d.Ready() {
		s := fmt.Sprintf("%d %s", tr.At.Sub(t0).Milliseconds(), tr.Kind)
		switch tr.Kind {
		case Detected:
			s += fmt.Sprintf(" %s (%s, uncertainty %v)", tr.Member.Name, tr.Member.Reason, tr.Member.Uncertainty())
		case Recovered:
			s += " " + tr.Member.Name
		case Healed:
			s += fmt.Sprintf(" after %v", tr.Duration)
		}
		out = append(out, s)
	}
	return out
}

func (h *harness) expect(want ...string) {
	h.t.Helper()
	if got := h.drain(); !slices.Equal(got, want) {
		h.t.Fatalf("transitions:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

func (h *harness) gated(split, gated bool) {
	h.t.Helper()
	if h.d.Split() != split || h.d.Gated() != gated {
		h.t.Fatalf("split %v gated %v, want %v %v (status %+v)", h.d.Split(), h.d.Gated(), split, gated, h.d.Status())
	}
}

func TestCutLinkIsASplitAfterTheGrace(t *testing.T) {
	h := newHarness(t, ModeAny, "b", "c")
	h.d.Contact("b", ms(900))
	h.link(1000, "b", false) // the single broken link: memberlist still says alive
	h.tick(1299)
	h.expect()
	h.gated(false, false)
	h.tick(1300)
	h.expect("1300 entered", "1300 detected b (link down, uncertainty 400ms)")
	h.gated(true, true)
	st := h.d.Status()
	if len(st.Unreachable) != 1 || st.Unreachable[0].Name != "b" || !slices.Equal(st.Agreed, []string{"a", "b", "c"}) {
		t.Fatalf("status %+v", st)
	}
	h.link(5000, "b", true)
	h.expect("5000 recovered b", "5000 healed after 3.7s")
	h.gated(false, false)
}

func TestFlapIsNotASplit(t *testing.T) {
	h := newHarness(t, ModeAny, "b")
	h.link(1000, "b", false)
	h.link(1200, "b", true)
	h.tick(2000)
	h.expect()
	h.gated(false, false)
}

// The window of uncertainty runs from the last sign of life (the join at
// 0), not from the suspicion: a suspect member is one whose probes fail.
func TestSuspectIsNotDeadIs(t *testing.T) {
	h := newHarness(t, ModeAny, "b")
	h.state(500, "b", membership.Suspect)
	h.tick(5000)
	h.expect()
	h.state(6000, "b", membership.Dead)
	h.expect("6000 entered", "6000 detected b (dead, uncertainty 6s)")
	// Back alive (the reconnect loop re-joined it) with a working link.
	h.join(7000, "b")
	h.expect("7000 recovered b", "7000 healed after 1s")
}

func TestLeftAndRemovedAreNotSplits(t *testing.T) {
	h := newHarness(t, ModeAny, "b", "c")
	h.state(100, "b", membership.Left) // a graceful stop
	h.link(100, "b", false)
	h.tick(5000)
	h.expect()
	// c is cut off, then forgotten by an operator: the split ends.
	h.state(6000, "c", membership.Dead)
	h.expect("6000 entered", "6000 detected c (dead, uncertainty 6s)")
	h.remove(7000, "c")
	h.expect("7000 recovered c", "7000 healed after 1s")
	if st := h.d.Status(); slices.Contains(st.Agreed, "c") {
		t.Fatalf("agreed %v still has the removed member", st.Agreed)
	}
}

func TestJoinedWithoutLink(t *testing.T) {
	h := newHarness(t, ModeAny)
	h.join(0, "b") // its data port is unreachable: no link ever comes up
	h.tick(2999)
	h.expect()
	h.tick(3000)
	h.expect("3000 entered", "3000 detected b (no link, uncertainty 3s)")
}

// TestMajorityMode: in a cluster of 5 split 3|2, the side of three keeps
// serving (split, not gated) and the side of two gates; a 2|2 split of 4
// gates both sides.
func TestMajorityMode(t *testing.T) {
	big := newHarness(t, ModeMajority, "b", "c", "d", "e")
	for _, n := range []string{"d", "e"} {
		big.state(1000, n, membership.Dead)
	}
	big.gated(true, false)
	small := newHarness(t, ModeMajority, "b", "c", "d", "e")
	for _, n := range []string{"b", "c", "d"} {
		small.state(1000, n, membership.Dead)
	}
	small.gated(true, true)
	// A member that joins the majority side during the split does not
	// change the agreed membership.
	big.join(2000, "f")
	big.link(2000, "f", true)
	if st := big.d.Status(); len(st.Agreed) != 5 {
		t.Fatalf("agreed %v", st.Agreed)
	}
	half := newHarness(t, ModeMajority, "b", "c", "d")
	half.state(1000, "c", membership.Dead)
	half.state(1000, "d", membership.Dead)
	half.gated(true, true)
	// Hot reload to any: gated at once.
	big.d.SetMode(ModeAny)
	big.gated(true, true)
}

// TestAgreedMembershipFollowsWholeCluster: while whole, the agreed
// membership is what the node sees, so a grown cluster counts its new
// members and a graceful leave shrinks it.
func TestAgreedMembershipFollowsWholeCluster(t *testing.T) {
	h := newHarness(t, ModeMajority, "b")
	h.join(100, "c")
	h.link(100, "c", true)
	h.state(200, "b", membership.Left)
	if st := h.d.Status(); !slices.Equal(st.Agreed, []string{"a", "c"}) {
		t.Fatalf("agreed %v", st.Agreed)
	}
	h.state(300, "c", membership.Dead)
	h.gated(true, true) // 1 of 2 is no strict majority
}
