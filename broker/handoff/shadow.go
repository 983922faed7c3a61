package handoff

import (
	"slices"
	"time"
)

// Phase is where a Shadow is in the handoff.
type Phase uint8

// Phases of a Shadow.
const (
	Pending    Phase = iota // until the new node's FinishTakeover
	Forwarding              // grace period: stragglers are shipped
	Ended                   // over: the driver drops the session
)

func (p Phase) String() string {
	switch p {
	case Pending:
		return "pending"
	case Forwarding:
		return "forwarding"
	}
	return "ended"
}

// Ready is what a Shadow asks its driver to do.
type Ready[M any] struct {
	// Ship, if not empty, must be sent to the new node (AppendSession),
	// giving up at ShipBy; report the outcome with Shipped. At most one
	// shipment is under way at a time.
	Ship   []M
	ShipBy time.Time
	// Discarded messages could not be handed over (count and log them,
	// with Err, the last shipment's error).
	Discarded int
	Err       error
	// TimedOut: the new node did not finish the takeover in time, so
	// the shadow ships what it caught anyway (log it).
	TimedOut bool
	// Ended: the handoff is over; the driver drops the session here.
	// Reason, and the totals of the handoff, are for the log.
	Ended          bool
	Reason         string
	TotalShipped   int
	TotalDiscarded int
}

// Empty reports whether r asks for nothing.
func (r Ready[M]) Empty() bool {
	return len(r.Ship) == 0 && r.Discarded == 0 && !r.TimedOut && !r.Ended
}

// Shadow is the old node's side of one session's handoff; M is the driver's
// representation of a caught message. Create it at the export; it starts
// Pending. It is not safe for concurrent use.
type Shadow[M any] struct {
	cfg      Config
	phase    Phase
	deadline time.Time // Pending: end of pending; Forwarding: end of grace
	closing  string    // why the shadow ends once drained ("" while open)
	closeBy  time.Time // deadline of the last shipments when closing

	queued   []M       // caught, not handed over or shipped yet
	sending  []M       // the shipment under way or waiting for its retry
	inFlight bool      // sending is with the driver
	shipBy   time.Time // deadline of sending (zero: no shipment)
	retryAt  time.Time // sending is retried then (zero: not waiting)

	shipped, discarded int
	out                Ready[M]
}

// NewShadow starts a shadow at its export, at now.
func NewShadow[M any](cfg Config, now time.Time) *Shadow[M] {
	return &Shadow[M]{cfg: cfg, deadline: now.Add(cfg.Pending())}
}

// Phase returns the shadow's phase.
func (s *Shadow[M]) Phase() Phase { return s.phase }

// Catch takes a message queued for the session after the export. It
// returns false if the shadow has ended (the message is the driver's).
func (s *Shadow[M]) Catch(now time.Time, m M) bool {
	if s.phase == Ended {
		return false
	}
	s.queued = append(s.queued, m)
	s.pump(now)
	return true
}

// Finish is the new node's FinishTakeover: every node routes the session
// there now. It returns what was caught and not shipped yet, for the
// answer, and starts the grace period (if the pending phase had not timed
// out already).
func (s *Shadow[M]) Finish(now time.Time) []M {
	if s.phase == Ended {
		return nil
	}
	var handed []M
	if !s.inFlight && len(s.sending) > 0 {
		// A failed shipment waits for its retry: it goes in the answer
		// instead, ahead of what was caught after it.
		handed = s.sending
		s.sending, s.shipBy, s.retryAt = nil, time.Time{}, time.Time{}
	}
	handed = append(handed, s.queued...)
	s.queued = nil
	s.shipped += len(handed)
	if s.phase == Pending {
		s.phase = Forwarding
		s.deadline = now.Add(s.cfg.Grace())
	}
	s.maybeEnd()
	return handed
}

// Tick advances the shadow's timers to now. Call it at Next (earlier or
// later calls are harmless).
func (s *Shadow[M]) Tick(now time.Time) {
	switch {
	case s.phase == Pending && !now.Before(s.deadline):
		s.out.TimedOut = true
		s.phase = Forwarding
		s.deadline = now.Add(s.cfg.Grace())
	case s.phase == Forwarding && s.closing == "" && !now.Before(s.deadline):
		s.close(now, "handed off")
	}
	if !s.retryAt.IsZero() && !now.Before(s.retryAt) {
		s.retryAt = time.Time{}
	}
	s.pump(now)
	s.maybeEnd()
}

