// Package netsplit decides whether a node is in a netsplit: a pure state
// machine fed with the members view's facts (membership state and
// data-plane link of every member, with the time each was observed) and
// with ticks, that reports when the node enters and leaves a split and
// how long each unreachable member went unnoticed. No I/O, no goroutines,
// no clock: time is an argument. The cluster's driver feeds it and acts
// on its transitions (gating, metrics, logs).
//
// # When a member is unreachable
//
// A member is unreachable while
//
//   - memberlist declared it Dead (it failed or is cut off; Suspect alone
//     is not enough: suspicion is raised by one late probe and refuted
//     at once, the classic false positive under CPU starvation), or
//   - this node's data-plane link to it has been down for LinkGrace
//     (memberlist's indirect probes keep a member alive when only the
//     direct link A↔B is broken; the data plane sees it), or
//   - the member joined ConnectGrace ago and the link never came up.
//
// A member that left gracefully (Left) or was removed (Forget,
// reconnect_timeout) is not part of the cluster any more and never
// unreachable.
//
// # Modes
//
// In ModeAny (VerneMQ's rule, the default) the node is split, and gated,
// while any member is unreachable. In ModeMajority the node is split
// likewise, but only gated when it does not see a strict majority of the
// last agreed membership (the members it saw while it was last whole):
// the majority side keeps serving, the minority gates. The trade-off: a
// majority side accepts writes the minority cannot see until the heal
// (the merge policies decide conflicts then), and a node that crashed is
// not a split of the majority at all; ModeAny refuses during any doubt.
package netsplit

import (
	"fmt"
	"slices"
	"time"

	"github.com/mendmq/mendmq/cluster/members"
	"github.com/mendmq/mendmq/cluster/membership"
)

// Mode is cluster.netsplit_mode.
type Mode uint8

const (
	// ModeAny: any unreachable member gates this node (VerneMQ).
	ModeAny Mode = iota
	// ModeMajority: only a side without a strict majority of the last
	// agreed membership gates.
	ModeMajority
)

// String returns "any" or "majority".
func (m Mode) String() string {
	if m == ModeMajority {
		return "majority"
	}
	return "any"
}

// ParseMode reads cluster.netsplit_mode.
func ParseMode(s string) (Mode, error) {
	switch s {
	case "any", "":
		return ModeAny, nil
	case "majority":
		return ModeMajority, nil
	}
	return ModeAny, fmt.Errorf("cluster.netsplit_mode: %q is not a mode; use any (VerneMQ: any unreachable member gates) or majority", s)
}

// Config configures a Detector.
type Config struct {
	Mode Mode
	// LinkGrace is how long a data-plane link must stay down before its
	// member counts as unreachable: a link that reconnects within it was
	// a flap. Default 300ms.
	LinkGrace time.Duration
	// ConnectGrace is how long a member that joined may take to bring its
	// data-plane link up. Default 3s.
	ConnectGrace time.Duration
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{LinkGrace: 300 * time.Millisecond, ConnectGrace: 3 * time.Second}
}

// member is what the detector knows of one member.
type member struct {
	state       membership.State
	link        members.Link
	linkSince   time.Time
	joined      time.Time
	lastContact time.Time
	// unreachable since when (zero: reachable), and why.
	since  time.Time
	reason string
}

// Unreachable is a member this node cannot reach.
type Unreachable struct {
	Name string `json:"name"`
	// Since is when the detector declared it unreachable.
	Since time.Time `json:"since"`
	// LastContact is the last time it was known reachable (zero if
	// never).
	LastContact time.Time `json:"last_contact"`
	// Reason is "dead", "link down" or "no link".
	Reason string `json:"reason"`
}

// Uncertainty is the window of uncertainty: from the last successful
// contact to the detection (0 when there was none).
func (u Unreachable) Uncertainty() time.Duration {
	if u.LastContact.IsZero() || u.Since.Before(u.LastContact) {
		return 0
	}
	return u.Since.Sub(u.LastContact)
}

