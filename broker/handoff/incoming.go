package handoff

import "time"

// Incoming is the new node's side of one session's handoff: which
// messages the session got here directly and which the old node handed
// over, so that each reaches it once, whichever path comes first. Create
// it before the imported session can receive anything; drop it once
// Expired. It is not safe for concurrent use.
type Incoming struct {
	seen     map[Key]struct{} // got directly
	handed   map[Key]struct{} // handed over (the export included)
	expires  time.Time
	full     bool
	reported bool
}

// NewIncoming starts tracking at now, with the keys of the exported
// queue (they were handed over with the session).
func NewIncoming(cfg Config, now time.Time, exported []Key) *Incoming {
	in := &Incoming{seen: map[Key]struct{}{}, handed: map[Key]struct{}{}, expires: now.Add(cfg.Lifetime())}
	for _, k := range exported {
		if k.Known() {
			in.add(in.handed, k)
		}
	}
	return in
}

// Direct is a message queued for the session here (not a resend of its
// queue): it returns true if the old node handed the message over
// already, so this copy must be withdrawn; else it is noted.
func (in *Incoming) Direct(k Key) (withdraw bool) {
	if !k.Known() {
		return false
	}
	if _, ok := in.handed[k]; ok {
		return true
	}
	in.add(in.seen, k)
	return false
}

// Handed is a message the old node hands over: it returns true if it
// must be queued for the session, false if the session got it here
// directly or it was handed over before (the old node retries a shipment
// whose answer it did not get). Messages without a key are always
// queued.
func (in *Incoming) Handed(k Key) (deliver bool) {
	if !k.Known() {
		return true
	}
	if _, ok := in.seen[k]; ok {
		return false
	}
	if _, ok := in.handed[k]; ok {
		return false
	}
	in.add(in.handed, k)
	return true
}

// Unhand forgets a handed-over message that could not be queued after
// all, so the old node's retry delivers it.
func (in *Incoming) Unhand(k Key) { delete(in.handed, k) }

// Extend keeps the tracking until at least until. A netsplit's heal
// uses an Incoming for as long as the split lasts, then a while (the
// duplicate's messages arrive after the heal), which is not known when it
// starts.
func (in *Incoming) Extend(until time.Time) {
	if until.After(in.expires) {
		in.expires = until
	}
}

// Expired reports whether the handoff is surely over at now.
func (in *Incoming) Expired(now time.Time) bool { return !now.Before(in.expires) }

// Overflowed reports, once, that a key set reached MaxTracked: from then
// on duplicates are possible.
func (in *Incoming) Overflowed() bool {
	if in.full && !in.reported {
		in.reported = true
		return true
	}
	return false
}

func (in *Incoming) add(set map[Key]struct{}, k Key) {
	if len(set) >= MaxTracked {
		in.full = true
		return
	}
	set[k] = struct{}{}
}