// Shipped reports the outcome of the shipment Ready asked for. A failed
// one is retried (RetryInterval later) until its deadline, then discarded
// with everything caught meanwhile.
func (s *Shadow[M]) Shipped(now time.Time, err error) {
	if s.phase == Ended || !s.inFlight {
		return
	}
	s.inFlight = false
	switch {
	case err == nil:
		s.shipped += len(s.sending)
		s.sending, s.shipBy = nil, time.Time{}
	case !now.Before(s.shipBy):
		n := len(s.sending) + len(s.queued)
		s.discarded += n
		s.out.Discarded += n
		s.out.Err = err
		s.sending, s.queued, s.shipBy = nil, nil, time.Time{}
	default:
		s.retryAt = now.Add(RetryInterval)
	}
	s.pump(now)
	s.maybeEnd()
}

// ClientBack ends the shadow because a new connection of the session's
// client id arrived at this node: what is caught is shipped (for at most
// the forward timeout), then the shadow ends. The driver lets the new
// connection proceed once the shadow has ended.
func (s *Shadow[M]) ClientBack(now time.Time) {
	if s.phase == Ended {
		return
	}
	s.phase = Forwarding
	s.close(now, "client came back")
	s.pump(now)
	s.maybeEnd()
}

// Stop ends the shadow at once (the node is stopping, or the export
// failed), for reason: what it still holds is discarded, a shipment under
// way included (its outcome is ignored).
func (s *Shadow[M]) Stop(reason string) {
	if s.phase == Ended {
		return
	}
	n := len(s.sending) + len(s.queued)
	s.discarded += n
	s.out.Discarded += n
	s.sending, s.queued = nil, nil
	s.end(reason)
}

// Next returns when Tick must be called next; zero if no timer runs.
func (s *Shadow[M]) Next() time.Time {
	var next time.Time
	if s.phase == Pending || (s.phase == Forwarding && s.closing == "") {
		next = s.deadline
	}
	if !s.retryAt.IsZero() && (next.IsZero() || s.retryAt.Before(next)) {
		next = s.retryAt
	}
	return next
}

// HasReady reports whether Ready has something to do.
func (s *Shadow[M]) HasReady() bool { return !s.out.Empty() }

// Ready returns what the driver must do since the last call.
func (s *Shadow[M]) Ready() Ready[M] {
	r := s.out
	s.out = Ready[M]{}
	return r
}

// close makes the shadow end once what it holds is shipped, giving the
// last shipments the forward timeout.
func (s *Shadow[M]) close(now time.Time, reason string) {
	closeBy := now.Add(s.cfg.ForwardTimeout)
	if s.closing == "" {
		s.closing, s.closeBy = reason, closeBy
	} else if closeBy.Before(s.closeBy) {
		s.closeBy = closeBy
	}
	if !s.shipBy.IsZero() && s.shipBy.After(s.closeBy) {
		s.shipBy = s.closeBy
	}
}

// pump starts a shipment if one is due: forwarding, none under way or
// waiting, something to ship.
func (s *Shadow[M]) pump(now time.Time) {
	if s.phase != Forwarding || s.inFlight || !s.retryAt.IsZero() || len(s.sending)+len(s.queued) == 0 {
		return
	}
	if len(s.sending) == 0 {
		s.shipBy = now.Add(s.cfg.Grace())
		if s.closing != "" {
			s.shipBy = s.closeBy
		}
	}
	s.sending = append(s.sending, s.queued...)
	s.queued = nil
	s.inFlight = true
	s.out.Ship = slices.Clone(s.sending)
	s.out.ShipBy = s.shipBy
}

// maybeEnd ends a closing shadow that holds nothing any more.
func (s *Shadow[M]) maybeEnd() {
	if s.phase != Ended && s.closing != "" && !s.inFlight && len(s.sending)+len(s.queued) == 0 {
		s.end(s.closing)
	}
}

func (s *Shadow[M]) end(reason string) {
	s.phase = Ended
	s.retryAt = time.Time{}
	s.out.Ship = nil
	s.out.Ended = true
	s.out.Reason = reason
	s.out.TotalShipped = s.shipped
	s.out.TotalDiscarded = s.discarded
}