// Transition is a change the driver acts on.
type Transition struct {
	// At is when it happened.
	At time.Time
	// Kind is Entered, Detected, Recovered or Healed.
	Kind TransitionKind
	// Member is the member concerned (Detected, Recovered).
	Member Unreachable
	// Duration is how long the split lasted (Healed).
	Duration time.Duration
}

// TransitionKind says what changed.
type TransitionKind uint8

const (
	// Entered: the node is in a netsplit now (the first member became
	// unreachable). A Detected transition for that member follows.
	Entered TransitionKind = iota + 1
	// Detected: a member became unreachable.
	Detected
	// Recovered: an unreachable member is reachable again, or gone.
	Recovered
	// Healed: no member is unreachable any more.
	Healed
)

// String names the kind.
func (k TransitionKind) String() string {
	switch k {
	case Entered:
		return "entered"
	case Detected:
		return "detected"
	case Recovered:
		return "recovered"
	case Healed:
		return "healed"
	}
	return fmt.Sprintf("transition(%d)", uint8(k))
}

// Detector is the state machine. It is not safe for concurrent use.
type Detector struct {
	cfg     Config
	self    string
	members map[string]*member
	// agreed is the membership the node saw while last whole (sorted,
	// self included); ModeMajority counts against it.
	agreed     []string
	splitSince time.Time // zero: not split
	out        []Transition
}

// New returns a detector for node self, alone at now.
func New(self string, cfg Config, now time.Time) *Detector {
	if cfg.LinkGrace <= 0 {
		cfg.LinkGrace = DefaultConfig().LinkGrace
	}
	if cfg.ConnectGrace <= 0 {
		cfg.ConnectGrace = DefaultConfig().ConnectGrace
	}
	return &Detector{cfg: cfg, self: self, members: map[string]*member{}, agreed: []string{self}}
}

// SetMode changes the mode (hot reload); it takes effect at once.
func (d *Detector) SetMode(m Mode) { d.cfg.Mode = m }

// Mode is the current mode.
func (d *Detector) Mode() Mode { return d.cfg.Mode }

// Observe records a members-view event (m is the member after it) and
// re-evaluates at ev.At.
func (d *Detector) Observe(ev members.Event, m members.Member) {
	if m.Self || ev.Member == d.self {
		return
	}
	if ev.Kind == members.Removed {
		if s := d.members[ev.Member]; s != nil {
			if !s.since.IsZero() {
				d.recover(ev.Member, s, ev.At)
			}
			delete(d.members, ev.Member)
		}
		d.agreed = slices.DeleteFunc(d.agreed, func(n string) bool { return n == ev.Member })
		d.evaluate(ev.At)
		return
	}
	s := d.members[ev.Member]
	if s == nil {
		s = &member{joined: ev.At}
		d.members[ev.Member] = s
	}
	if ev.Kind == members.Joined && s.state != membership.Alive && s.state != membership.Suspect {
		s.joined = ev.At // a member coming back gets a fresh ConnectGrace
	}
	s.state = m.State
	s.link, s.linkSince = m.Link, m.LinkSince
	s.lastContact = later(s.lastContact, m.LastContact)
	d.evaluate(ev.At)
}

