package membership

import "sync"

// eventQueue hands events from memberlist's goroutines (which must never
// block on the consumer) to the single delivery goroutine. It is bounded:
// past max events, new ones are dropped and counted.
type eventQueue struct {
	mu      sync.Mutex
	q       []event
	max     int
	dropped uint64
	signal  chan struct{} // capacity 1: "the queue is not empty"
}

func newEventQueue(max int) *eventQueue {
	return &eventQueue{max: max, signal: make(chan struct{}, 1)}
}

// push enqueues evs without blocking; it reports how many were dropped.
func (q *eventQueue) push(evs ...event) (dropped int) {
	if len(evs) == 0 {
		return 0
	}
	q.mu.Lock()
	for _, ev := range evs {
		if len(q.q) >= q.max {
			q.dropped++
			dropped++
			continue
		}
		ev.m = copyMember(ev.m)
		q.q = append(q.q, ev)
	}
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
	return dropped
}

// take removes and returns all queued events.
func (q *eventQueue) take() []event {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := q.q
	q.q = nil
	return out
}

func (q *eventQueue) droppedCount() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.dropped
}

// deliver runs until stop is closed, calling h for each event in order.
func (q *eventQueue) deliver(h EventHandler, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-q.signal:
		}
		for _, ev := range q.take() {
			select {
			case <-stop:
				return
			default:
			}
			switch ev.kind {
			case evJoin:
				h.MemberJoin(ev.m)
			case evUpdate:
				h.MemberUpdate(ev.m)
			case evLeave:
				h.MemberLeave(ev.m)
			case evRemove:
				h.MemberRemove(ev.m)
			}
		}
	}
}
