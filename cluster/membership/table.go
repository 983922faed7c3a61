package membership

import (
	"errors"
	"fmt"
	"sort"
	"time"
)

// ErrUnknownMember is returned by Forget for a name not in Members.
var ErrUnknownMember = errors.New("membership: unknown member")

// ErrMemberAlive is returned by Forget for a member that is not Dead or Left.
var ErrMemberAlive = errors.New("membership: member is alive")

// eventKind tells which EventHandler method an event goes to.
type eventKind uint8

const (
	evJoin eventKind = iota
	evUpdate
	evLeave
	evRemove
)

type event struct {
	kind eventKind
	m    Member
}

// record is the table's knowledge of one member.
type record struct {
	m           Member
	since       time.Time // when m.State was entered
	lastAttempt time.Time // last reconnect attempt while Dead; zero: none yet
	leaving     bool      // its last metadata announced a Leave
}

// table is this node's member list: the states memberlist reports plus
// what memberlist forgets (dead and left members, local suspicion), and
// the reconnect schedule. It does no I/O and takes time as an argument;
// the Membership driver serializes access and turns the returned events
// into EventHandler calls.
type table struct {
	local string
	recs  map[string]*record
	st    Stats // Joins, Failures, Leaves, Reconnects are kept here
}

func newTable(local string) *table {
	return &table{local: local, recs: make(map[string]*record)}
}

// alive records that memberlist reports m alive (join or update);
// leaving is the leave flag of its metadata.
func (t *table) alive(m Member, leaving bool, now time.Time) []event {
	m.State = Alive
	r, ok := t.recs[m.Name]
	if !ok || r.m.State == Dead || r.m.State == Left {
		if ok && r.m.State == Dead {
			t.st.Reconnects++
		}
		t.recs[m.Name] = &record{m: m, since: now, leaving: leaving}
		t.st.Joins++
		return []event{{evJoin, m}}
	}
	// Sticky: a direct leave notice may arrive before the flag.
	r.leaving = r.leaving || leaving
	changed := r.m.State != Alive || r.m.GossipAddr != m.GossipAddr || !metaEqual(r.m.Meta, m.Meta)
	if r.m.State != Alive {
		r.since = now
	}
	r.m = m
	if !changed {
		return nil
	}
	return []event{{evUpdate, m}}
}

// leaving records a member's direct leave notice: when memberlist
// declares it gone next, it is Left. Unknown or gone members are
// unchanged (the notice may trail the leave itself).
func (t *table) leaving(name string) {
	if r, ok := t.recs[name]; ok && (r.m.State == Alive || r.m.State == Suspect) {
		r.leaving = true
	}
}

// gone records that memberlist declared a member gone: Left if it
// announced its leave, else Dead (failed).
func (t *table) gone(m Member, now time.Time) []event {
	m.State = Dead
	if r, ok := t.recs[m.Name]; ok {
		if r.m.State == Dead || r.m.State == Left {
			return nil
		}
		if r.leaving {
			m.State = Left
		}
	}
	return t.setGone(m, now)
}

// left turns a Dead member into Left: another member's view (a join's
// state exchange) says it left. Unknown or alive members are unchanged.
func (t *table) left(name string, now time.Time) []event {
	r, ok := t.recs[name]
	if !ok || r.m.State != Dead {
		return nil
	}
	m := r.m
	m.State = Left
	return t.setGone(m, now)
}

func (t *table) setGone(m Member, now time.Time) []event {
	if m.State == Left {
		t.st.Leaves++
	} else {
		t.st.Failures++
	}
	t.recs[m.Name] = &record{m: m, since: now}
	return []event{{evLeave, m}}
}

// suspect sets or clears local suspicion of an alive member.
func (t *table) suspect(name string, on bool, now time.Time) []event {
	r, ok := t.recs[name]
	if !ok || name == t.local {
		return nil
	}
	switch {
	case on && r.m.State == Alive:
		r.m.State = Suspect
	case !on && r.m.State == Suspect:
		r.m.State = Alive
	default:
		return nil
	}
	r.since = now
	return []event{{evUpdate, r.m}}
}

// dueReconnects returns the Dead members whose last reconnect attempt
// is at least interval ago (10% slack absorbs ticker jitter), and marks
// them attempted at now.
func (t *table) dueReconnects(now time.Time, interval time.Duration) []Member {
	var out []Member
	for _, r := range t.recs {
		if r.m.State != Dead {
			continue
		}
		if !r.lastAttempt.IsZero() && now.Sub(r.lastAttempt) < interval-interval/10 {
			continue
		}
		r.lastAttempt = now
		out = append(out, r.m)
	}
	sortMembers(out)
	return out
}

// reap removes Dead and Left members older than timeout (0: never).
func (t *table) reap(now time.Time, timeout time.Duration) []event {
	if timeout <= 0 {
		return nil
	}
	var out []event
	for name, r := range t.recs {
		if (r.m.State == Dead || r.m.State == Left) && now.Sub(r.since) >= timeout {
			delete(t.recs, name)
			out = append(out, event{evRemove, r.m})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].m.Name < out[j].m.Name })
	return out
}

// forget removes a Dead or Left member at once.
func (t *table) forget(name string) ([]event, error) {
	r, ok := t.recs[name]
	if !ok {
		return nil, fmt.Errorf("forget %q: %w", name, ErrUnknownMember)
	}
	if r.m.State != Dead && r.m.State != Left {
		return nil, fmt.Errorf("forget %q: %w (%s); only dead or left members can be forgotten", name, ErrMemberAlive, r.m.State)
	}
	delete(t.recs, name)
	return []event{{evRemove, r.m}}, nil
}

// isolate drops every member but the local one, which becomes Left: the
// view of a node that left the cluster.
func (t *table) isolate(now time.Time) {
	for name := range t.recs {
		if name != t.local {
			delete(t.recs, name)
		}
	}
	if r, ok := t.recs[t.local]; ok && r.m.State != Left {
		r.m.State = Left
		r.since = now
	}
}

// othersAlive reports whether any member but the local one is Alive or Suspect.
func (t *table) othersAlive() bool {
	for name, r := range t.recs {
		if name != t.local && (r.m.State == Alive || r.m.State == Suspect) {
			return true
		}
	}
	return false
}

// lookup returns a copy of the named member.
func (t *table) lookup(name string) (Member, bool) {
	r, ok := t.recs[name]
	if !ok {
		return Member{}, false
	}
	return copyMember(r.m), true
}

// members returns copies of all members sorted by name.
func (t *table) members() []Member {
	out := make([]Member, 0, len(t.recs))
	for _, r := range t.recs {
		out = append(out, copyMember(r.m))
	}
	sortMembers(out)
	return out
}

// stats returns the counters with the state gauges filled in.
func (t *table) stats() Stats {
	s := t.st
	for _, r := range t.recs {
		switch r.m.State {
		case Alive:
			s.Alive++
		case Suspect:
			s.Suspect++
		case Dead:
			s.Dead++
		case Left:
			s.Left++
		}
	}
	return s
}

func sortMembers(ms []Member) {
	sort.Slice(ms, func(i, j int) bool { return ms[i].Name < ms[j].Name })
}

func copyMember(m Member) Member {
	if m.Meta.App != nil {
		m.Meta.App = append([]byte(nil), m.Meta.App...)
	}
	return m
}

func metaEqual(a, b NodeMeta) bool {
	return a.DataAddr == b.DataAddr && a.Proto == b.Proto && string(a.App) == string(b.App)
}