// Contact records that member was last heard from at t (the data plane's
// last received frame): it moves the start of the window of uncertainty.
func (d *Detector) Contact(name string, t time.Time) {
	if s := d.members[name]; s != nil {
		s.lastContact = later(s.lastContact, t)
	}
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// Tick re-evaluates the graces at now.
func (d *Detector) Tick(now time.Time) { d.evaluate(now) }

// reason returns why a member is unreachable at now ("" if it is not).
func (d *Detector) reason(s *member, now time.Time) string {
	switch s.state {
	case membership.Left:
		return ""
	case membership.Dead:
		return "dead"
	}
	switch s.link {
	case members.LinkDown:
		if now.Sub(s.linkSince) >= d.cfg.LinkGrace {
			return "link down"
		}
	case members.LinkUnknown:
		if now.Sub(s.joined) >= d.cfg.ConnectGrace {
			return "no link"
		}
	}
	return ""
}

func (d *Detector) evaluate(now time.Time) {
	names := make([]string, 0, len(d.members))
	for name := range d.members {
		names = append(names, name)
	}
	slices.Sort(names) // transitions in a stable order
	for _, name := range names {
		s := d.members[name]
		r := d.reason(s, now)
		switch {
		case r != "" && s.since.IsZero():
			s.since, s.reason = now, r
			if d.splitSince.IsZero() {
				d.splitSince = now
				d.out = append(d.out, Transition{At: now, Kind: Entered})
			}
			d.out = append(d.out, Transition{At: now, Kind: Detected,
				Member: Unreachable{Name: name, Since: now, LastContact: s.lastContact, Reason: r}})
		case r == "" && !s.since.IsZero():
			d.recover(name, s, now)
		}
	}
	if !d.splitSince.IsZero() && !d.anyUnreachable() {
		d.out = append(d.out, Transition{At: now, Kind: Healed, Duration: now.Sub(d.splitSince)})
		d.splitSince = time.Time{}
	}
	if d.splitSince.IsZero() {
		// Whole: what it sees now is the agreed membership.
		agreed := []string{d.self}
		for name, s := range d.members {
			if s.state == membership.Alive || s.state == membership.Suspect {
				agreed = append(agreed, name)
			}
		}
		slices.Sort(agreed)
		d.agreed = agreed
	}
}

func (d *Detector) recover(name string, s *member, now time.Time) {
	d.out = append(d.out, Transition{At: now, Kind: Recovered,
		Member: Unreachable{Name: name, Since: s.since, LastContact: s.lastContact}})
	s.since, s.reason = time.Time{}, ""
}

func (d *Detector) anyUnreachable() bool {
	for _, s := range d.members {
		if !s.since.IsZero() {
			return true
		}
	}
	return false
}

// Ready returns the transitions since the last call, in order.
func (d *Detector) Ready() []Transition {
	out := d.out
	d.out = nil
	return out
}

// Split reports whether the node is in a netsplit (any member
// unreachable), whatever the mode.
func (d *Detector) Split() bool { return !d.splitSince.IsZero() }

// Gated reports whether the node refuses what the allow_* switches
// guard: in a netsplit (ModeAny), or in one without a majority of the
// agreed membership (ModeMajority).
func (d *Detector) Gated() bool {
	if !d.Split() {
		return false
	}
	if d.cfg.Mode == ModeAny {
		return true
	}
	return !d.Majority()
}

// Majority reports whether this node reaches a strict majority of the
// last agreed membership, itself included.
func (d *Detector) Majority() bool {
	reach := 0
	for _, name := range d.agreed {
		if name == d.self {
			reach++
			continue
		}
		if s := d.members[name]; s != nil && s.since.IsZero() && s.state != membership.Left {
			reach++
		}
	}
	return 2*reach > len(d.agreed)
}

// Status is a snapshot for operators.
type Status struct {
	// Split: some member is unreachable.
	Split bool `json:"split"`
	// Gated: the allow_* switches apply (see Detector.Gated).
	Gated bool `json:"gated"`
	// Mode is cluster.netsplit_mode.
	Mode string `json:"mode"`
	// Since is when the split began (zero if not split).
	Since time.Time `json:"since,omitzero"`
	// Unreachable lists the unreachable members, by name.
	Unreachable []Unreachable `json:"unreachable,omitempty"`
	// Agreed is the membership the node saw while last whole.
	Agreed []string `json:"agreed"`
}

// Status returns the detector's state.
func (d *Detector) Status() Status {
	st := Status{Split: d.Split(), Gated: d.Gated(), Mode: d.cfg.Mode.String(), Since: d.splitSince, Agreed: slices.Clone(d.agreed)}
	for name, s := range d.members {
		if !s.since.IsZero() {
			st.Unreachable = append(st.Unreachable, Unreachable{Name: name, Since: s.since, LastContact: s.lastContact, Reason: s.reason})
		}
	}
	slices.SortFunc(st.Unreachable, func(a, b Unreachable) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return st
}
